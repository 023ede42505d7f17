"""Hostile and broken peers: each loses only its own connection while a good peer keeps working."""
from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import ExitStack

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import wait_for
from peer_tools import TCP_CLOSE, TCP_ESTABLISHED, Key, RawPeer, our_init, tcp_state
from lnp_plugin_api.chains import chain_hash
from lnp_plugin_api.messages import PONG, WARNING
from test_peerd import start


@pytest.fixture(scope="module")
def pair(nodes_module):
    """Node `a` (short timeouts, small queues) with a healthy peer `b` connected to it."""
    a = start(nodes_module, "a", handshake_timeout=1.0, max_handshakes=4, max_queue_bytes=1_000_000,
              ping_interval=1.0, ping_timeout=1.0)
    b = start(nodes_module, "b")
    b.call("connect", a.addr)
    return a, b


def healthy(pair) -> None:
    """The good peer still gets its pongs, so the node went on serving it."""
    a, b = pair
    assert b.call("ping", a.id, bytes=100)["bytes"] == 100
    assert b.id in a.peer_ids()


def warning_then_close(raw: RawPeer) -> str:
    """Read until the node's `warning` arrives; return its text once the node has closed."""
    payload = raw.read_type(1)
    assert raw.is_closed(), "the node kept the connection open"
    return WARNING.decode(payload)["data"].decode()


def active(pair) -> RawPeer:
    a, _ = pair
    raw = RawPeer(a.port)
    try:
        raw.connect(bytes.fromhex(a.id))
        wait_for(lambda: raw.key.node_id().hex() in a.peer_ids())
    except BaseException:
        raw.close()
        raise
    return raw


def test_stalled_handshake_times_out(pair) -> None:
    a, _ = pair
    with RawPeer(a.port) as raw:
        started = time.monotonic()
        assert raw.is_closed(timeout=10)
        assert 0.8 < time.monotonic() - started < 5
    healthy(pair)


@pytest.mark.parametrize("act", [b"\x01" + os.urandom(49),   # unknown version
                                 b"\x00" + b"\x02" + os.urandom(48),  # not a point
                                 b"\x00" + Key().node_id() + os.urandom(16)],  # bad MAC
                         ids=["unknown version", "not a point", "bad MAC"])  # the same names in every run
def test_invalid_act_one_closes(pair, act: bytes) -> None:
    a, _ = pair
    with RawPeer(a.port) as raw:
        raw.sock.sendall(act)
        assert raw.is_closed(timeout=5)
    healthy(pair)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=400))
def test_random_bytes_close_only_that_connection(pair, junk: bytes) -> None:
    a, _ = pair
    with RawPeer(a.port) as raw:
        raw.sock.sendall(junk)
        if len(junk) >= 50:
            assert raw.is_closed(timeout=5)
    healthy(pair)


def test_random_bytes_after_the_handshake(pair) -> None:
    with active(pair) as raw:
        raw.sock.sendall(os.urandom(300))  # a length header with a bad MAC
        assert raw.is_closed()
    healthy(pair)


def test_init_rules(pair) -> None:
    a, _ = pair
    node = bytes.fromhex(a.id)
    cases = [
        (b"\x00\x12" + bytes(4), "first message was of type 18, not init"),
        (b"\x00\x10\x00", "malformed init"),
        (our_init(features=bytes([0x01]) + bytes(12)), "peer requires features we do not support"),  # bit 96
        (our_init(features=bytes([0x02, 0x00, 0x00])), "without its dependency payment_secret"),       # basic_mpp
        (our_init(networks=[chain_hash("mainnet")]), "no common network"),
        (our_init() + b"\x02\x00", "malformed init"),  # unknown even TLV
    ]
    for first, words in cases:
        with RawPeer(a.port) as raw:
            raw.handshake(node)
            raw.read()  # the node's init
            raw.send(first)
            assert words in warning_then_close(raw), words
    with RawPeer(a.port) as raw:
        raw.connect(node, features=bytes([0x80]) + bytes(12))  # unknown odd bit 103: ignored
        wait_for(lambda: raw.key.node_id().hex() in a.peer_ids())
    healthy(pair)


