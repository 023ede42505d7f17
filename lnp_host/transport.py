"""BOLT-8 over asyncio streams: run the handshake on a connection, then read and write messages.

`noise.py` is the sans-I/O protocol; this module moves its bytes over an asyncio connection so
every plugin that talks to peers (peerd, tests, benchmarks) frames messages the same way.
"""
from __future__ import annotations

import asyncio
import socket

from plugin_api import KeyCustody

from .noise import (ACT_ONE_SIZE, ACT_THREE_SIZE, ACT_TWO_SIZE, LENGTH_HEADER_SIZE, MAC_SIZE, Handshake,
                    HandshakeError, Session, TransportError)

__all__ = ["HandshakeError", "NoiseStream", "TransportError", "initiate", "respond", "tune_socket"]


def tune_socket(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY: BOLT messages are small and often answered, so Nagle's delay only hurts."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoiseStream:
    """An established BOLT-8 connection: whole messages in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session) -> None:
        self.reader, self.writer, self.session = reader, writer, session
        self.remote_id: bytes = session.remote_id

    async def read_message(self) -> bytes:
        """The next message; raises TransportError on a bad MAC, IncompleteReadError on EOF."""
        header = await self.reader.readexactly(LENGTH_HEADER_SIZE)
        length = self.session.decrypt_length(header)
        body = await self.reader.readexactly(length + MAC_SIZE)
        return self.session.decrypt_body(body)

    def write_message(self, msg: bytes) -> int:
        """Encrypt and buffer one message; returns the bytes put on the wire. Call `drain` to wait."""
        frame = self.session.encrypt_message(msg)
        self.writer.write(frame)
        return len(frame)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        await self.writer.drain()

    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self.writer.transport.get_write_buffer_size()

    def close(self) -> None:
        """Close the connection without waiting."""
        self.writer.close()


async def initiate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, custody: KeyCustody,
                   remote_id: bytes, timeout: float) -> NoiseStream:
    """Run the initiator's side of the handshake with the node `remote_id`, within `timeout` seconds."""
    hs = Handshake(custody, remote_id)
    async with asyncio.timeout(timeout):
        writer.write(hs.act_one())
        act_two = await _read_act(reader, ACT_TWO_SIZE, "ACT2")
        writer.write(hs.read_act_two(act_two))
        await writer.drain()
    assert hs.session is not None
    return NoiseStream(reader, writer, hs.session)


async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, custody: KeyCustody,
                  timeout: float) -> NoiseStream:
    """Run the responder's side of the handshake, within `timeout` seconds."""
    hs = Handshake(custody)
    async with asyncio.timeout(timeout):
        act_one = await _read_act(reader, ACT_ONE_SIZE, "ACT1")
        writer.write(hs.read_act_one(act_one))
        hs.read_act_three(await _read_act(reader, ACT_THREE_SIZE, "ACT3"))
    assert hs.session is not None
    return NoiseStream(reader, writer, hs.session)


async def _read_act(reader: asyncio.StreamReader, size: int, name: str) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as e:
        raise HandshakeError(f"{name}_READ_FAILED", f"connection closed after {len(e.partial)} bytes") from None
