"""peerd's runtime: an asyncio loop in its own thread that owns every peer connection.

Other threads (RPC handlers, the service's bus loop) reach it only through `run()` and
`send_wire()`, so all connection state is touched by the loop's thread alone. The loop never
waits on anything but its sockets: the node key's ECDH is awaited (transport), inbound messages
are handed to their services without waiting (`_hand_over`), and the peer table's reads and
writes, and events (sent over the bus), go to one worker thread (`stored`, `_emit`), in order.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import threading
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from typing import Any, Callable, Coroutine, TypeVar

from lnp_host.noise import ACT_ONE_SIZE
from lnp_host.transport import Connection, HandshakeError, NoiseStream, connect, initiate, respond, serve
from lnp_plugin_api import RpcError, ServiceContext, SettingError, WireMessage, features
from lnp_plugin_api.addresses import IPV4, IPV6, TORV3, Address, encode_descriptor, parse_address
from lnp_plugin_api.chains import chain_hash
from lnp_plugin_api.messages import INIT

from . import socks5, storage
from .errors import CONNECT_FAILED, NOT_CONNECTED, PING_FAILED, PeerError
from .options import Options
from .peer import Peer
from .slots import Slots, source_of

log = logging.getLogger("lnp.peerd")
T = TypeVar("T")
CUSTOM_FROM = 32768
CUSTOM_KEPT = 1000  # received custom messages kept for `listcustommsgs`
SHED_LOG_EVERY = 10.0  # seconds between summaries of inbound connections refused or closed to make room


HAND_OVER_TIMEOUT = 2.0  # seconds a service has to take a peer's message before the peer is disconnected


class PeerManager:
    """Listeners, connections, reconnection and limits for one node."""

    def __init__(self, ctx: ServiceContext, options: Options) -> None:
        self.ctx = ctx
        self.options = options
        self.network = ctx.node.network
        self.chain_hash = chain_hash(self.network)
        self.node_features = tuple(ctx.node.features)
        self.peers: dict[bytes, Peer] = {}
        self.slots = Slots(options.max_handshakes, options.reserved_handshakes, options.handshakes_per_address)
        self._conns: weakref.WeakSet[Connection] = weakref.WeakSet()  # aborted at shutdown if still open
        self._shed = 0  # inbound connections refused (or closed to make room) since the last log line
        self._shed_last = ""
        self._shed_timer: asyncio.TimerHandle | None = None
        self.listening: list[str] = []
        self.custom: deque[dict[str, Any]] = deque(maxlen=CUSTOM_KEPT)
        self._custom_seq = 0
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving: dict[bytes, asyncio.Task[None]] = {}  # node id -> the task serving its connection
        self._reconnects: dict[bytes, asyncio.Task[None]] = {}
        self._dialing: dict[bytes, asyncio.Future[Peer]] = {}
        self._suppressed: set[bytes] = set()  # disconnected on purpose: no automatic reconnection
        self._stopping = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="peerd-io", daemon=True)
        # one thread: the peer table's reads and writes, and events, stay in the order they were asked
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peerd-worker")

    # --- lifecycle, called from the service thread --------------------------------------------

    def start(self) -> None:
        """Start the loop, listen on the configured addresses, and reconnect persistent peers."""
        self._thread.start()
        self.run(self._connect_handlers())
        for address in self.options.listen:
            try:
                self.run(self.listen(address))
            except RpcError as e:  # a port taken, an address not ours: the setting, not peerd, is at fault
                raise SettingError("plugins.peerd.listen", e.message) from None
        self.run(self._resume_persistent())

    def stop(self) -> None:
        """Close every connection and listener, then end the loop's thread."""
        if self._thread.is_alive():
            try:
                self.run(self._shutdown(), timeout=10)
            except RpcError:
                log.warning("peer connections did not close in time")
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self._worker.shutdown(wait=True)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        except Exception as e:  # the loop itself died: the service cannot serve peers any more
            log.exception("peer I/O loop failed")
            self.ctx.fail(f"peer I/O loop failed: {type(e).__name__}")
        finally:
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `coro` on the loop from another thread and wait for its result."""
        future = self.submit(coro, timeout)
        try:
            return future.result(timeout + 1)
        except FutureTimeout:
            future.cancel()
            raise RpcError(RpcError.TIMEOUT, f"peerd did not finish within {timeout:g}s") from None

    def submit(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> "Future[T]":
        """Start `coro` on the loop; the Future lets an RPC handler answer when it is done, so a slow
        connect does not hold up the service (the runtime replies when the Future completes)."""
        async def bounded() -> T:
            try:
                return await asyncio.wait_for(coro, timeout)
            except asyncio.TimeoutError:
                raise RpcError(RpcError.TIMEOUT, f"peerd did not finish within {timeout:g}s") from None
        return asyncio.run_coroutine_threadsafe(bounded(), self.loop)

    def send_wire(self, msg: WireMessage) -> None:
        """Queue `msg` for its peer (thread-safe); dropped with a warning if the peer is not connected."""
        self.loop.call_soon_threadsafe(self._send_wire, msg)

    # --- on the loop ---------------------------------------------------------------------------

    async def stored(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(storage, *args)` (a function of peerd's storage module) on the storage thread."""
        return await self.loop.run_in_executor(self._worker, fn, self.ctx.storage, *args)

    def _store_later(self, fn: Callable[..., Any], *args: Any) -> None:
        """`fn(storage, *args)` on the storage thread, without waiting for it (a failure is logged)."""
        def run() -> None:
            try:
                fn(self.ctx.storage, *args)
            except Exception:
                log.exception("could not store %s", fn.__name__)
        self._worker.submit(run)

    async def _connect_handlers(self) -> None:
        self.ctx.connect_wire_handlers()  # on this thread: the loop's own connections to the bus

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._track(task)
        return task

    def _send_wire(self, msg: WireMessage) -> None:
        peer = self.peers.get(msg.peer_id)
        if peer is None or peer.state != "active":
            log.warning("message of type %d to %s dropped: peer not connected", msg.type, msg.peer_id.hex())
            return
        if msg.committed_at and msg.committed_at < peer.since:
            # committed for an earlier connection (replayed after a restart): never on this one
            log.info("message of type %d to %s dropped: meant for an earlier connection", msg.type, msg.peer_id.hex())
            return
        try:
            peer.send(msg.type.to_bytes(2, "big") + msg.payload)
        except ValueError as e:
            log.warning("message of type %d to %s dropped: %s", msg.type, msg.peer_id.hex(), e)

    async def listen(self, address: Address) -> list[str]:
        """Accept peers on `address` too; returns every address listened on."""
        try:
            server = await serve(self._accept, address.host, address.port)
        except OSError as e:
            raise RpcError(RpcError.INVALID_PARAMS, f"cannot listen on {address}: {_why(e)}") from None
        self._servers.append(server)
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            bound = str(Address(IPV6 if ":" in host else IPV4, host, port))
            self.listening.append(bound)
            log.info("listening for peers on %s", bound)
        return list(self.listening)

    async def _shutdown(self) -> None:
        self._stopping = True
        for server in self._servers:
            server.close()
        if self._shed_timer is not None:
            self._shed_timer.cancel()
        for task in list(self._reconnects.values()):
            task.cancel()
        for peer in list(self.peers.values()):
            peer.close("node shutting down")
        for slot in self.slots.strangers():
            if slot.conn is not None:
                slot.conn.close()
        pending = [t for t in self._tasks if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=5)
        for conn in list(self._conns):  # still flushing to a peer that does not read: the loop ends now
            conn.abort()
        await asyncio.sleep(0)  # let the transports release their sockets

    def _our_init(self, direction: str, peer_host: str | None, peer_port: int | None) -> bytes:
        tlvs: dict[str, Any] = {"networks": {"chains": [self.chain_hash]}}
        if direction == "in" and peer_host is not None:
            try:
                ip = ipaddress.ip_address(peer_host)
            except ValueError:
                ip = None
            if ip is not None and ip.is_global:  # BOLT-1: no private addresses in remote_addr
                addr = Address(IPV4 if ip.version == 4 else IPV6, str(ip), peer_port or 0)
                tlvs["remote_addr"] = {"data": encode_descriptor(addr)}
        ours = features.encode(features.for_context(list(self.node_features), "I"))
        return INIT.encode({"globalfeatures": b"", "features": ours, "tlvs": tlvs})

    async def _accept(self, conn: Connection) -> None:
        host, port = conn.peername() or ("?", 0)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._conns.add(conn)
        if self._stopping:
            conn.close()
            return
        if len(self.peers) + len(self.slots) >= self.options.max_peers:
            self._refused(shown, f"at max_peers = {self.options.max_peers}")
            conn.close()
            return
        slot, why = self.slots.inbound(source_of(host), conn)
        if slot is None:
            self._refused(shown, why)
            conn.close()
            return
        self._track(asyncio.current_task())
        log.debug("accepted connection from %s", shown)
        try:
            try:
                stream = await respond(conn, self.ctx.keys, self.options.handshake_timeout,
                                       self.options.act_one_timeout)
            except (HandshakeError, TimeoutError, EOFError, OSError) as e:
                if slot.evicted:
                    self._refused(shown, f"closed in the handshake: {slot.evicted}")
                else:
                    log.debug("handshake from %s failed: %s", shown, self._handshake_failure(e, conn))
                conn.close()
                return
            except BaseException:  # cancelled: the node is stopping
                conn.close()
                raise
            log.debug("handshake from %s done: node %s", shown, stream.remote_id.hex())
            if await self.stored(storage.get, stream.remote_id.hex()) is not None:
                self.slots.trust(slot)  # a known peer: its init goes on in a reserved slot
            peer = Peer(self, stream, shown, "in")
            if not await self._init(peer, self._our_init("in", host, port)):
                return
        finally:
            self.slots.release(slot)
        await self._register(peer, None)

    def _handshake_failure(self, e: BaseException, conn: Connection) -> str:
        if isinstance(e, TimeoutError) and conn.received < ACT_ONE_SIZE:
            return f"no act one within {self.options.act_one_timeout:g}s (act_one_timeout)"
        if isinstance(e, TimeoutError):
            return f"not done within {self.options.handshake_timeout:g}s (handshake_timeout)"
        return _why(e)

    def _refused(self, shown: str, why: str) -> None:
        """Log an inbound connection refused (or closed to make room). The first after a quiet spell is
        logged at once; those that follow are counted and summed up every SHED_LOG_EVERY seconds (each
        at debug level), so a flood of connections is not a flood of log lines."""
        if self._shed_timer is None:
            log.info("refused connection from %s: %s", shown, why)
            self._shed_timer = self.loop.call_later(SHED_LOG_EVERY, self._shed_summary)
            return
        log.debug("refused connection from %s: %s", shown, why)
        self._shed += 1
        self._shed_last = f"the last from {shown}: {why}"

    def _shed_summary(self) -> None:
        self._shed_timer = None
        if self._shed:
            log.info("refused %d more inbound connection%s in %gs (%s)", self._shed, "" if self._shed == 1 else "s",
                     SHED_LOG_EVERY, self._shed_last)
            self._shed = 0
            self._shed_timer = self.loop.call_later(SHED_LOG_EVERY, self._shed_summary)

    def _track(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _init(self, peer: Peer, our_init: bytes) -> bool:
        """Exchange `init`; on failure close the connection (warning the peer) and return False."""
        try:
            if peer.node_id == self.ctx.node.node_id:
                raise PeerError("a connection from our own node id", warn=False)
            await peer.exchange_init(our_init, self.options.handshake_timeout)
            return True
        except PeerError as e:
            peer._fail(e)
        except asyncio.CancelledError:
            peer.close("cancelled")
            raise
        except Exception as e:  # a transport failure during init
            peer.close_reason = _why(e)
        log.info("peer %s (%s) refused: %s", peer.node_id.hex(), peer.address, peer.close_reason)
        peer.close(peer.close_reason)
        return False

    async def _register(self, peer: Peer, dial_address: str | None) -> None:
        """Make an active peer the one connection to its node and start serving it."""
        old = self.peers.get(peer.node_id)
        old_task = self._serving.get(peer.node_id)
        if old is not None:
            old.close("replaced by a new connection from the same node")
            if old_task is not None:  # its peer_disconnected goes out before this one's peer_connected
                await asyncio.wait([old_task], timeout=5)
        self.peers[peer.node_id] = peer
        node = peer.node_id.hex()
        self._store_later(storage.record_connection, node, dial_address, peer.direction,
                          features.encode(peer.features).hex())
        log.info("peer %s connected (%s, %s)", node, peer.direction, peer.address)
        self._emit("peer_connected", {"id": node, "address": peer.address, "direction": peer.direction,
                                      "features": features.encode(peer.features).hex(),
                                      "feature_names": features.names(peer.features)})
        self._serving[peer.node_id] = self._spawn(self._serve(peer))

    async def _serve(self, peer: Peer) -> None:
        try:
            await peer.serve(self._on_message)
        finally:
            if self.peers.get(peer.node_id) is peer:
                del self.peers[peer.node_id]
                self._serving.pop(peer.node_id, None)
            node = peer.node_id.hex()
            log.info("peer %s disconnected: %s", node, peer.close_reason or "closed")
            self._emit("peer_disconnected", {"id": node, "address": peer.address, "direction": peer.direction,
                                             "reason": peer.close_reason})
            self._maybe_reconnect(peer.node_id)

    def _hand_over(self, peer: Peer, msg_type: int, payload: bytes) -> bool:
        """Give a message from `peer` to the plugin that handles its type, without waiting; False
        if no plugin does. The bus's I/O thread sends it, in order; one its service does not take in
        time (not connected, or its inbox full) closes the peer's connection: dropping it would leave
        the peer and the plugin out of step, and waiting here would stall every other peer."""
        handed = self.ctx.deliver_wire_soon(WireMessage(peer.node_id, msg_type, payload), timeout=HAND_OVER_TIMEOUT)
        if handed is None:
            return False
        peer.routed.add(msg_type)  # its service going down later disconnects this peer (_service_down)
        if not handed.done() or handed.exception() is not None:
            handed.add_done_callback(lambda f: f.exception() is not None and self.loop.call_soon_threadsafe(
                self._not_handed_over, peer, msg_type, f.exception()))
        return True

    def _not_handed_over(self, peer: Peer, msg_type: int, error: BaseException) -> None:
        why = f"message of type {msg_type} could not be handed to its handler: " \
              f"{error.message if isinstance(error, RpcError) else type(error).__name__}"
        log.warning("closing the connection to %s: %s", peer.node_id.hex(), why)
        peer.close(why)

    def _on_message(self, peer: Peer, msg_type: int, payload: bytes) -> None:
        if self._hand_over(peer, msg_type, payload):
            return
        if msg_type in (1, 17):
            return  # warning and error were logged; no plugin wants them
        if msg_type >= CUSTOM_FROM and msg_type % 2:
            self._custom_seq += 1
            item = {"seq": self._custom_seq, "id": peer.node_id.hex(), "type": msg_type, "payload": payload.hex()}
            self.custom.append(item)
            self._emit("custommsg", {k: item[k] for k in ("id", "type", "payload")})
            return
        if msg_type % 2 == 0:
            raise PeerError(f"unknown even message type {msg_type}", warn=True)
        log.debug("unknown odd message type %d from %s ignored", msg_type, peer.node_id.hex())

    def service_down(self, service: str, state: str) -> None:
        """A service went down (thread-safe): messages it had accepted but not handled may be lost."""
        self.loop.call_soon_threadsafe(self._service_down, service, state)

    def _service_down(self, service: str, state: str) -> None:
        # Its inbox may have held messages from these peers when it died: with the connection up, a
        # channel would silently miss them. Disconnect, so the channel protocol re-establishes.
        for peer in list(self.peers.values()):
            if any(self.ctx.wire_service(t) == service for t in peer.routed):
                log.warning("disconnecting %s: service %s, which handled its messages, is %s (it may have lost "
                            "some)", peer.node_id.hex(), service, state)
                peer.close(f"service {service} handling its messages is {state}")

    def _emit(self, event: str, body: dict[str, Any]) -> None:
        """Send an event from the worker thread: a subscriber's service that is down costs a wait there."""
        def run() -> None:
            try:
                self.ctx.emit(event, body)
            except Exception:
                log.exception("could not emit %s", event)
        self._worker.submit(run)

    # --- outgoing connections ------------------------------------------------------------------

    async def connect(self, node_id: bytes, address: Address | None, persistent: bool) -> dict[str, Any]:
        """Connect to `node_id` (at `address`, or its stored one) unless already connected."""
        node = node_id.hex()
        if node_id == self.ctx.node.node_id:
            raise RpcError(RpcError.INVALID_PARAMS, "that is our own node id")
        if address is None:
            known = await self.stored(storage.get, node)
            if known is None or not known.address:
                raise RpcError(RpcError.INVALID_PARAMS, f"no address known for {node}: give NODE_ID@HOST[:PORT]")
            address = parse_address(known.address)
        self._suppressed.discard(node_id)
        if persistent:
            await self.stored(storage.set_persistent, node, True, str(address))
        current = self.peers.get(node_id)
        if current is not None:
            return {**current.describe(), "already_connected": True}
        peer = await self._dial_once(node_id, address)
        return {**peer.describe(), "already_connected": False}

    async def _dial_once(self, node_id: bytes, address: Address) -> Peer:
        """Dial, sharing an attempt already under way to the same node."""
        pending = self._dialing.get(node_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Peer] = asyncio.get_running_loop().create_future()
        self._dialing[node_id] = fut
        try:
            peer = await self._dial(node_id, address)
            await self._register(peer, str(address))
            fut.set_result(peer)
            return peer
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._dialing[node_id]

    async def _dial(self, node_id: bytes, address: Address) -> Peer:
        opts = self.options
        if len(self.peers) + len(self.slots) >= opts.max_peers:
            raise RpcError(CONNECT_FAILED, f"at max_peers = {opts.max_peers} connections; try again later")
        via_proxy = opts.proxy is not None and (opts.proxy_all or address.kind == TORV3)
        if address.kind == TORV3 and opts.proxy is None:
            raise RpcError(CONNECT_FAILED, f"{address} is a Tor onion address: set [plugins.peerd] proxy")
        slot = self.slots.outbound()
        if slot is None:
            raise RpcError(CONNECT_FAILED, f"all {len(self.slots)} handshake slots are in use (max_handshakes + "
                           "reserved_handshakes); try again later")
        try:
            return await self._handshake_out(node_id, address, via_proxy)
        finally:
            self.slots.release(slot)

    async def _handshake_out(self, node_id: bytes, address: Address, via_proxy: bool) -> Peer:
        opts = self.options
        proxied = f" through proxy {opts.proxy}" if via_proxy else ""
        log.debug("dialling %s at %s%s", node_id.hex(), address, proxied)
        try:
            if via_proxy:
                assert opts.proxy is not None
                conn = await socks5.open_connection(opts.proxy, address, opts.connect_timeout)
            else:
                conn = await connect(address.host, address.port, opts.connect_timeout)
        except (OSError, EOFError, TimeoutError) as e:
            log.debug("cannot connect to %s%s: %s", address, proxied, _why(e))
            raise RpcError(CONNECT_FAILED, f"cannot connect to {address}{proxied}: {_why(e)}") from None
        self._conns.add(conn)
        try:
            stream: NoiseStream = await initiate(conn, self.ctx.keys, node_id, opts.handshake_timeout)
        except (HandshakeError, TimeoutError, EOFError, OSError) as e:
            conn.close()
            why = _act_two_failure(e, conn, opts.handshake_timeout)
            log.debug("handshake with %s at %s failed: %s", node_id.hex(), address, why)
            raise RpcError(CONNECT_FAILED, f"handshake with {address} failed: {why}") from None
        except BaseException:  # cancelled (the caller's deadline, or shutdown)
            conn.close()
            raise
        log.debug("handshake with %s at %s done", node_id.hex(), address)
        peer = Peer(self, stream, str(address), "out")
        if not await self._init(peer, self._our_init("out", None, None)):
            raise RpcError(CONNECT_FAILED, f"{node_id.hex()} refused: {peer.close_reason}")
        return peer

    async def disconnect(self, node_id: bytes) -> dict[str, Any]:
        """Close the connection; a persistent peer is not redialled until `connect` or a restart."""
        peer = self.peers.get(node_id)
        self._suppressed.add(node_id)
        task = self._reconnects.pop(node_id, None)
        if task is not None:
            task.cancel()
        if peer is None:
            raise RpcError(NOT_CONNECTED, f"not connected to {node_id.hex()}")
        peer.close("disconnected by request")
        await asyncio.wait_for(peer.closed.wait(), 5)
        return {"id": node_id.hex(), "disconnected": True}

    async def describe(self, node_id: bytes | None) -> list[dict[str, Any]]:
        """The connected peers (or one of them)."""
        return [p.describe() for p in self.peers.values() if node_id is None or p.node_id == node_id]

    async def ping(self, node_id: bytes, num_pong_bytes: int, timeout: float) -> dict[str, Any]:
        """Ping a connected peer; returns the round-trip time."""
        peer = self.peers.get(node_id)
        if peer is None or peer.state != "active":
            raise RpcError(NOT_CONNECTED, f"not connected to {node_id.hex()}")
        try:
            rtt = await asyncio.wait_for(peer.ping(num_pong_bytes), timeout)
        except asyncio.TimeoutError:
            raise RpcError(PING_FAILED, f"no pong from {node_id.hex()} within {timeout:g}s") from None
        except PeerError as e:
            raise RpcError(PING_FAILED, f"peer went away: {e.reason}") from None
        return {"id": node_id.hex(), "rtt_ms": round(rtt * 1000, 3), "bytes": num_pong_bytes}

    async def send_custom(self, node_id: bytes, msg: bytes) -> dict[str, Any]:
        """Send a raw message (type included) to a connected peer."""
        peer = self.peers.get(node_id)
        if peer is None or peer.state != "active":
            raise RpcError(NOT_CONNECTED, f"not connected to {node_id.hex()}")
        if not peer.send(msg):
            raise RpcError(NOT_CONNECTED, f"peer closed: {peer.close_reason}")
        return {"id": node_id.hex(), "type": int.from_bytes(msg[:2], "big"), "sent": len(msg)}

    # --- persistence and reconnection ----------------------------------------------------------

    async def set_persistent(self, node_id: bytes, persistent: bool, address: str | None) -> dict[str, Any]:
        """Keep (or stop keeping) a peer connected; channels mark their peers so."""
        await self.stored(storage.set_persistent, node_id.hex(), persistent, address)
        if persistent:
            self._suppressed.discard(node_id)
            self._maybe_reconnect(node_id, first_delay=0.0)
        else:
            task = self._reconnects.pop(node_id, None)
            if task is not None:
                task.cancel()
        return {"id": node_id.hex(), "persistent": persistent}

    async def _resume_persistent(self) -> None:
        for known in await self.stored(storage.all_peers):
            if known.persistent and known.address:
                self._maybe_reconnect(bytes.fromhex(known.node_id), first_delay=0.0)

    def _maybe_reconnect(self, node_id: bytes, first_delay: float | None = None) -> None:
        if self._stopping or node_id in self._suppressed or node_id in self._reconnects or node_id in self.peers:
            return
        delay = self.options.reconnect_min_delay if first_delay is None else first_delay
        self._reconnects[node_id] = self._spawn(self._reconnect(node_id, delay))

    async def _reconnect(self, node_id: bytes, delay: float) -> None:
        """Redial a persistent peer (one that is not, or has no address, is left alone)."""
        opts = self.options
        try:
            try:
                known = await self.stored(storage.get, node_id.hex())
            except Exception:
                log.exception("could not read the record of peer %s: not reconnecting it", node_id.hex())
                return
            if known is None or not known.persistent or not known.address:
                return
            address = parse_address(known.address)
            while not self._stopping:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                if node_id in self.peers or node_id in self._suppressed:
                    return
                try:
                    await self._dial_once(node_id, address)
                    return
                except RpcError as e:
                    delay = min(max(delay * 2, opts.reconnect_min_delay), opts.reconnect_max_delay)
                    log.info("reconnecting %s failed (%s); next try in about %.0fs", node_id.hex(), e.message, delay)
        finally:
            if self._reconnects.get(node_id) is asyncio.current_task():
                del self._reconnects[node_id]


def _act_two_failure(e: BaseException, conn: Connection, timeout: float) -> str:
    """Why our handshake failed, as far as the initiator can tell."""
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g}s (handshake_timeout)"
    if isinstance(e, HandshakeError) and e.code == "ACT2_READ_FAILED" and conn.received == 0:
        # a responder that cannot decrypt act one and one that refuses the connection look the same
        return ("the node closed the connection without answering act one: either the node id is not "
                "that node's, or it refused the connection (busy, or at a connection limit)")
    return _why(e)


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed by peer"
    if isinstance(e, OSError) and e.errno and e.errno > 0:  # asyncio's strerror is a sentence; this is the cause
        return os.strerror(e.errno)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
