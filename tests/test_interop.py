"""Interoperability with an independent BOLT-8 implementation: pyln-proto (Core Lightning's).

Messages on the pyln side are written and parsed by hand here, so neither the transport nor the
codec under test checks itself. pyln-proto's known faults are worked around, not mistaken for
ours: it sends each message in two writes (TCP_NODELAY is set on its sockets) and reads the
18-byte header with one recv (fine in lock-step exchanges like these).
"""
from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from conftest import wait_for
from lnp_plugin_api.chains import chain_hash
from test_peerd import start

wire = pytest.importorskip("pyln.proto.wire")
primitives = pytest.importorskip("pyln.proto.primitives")

REGTEST_INIT = b"\x00\x10" + b"\x00\x00" + b"\x00\x00" + b"\x01\x20" + chain_hash("regtest")
PLAIN_INIT = b"\x00\x10\x00\x00\x00\x00"


def ping(num_pong_bytes: int) -> bytes:
    return b"\x00\x12" + struct.pack(">HH", num_pong_bytes, 0)


def pong(num_bytes: int) -> bytes:
    return b"\x00\x13" + struct.pack(">H", num_bytes) + bytes(num_bytes)


def answer_if_ping(conn, msg: bytes) -> int | None:
    """Answer a ping from the node with its pong; returns the pong size, None for other messages."""
    if msg[:2] != b"\x00\x12":
        return None
    (n,) = struct.unpack(">H", msg[2:4])
    conn.send_message(pong(n))
    return n


def pong_length(msg: bytes) -> int:
    assert msg[:2] == b"\x00\x13", msg[:2].hex()
    (length,) = struct.unpack(">H", msg[2:4])
    assert len(msg) == 4 + length
    return length


def nodelay(conn) -> None:
    conn.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def read_skipping_pings(conn) -> bytes:
    """The next message that is not a ping (pings from the node are answered)."""
    while True:
        msg = conn.read_message()
        if answer_if_ping(conn, msg) is None:
            return msg


def test_pyln_connects_to_us(nodes) -> None:
    a = start(nodes, "a", plugins=("core", "peerd", "tk_peer"))
    key = primitives.PrivateKey(os.urandom(32))
    conn = wire.connect(key, primitives.PublicKey(bytes.fromhex(a.id)), "127.0.0.1", a.port)
    nodelay(conn)
    theirs = conn.read_message()
    # features: bit 19 (tk_peer's option_support_large_channel), then our networks TLV
    assert theirs == b"\x00\x10" + b"\x00\x00" + b"\x00\x03\x08\x00\x00" + b"\x01\x20" + chain_hash("regtest")
    conn.send_message(REGTEST_INIT)
    pyln_id = key.public_key().serializeCompressed().hex()
    wait_for(lambda: a.peer_ids() == [pyln_id])
    for n in (0, 1, 1000, 65531):
        conn.send_message(ping(n))
        assert pong_length(read_skipping_pings(conn)) == n
    conn.send_message(b"\x80\x03" + b"hi")  # a custom message, to the plugin that handles 32771
    wait_for(lambda: any(r.get("wire") == 32771 for r in a.call("tk_peer_received")))
    assert [r for r in a.call("tk_peer_received") if "wire" in r] == [
        {"wire": 32771, "payload": b"hi".hex(), "id": pyln_id}]
    answered = threading.Thread(target=lambda: answer_if_ping(conn, conn.read_message()), daemon=True)
    answered.start()
    assert a.call("ping", pyln_id, bytes=42)["bytes"] == 42  # our ping, pyln answers (by hand)
    answered.join(5)
    conn.connection.shutdown(socket.SHUT_RDWR)
    conn.connection.close()
    wait_for(lambda: a.peer_ids() == [])


def test_we_connect_to_pyln(nodes) -> None:
    a = start(nodes, "a")
    key = primitives.PrivateKey(os.urandom(32))
    server = wire.LightningServerSocket(key)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = server.accept()
        with conn.connection:  # closed once the node hangs up (or this side fails)
            nodelay(conn)
            seen["init"] = conn.read_message()
            conn.send_message(REGTEST_INIT)
            conn.send_message(ping(77))
            seen["pong"] = pong_length(conn.read_message())
            seen["remote"] = conn.remote_pubkey.serializeCompressed().hex()
            while True:  # answer the node's pings until it hangs up
                try:
                    msg = conn.read_message()
                except (ValueError, OSError):
                    return
                n = answer_if_ping(conn, msg)
                if n is not None:
                    seen.setdefault("answered", []).append(n)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pyln_id = key.public_key().serializeCompressed().hex()
    out = a.call("connect", f"{pyln_id}@127.0.0.1:{port}")
    assert out["id"] == pyln_id and out["direction"] == "out"
    assert seen["init"] == REGTEST_INIT  # no features (nothing enabled implements any), our network
    wait_for(lambda: "pong" in seen)
    assert seen["pong"] == 77 and seen["remote"] == a.id
    assert a.call("ping", pyln_id, bytes=5000)["bytes"] == 5000
    assert a.call("ping", pyln_id, bytes=0)["bytes"] == 0
    assert seen["answered"] == [5000, 0]
    a.call("disconnect", pyln_id)
    thread.join(5)
    server.close()