def test_message_rules(pair) -> None:
    with active(pair) as raw:
        raw.send(b"\x00\x65hello")  # unknown odd type: ignored
        raw.ping(65532)             # no pong for 65532 or more
        raw.ping(65531)
        assert len(PONG.decode(raw.read_type(19))["ignored"]) == 65531
        raw.ping(0, ignored=100)
        assert PONG.decode(raw.read_type(19))["ignored"] == b""
        raw.send(b"\x00\x64")       # unknown even type: warning, then closed
        assert "unknown even message type 100" in warning_then_close(raw)
    with active(pair) as raw:
        raw.send(b"\x00\x12\x00")   # a ping too short for its fields
        assert "malformed message" in warning_then_close(raw)
    healthy(pair)


def test_keepalive_drops_a_silent_peer(pair) -> None:
    a, _ = pair
    with active(pair) as raw:  # answers nothing: the node's keep-alive ping goes unanswered
        assert raw.is_closed(timeout=8)
        wait_for(lambda: raw.key.node_id().hex() not in a.peer_ids())
    healthy(pair)  # b answers its keep-alive pings and stays


def test_a_peer_that_stops_reading_is_reset(pair) -> None:
    """Dropped for not reading, its connection is reset at once: the node keeps neither the socket nor
    the megabytes queued for it (a graceful close would wait for ever for the peer to read them)."""
    a, _ = pair
    with RawPeer(a.port, rcvbuf=4096) as raw:
        raw.connect(bytes.fromhex(a.id))
        deadline = time.monotonic() + 15
        try:
            while tcp_state(raw.sock) == TCP_ESTABLISHED and time.monotonic() < deadline:
                raw.ping(65531)  # each asks for a 65531-byte pong that is never read
                time.sleep(0.02)
        except OSError:
            pass  # reset while sending
        wait_for(lambda: tcp_state(raw.sock) == TCP_CLOSE, timeout=3)
    healthy(pair)


def test_ping_flood_without_reading_is_disconnected(pair) -> None:
    a, _ = pair
    raw = active(pair)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        try:
            while not stop.is_set():
                raw.ping(65531)  # each asks for a 65531-byte pong that is never read
                sent[0] += 1
        except OSError:
            pass

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        wait_for(lambda: raw.key.node_id().hex() not in a.peer_ids(), timeout=30)
        healthy(pair)  # meanwhile the good peer was served
    finally:
        stop.set()
        raw.close()
        thread.join(5)
    assert sent[0] > 10
    assert "send queue over 1000000 bytes" in (a.node.data_dir / "lnp-host.log").read_text()


def test_handshake_slots(nodes) -> None:
    """Idle connections make room for new ones; handshakes past act one keep their slots, within a
    per-address limit; outbound connections have reserved slots no inbound stranger can take."""
    a = start(nodes, "a", max_handshakes=4, handshakes_per_address=2, reserved_handshakes=1,
              act_one_timeout=30.0, handshake_timeout=30.0)
    b = start(nodes, "b")
    node = bytes.fromhex(a.id)
    with ExitStack() as stack:
        def raw(source: str = "127.0.0.1") -> RawPeer:
            return stack.enter_context(RawPeer(a.port, source=source))

        first, second = raw(), raw()
        time.sleep(0.2)
        third = raw()  # a third from 127.0.0.1: its oldest idle one is closed to make room
        assert first.is_closed(timeout=2)
        for busy in (second, third):
            busy.act_one(node)  # past act one: no longer idle
        assert raw().is_closed(timeout=2)  # refused: two handshakes from 127.0.0.1 already, neither idle
        older, newer = raw("127.0.0.2"), raw("127.0.0.3")
        time.sleep(0.2)
        assert not older.is_closed(timeout=0.2)
        latest = raw("127.0.0.4")  # all four slots taken: the oldest idle one makes room
        assert older.is_closed(timeout=2)
        for busy in (newer, latest):
            busy.act_one(node)
        assert raw("127.0.0.5").is_closed(timeout=2)  # every slot busy past act one: refused
        started = time.monotonic()
        assert a.call("connect", b.addr)["id"] == b.id  # through a reserved slot, at once
        assert time.monotonic() - started < 2
        for busy in (second, third, newer, latest):
            assert not busy.is_closed(timeout=0.1)  # nobody past act one was dropped
    assert "refused" in (a.node.data_dir / "lnp-host.log").read_text()


