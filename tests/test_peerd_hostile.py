"""Hostile and broken peers: each loses only its own connection while a good peer keeps working."""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import wait_for
from peer_tools import Key, RawPeer, our_init
from lnp_plugin_api.chains import chain_hash
from lnp_plugin_api.wire import PONG, WARNING
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
    raw.connect(bytes.fromhex(a.id))
    wait_for(lambda: raw.key.node_id().hex() in a.peer_ids())
    return raw


def test_stalled_handshake_times_out(pair) -> None:
    a, _ = pair
    raw = RawPeer(a.port)
    started = time.monotonic()
    assert raw.is_closed(timeout=10)
    assert 0.8 < time.monotonic() - started < 5
    healthy(pair)


@pytest.mark.parametrize("act", [b"\x01" + os.urandom(49),   # unknown version
                                 b"\x00" + b"\x02" + os.urandom(48),  # not a point
                                 b"\x00" + Key().node_id() + os.urandom(16)])  # bad MAC
def test_invalid_act_one_closes(pair, act: bytes) -> None:
    a, _ = pair
    raw = RawPeer(a.port)
    raw.sock.sendall(act)
    assert raw.is_closed(timeout=5)
    healthy(pair)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=400))
def test_random_bytes_close_only_that_connection(pair, junk: bytes) -> None:
    a, _ = pair
    raw = RawPeer(a.port)
    raw.sock.sendall(junk)
    if len(junk) >= 50:
        assert raw.is_closed(timeout=5)
    raw.close()
    healthy(pair)


def test_random_bytes_after_the_handshake(pair) -> None:
    raw = active(pair)
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
        raw = RawPeer(a.port)
        raw.handshake(node)
        raw.read()  # the node's init
        raw.send(first)
        assert words in warning_then_close(raw), words
    raw = RawPeer(a.port)
    raw.connect(node, features=bytes([0x80]) + bytes(12))  # unknown odd bit 103: ignored
    wait_for(lambda: raw.key.node_id().hex() in a.peer_ids())
    healthy(pair)


def test_message_rules(pair) -> None:
    raw = active(pair)
    raw.send(b"\x00\x65hello")  # unknown odd type: ignored
    raw.ping(65532)             # no pong for 65532 or more
    raw.ping(65531)
    assert len(PONG.decode(raw.read_type(19))["ignored"]) == 65531
    raw.ping(0, ignored=100)
    assert PONG.decode(raw.read_type(19))["ignored"] == b""
    raw.send(b"\x00\x64")       # unknown even type: warning, then closed
    assert "unknown even message type 100" in warning_then_close(raw)
    raw = active(pair)
    raw.send(b"\x00\x12\x00")   # a ping too short for its fields
    assert "malformed message" in warning_then_close(raw)
    healthy(pair)


def test_keepalive_drops_a_silent_peer(pair) -> None:
    a, _ = pair
    raw = active(pair)  # answers nothing: the node's keep-alive ping goes unanswered
    assert raw.is_closed(timeout=8)
    wait_for(lambda: raw.key.node_id().hex() not in a.peer_ids())
    healthy(pair)  # b answers its keep-alive pings and stays


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


def test_handshake_limit(pair) -> None:
    a, _ = pair
    idle = [RawPeer(a.port) for _ in range(4)]  # max_handshakes = 4, all stalled
    time.sleep(0.2)
    extra = RawPeer(a.port)
    assert extra.is_closed(timeout=0.5)  # refused at once, not after the handshake timeout
    for raw in idle:
        assert raw.is_closed(timeout=5)
    raw = active(pair)  # once they timed out, handshakes are accepted again
    raw.close()
    healthy(pair)


def test_a_second_connection_replaces_the_first(pair) -> None:
    a, _ = pair
    key = Key()
    first = RawPeer(a.port, key=key)
    first.connect(bytes.fromhex(a.id))
    second = RawPeer(a.port, key=key)
    second.connect(bytes.fromhex(a.id))
    assert first.is_closed()
    second.ping(10)
    assert len(PONG.decode(second.read_type(19))["ignored"]) == 10
    assert a.peer_ids().count(key.node_id().hex()) == 1


def test_stalling_after_the_handshake_or_mid_message(pair) -> None:
    a, _ = pair
    raw = RawPeer(a.port)
    raw.handshake(bytes.fromhex(a.id))  # and never sends init
    raw.read()
    assert raw.is_closed(timeout=5)
    raw = active(pair)
    assert raw.session is not None
    header = raw.session.encrypt_message(b"\x00\x65" + bytes(1000))[:18]
    raw.sock.sendall(header)  # a length, then never the body: keep-alive finds it silent
    assert raw.is_closed(timeout=8)
    healthy(pair)
