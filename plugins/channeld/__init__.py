"""channeld: Lightning channels (BOLT-2) between this node and its peers.

Layout, as in every service: errors, options, the runtime (manager: one worker per peer), the opening
protocol (opening), the channel document and its states (document), storage. The state machine is
described in docs/channels.md, "The channel state machine".

RPC: open NODE_ID SATS [--push-msat M] [--feerate R] [--private] [--channel-type T] [--min-depth N]
(alias fundchannel), channels [PEER], close CHANNEL|PEER [--destination ADDR] [--force] (closing.py:
cooperative close; onchain.py: force close and on-chain resolution).
Events (durable): channel_state_changed, htlc_resolved. Decisions: open_channel, htlc_accepted.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable

from lnp_plugin_api import (Continue, DecisionSpec, EventSpec, FeatureSpec, PerContext, RpcError, ServiceContext,
                            Subscription, WireMessage, control_method, hookimpl, rpc_method)
from lnp_plugin_api.addresses import AddressError, parse_node_id
from lnp_plugin_api.services import SIGNER_REQUESTS

from . import closing, hints, normal, onchain, storage
from .manager import ChannelManager
from .options import SCHEMA, Options

# BOLT-2 messages channeld handles, and error/warning (an error for one of our channels fails it)
WIRE_TYPES = (1, 17, 32, 33, 34, 35, 36, 38, 39, 128, 130, 131, 132, 133, 134, 135, 136,
              258)   # channel_update: the peer's fees for our private channels' route hints (hints.py)
MAX_FUNDING_SAT = 16_777_215          # without option_support_large_channel
_managers: PerContext[ChannelManager] = PerContext("channeld")
_manager = _managers.get


def _node_id(text: str) -> bytes:
    try:
        return parse_node_id(text)
    except AddressError as e:
        raise RpcError(RpcError.INVALID_PARAMS, str(e)) from None


# --- RPC -----------------------------------------------------------------------------------------

@rpc_method
def open(ctx: ServiceContext, id: str, amount: int, push_msat: int = 0, feerate: int | None = None,
         private: bool = False, channel_type: str | None = None,
         min_depth: int | None = None) -> "Future[dict[str, Any]]":
    """Open a channel of AMOUNT sat with connected peer ID, funded by the wallet. PUSH_MSAT is given
    to the peer at once; FEERATE (sat per 1000 weight) is the commitments' (default: our estimate);
    PRIVATE channels are not announced; CHANNEL_TYPE anchors or static_remotekey (default: anchors
    when both support it); MIN_DEPTH: confirmations we wait for at least (the peer may ask for more).
    Answers once the funding transaction is sent: {channel_id, funding_txid, funding_vout, channel_type}."""
    return _open(ctx, id, amount, push_msat, feerate, private, channel_type, min_depth)


def _open(ctx: ServiceContext, id: str, amount: int, push_msat: int, feerate: int | None, private: bool,
          channel_type: str | None, min_depth: int | None) -> "Future[dict[str, Any]]":
    # the body of `open` and `fundchannel` (an RpcMethod is not callable)
    peer_id = _node_id(id)
    mgr = _manager(ctx)
    if not 0 < amount <= MAX_FUNDING_SAT:
        raise RpcError(RpcError.INVALID_PARAMS, f"amount must be 1..{MAX_FUNDING_SAT} sat")
    if not 0 <= push_msat <= amount * 1000:
        raise RpcError(RpcError.INVALID_PARAMS, "push_msat must be between 0 and the amount")
    if feerate is not None and feerate < 253:
        raise RpcError(RpcError.INVALID_PARAMS, "feerate must be at least 253 sat per 1000 weight")
    if min_depth is not None and not 1 <= min_depth <= mgr.options.max_min_depth:
        raise RpcError(RpcError.INVALID_PARAMS, f"min_depth must be 1..{mgr.options.max_min_depth}")
    reply: Future[dict[str, Any]] = Future()

    def start() -> None:
        try:
            mgr.open(peer_id, amount, push_msat, feerate, private, channel_type, min_depth or 1, reply)
        except BaseException as e:
            if not reply.done():
                reply.set_exception(e)
    mgr.submit(peer_id, start)
    return reply


@rpc_method
def fundchannel(ctx: ServiceContext, id: str, amount: int, feerate_per_kw: int | None = None, push_msat: int = 0,
                announce: bool = True, channel_type: str | None = None,
                min_depth: int | None = None) -> "Future[dict[str, Any]]":
    """`open` under Core Lightning's name: a channel of AMOUNT sat with peer ID (FEERATE_PER_KW for the
    commitments; ANNOUNCE false for a private channel)."""
    return _open(ctx, id, amount, push_msat, feerate_per_kw, not announce, channel_type, min_depth)


@rpc_method
def channels(ctx: ServiceContext, peer: str | None = None) -> dict[str, Any]:
    """Channels (of PEER only, if given): channel_id, short_channel_id, peer, state, funding outpoint,
    capacity, local and remote balance (msat), reserves, HTLCs in flight, channel type."""
    peer_hex = _node_id(peer).hex() if peer is not None else None
    with ctx.storage.begin() as conn:
        found = storage.load_all(conn)
    return {"channels": [c.summary() for c in found if peer_hex is None or c.peer_id.hex() == peer_hex]}


@rpc_method
def close(ctx: ServiceContext, id: str, destination: str | None = None, timeout: float = 60.0,
          force: bool = False) -> "Future[dict[str, Any]]":
    """Close channel ID (channel_id, short_channel_id, or the node id of a peer with one channel)
    cooperatively: shutdown, then the closing fee negotiated once no HTLC is left. Our funds go to the
    wallet, or to DESTINATION (an address of this network). Answers {channel_id, state, txid, fee_sat}
    once the closing transaction is agreed and broadcast; after TIMEOUT s, {..., txid: null} while the
    close goes on. FORCE: put our latest commitment on chain now instead (our funds come back after our
    to_self_delay, swept to the wallet); {channel_id, txid}."""
    mgr = _manager(ctx)
    if timeout <= 0:
        raise RpcError(RpcError.INVALID_PARAMS, "timeout must be positive")
    key = id.lower() if len(id) in (64, 66) else id
    ch = closing.find(mgr, key)
    if force:
        if destination is not None:
            raise RpcError(RpcError.INVALID_PARAMS, "a force close sweeps to the wallet: no --destination")
        cid = ch.channel_id
        return mgr.submit(ch.peer_id, lambda: onchain.force_close(mgr, cid, "close --force"))
    if destination is not None:
        closing.destination_script(destination, ctx.node.network)   # refused here, before anything changes
    reply: Future[dict[str, Any]] = Future()

    def start() -> None:
        try:
            closing.close(mgr, key, destination, reply, timeout)
        except BaseException as e:
            if not reply.done():
                reply.set_exception(e)
    mgr.submit(ch.peer_id, start)
    return reply


# --- control requests for other plugins (invoices, pay) -----------------------------------------

@control_method("channeld.add_htlc")
def _add_htlc(ctx: ServiceContext, peer_id: str, amount_msat: int, payment_hash: str, cltv_expiry: int, onion: str,
              channel_id: str | None = None) -> "Future[dict[str, Any]]":
    """Offer an HTLC to PEER_ID; {channel_id, htlc_id} once the add is stored (it goes out with the next
    commitment_signed). Refusals are RpcErrors and send nothing."""
    mgr = _manager(ctx)
    peer, add = _adding(mgr, peer_id, amount_msat, payment_hash, cltv_expiry, onion, channel_id)
    return mgr.submit(peer, add)


@control_method("channeld.add_htlcs")
def _add_htlcs(ctx: ServiceContext, htlcs: list[dict]) -> "Future[dict[str, Any]]":
    """Offer several HTLCs (each as `channeld.add_htlc` takes one) in one request: {results: [{channel_id,
    htlc_id} or {error: {code, message}}]}, in order, once every add is stored or refused."""
    mgr = _manager(ctx)
    results: list[dict[str, Any] | None] = [None] * len(htlcs)
    reply: Future[dict[str, Any]] = Future()
    left = [len(htlcs)]
    lock = threading.Lock()

    def done(i: int, outcome: dict[str, Any]) -> None:
        with lock:
            results[i] = outcome
            left[0] -= 1
            last = left[0] == 0
        if last:
            reply.set_result({"results": results})

    def settled(i: int, f: Future) -> None:
        e = f.exception()
        if e is None:
            done(i, f.result())
        else:
            err = e if isinstance(e, RpcError) else RpcError(RpcError.INTERNAL_ERROR, f"{type(e).__name__}")
            done(i, {"error": {"code": err.code, "message": err.message}})
    if not htlcs:
        reply.set_result({"results": []})
    for i, item in enumerate(htlcs):
        try:
            if not isinstance(item, dict):
                raise RpcError(RpcError.INVALID_PARAMS, "each HTLC is an object")
            peer, add = _adding(mgr, item.get("peer_id"), item.get("amount_msat"), item.get("payment_hash"),
                                item.get("cltv_expiry"), item.get("onion"), item.get("channel_id"))
        except RpcError as e:
            done(i, {"error": {"code": e.code, "message": e.message}})
            continue
        mgr.submit(peer, add).add_done_callback(lambda f, i=i: settled(i, f))
    return reply


def _adding(mgr: ChannelManager, peer_id: Any, amount_msat: Any, payment_hash: Any, cltv_expiry: Any, onion: Any,
            channel_id: Any) -> tuple[bytes, Callable[[], dict[str, Any]]]:
    """The peer and the add of one HTLC on its worker, after the checks of its parameters."""
    if not all(isinstance(v, str) for v in (peer_id, payment_hash, onion)) or (
            channel_id is not None and not isinstance(channel_id, str)):
        raise RpcError(RpcError.INVALID_PARAMS, "peer_id, payment_hash, onion and channel_id must be hex text")
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in (amount_msat, cltv_expiry)):
        raise RpcError(RpcError.INVALID_PARAMS, "amount_msat and cltv_expiry must be positive integers")
    peer = _node_id(peer_id)
    try:
        hash_, packet = bytes.fromhex(payment_hash), bytes.fromhex(onion)
        cid = bytes.fromhex(channel_id) if channel_id is not None else None
    except ValueError:
        raise RpcError(RpcError.INVALID_PARAMS, "payment_hash, onion and channel_id must be hex") from None
    return peer, lambda: normal.add_htlc(mgr, peer, amount_msat, hash_, cltv_expiry, packet, cid)


@control_method("channeld.route_hints")
def _route_hints(ctx: ServiceContext) -> dict[str, Any]:
    """{hints: [{node_id, short_channel_id, fee_base_msat, fee_proportional_millionths, cltv_expiry_delta}]}:
    one BOLT-11 route hint per usable private channel (invoices)."""
    with ctx.storage.begin() as conn:
        found = storage.load_all(conn)
    return {"hints": hints.route_hints(found)}


# --- subscriptions -------------------------------------------------------------------------------

def _on_wire(ctx: ServiceContext, msg: WireMessage) -> None:
    _manager(ctx).on_wire(msg)


def _on_peer(ctx: ServiceContext, event: Any) -> None:
    _manager(ctx).on_peer_event(event.name, event.body)


def _on_depth(ctx: ServiceContext, event: Any) -> None:
    _manager(ctx).on_depth(event.body)


def _on_block(ctx: ServiceContext, event: Any) -> None:
    _manager(ctx).on_block(int(event.body["height"]))


def _on_spent(ctx: ServiceContext, event: Any) -> None:
    _manager(ctx).on_spent(event.body)


# --- hooks ---------------------------------------------------------------------------------------

@hookimpl
def lnp_service() -> str:
    return "channeld"


@hookimpl
def lnp_config_schema() -> dict:
    return SCHEMA


@hookimpl
def lnp_storage_models() -> Any:
    return storage.MODELS


@hookimpl
def lnp_requires() -> list[str]:
    return [SIGNER_REQUESTS[op] for op in ("channel_keys", "ready_channel", "sign_counterparty_commitment",
                                            "validate_holder_commitment", "per_commitment_point",
                                            "revoke_holder_commitment", "validate_counterparty_revocation",
                                            "onion_ecdh", "sign_mutual_close")] + [
        "wallet.fund", "wallet.broadcast", "wallet.release", "watchd.watch", "watchd.status", "chain.fees",
        "chain.block", "chain.broadcast", "wallet.newaddr"] + [SIGNER_REQUESTS[op] for op in (
            "sign_holder_commitment", "sign_sweep", "sign_penalty")] + [
        "peerd.peer", "peerd.disconnect"]


@hookimpl
def lnp_features() -> list[FeatureSpec]:
    # only what channeld implements; more with each protocol part (docs/channels.md)
    # var_onion_optin and payment_secret (BOLT-4/11): channeld peels each HTLC's TLV onion and hands its
    # payload (payment_secret included) to htlc_accepted
    # option_data_loss_protect: channel_reestablish carries its fields, and a node behind stops (reestablish.py)
    # option_shutdown_anysegwit (27): a peer's shutdown may pay any witness program (closing.py)
    # option_upfront_shutdown_script (5): open/accept_channel carry our script, the peer's binds its shutdown
    # option_scid_alias (47): channel_ready carries our alias; private channels get the channel_type variation
    return [FeatureSpec(0), FeatureSpec(4), FeatureSpec(8, contexts="IN9"), FeatureSpec(14, contexts="IN9"),
            FeatureSpec(12), FeatureSpec(22), FeatureSpec(44), FeatureSpec(26), FeatureSpec(46)]


@hookimpl
def lnp_events() -> list[EventSpec]:
    return [EventSpec("channel_state_changed", "{channel_id, peer_id, old_state, new_state, short_channel_id}",
                      durable=True),
            EventSpec("htlc_resolved", "an HTLC we offered is settled: {channel_id, htlc_id, payment_hash, "
                      "amount_msat, preimage, failure_onion, failure_code}", durable=True)]


@hookimpl
def lnp_decisions() -> list[DecisionSpec]:
    return [DecisionSpec("open_channel", "may this peer open this channel with us? body: {peer_id, funding_sat, "
                         "push_msat, feerate_per_kw, channel_type, to_self_delay, channel_reserve_sat, "
                         "dust_limit_sat, announce}; Fail(reason): the reason goes to the peer",
                         timeout=10.0, default=Continue()),
            DecisionSpec("htlc_accepted", "an HTLC irrevocably committed to us (docs/channels.md)",
                         timeout=60.0, default=Continue())]


@hookimpl
def lnp_rpc_methods() -> list:
    return [open, fundchannel, channels, close]


@hookimpl
def lnp_subscriptions() -> list:
    return ([Subscription.wire(t, _on_wire) for t in WIRE_TYPES]
            + [Subscription.event(n, _on_peer) for n in ("peer_connected", "peer_disconnected")]
            + [Subscription.event("tx_depth", _on_depth), Subscription.event("block_connected", _on_block),
               Subscription.event("outpoint_spent", _on_spent),
               _add_htlc, _add_htlcs, _route_hints])


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    mgr = ChannelManager(ctx, Options.from_config(ctx.config))
    mgr.start()
    _managers.set(ctx, mgr)


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    mgr = _managers.pop(ctx)
    if mgr is not None:
        mgr.stop()
