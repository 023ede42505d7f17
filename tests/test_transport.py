"""The asyncio BOLT-8 transport: streams of mixed sizes across key rotations, slow and short reads."""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket

import pytest

from lnp_host.noise import Handshake
from lnp_host.transport import Connection, HandshakeError, connect, initiate, respond, serve
from peer_tools import TCP_CLOSE, Key, tcp_state


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
            try:
                stream = await respond(conn, server_key, 5)
                for _ in payloads:
                    msg = await stream.read_message()
                    received.append(hashlib.sha256(msg).digest())
                    stream.write_message(msg)  # echo
                done.set()
            finally:
                conn.close()

        server = await serve(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = await connect("127.0.0.1", port, 5)
        try:
            stream = await initiate(conn, client_key, server_key.node_id(), 5)
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
        finally:
            conn.close()
            server.close()

    run(main())


def test_a_frame_trickling_in_byte_by_byte() -> None:
    server_key, client_key = Key(), Key()
    got: asyncio.Queue = asyncio.Queue()

    async def main() -> None:
        async def handle(conn: Connection) -> None:
            try:
                stream = await respond(conn, server_key, 5)
                for _ in range(2):
                    await got.put(await stream.read_message())
            finally:
                conn.close()

        server = await serve(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def client() -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:  # closed: EOF comes after what was sent
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

        try:
            task = asyncio.get_running_loop().run_in_executor(None, client)
            assert await got.get() == b"\x00\x12" + bytes(5000)
            assert await got.get() == b"end"
            await task
        finally:
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
            finally:
                conn.close()

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


def test_act_one_has_its_own_deadline() -> None:
    server_key = Key()

    async def main() -> None:
        outcomes: asyncio.Queue = asyncio.Queue()

        async def handle(conn: Connection) -> None:
            started = asyncio.get_running_loop().time()
            try:
                await respond(conn, server_key, 5, act_one_timeout=0.3)
                await outcomes.put("done")
            except Exception as e:
                await outcomes.put((type(e).__name__, round(asyncio.get_running_loop().time() - started, 1),
                                    conn.received))
            finally:
                conn.close()

        server = await serve(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        silent, slow = await connect("127.0.0.1", port, 5), await connect("127.0.0.1", port, 5)
        try:
            slow.write(Handshake(Key(), server_key.node_id()).act_one())  # then never act three
            name, took, received = await outcomes.get()
            assert (name, received) == ("TimeoutError", 0) and took < 1  # the silent one, at 0.3 s
            assert outcomes.empty()
            await asyncio.sleep(0.5)
            assert outcomes.empty()  # the slow one is held to the whole handshake's 5 s only
        finally:
            silent.close()
            slow.close()
            server.close()

    run(main())


def test_close_gives_up_on_a_peer_that_does_not_read() -> None:
    """A graceful close waits for the peer to read what is buffered; within a grace period only, then
    the connection is reset (else a peer that never reads keeps the socket and its buffers for ever)."""

    async def main() -> None:
        async def handle(conn: Connection) -> None:
            for _ in range(128):
                conn.write(bytes(65536))  # 8 MB, far more than the socket buffers hold
            await asyncio.sleep(0.2)
            conn.close(grace=0.3)

        server = await serve(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.connect(("127.0.0.1", port))  # and never reads
            started = asyncio.get_running_loop().time()
            while tcp_state(reader) != TCP_CLOSE:
                assert asyncio.get_running_loop().time() - started < 3, "the connection was never reset"
                await asyncio.sleep(0.05)
        server.close()

    run(main())


class SlowCustody:
    """Custody reached asynchronously (as over the bus): `ecdh_async` waits for `gate`; `ecdh` must not be used."""

    def __init__(self, key: Key, fail: bool = False) -> None:
        self.key, self.fail = key, fail
        self.gate = asyncio.Event()
        self.asked = 0

    def node_id(self) -> bytes:
        return self.key.node_id()

    def ecdh(self, pubkey: bytes) -> bytes:
        raise AssertionError("the node key's ECDH was asked synchronously on the loop")

    async def ecdh_async(self, pubkey: bytes) -> bytes:
        self.asked += 1
        await self.gate.wait()
        if self.fail:
            from lnp_plugin_api import RpcError
            raise RpcError(RpcError.SERVICE_UNAVAILABLE, "service 'signd' did not answer")
        return self.key.ecdh(pubkey)


def test_the_node_keys_ecdh_is_awaited_on_both_sides() -> None:
    """Responder (act one) and initiator (act three) await custody's ECDH; the loop keeps running."""
    server, client = SlowCustody(Key()), SlowCustody(Key())

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        streams: asyncio.Queue = asyncio.Queue()

        async def handle(conn: Connection) -> None:
            try:
                await streams.put(await respond(conn, server, 10))
            except Exception as e:
                await streams.put(e)
                conn.close()

        srv = await serve(handle, "127.0.0.1", 0)
        conn = await connect("127.0.0.1", srv.sockets[0].getsockname()[1], 5)
        tick = asyncio.create_task(ticker())
        try:
            out = asyncio.create_task(initiate(conn, client, server.node_id(), 10))
            await asyncio.sleep(0.3)
            assert server.asked == 1 and client.asked == 0 and ticks > 10  # the responder waits, the loop runs
            server.gate.set()
            while client.asked == 0:
                await asyncio.sleep(0.01)
            before = ticks
            await asyncio.sleep(0.3)
            assert not out.done() and ticks > before + 10  # now the initiator waits for its act three
            client.gate.set()
            stream = await out
            theirs = await streams.get()
            assert stream.remote_id == server.node_id() and theirs.remote_id == client.node_id()
            stream.write_message(b"hello")
            assert await theirs.read_message() == b"hello"
            theirs.close()
        finally:
            tick.cancel()
            conn.close()
            srv.close()

    run(main())


def test_a_failing_custodian_fails_the_handshake_cleanly() -> None:
    server = SlowCustody(Key(), fail=True)
    server.gate.set()

    async def main() -> None:
        errors: asyncio.Queue = asyncio.Queue()

        async def handle(conn: Connection) -> None:
            try:
                await respond(conn, server, 5)
            except HandshakeError as e:
                await errors.put(e)
            finally:
                conn.close()

        srv = await serve(handle, "127.0.0.1", 0)
        conn = await connect("127.0.0.1", srv.sockets[0].getsockname()[1], 5)
        try:
            with pytest.raises(HandshakeError):
                await initiate(conn, Key(), server.node_id(), 5)
            e = await errors.get()
            assert e.code == "ACT1_ECDH_FAILED" and "did not answer" in str(e)
        finally:
            conn.close()
            srv.close()

    run(main())
