"""The direct channel between services of one host (lnp_host.bus_direct, issue 10 part 6): the same
replies, errors, timeouts and caller as over ZeroMQ; hostile frames cost the sender its connection,
never the service; a service that dies mid-request fails the request at once; a restarted service is
found again; with nobody listening the request goes over ZeroMQ."""
from __future__ import annotations

import os
import select
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path

import pytest
import zmq

from conftest import wait_for
from lnp_host import bus as wire
from lnp_host.bus import Bus, Endpoints, ServiceUnavailable, WAKE_MS
from lnp_host.bus_direct import HELLO, MAX_MESSAGE, DirectInbox, direct_path, pack
from lnp_host.bus_waiter import Waiter
from lnp_plugin_api import RpcError
from test_node import PROCESSES


class Service:
    """A service loop in a thread serving a DirectInbox from a select.poll, as ServiceRuntime does."""

    def __init__(self, path: str, answer) -> None:
        self.answer = answer  # (frames, caller, reply) -> None; answers through reply, or not at all
        self.seen: list[tuple[list[bytes], str | None]] = []
        self.poller = select.poll()
        self.inbox = DirectInbox(path, self._on_message, self.poller.register, self.poller.unregister)
        self.stopping = False
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _on_message(self, frames: list[bytes], caller: str | None, reply) -> None:
        self.seen.append((frames, caller))
        self.answer(frames, caller, reply)

    def _run(self) -> None:
        while not self.stopping:
            for fd, events in self.poller.poll(20):
                self.inbox.ready(fd, events)

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.inbox.close()


def echo(frames: list[bytes], caller: str | None, reply) -> None:
    if len(frames) != 4:
        return  # the runtime drops these with a warning (ServiceRuntime._on_direct)
    kind, _, name, body = frames
    if kind != wire.EVENT:
        reply(wire.OK, wire.encode({"name": name.decode(), "body": wire.decode(body), "caller": caller}))


@pytest.fixture
def place(short_tmp: Path):
    """(endpoints of service beta over ipc://, the path of its direct socket, a Bus asking as alpha)."""
    control = f"ipc://{short_tmp}/beta.control"
    zctx = zmq.Context()
    bus = Bus(zctx, Endpoints({"beta": control}, {"beta": f"ipc://{short_tmp}/beta.message"}), "alpha")
    yield control, direct_path(control), bus
    bus.close()
    zctx.term()


