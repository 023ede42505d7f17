"""peerd's I/O loop never waits on another service: real node processes, raw BOLT-8 peers.

A stopped key custodian (signd) delays only the handshakes that need its ECDH, and a message whose
handler's service is down closes that one peer at once; other peers' pings are answered meanwhile.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

from conftest import wait_for
from peer_tools import RawPeer, free_port
from lnp_plugin_api.messages import PING

PONG_TYPE = 19
FAST = 0.1  # seconds: every pong of a connected peer, whatever other services do


def profile(port: int, plugins: list[str]) -> str:
    # heartbeats far apart: a service stopped for 10 s is not declared dead and restarted meanwhile
    return f"""
[node]
network = "regtest"
data_dir = "DATA_DIR"
[bus]
mode = "processes"
heartbeat_interval = 10.0
[plugins]
enabled = {json.dumps(plugins)}
[plugins.peerd]
listen = ["127.0.0.1:{port}"]
"""


class Pinger(threading.Thread):
    """Pings through a connected raw peer every ~200 ms and records each round trip."""

    def __init__(self, raw: RawPeer) -> None:
        super().__init__(daemon=True)
        self.raw, self.rtts, self.error = raw, [], None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                self.raw.send(PING.encode({"num_pong_bytes": 8, "ignored": b""}))
                self.raw.read_type(PONG_TYPE, timeout=15)
                self.rtts.append(time.monotonic() - started)
                self.stopping.wait(0.2)
        except Exception as e:  # reported by the test
            self.error = e

    def finish(self) -> list[float]:
        self.stopping.set()
        self.join(20)
        assert self.error is None, f"pinging failed: {self.error!r}"
        return self.rtts


def connected_peers(node, port: int, node_id: bytes, count: int) -> list[RawPeer]:
    peers = []
    for _ in range(count):
        raw = RawPeer(port, timeout=30)
        peers.append(raw)
        raw.connect(node_id)
    with node.client() as c:
        wait_for(lambda: len(c.call("peers")["peers"]) == count)
    return peers


def test_a_stopped_signd_delays_only_new_handshakes(nodes) -> None:
    port = free_port()
    node = nodes(profile(port, ["core", "signd", "peerd"]), name="stop").start()
    node_id = bytes.fromhex(node.wait_ready()["node_id"])
    signd = node.service("signd")["pid"]
    peers = connected_peers(node, port, node_id, 2)
    pingers = [Pinger(raw) for raw in peers]
    late = RawPeer(port, timeout=40)
    done: list[float] = []

    def handshake() -> None:
        late.connect(node_id)
        done.append(time.monotonic())

    dialer = threading.Thread(target=handshake, daemon=True)
    try:
        for p in pingers:
            p.start()
        time.sleep(0.5)
        os.kill(signd, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            time.sleep(1)
            dialer.start()  # its act one needs the node key's ECDH: signd cannot answer now
            time.sleep(9)
        finally:
            os.kill(signd, signal.SIGCONT)
        resumed = time.monotonic()
        dialer.join(30)
        time.sleep(0.5)
        rtts = [p.finish() for p in pingers]
    finally:
        for p in pingers:
            p.stopping.set()
        for raw in peers + [late]:
            raw.close()
    assert done and resumed <= done[0] < resumed + 10, "the handshake did not finish after signd resumed"
    for got in rtts:
        assert max(got) < FAST, f"a pong took {max(got) * 1000:.0f} ms"
        assert len(got) >= (resumed - stopped) / 0.35, f"too few pongs: {len(got)}"


def test_a_message_for_a_dead_service_closes_only_its_peer(nodes) -> None:
    port = free_port()
    node = nodes(profile(port, ["core", "peerd", "tk_peer"]), name="dead").start()
    node_id = bytes.fromhex(node.wait_ready()["node_id"])
    handler = node.service("tkpeer")["pid"]
    peers = connected_peers(node, port, node_id, 3)
    sender, pingers = peers[0], [Pinger(raw) for raw in peers[1:]]
    try:
        for p in pingers:
            p.start()
        time.sleep(0.5)
        os.kill(handler, signal.SIGKILL)  # the owner of type 32771 is gone until the node restarts it
        killed = time.monotonic()
        closed = False
        while not closed and time.monotonic() < killed + 3:
            sender.send(b"\x80\x03" + b"hello")  # type 32771: tk_peer's
            closed = sender.is_closed(timeout=0.05)
        closed_after = time.monotonic() - killed
        time.sleep(1)
        rtts = [p.finish() for p in pingers]
    finally:
        for p in pingers:
            p.stopping.set()
        for raw in peers:
            raw.close()
    assert closed, "the peer whose message could not be handed over was not disconnected"
    assert closed_after < 2
    for got in rtts:
        assert max(got) < FAST, f"a pong took {max(got) * 1000:.0f} ms"
    log = (node.data_dir / "lnp-host.log").read_text()
    # whichever peerd noticed first: the message it could not hand over, or the service going down
    assert ("message of type 32771 could not be handed to its handler" in log
            or "service tkpeer, which handled its messages, is" in log), log[-3000:]


def test_a_send_that_must_not_wait_finds_a_connection_made_ahead(short_tmp) -> None:
    """timeout 0 never waits; a connection made ahead (`connect_ahead`) is ready for the first send."""
    import pytest
    import zmq

    from lnp_host.bus import WIRE_IN, Bus, Endpoints, ServiceUnavailable, new_socket
    from lnp_plugin_api import WireMessage

    zctx = zmq.Context()
    endpoints = Endpoints.for_profile(["here", "there"], "processes", short_tmp, {})
    bus = Bus(zctx, endpoints, "here")
    inbox = new_socket(zctx, zmq.ROUTER)
    msg = WireMessage(bytes(33), 32771, b"hi")
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):  # nobody bound: refused at once
            bus.send_wire("there", WIRE_IN, msg, timeout=0)
        assert time.monotonic() - started < 0.05
        bus.close_thread()
        os.makedirs(short_tmp / "run", exist_ok=True)
        inbox.bind(endpoints.message["there"])
        bus.connect_ahead("there")
        time.sleep(0.3)
        bus.send_wire("there", WIRE_IN, msg, timeout=0)
        assert inbox.poll(2000) and inbox.recv_multipart()[1:] == [b"I", bytes(33), b"\x80\x03", b"hi"]
    finally:
        inbox.close(0)
        bus.close()
        zctx.term()


def test_a_locked_database_does_not_stall_peers(nodes) -> None:
    """peerd writes its peer table off the loop: while another writer holds the database for 3 s, a new
    peer still connects and the others' pings stay fast; the record is written once the lock is gone."""
    import sqlite3

    port = free_port()
    node = nodes(profile(port, ["core", "peerd"]), name="lock").start()
    node_id = bytes.fromhex(node.wait_ready()["node_id"])
    peers = connected_peers(node, port, node_id, 2)
    pingers = [Pinger(raw) for raw in peers]
    db = sqlite3.connect(node.data_dir / "lnp.sqlite3", timeout=30)
    late = RawPeer(port, timeout=30)
    try:
        for p in pingers:
            p.start()
        time.sleep(0.5)
        db.execute("BEGIN IMMEDIATE")  # the write lock: peerd's record of a new connection must wait
        late.connect(node_id)
        with node.client() as c:
            wait_for(lambda: len(c.call("peers")["peers"]) == 3, timeout=2)
        time.sleep(2.5)
        db.rollback()
        late_id = late.key.node_id().hex()
        with node.client() as c:
            wait_for(lambda: late_id in [k["node_id"] for k in c.call("peers", known=True)["known"]])
        rtts = [p.finish() for p in pingers]
    finally:
        for p in pingers:
            p.stopping.set()
        db.close()
        for raw in peers + [late]:
            raw.close()
    for got in rtts:
        assert max(got) < FAST, f"a pong took {max(got) * 1000:.0f} ms"


