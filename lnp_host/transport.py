"""BOLT-8 over asyncio: connections, the handshake on them, then whole messages in and out.

`noise.py` is the sans-I/O protocol; this module moves its bytes, so every plugin that talks to
peers (peerd, tests, benchmarks) frames messages the same way. `Connection` is an asyncio
buffered protocol: the kernel writes straight into its receive buffer and frames are decrypted
from there, which matters for 65 KB messages; reading pauses when a peer sends faster than it is
read, so a flooding peer cannot grow the buffer.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Awaitable, Callable

from lnp_plugin_api import KeyCustody, RpcError

from .noise import (ACT_ONE_SIZE, ACT_THREE_SIZE, ACT_TWO_SIZE, LENGTH_HEADER_SIZE, MAC_SIZE, Handshake,
                    HandshakeError, Session, TransportError)

__all__ = ["Connection", "HandshakeError", "NoiseStream", "TransportError", "connect", "initiate",
           "respond", "serve"]

READ_HIGH_WATER = 256 * 1024   # unread bytes at which we stop reading from the socket
CHUNK = 64 * 1024              # room offered to each receive, once messages are that large
CAPACITY = READ_HIGH_WATER + 2 * CHUNK
FIRST_CAPACITY = 4096          # most connections only ever see small messages
JOIN_BELOW = 4096              # messages smaller than this are sent as one joined frame
CLOSE_GRACE = 5.0              # seconds a closing connection may take to flush before it is aborted


class Connection(asyncio.BufferedProtocol):
    """One TCP connection: `readexactly`/`read_view` to read, `write`/`drain` to write."""

    def __init__(self, on_connected: Callable[["Connection"], Awaitable[None]] | None = None) -> None:
        self._view = memoryview(bytearray(FIRST_CAPACITY))
        self._start = self._end = 0
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._on_connected = on_connected
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None  # serves an accepted connection
        self.received = 0  # bytes received so far (a handshake that has not sent act one is idle)

    # --- protocol callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # BOLT messages are small and often answered: Nagle's delay only hurts
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._on_connected is not None:
            self.task = asyncio.get_running_loop().create_task(self._on_connected(self))

    def get_buffer(self, sizehint: int) -> memoryview:
        capacity = len(self._view)
        if capacity - self._end < min(CHUNK, capacity // 2):
            unread = self._end - self._start
            if unread > capacity // 4 and capacity < CAPACITY:  # busy: grow (a new buffer, views may be out)
                bigger = memoryview(bytearray(min(capacity * 4, CAPACITY)))
                bigger[:unread] = self._view[self._start:self._end]
                self._view = bigger
            else:  # move the unread bytes to the front
                self._view[:unread] = self._view[self._start:self._end]
            self._start, self._end = 0, unread
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        self.received += nbytes
        if self._end - self._start >= READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake_reader()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    def _wake_reader(self) -> None:
        if self._read_waiter is not None and not self._read_waiter.done():
            self._read_waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # --- reading -------------------------------------------------------------------------------

    async def read_view(self, n: int) -> memoryview:
        """The next `n` bytes as a view that is valid only until the next read."""
        while self._end - self._start < n:
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(self._view[self._start:self._end]), n)
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        view = self._view[self._start:self._start + n]
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        if self._reading_paused and self._end - self._start < READ_HIGH_WATER // 2 and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return view

    async def readexactly(self, n: int) -> bytes:
        """The next `n` bytes; IncompleteReadError if the connection ends first."""
        return bytes(await self.read_view(n))

    # --- writing -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes for sending."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        while self._writing_paused and not self._eof:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._eof and self.transport is not None and self.transport.is_closing():
            raise ConnectionResetError("connection lost")

    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self.transport.get_write_buffer_size() if self.transport else 0

    def close(self, grace: float = CLOSE_GRACE) -> None:
        """Close after sending what is buffered, or abort once `grace` seconds have not sufficed
        (a peer that stops reading would otherwise keep the socket open for ever)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(grace, self.abort)

    def abort(self) -> None:
        """Reset the connection at once, dropping what is buffered here and in the kernel."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= 0:
            try:  # linger 0: the kernel resets instead of keeping an orphan socket with its send buffer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.transport.abort()

    def peername(self) -> tuple[str, int] | None:
        """The remote IP address and port."""
        info = self.transport.get_extra_info("peername") if self.transport else None
        return (str(info[0]), int(info[1])) if info else None


async def connect(host: str, port: int, timeout: float) -> Connection:
    """A TCP connection to HOST:PORT within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, conn = await loop.create_connection(Connection, host, port)
    return conn