def raw_client(path: str, hello: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    if hello:
        sock.sendall(pack([HELLO, b"mallory"]))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_direct_path_only_for_files_on_this_host() -> None:
    assert direct_path("ipc:///tmp/x/run/beta.control") == "/tmp/x/run/beta.control.direct"
    assert direct_path("tcp://127.0.0.1:9000") is None      # another host: ZeroMQ with CURVE
    assert direct_path("inproc://lnp.beta.control") is None
    assert direct_path("ipc://@abstract") is None           # no file, so no permissions to rely on
    assert direct_path("ipc:///" + "d" * 110) is None       # too long for AF_UNIX


def test_requests_and_events_keep_replies_errors_caller_and_order(place) -> None:
    _, path, bus = place
    svc = Service(path, echo)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0  # owner-only
        assert bus.request("beta", "q", {"i": 1}, timeout=2) == {"name": "q", "body": {"i": 1}, "caller": "alpha"}
        assert bus.request("beta", "q", [2], timeout=2, source="gamma")["caller"] == "gamma"
        bus.post("beta", "ev", {"n": 1})  # an event and then a request from one thread: in that order
        bus.request("beta", "after", None, timeout=2)
        kinds = [(f[0], f[2]) for f, _ in svc.seen]
        assert kinds[-2:] == [(wire.EVENT, b"ev"), (wire.REQUEST, b"after")]
        assert len(svc.seen) == 4  # every one of them came over the direct connection
    finally:
        svc.close()


def test_errors_timeouts_and_late_replies_are_those_of_the_bus(place) -> None:
    _, path, bus = place
    held = []

    def answer(frames, caller, reply) -> None:
        name = frames[2]
        if name == b"bad":
            reply(wire.ERR, wire.encode({"code": RpcError.INVALID_PARAMS, "message": "no", "data": {"x": 1}}))
        elif name == b"slow":
            held.append(reply)  # answered only after its caller gave up
        else:
            echo(frames, caller, reply)

    svc = Service(path, answer)
    try:
        with pytest.raises(RpcError) as e:
            bus.request("beta", "bad", {}, timeout=2)
        assert (e.value.code, e.value.message, e.value.data) == (RpcError.INVALID_PARAMS, "no", {"x": 1})
        with pytest.raises(ServiceUnavailable, match="did not answer 'slow' within 0.3s"):
            bus.request("beta", "slow", {}, timeout=0.3)
        held[0](wire.OK, b'"late"')  # the late reply is skipped by the next request
        assert bus.request("beta", "q", 3, timeout=2)["body"] == 3
        with pytest.raises(TypeError):  # what JSON cannot carry fails in the caller, as before
            bus.request("beta", "q", {"x": object()}, timeout=2)
    finally:
        svc.close()


def test_hostile_frames_cost_the_sender_its_connection_not_the_service(place) -> None:
    _, path, bus = place
    svc = Service(path, echo)
    try:
        no_hello = raw_client(path, hello=False)
        no_hello.sendall(pack([wire.REQUEST, b"1", b"q", b"{}"]))
        assert closed_by_peer(no_hello)
        bad_name = raw_client(path, hello=False)
        bad_name.sendall(pack([HELLO, "é".encode()]))
        assert closed_by_peer(bad_name)
        huge = raw_client(path)
        huge.sendall(struct.pack("!I", MAX_MESSAGE + 1) + b"x" * 100)
        assert closed_by_peer(huge)
        # frames that do not fill their message, and junk inside a well-framed one: dropped, read on
        odd = raw_client(path)
        odd.sendall(struct.pack("!I", 6) + struct.pack("!I", 50) + b"xy")
        odd.sendall(pack([]) + pack([b"\xff" * 3]))
        odd.sendall(pack([wire.REQUEST, b"7", b"q", b"{}"]))
        reply = odd.recv(65536)
        assert reply == pack([wire.REPLY, b"7", wire.OK, wire.encode({"name": "q", "body": {}, "caller": "mallory"})])
        for s in (no_hello, bad_name, huge, odd):
            s.close()
        assert bus.request("beta", "q", 1, timeout=2)["body"] == 1  # the service serves on
    finally:
        svc.close()


def test_a_caller_that_never_reads_cannot_stall_the_service(place) -> None:
    _, path, bus = place
    svc = Service(path, echo)
    try:
        greedy = raw_client(path)
        greedy.setblocking(False)
        body = wire.encode("x" * 100_000)
        try:
            for i in range(200):  # up to 20 MB of replies it never reads
                greedy.send(pack([wire.REQUEST, str(i).encode(), b"q", body]))
        except BlockingIOError:
            pass  # the service stopped reading it: its replies are not taken
        started = time.monotonic()
        assert bus.request("beta", "q", 1, timeout=5)["body"] == 1
        assert time.monotonic() - started < 2
        greedy.close()
    finally:
        svc.close()


def test_a_service_gone_mid_request_fails_it_at_once_and_a_new_one_is_found(place) -> None:
    _, path, bus = place
    svc = Service(path, lambda frames, caller, reply: None)  # takes requests, answers none
    threading.Timer(0.3, svc.close).start()  # ... and stops while one waits
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="closed the connection before answering 'q'"):
        bus.request("beta", "q", {}, timeout=20)
    assert time.monotonic() - started < 5  # not its 20 s timeout
    svc = Service(path, echo)  # restarted: the same thread's next request reaches the new one
    try:
        assert bus.request("beta", "q", 2, timeout=2)["body"] == 2
    finally:
        svc.close()


def test_without_a_direct_inbox_requests_go_over_zeromq(place) -> None:
    control, path, bus = place
    router = bus.zctx.socket(zmq.ROUTER)
    router.bind(control)

    def answer_one() -> None:
        ident, kind, rid, name, body = router.recv_multipart()
        router.send_multipart([ident, wire.REPLY, rid, wire.OK, b'"over zeromq"'])

    t = threading.Thread(target=answer_one)
    t.start()
    try:
        assert not os.path.exists(path)
        assert bus.request("beta", "q", {}, timeout=5) == "over zeromq"
    finally:
        t.join()
        router.close(0)


