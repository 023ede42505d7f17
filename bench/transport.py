"""BOLT-8 transport: lnp-host (asyncio, as peerd runs it) side by side with pyln-proto.

Run: python bench/transport.py [--handshakes 500] [--small 20000] [--large 2000]
Each library talks to itself across two processes over loopback TCP:
  - handshakes per second (connect, three acts, close), one after another;
  - messages per second, streamed one way, for 100-byte and 65,000-byte messages (the reader
    decrypts every one and answers once at the end, which closes the clock).
pyln-proto's known faults are worked around so it can finish: TCP_NODELAY on its sockets, and
its one-recv reads of the 18-byte header made whole (MSG_WAITALL).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

import coincurve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lnp_host.keys import FileKeyCustody  # noqa: E402
from lnp_host.transport import Connection, connect, initiate, respond, serve  # noqa: E402

SERVER_SECRET = bytes.fromhex("21" * 32)
CLIENT_SECRET = bytes.fromhex("12" * 32)
SERVER_ID = coincurve.PrivateKey(SERVER_SECRET).public_key.format()
DONE = b"\x00\x13\x00\x00"  # the reader's one answer: a pong


def custody(secret: bytes) -> FileKeyCustody:
    """The key in memory (a forced secret is never written to disk)."""
    return FileKeyCustody(Path("/nonexistent"), secret)


# --- lnp-host --------------------------------------------------------------------------------------

def ours_server(port_queue: "multiprocessing.Queue[int]", messages: int) -> None:
    keys = custody(SERVER_SECRET)

    async def handle(conn: Connection) -> None:
        try:
            stream = await respond(conn, keys, 10)
            first = await stream.read_message()
            if first == b"stream":
                for _ in range(messages):
                    await stream.read_message()
                stream.write_message(DONE)
                await stream.drain()
            await conn.read_view(1)  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        conn.close()

    async def main() -> None:
        server = await serve(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


async def ours_handshakes(port: int, n: int) -> float:
    keys = custody(CLIENT_SECRET)
    start = time.perf_counter()
    for _ in range(n):
        conn = await connect("127.0.0.1", port, 10)
        stream = await initiate(conn, keys, SERVER_ID, 10)
        stream.write_message(b"hello")
        conn.close()
    return n / (time.perf_counter() - start)


async def ours_stream(port: int, n: int, size: int) -> float:
    keys = custody(CLIENT_SECRET)
    conn = await connect("127.0.0.1", port, 10)
    stream = await initiate(conn, keys, SERVER_ID, 10)
    msg = os.urandom(size)
    stream.write_message(b"stream")
    start = time.perf_counter()
    for _ in range(n):
        stream.write_message(msg)
        if stream.buffered() > 256 * 1024:
            await stream.drain()
    await stream.drain()
    assert await stream.read_message() == DONE
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


# --- pyln-proto ------------------------------------------------------------------------------------

class WholeReads:
    """pyln-proto's socket, with reads that return all bytes asked for and writes that send all."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n, socket.MSG_WAITALL)

    def send(self, data: bytes) -> int:
        self.sock.sendall(data)
        return len(data)

    def close(self) -> None:
        self.sock.close()


def pyln_server(port_queue: "multiprocessing.Queue[int]", messages: int) -> None:
    from pyln.proto import wire
    from pyln.proto.primitives import PrivateKey

    server = wire.LightningServerSocket(PrivateKey(SERVER_SECRET))
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    port_queue.put(server.getsockname()[1])
    while True:
        sock, _ = socket.socket.accept(server)
        conn = wire.LightningConnection(WholeReads(sock), remote_pubkey=None, local_privkey=PrivateKey(SERVER_SECRET),
                                        is_initiator=False)
        try:
            conn.shake()
            if conn.read_message() == b"stream":
                for _ in range(messages):
                    conn.read_message()
                conn.send_message(DONE)
                sock.recv(1)
        except (ValueError, OSError):
            pass
        sock.close()


def pyln_connect(port: int):  # type: ignore[no-untyped-def]
    from pyln.proto import wire
    from pyln.proto.primitives import PrivateKey, PublicKey

    sock = socket.create_connection(("127.0.0.1", port))
    conn = wire.LightningConnection(WholeReads(sock), PublicKey(SERVER_ID), PrivateKey(CLIENT_SECRET),
                                    is_initiator=True)
    conn.shake()
    return conn, sock


def pyln_handshakes(port: int, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        conn, sock = pyln_connect(port)
        conn.send_message(b"hello")
        sock.close()
    return n / (time.perf_counter() - start)


def pyln_stream(port: int, n: int, size: int) -> float:
    conn, sock = pyln_connect(port)
    msg = os.urandom(size)
    conn.send_message(b"stream")
    start = time.perf_counter()
    for _ in range(n):
        conn.send_message(msg)
    assert conn.read_message() == DONE
    elapsed = time.perf_counter() - start
    sock.close()
    return n / elapsed


# --- driver ----------------------------------------------------------------------------------------

def with_server(target, messages: int, work) -> float:  # type: ignore[no-untyped-def]
    """Start a server process, run `work(port)` here, stop the server."""
    ctx = multiprocessing.get_context("fork")
    ports: "multiprocessing.Queue[int]" = ctx.Queue()
    proc = ctx.Process(target=target, args=(ports, messages), daemon=True)
    proc.start()
    try:
        return work(ports.get(timeout=10))
    finally:
        proc.terminate()
        proc.join(5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--handshakes", type=int, default=500)
    p.add_argument("--small", type=int, default=20000, help="100-byte messages to stream")
    p.add_argument("--large", type=int, default=2000, help="65,000-byte messages to stream")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the best of each side is shown "
                   "(this machine is shared and noisy)")
    args = p.parse_args()
    rows = [("handshakes/s", args.handshakes, None), ("100-byte messages/s", args.small, 100),
            ("65,000-byte messages/s", args.large, 65000)]
    print(f"{'workload':<26}{'lnp-host':>12}{'pyln-proto':>12}{'ratio':>8}")
    for name, n, size in rows:
        ours = theirs = 0.0
        for _ in range(args.repeat):  # interleaved, so both sides see the same machine
            if size is None:
                ours = max(ours, with_server(ours_server, 0, lambda port: asyncio.run(ours_handshakes(port, n))))
                theirs = max(theirs, with_server(pyln_server, 0, lambda port: pyln_handshakes(port, n)))
            else:
                ours = max(ours, with_server(ours_server, n, lambda port: asyncio.run(ours_stream(port, n, size))))
                theirs = max(theirs, with_server(pyln_server, n, lambda port: pyln_stream(port, n, size)))
        extra = f"   ({ours * size / 1e6:.0f} vs {theirs * size / 1e6:.0f} MB/s)" if size and size > 1000 else ""
        print(f"{name:<26}{ours:>12,.0f}{theirs:>12,.0f}{ours / theirs:>7.2f}x{extra}")


if __name__ == "__main__":
    main()