async def serve(handler: Callable[[Connection], Awaitable[None]], host: str, port: int) -> asyncio.Server:
    """Accept connections on HOST:PORT; `handler(conn)` runs as a task for each one."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Connection(handler), host, port, reuse_address=True)


class NoiseStream:
    """An established BOLT-8 connection: whole messages in and out."""

    def __init__(self, conn: Connection, session: Session) -> None:
        self.conn, self.session = conn, session
        self.remote_id: bytes = session.remote_id

    async def read_message(self) -> bytes:
        """The next message; TransportError on a bad MAC, IncompleteReadError on EOF."""
        length = self.session.decrypt_length(await self.conn.read_view(LENGTH_HEADER_SIZE))
        return self.session.decrypt_body(await self.conn.read_view(length + MAC_SIZE))

    def write_message(self, msg: bytes) -> int:
        """Encrypt and queue one message; returns the bytes put on the wire. `drain` waits."""
        header, body = self.session.encrypt_parts(msg)
        if len(body) > JOIN_BELOW:
            self.conn.write(header)
            self.conn.write(body)
        else:  # one write, one system call
            self.conn.write(header + body)
        return len(header) + len(body)

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark."""
        await self.conn.drain()

    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self.conn.buffered()

    def close(self) -> None:
        """Close the connection (what is buffered is still sent, within a grace period)."""
        self.conn.close()

    def abort(self) -> None:
        """Close the connection at once, dropping what is buffered."""
        self.conn.abort()


async def initiate(conn: Connection, custody: KeyCustody, remote_id: bytes, timeout: float) -> NoiseStream:
    """Run the initiator's side of the handshake with the node `remote_id`, within `timeout` seconds."""
    hs = Handshake(custody, remote_id)
    async with asyncio.timeout(timeout):
        conn.write(hs.act_one())
        act_two = await _read_act(conn, ACT_TWO_SIZE, "ACT2")
        await _static_ecdh(hs, custody, act_two, "ACT2")
        conn.write(hs.read_act_two(act_two))
    assert hs.session is not None
    return NoiseStream(conn, hs.session)


async def respond(conn: Connection, custody: KeyCustody, timeout: float,
                  act_one_timeout: float | None = None) -> NoiseStream:
    """Run the responder's side of the handshake, within `timeout` seconds; act one must also come
    within `act_one_timeout` (a silent connection is dropped long before a slow handshake)."""
    hs = Handshake(custody)
    async with asyncio.timeout(timeout):
        async with asyncio.timeout(act_one_timeout):
            act_one = await _read_act(conn, ACT_ONE_SIZE, "ACT1")
        await _static_ecdh(hs, custody, act_one, "ACT1")
        conn.write(hs.read_act_one(act_one))
        hs.read_act_three(await _read_act(conn, ACT_THREE_SIZE, "ACT3"))
    assert hs.session is not None
    return NoiseStream(conn, hs.session)


async def _static_ecdh(hs: Handshake, custody: KeyCustody, act: bytes, name: str) -> None:
    """Compute the node key's ECDH for `act` before the handshake reads it, awaiting custody that has
    `ecdh_async` (a custodian over the bus), so the loop serves other connections meanwhile. Custody
    without it holds the key in this process and answers at once."""
    pubkey = hs.static_ecdh_key(act)
    if pubkey is None:
        return  # a malformed act: the handshake refuses it without an ECDH
    ecdh_async = getattr(custody, "ecdh_async", None)
    try:
        secret = await ecdh_async(pubkey) if ecdh_async is not None else custody.ecdh(pubkey)
    except RpcError as e:
        raise HandshakeError(f"{name}_ECDH_FAILED", f"the node key's ECDH failed: {e.message}") from None
    hs.give_ecdh(pubkey, secret)


async def _read_act(conn: Connection, size: int, name: str) -> bytes:
    try:
        return await conn.readexactly(size)
    except asyncio.IncompleteReadError as e:
        raise HandshakeError(f"{name}_READ_FAILED", f"connection closed after {len(e.partial)} bytes") from None