def test_silent_connections_time_out_before_slow_handshakes(nodes) -> None:
    a = start(nodes, "a", act_one_timeout=1.0, handshake_timeout=20.0)
    with RawPeer(a.port) as silent, RawPeer(a.port) as slow:
        slow.act_one(bytes.fromhex(a.id))  # then stalls before act three
        started = time.monotonic()
        assert silent.is_closed(timeout=5)
        assert time.monotonic() - started < 3
        assert not slow.is_closed(timeout=1)  # handshake_timeout is its limit, not act_one_timeout


def test_a_second_connection_replaces_the_first(pair) -> None:
    a, _ = pair
    key = Key()
    with RawPeer(a.port, key=key) as first, RawPeer(a.port, key=key) as second:
        first.connect(bytes.fromhex(a.id))
        second.connect(bytes.fromhex(a.id))
        assert first.is_closed()
        second.ping(10)
        assert len(PONG.decode(second.read_type(19))["ignored"]) == 10
        assert a.peer_ids().count(key.node_id().hex()) == 1


def test_stalling_after_the_handshake_or_mid_message(pair) -> None:
    a, _ = pair
    with RawPeer(a.port) as raw:
        raw.handshake(bytes.fromhex(a.id))  # and never sends init
        raw.read()
        assert raw.is_closed(timeout=5)
    with active(pair) as raw:
        assert raw.session is not None
        header = raw.session.encrypt_message(b"\x00\x65" + bytes(1000))[:18]
        raw.sock.sendall(header)  # a length, then never the body: keep-alive finds it silent
        assert raw.is_closed(timeout=8)
    healthy(pair)


def test_idle_connections_do_not_lock_peers_out(nodes) -> None:
    """500 idle sockets from loopback: an outbound connect, and a known peer connecting in from the
    same address, still get through at once."""
    a = start(nodes, "a")  # default limits and timeouts
    b = start(nodes, "b")
    known = start(nodes, "known")
    known.call("connect", a.addr)  # a now knows it
    known.call("disconnect", a.id)
    wait_for(lambda: a.peer_ids() == [])
    idle: list[socket.socket] = []
    try:
        for _ in range(500):
            idle.append(socket.create_connection(("127.0.0.1", a.port), timeout=5))
        started = time.monotonic()
        assert a.call("connect", b.addr)["id"] == b.id
        assert known.call("connect", a.addr)["id"] == a.id
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()
    refusals = [line for line in (a.node.data_dir / "lnp-host.log").read_text().splitlines() if "refused" in line]
    assert 1 <= len(refusals) <= 3, refusals  # summed up, not one line per connection


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_stopping_leaks_no_socket(nodes, monkeypatch, mode: str) -> None:
    """Stopped with connections in every stage, the node closes them all: run with Python's
    warnings about unclosed sockets and transports on, it prints none."""
    monkeypatch.setenv("PYTHONWARNINGS", "always::ResourceWarning")
    a = start(nodes, "a", mode=mode)
    b = start(nodes, "b")
    a.call("connect", b.addr)
    node = bytes.fromhex(a.id)
    with RawPeer(a.port) as idle, RawPeer(a.port) as half, RawPeer(a.port) as quiet:
        half.act_one(node)     # in the handshake, after act one
        quiet.handshake(node)  # handshake done, init never sent
        quiet.read()
        assert not idle.is_closed(timeout=0.2)
        assert a.node.stop() == 0
    err = a.node.log.read_text()
    assert "ResourceWarning" not in err and "Task was destroyed" not in err, err