def test_wire_messages_handed_over_soon_arrive_in_order_or_fail_together(short_tmp) -> None:
    """`send_wire_soon` never waits: queued until the service connects, in order; past the timeout the
    message fails and so does every one queued behind it (a receiver never gets a gap)."""
    import zmq

    from lnp_host.bus import WIRE_IN, Bus, Endpoints, ServiceUnavailable, new_socket, prepare_bind
    from lnp_plugin_api import WireMessage

    zctx = zmq.Context()
    endpoints = Endpoints.for_profile(["here", "there"], "processes", short_tmp, {})
    bus = Bus(zctx, endpoints, "here")
    prepare_bind(endpoints.message["there"])
    try:
        lost = [bus.send_wire_soon("there", WIRE_IN, WireMessage(bytes(33), 32771, bytes([i])), timeout=0.3)
                for i in range(3)]
        for future in lost:  # nobody listens: all three fail, none is sent later
            assert isinstance(future.exception(timeout=5), ServiceUnavailable)
        inbox = new_socket(zctx, zmq.ROUTER)
        inbox.bind(endpoints.message["there"])
        sent = [bus.send_wire_soon("there", WIRE_IN, WireMessage(bytes(33), 32771, bytes([i])), timeout=5)
                for i in range(10, 20)]
        for future in sent:
            assert future.result(timeout=5) is None
        inbox.rcvtimeo = 5000
        got = [inbox.recv_multipart()[-1] for _ in range(10)]
        assert got == [bytes([i]) for i in range(10, 20)]
        assert inbox.poll(300) == 0  # the lost ones never came
        inbox.close(0)
    finally:
        bus.close()
        zctx.destroy(linger=0)