def test_an_abandoned_bus_fails_a_direct_wait_at_once(place) -> None:
    _, path, bus = place
    svc = Service(path, lambda frames, caller, reply: None)
    try:
        threading.Timer(0.2, bus.abandon, args=("lnpd is gone",)).start()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="lnpd is gone"):
            bus.request("beta", "q", {}, timeout=20)
        assert time.monotonic() - started < 0.2 + 2 * WAKE_MS / 1000 + 0.5
    finally:
        svc.close()


def test_waiters_reuse_one_descriptor_per_thread_and_close_it_with_the_thread() -> None:
    before = len(os.listdir("/proc/self/fd"))

    def ask() -> None:
        for _ in range(3):
            w = Waiter()
            threading.Thread(target=w.set, args=(wire.OK, b"1")).start()
            assert w.wait(2) and w.reply == (wire.OK, b"1")
        late = Waiter()
        assert not late.wait(0.01)
        late.set(wire.OK, b"2")  # a late answer: the thread's next wait looks once more, no harm
        w = Waiter()
        threading.Timer(0.05, w.set, args=(wire.OK, b"3")).start()
        assert w.wait(2) and w.reply == (wire.OK, b"3")

    threads = [threading.Thread(target=ask) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.2)  # the timers' threads end
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_the_direct_channel_on_real_node_processes(nodes) -> None:
    node = nodes(PROCESSES).start()
    path = node.data_dir / "run" / "beta.control.direct"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700  # as every socket of the node (test_private_files)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with node.client(timeout=30) as c:
        assert c.tk_ask("tk.add", {"a": 2, "b": 3})["reply"]["service"] == "beta"
        junk = raw_client(str(path))  # hostile frames on beta's direct inbox
        junk.sendall(pack([b"Q", b"1"]) + b"\xff\xff\xff\xff" + b"x" * 64)
        assert closed_by_peer(junk)
        junk.close()
        assert c.tk_roundtrips(n=50)["n"] == 50
        beta = node.service("beta")["pid"]
        threading.Timer(0.5, os.kill, args=(beta, signal.SIGKILL)).start()
        started = time.monotonic()
        answer = c.tk_ask("tk.sleep", {"seconds": 10})  # beta dies while handling it
        assert answer["error"]["code"] == RpcError.SERVICE_UNAVAILABLE, answer
        assert "before answering 'tk.sleep'" in answer["error"]["message"]
        assert time.monotonic() - started < 5  # at once, not after its 30 s timeout
        wait_for(lambda: node.service("beta")["restarts"] == 1 and node.service("beta")["state"] == "running")
        assert c.tk_ask("tk.add", {"a": 1})["reply"]["sum"] == 1  # the restarted beta is found again
        assert c.tk_roundtrips(n=50)["n"] == 50
    assert "closed a direct connection" in (node.data_dir / "lnp-host.log").read_text()


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_zeromq_inbox_messages_are_served_among_fast_requests(nodes, mode: str) -> None:
    """While alpha keeps beta busy with requests that skip ZeroMQ (in-process, or direct), RPC calls
    reach beta over its ZeroMQ inbox and are answered at once: the loop asks that socket whenever
    its descriptor fires, however busy it is with the others."""
    node = nodes(PROCESSES if mode == "processes" else PROCESSES.replace('"processes"', '"threads"')).start()
    done = threading.Event()

    def busy() -> None:
        with node.client(timeout=120) as c:
            while not done.is_set():
                c.tk_roundtrips(n=2000)

    t = threading.Thread(target=busy)
    t.start()
    try:
        with node.client(timeout=5) as c:
            for _ in range(200):
                started = time.monotonic()
                assert isinstance(c.tk_received(), list)  # beta's RPC method: over its ZeroMQ inbox
                assert time.monotonic() - started < 1
    finally:
        done.set()
        t.join()
