"""The bus's fast paths (issue 10, part 6) keep the semantics of the slow ones: a request to a service
in the same process skips the sockets but not the JSON, the errors, the timeouts or the caller; the
faster encoder, decoder and frame helpers give what json and pyzmq's own give."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import zmq

from lnp_host import bus as wire
from lnp_host.bus import Bus, Endpoints, ServiceUnavailable, Waiter
from lnp_host.caller import calling_as, current_caller
from lnp_host.runtime import share_one_cpu
from lnp_plugin_api import RpcError


class FakeService:
    """A service loop in this process, answering from its own thread like ServiceRuntime."""

    def __init__(self, answer) -> None:
        self.answer = answer  # (kind, name, body, caller) -> (status, raw) or None for no answer
        self.seen: list[tuple[bytes, str, bytes, str]] = []
        self.threads: set[int] = set()

    def deliver(self, kind: bytes, name: str, raw: bytes, caller: str, waiter: Waiter) -> None:
        self.seen.append((kind, name, raw, caller))

        def serve() -> None:
            self.threads.add(threading.get_ident())
            reply = self.answer(kind, name, json.loads(raw) if raw else None, caller)
            if reply is not None:
                waiter.set(*reply)
        threading.Thread(target=serve).start()


@pytest.fixture
def bus():
    zctx = zmq.Context()
    # nothing is bound at these endpoints: a request that went over ZeroMQ would time out
    b = Bus(zctx, Endpoints({"beta": "inproc://speed-nobody", "far": "ipc:///tmp/speed-nobody.sock"}, {}), "alpha")
    yield b
    b.close()
    zctx.term()


def test_a_request_to_a_service_in_this_process_skips_the_sockets(bus: Bus) -> None:
    svc = FakeService(lambda kind, name, body, caller: (wire.OK, wire.encode({"got": body, "from": caller})))
    bus.serve_here("beta", svc.deliver)
    assert bus.request("beta", "echo", {"i": 1}, timeout=2) == {"got": {"i": 1}, "from": "alpha"}
    assert bus.request("beta", "echo", [1], timeout=2, source="gamma") == {"got": [1], "from": "gamma"}
    assert svc.seen[0] == (wire.REQUEST, "echo", b'{"i":1}', "alpha")  # the bytes the bus would carry
    assert threading.get_ident() not in svc.threads  # answered on the service's thread, not the caller's
    bus.serve_here("beta", None)  # the service stopped: over the bus again, where nobody answers
    with pytest.raises(ServiceUnavailable, match="did not answer 'echo' within 0.3s"):
        bus.request("beta", "echo", {}, timeout=0.3)


def test_only_inproc_services_are_served_here(bus: Bus) -> None:
    svc = FakeService(lambda *_: (wire.OK, b"1"))
    bus.serve_here("far", svc.deliver)  # an ipc:// endpoint may be another process's: ignored
    with pytest.raises(ServiceUnavailable):
        bus.request("far", "echo", {}, timeout=0.3)
    assert svc.seen == []


def test_errors_come_back_as_over_the_bus(bus: Bus) -> None:
    replies = iter([
        (wire.ERR, wire.encode({"code": RpcError.INVALID_PARAMS, "message": "no", "data": {"x": 1}})),
        (wire.ERR, b"[]"),
        (wire.OK, b"{not json"),
    ])
    bus.serve_here("beta", FakeService(lambda *_: next(replies)).deliver)
    with pytest.raises(RpcError) as e:
        bus.request("beta", "q", {}, timeout=2)
    assert (e.value.code, e.value.message, e.value.data) == (RpcError.INVALID_PARAMS, "no", {"x": 1})
    with pytest.raises(RpcError) as e:
        bus.request("beta", "q", {}, timeout=2)
    assert (e.value.code, e.value.message) == (RpcError.INTERNAL_ERROR, "error")
    with pytest.raises(RpcError, match="answered 'q' with bad JSON"):
        bus.request("beta", "q", {}, timeout=2)


def test_a_body_json_cannot_carry_fails_in_the_caller(bus: Bus) -> None:
    svc = FakeService(lambda *_: (wire.OK, b"null"))
    bus.serve_here("beta", svc.deliver)
    with pytest.raises(TypeError):
        bus.request("beta", "q", {"b": b"bytes"}, timeout=2)
    assert svc.seen == []


def test_timeouts_late_answers_and_an_abandoned_bus(bus: Bus) -> None:
    waiters: list[Waiter] = []
    bus.serve_here("beta", lambda kind, name, raw, caller, waiter: waiters.append(waiter))
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="did not answer 'slow' within 0.3s"):
        bus.request("beta", "slow", {}, timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 2
    waiters[0].set(wire.OK, b"1")  # a late answer goes nowhere
    waiters[0].set(wire.OK, b"2")  # nor does a second one
    bus.abandon("lnpd is gone")
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="lnpd is gone"):
        bus.request("beta", "slow", {}, timeout=30)
    assert time.monotonic() - start < 1


def test_a_service_that_stopped_fails_its_waiters_at_once(bus: Bus) -> None:
    def refuse(kind, name, raw, caller, waiter: Waiter) -> None:
        waiter.fail(ServiceUnavailable("beta", "has stopped"))
    bus.serve_here("beta", refuse)
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="has stopped"):
        bus.request("beta", "q", {}, timeout=30)
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("value", [None, 0, -1.5, 1e300, float("nan"), "é\u2028\"\\", "x", [], {},
                                   {"a": [1, {"b": None, "c": True}], "é": "ü", "1": 2}, {1: "int key"},
                                   {"t": (1, 2)}, 10**30])
def test_encode_is_json_dumps(value) -> None:
    assert wire.encode(value) == json.dumps(value, separators=(",", ":")).encode()
    assert wire.decode(wire.encode(value)) == json.loads(json.dumps(value)) or value != value  # NaN


def test_encode_refuses_what_json_refuses() -> None:
    circular: list = []
    circular.append(circular)
    with pytest.raises(ValueError):
        wire.encode(circular)
    for bad in ({"b": b"x"}, {(1, 2): 1}, {1, 2}, object()):
        with pytest.raises(TypeError):
            wire.encode(bad)
    with pytest.raises(ValueError):
        wire.encode({"ok": 1, "bad": circular})
    assert wire.encode({"after": "a failure"}) == b'{"after":"a failure"}'  # nothing left over


@pytest.mark.parametrize("raw", [b'{"a":1}', b"  [1, 2] ", b'"x"', b"7", "{\"é\": 1}".encode(),
                                 "{\"é\": 1}".encode("utf-16"), "[1]".encode("utf-16-le"),
                                 "[1]".encode("utf-32"), b"\xef\xbb\xbf[1]", b"\x00[1]", b"[1]\x00"])
def test_decode_is_json_loads(raw: bytes) -> None:
    try:
        expected = json.loads(raw)
    except ValueError:
        with pytest.raises(ValueError):
            wire.decode(raw)
    else:
        assert wire.decode(raw) == expected


def test_frame_helpers_are_send_and_recv_multipart() -> None:
    zctx = zmq.Context()
    a, b = zctx.socket(zmq.DEALER), zctx.socket(zmq.ROUTER)
    try:
        b.bind("inproc://speed-frames")
        a.setsockopt(zmq.ROUTING_ID, b"me")
        a.connect("inproc://speed-frames")
        wire.send_frames(a, [b"Q", b"", b"name", b"{}"])
        b.poll(1000)
        assert wire.recv_frames(b, zmq.NOBLOCK) == [b"me", b"Q", b"", b"name", b"{}"]
        wire.send_frames(b, [b"me", b"one"])
        a.poll(1000)
        assert wire.recv_frames(a) == [b"one"]
        with pytest.raises(zmq.Again):
            wire.recv_frames(a, zmq.NOBLOCK)
    finally:
        a.close(0)
        b.close(0)
        zctx.term()


def test_calling_as_nests_and_restores() -> None:
    assert current_caller() is None
    with calling_as("a"):
        with calling_as("b"):
            assert current_caller() == "b"
        assert current_caller() == "a"
        with pytest.raises(KeyError), calling_as("c"):
            raise KeyError
        assert current_caller() == "a"
    assert current_caller() is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_share_one_cpu_pins_the_calling_thread_only() -> None:
    before = os.sched_getaffinity(0)
    seen: list[set[int]] = []

    def service() -> None:
        share_one_cpu()
        seen.append(os.sched_getaffinity(0))
        child = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        child.start()
        child.join()
    t = threading.Thread(target=service)
    t.start()
    t.join()
    assert len(seen[0]) == 1 and seen[0] <= before
    assert seen[1] == seen[0]  # threads a service starts share its CPU
    assert os.sched_getaffinity(0) == before  # the rest of the process is left alone
