"""The asyncio BOLT-8 transport: streams of mixed sizes across key rotations, slow and short reads."""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket

import pytest

from lnp_host.noise import Handshake
from lnp_host.transport import Connection, connect, initiate, respond, serve
from peer_tools import Key


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_mixed_sizes_both_ways_across_rotations() -> None:
    server_key, client_key = Key(), Key()
    rng = random.Random(7)
    sizes = [rng.choice([0, 1, 100, 4095, 4097, 30000, 65535]) for _ in range(2500)]  # > 2 rotations
    payloads = [os.urandom(n) for n in sizes]

    async def main() -> None:
        received: list[bytes] = []
        done = asyncio.Event()

        async def handle(conn: Connection) -> None:
            stream = await respond(conn, server_key, 5)
            for _ in payloads:
                msg = await stream.read_message()
                received.append(hashlib.sha256(msg).digest())
                stream.write_message(msg)  # echo
            done.set()

        server = await serve(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stream = await initiate(await connect("127.0.0.1", port, 5), client_key, server_key.node_id(), 5)
        assert stream.remote_id == server_key.node_id()

        async def send() -> None:
            for p in payloads:
                stream.write_message(p)
                await stream.drain()

        sender = asyncio.create_task(send())
        for p in payloads:
            assert await stream.read_message() == p
        await sender
        await done.wait()
        assert received == [hashlib.sha256(p).digest() for p in payloads]
        server.close()

    run(main())


def test_a_frame_trickling_in_byte_by_byte() -> None:
    server_key, client_key = Key(), Key()
    got: asyncio.Queue = asyncio.Queue()

    async def main() -> None:
        async def handle(conn: Connection) -> None:
            stream = await respond(conn, server_key, 5)
            for _ in range(2):
                await got.put(await stream.read_message())

        server = await serve(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def client() -> None:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hs = Handshake(client_key, server_key.node_id())
            sock.sendall(hs.act_one())
            act_two = b""
            while len(act_two) < 50:
                act_two += sock.recv(50 - len(act_two))
            sock.sendall(hs.read_act_two(act_two))
            assert hs.session is not None
            frames = hs.session.encrypt_message(b"\x00\x12" + bytes(5000)) + hs.session.encrypt_message(b"end")
            for i in range(0, len(frames), 7):
                sock.sendall(frames[i:i + 7])
            sock.close()  # what was sent is still read: EOF comes after it

        task = asyncio.get_running_loop().run_in_executor(None, client)
        assert await got.get() == b"\x00\x12" + bytes(5000)
        assert await got.get() == b"end"
        await task
        server.close()

    run(main())


def test_silence_and_truncation() -> None:
    server_key = Key()

    async def main() -> None:
        outcomes: asyncio.Queue = asyncio.Queue()

        async def handle(conn: Connection) -> None:
            try:
                await respond(conn, server_key, 0.3)
            except Exception as e:
                await outcomes.put(type(e).__name__ + ":" + str(e))

        server = await serve(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        silent = await connect("127.0.0.1", port, 5)
        assert (await outcomes.get()) == "TimeoutError:"
        short = await connect("127.0.0.1", port, 5)
        short.write(b"\x00" * 20)
        short.close()
        assert (await outcomes.get()).startswith("HandshakeError:ACT1_READ_FAILED")
        silent.close()
        server.close()

    run(main())


def test_connect_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        run(connect("127.0.0.1", port, 5))
