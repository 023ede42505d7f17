"""One peer connection after the BOLT-8 handshake: the init exchange, then reading and writing.

States: `init` (our init sent, waiting for theirs) -> `active` -> `closed`. Nothing but `init`
is sent or accepted before the peer's `init` arrives (BOLT-1). Outgoing messages wait in a queue
bounded in bytes: a peer that does not read fills only its own queue and is then disconnected.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from lnp_host.noise import MAX_MESSAGE_SIZE
from lnp_host.transport import NoiseStream, TransportError
from lnp_plugin_api import features
from lnp_plugin_api.addresses import Address, decode_descriptor
from lnp_plugin_api.messages import ERROR, INIT, PING, PONG, WARNING
from lnp_plugin_api.wire import WireError, split_message

from .errors import PeerError

if TYPE_CHECKING:
    from .manager import PeerManager

log = logging.getLogger("lnp.peerd.peer")
DEBUG = logging.DEBUG
INIT_TYPE, ERROR_TYPE, WARNING_TYPE, PING_TYPE, PONG_TYPE = 16, 17, 1, 18, 19
NAMES = {spec.type: spec.name for spec in (INIT, ERROR, WARNING, PING, PONG)}  # for debug logs
NO_PONG_FROM = 65532            # BOLT-1: a ping asking for this many bytes or more gets no pong
YIELD_EVERY = 32                # messages read in a row before letting other peers run
ZERO_CHANNEL = bytes(32)


def _describe(e: BaseException | None) -> str:
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__) if e is not None else "?"


def _show(msg_type: int) -> str:
    name = NAMES.get(msg_type)
    return f"{name} ({msg_type})" if name else f"type {msg_type}"


def printable(data: bytes, limit: int = 200) -> str:
    """A peer-supplied text made safe to log (BOLT-1: do not print `data` verbatim)."""
    text = data[:limit].decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in text)


class Peer:
    """A connected peer: its identity, what it told us in `init`, traffic counters, and the I/O loops."""

    def __init__(self, manager: "PeerManager", stream: NoiseStream, address: str, direction: str) -> None:
        self.manager = manager
        self.stream = stream
        self.node_id: bytes = stream.remote_id
        self.address = address
        self.direction = direction
        self.state = "init"
        self.since = time.time()
        self.features: set[int] = set()
        self.routed: set[int] = set()  # wire types handed to plugins during this connection
        self.networks: list[bytes] | None = None
        self.remote_addr: Address | None = None
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.close_reason = ""
        self.closed = asyncio.Event()
        self.last_received = time.monotonic()
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._pings: deque[tuple[int, float, asyncio.Future[float]]] = deque()
        self._task: asyncio.Task[Any] | None = None
        self._abort = False  # close without flushing what is buffered

    # --- sending -------------------------------------------------------------------------------

    def send(self, msg: bytes) -> bool:
        """Queue a whole message (type included). False, and the peer is closed, if its queue is full."""
        if len(msg) > MAX_MESSAGE_SIZE:
            raise ValueError(f"a message holds at most {MAX_MESSAGE_SIZE} bytes, not {len(msg)}")
        if self.state == "closed":
            return False
        if self._queued_bytes + len(msg) > self.manager.options.max_queue_bytes:
            self._abort = True  # what is queued in the kernel would never be read either
            self.close(f"send queue over {self.manager.options.max_queue_bytes} bytes: peer is not reading")
            return False
        self._queue.append(msg)
        self._queued_bytes += len(msg)
        self._wakeup.set()
        return True

    def _write_now(self, msg: bytes) -> None:
        self.bytes_out += self.stream.write_message(msg)
        self.msgs_out += 1
        if log.isEnabledFor(DEBUG):
            log.debug("%s out: %s, %d bytes", self.node_id.hex(), _show(int.from_bytes(msg[:2], "big")), len(msg))

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                msg = self._queue.popleft()
                self._queued_bytes -= len(msg)
                self._write_now(msg)
                # wait for the kernel only when the transport's own buffer is full
                if self.stream.buffered() > 256 * 1024:
                    await self.stream.drain()
            await self.stream.drain()

    # --- pings ---------------------------------------------------------------------------------

    def ping(self, num_pong_bytes: int, ignored: int = 0) -> asyncio.Future[float]:
        """Send a ping; the future gets the round-trip time in seconds when its pong arrives."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if num_pong_bytes >= NO_PONG_FROM:
            raise ValueError(f"a ping asking for {num_pong_bytes} bytes gets no pong (limit {NO_PONG_FROM - 1})")
        if self.send(PING.encode({"num_pong_bytes": num_pong_bytes, "ignored": bytes(ignored)})):
            self._pings.append((num_pong_bytes, time.monotonic(), fut))
        else:
            fut.set_exception(PeerError(self.close_reason or "peer is closed"))
        return fut

    def _on_ping(self, payload: bytes) -> None:
        ping = PING.decode(payload)
        if ping["num_pong_bytes"] < NO_PONG_FROM:
            self.send(PONG.encode({"ignored": bytes(ping["num_pong_bytes"])}))

    def _on_pong(self, payload: bytes) -> None:
        length = len(PONG.decode(payload)["ignored"])
        for i, (expected, sent, fut) in enumerate(self._pings):
            if expected == length:
                del self._pings[i]
                if not fut.done():
                    fut.set_result(time.monotonic() - sent)
                return
        log.debug("unsolicited pong of %d bytes from %s ignored", length, self.node_id.hex())

    async def _keepalive(self) -> None:
        opts = self.manager.options
        while True:
            await asyncio.sleep(opts.ping_interval / 4)
            if time.monotonic() - self.last_received < opts.ping_interval:
                continue
            try:
                await asyncio.wait_for(self.ping(0), opts.ping_timeout)
            except (asyncio.TimeoutError, PeerError):
                self.close(f"no pong within {opts.ping_timeout:g}s")
                return

    # --- the connection's life -----------------------------------------------------------------

    async def exchange_init(self, our_init: bytes, timeout: float) -> None:
        """Send our `init`, read and check theirs. Raises PeerError when the peer is unacceptable."""
        self._write_now(our_init)
        try:
            first = await asyncio.wait_for(self.stream.read_message(), timeout)
        except asyncio.TimeoutError:
            raise PeerError(f"no init within {timeout:g}s") from None
        self._count_in(first)
        msg_type, payload = split_message(first)
        if msg_type != INIT_TYPE:
            raise PeerError(f"first message was of type {msg_type}, not init", warn=True)
        try:
            init = INIT.decode(payload)
        except WireError as e:
            raise PeerError(f"malformed init: {e}", warn=True) from None
        self.features = features.decode(init["globalfeatures"]) | features.decode(init["features"])
        problem = features.check_peer(self.features, list(self.manager.node_features))
        if problem:
            raise PeerError(problem, warn=True)
        tlvs = init["tlvs"]
        if "networks" in tlvs:
            self.networks = tlvs["networks"]["chains"]
            if self.manager.chain_hash not in self.networks:
                raise PeerError("no common network: the peer does not serve "
                                f"{self.manager.network}", warn=True)
        if "remote_addr" in tlvs:
            try:
                self.remote_addr = decode_descriptor(tlvs["remote_addr"]["data"])
            except (WireError, ValueError) as e:
                raise PeerError(f"invalid remote_addr in init: {e}", warn=True) from None
        self.state = "active"

    async def serve(self, on_message: Callable[["Peer", int, bytes], None]) -> None:
        """Read and dispatch until the connection ends; `close_reason` then says why."""
        self._task = asyncio.current_task()
        writer = asyncio.create_task(self._write_loop())
        keepalive = asyncio.create_task(self._keepalive())
        for task in (writer, keepalive):
            task.add_done_callback(self._helper_done)
        try:
            await self._read_loop(on_message)
        except asyncio.CancelledError:
            pass  # close() was called: its reason stands
        except PeerError as e:
            self._fail(e)
        except TransportError as e:
            self.close_reason = self.close_reason or f"transport: {e}"
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.close_reason = self.close_reason or "connection closed by peer"
        finally:
            writer.cancel()
            keepalive.cancel()
            self._finish()

    async def _read_loop(self, on_message: Callable[["Peer", int, bytes], None]) -> None:
        count = 0
        while self.state != "closed":
            msg = await self.stream.read_message()
            self._count_in(msg)
            self.last_received = time.monotonic()
            try:
                msg_type, payload = split_message(msg)
                self._dispatch(msg_type, payload, on_message)
            except WireError as e:
                raise PeerError(f"malformed message: {e}", warn=True) from None
            count += 1
            if count % YIELD_EVERY == 0:
                # readexactly does not yield while data is buffered: let other peers run
                await asyncio.sleep(0)

    def _dispatch(self, msg_type: int, payload: bytes, on_message: Callable[["Peer", int, bytes], None]) -> None:
        if msg_type == PING_TYPE:
            self._on_ping(payload)
        elif msg_type == PONG_TYPE:
            self._on_pong(payload)
        elif msg_type == INIT_TYPE:
            log.debug("second init from %s ignored", self.node_id.hex())
        else:
            if msg_type in (ERROR_TYPE, WARNING_TYPE):
                spec = ERROR if msg_type == ERROR_TYPE else WARNING
                body = spec.decode(payload)
                log.warning("%s from peer %s (channel %s): %s", spec.name, self.node_id.hex(),
                            "all" if body["channel_id"] == ZERO_CHANNEL else body["channel_id"].hex(),
                            printable(body["data"]))
            on_message(self, msg_type, payload)

    def _helper_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.close(f"{task.get_coro().__name__} failed: {_describe(task.exception())}")

    def _count_in(self, msg: bytes) -> None:
        self.msgs_in += 1
        self.bytes_in += len(msg) + 34  # as framed on the wire: length header, body MAC
        if log.isEnabledFor(DEBUG):  # checked first: formatting would cost more than the message
            log.debug("%s in: %s, %d bytes", self.node_id.hex(), _show(int.from_bytes(msg[:2], "big")), len(msg))

    def _fail(self, e: PeerError) -> None:
        self.close_reason = self.close_reason or e.reason
        if e.warn and self.state != "closed":
            try:
                self._write_now(WARNING.encode({"channel_id": ZERO_CHANNEL, "data": e.reason.encode()[:500]}))
            except Exception:
                pass  # the connection may already be gone; closing is what matters

    def close(self, reason: str, warn: bool = False) -> None:
        """Close the connection (from the event loop); with `warn`, tell the peer why first."""
        if self.state == "closed":
            return
        if warn:
            self._fail(PeerError(reason, warn=True))
        self.close_reason = self.close_reason or reason
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        else:
            self._finish()

    def _finish(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        for _, _, fut in self._pings:
            if not fut.done():
                fut.set_exception(PeerError(self.close_reason or "disconnected"))
        self._pings.clear()
        self._queue.clear()
        self._queued_bytes = 0
        if self._abort:
            self.stream.abort()
        else:
            self.stream.close()  # buffered data (such as a last warning) is still flushed, within a grace period
        self.closed.set()

    def describe(self) -> dict[str, Any]:
        """The JSON form `peers` shows."""
        return {"id": self.node_id.hex(), "address": self.address, "direction": self.direction,
                "connected_since": round(self.since, 3), "state": self.state,
                "features": features.encode(self.features).hex(), "feature_names": features.names(self.features),
                "remote_addr": str(self.remote_addr) if self.remote_addr else None,
                "msgs_in": self.msgs_in, "msgs_out": self.msgs_out,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "queued_bytes": self._queued_bytes}
