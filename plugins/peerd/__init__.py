"""peerd: peer connections over BOLT-8, the BOLT-1 `init`/`ping`/`pong` rules, and peer management.

It is the node's outbound transport: `ctx.send_wire` from any plugin ends here and goes to the
peer; messages from peers go to the plugin that subscribed to their type. Layout, as in every
service: errors, options, the runtime (manager), the state machine (peer), storage, RPC (below).
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from lnp_plugin_api import (EventSpec, PerContext, RpcError, ServiceContext, Subscription, WireMessage,
                        control_method, hookimpl, rpc_method)
from lnp_plugin_api.addresses import AddressError, parse_address, parse_node_id, parse_peer
from lnp_plugin_api.wire import WireError, split_message

from . import storage
from .manager import CUSTOM_FROM, PeerManager
from .options import SCHEMA, Options, listen_problem

# Handlers answer with a Future completed by peerd's I/O loop: the service keeps serving meanwhile.
Later = Future[dict[str, Any]]
_managers: PerContext[PeerManager] = PerContext("peerd")
_manager = _managers.get


def _node_id(text: str) -> bytes:
    try:
        return parse_node_id(text)
    except AddressError as e:
        raise RpcError(RpcError.INVALID_PARAMS, str(e)) from None


# --- RPC -----------------------------------------------------------------------------------------

@rpc_method
def connect(ctx: ServiceContext, id: str, host: str | None = None, port: int | None = None,
            persistent: bool = False) -> Later:
    """Connect to a peer: ID as NODE_ID@HOST[:PORT] (default port 9735), or NODE_ID with HOST and PORT,
    or a NODE_ID whose address is known. PERSISTENT keeps it connected across drops and restarts."""
    try:
        node_id, address = parse_peer(id)
        if host is not None:
            if address is not None:
                raise AddressError("give the address either in ID (NODE_ID@HOST) or as HOST, not both")
            address = parse_address(host if port is None else f"[{host}]:{port}" if ":" in host
                                    else f"{host}:{port}")
        elif port is not None:
            raise AddressError("PORT needs HOST")
    except AddressError as e:
        raise RpcError(RpcError.INVALID_PARAMS, str(e)) from None
    manager = _manager(ctx)
    timeout = manager.options.connect_timeout + manager.options.handshake_timeout * 2 + 5
    return manager.submit(manager.connect(node_id, address, persistent), timeout)


@rpc_method
def disconnect(ctx: ServiceContext, id: str) -> Later:
    """Close the connection to peer ID (a persistent peer is not redialled until `connect`)."""
    manager = _manager(ctx)
    return manager.submit(manager.disconnect(_node_id(id)))


@rpc_method
def peers(ctx: ServiceContext, id: str | None = None, known: bool = False) -> Later:
    """Connected peers: id, address, direction, connected_since, features, messages and bytes in and out.
    With KNOWN, also every stored peer (persistent or not, connected or not)."""
    manager = _manager(ctx)
    node_id = _node_id(id) if id is not None else None

    async def listing() -> dict[str, Any]:
        out: dict[str, Any] = {"peers": await manager.describe(node_id)}
        if known:
            out["known"] = [vars(p) for p in await manager.stored(storage.all_peers)
                            if node_id is None or p.node_id == node_id.hex()]
        return out
    return manager.submit(listing())


@rpc_method
def ping(ctx: ServiceContext, id: str, bytes: int = 128, timeout: float = 10.0) -> Later:
    """Ping peer ID asking for a pong of BYTES bytes (0..65531); returns the round-trip time."""
    if not 0 <= bytes < 65532:
        raise RpcError(RpcError.INVALID_PARAMS, "bytes must be 0..65531 (a larger ping gets no pong)")
    if timeout <= 0:
        raise RpcError(RpcError.INVALID_PARAMS, "timeout must be positive")
    manager = _manager(ctx)
    return manager.submit(manager.ping(_node_id(id), bytes, timeout), timeout + 5)


@rpc_method
def sendcustommsg(ctx: ServiceContext, id: str, msg: str) -> Later:
    """Send MSG (hex: 2-byte type >= 32768, then the payload) to connected peer ID.
    Odd types are safe with any peer; an even type makes a peer that does not know it disconnect."""
    try:
        raw = bytes.fromhex(msg)
        msg_type, _ = split_message(raw)
    except (ValueError, WireError):
        raise RpcError(RpcError.INVALID_PARAMS, "msg must be hex of a 2-byte type and a payload") from None
    if msg_type < CUSTOM_FROM:
        raise RpcError(RpcError.INVALID_PARAMS, f"type {msg_type} is not a custom type (>= {CUSTOM_FROM})")
    if len(raw) > 65535:
        raise RpcError(RpcError.INVALID_PARAMS, "a message holds at most 65535 bytes")
    manager = _manager(ctx)
    return manager.submit(manager.send_custom(_node_id(id), raw))


@rpc_method
def listcustommsgs(ctx: ServiceContext, since: int = 0) -> Later:
    """Custom messages (odd types >= 32768 no plugin handles) received after sequence number SINCE
    (the last 1000 are kept). Plugins get them as the `custommsg` event."""
    manager = _manager(ctx)

    async def after() -> dict[str, Any]:
        return {"messages": [m for m in manager.custom if m["seq"] > since]}
    return manager.submit(after())


@rpc_method
def listen(ctx: ServiceContext, address: str | None = None) -> dict[str, Any] | Later:
    """Accept peers on ADDRESS (HOST:PORT or [IPv6]:PORT) too; without ADDRESS, list where we listen."""
    manager = _manager(ctx)
    if address is None:
        return {"listening": list(manager.listening)}
    problem = listen_problem(address)
    if problem:
        raise RpcError(RpcError.INVALID_PARAMS, problem)
    parsed = parse_address(address)
    async def listening() -> dict[str, Any]:
        return {"listening": await manager.listen(parsed)}
    return manager.submit(listening())


# --- control requests for other services ---------------------------------------------------------

@control_method("peerd.set_persistent")
def _set_persistent(ctx: ServiceContext, id: str, persistent: bool, address: str | None = None) -> Later:
    manager = _manager(ctx)
    if address is not None:
        try:
            parse_address(address)
        except AddressError as e:
            raise RpcError(RpcError.INVALID_PARAMS, f"address: {e}") from None
    return manager.submit(manager.set_persistent(_node_id(id), persistent, address))


@control_method("peerd.disconnect")
def _disconnect(ctx: ServiceContext, id: str) -> Later:
    # another service fails a connection (BOLT-1), e.g. channeld on a shutdown breaking an upfront script
    manager = _manager(ctx)
    return manager.submit(manager.disconnect(_node_id(id)))


@control_method("peerd.peer")
def _peer(ctx: ServiceContext, id: str) -> "Future[dict[str, Any] | None]":
    manager = _manager(ctx)
    node_id = _node_id(id)

    async def one() -> dict[str, Any] | None:
        found = await manager.describe(node_id)
        return found[0] if found else None
    return manager.submit(one())


def _outbound(ctx: ServiceContext, msg: WireMessage) -> None:
    _manager(ctx).send_wire(msg)


def _service_state(ctx: ServiceContext, event: Any) -> None:
    state = str(event.body.get("state", ""))
    if state in ("restarting", "failed", "unreachable"):
        _manager(ctx).service_down(str(event.body.get("service", "")), state)


# --- hooks ---------------------------------------------------------------------------------------

@hookimpl
def lnp_service() -> str:
    return "peerd"


@hookimpl
def lnp_config_schema() -> dict:
    return SCHEMA


@hookimpl
def lnp_storage_models() -> Any:
    return storage.MODELS


@hookimpl
def lnp_rpc_methods() -> list:
    return [connect, disconnect, peers, ping, sendcustommsg, listcustommsgs, listen]


@hookimpl
def lnp_subscriptions() -> list[Subscription]:
    return [Subscription.outbound(_outbound),
            _set_persistent, _peer, _disconnect, Subscription.event("service_state", _service_state)]


@hookimpl
def lnp_events() -> list[EventSpec]:
    return [EventSpec("peer_connected", "body: {id, address, direction, features, feature_names}"),
            EventSpec("peer_disconnected", "body: {id, address, direction, reason}"),
            EventSpec("custommsg", "a custom message (odd type >= 32768) no plugin handles; body: {id, type, payload}")]


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    manager = PeerManager(ctx, Options.from_config(ctx.config))
    _managers.set(ctx, manager)
    try:
        manager.start()
    except BaseException:
        manager.stop()
        _managers.pop(ctx)
        raise


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    manager = _managers.pop(ctx)
    if manager is not None:
        manager.stop()
