"""Opening a channel (BOLT-2 v1 establishment), as opener and as accepter.

Runs on the peer's worker thread (`actor.PeerWorker`): it waits on signd, the wallet and watchd. Until
funding_signed, an opening lives in memory only (nothing can reach the chain yet); the first persisted
state is `awaiting_lock`, written in the same transaction as the funding_signed we send (accepter),
or before the funding transaction is broadcast (opener).
"""
from __future__ import annotations

import secrets
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lnp_plugin_api import RpcError
from lnp_plugin_api.bolt3 import funding_script
from lnp_plugin_api.bolt_extensions import extensions_for
from lnp_plugin_api.channel import (ANCHORS, ANCHORS_BIT, SCID_ALIAS_BIT, STATIC_REMOTEKEY, STATIC_REMOTEKEY_BIT,
                                    Basepoints, ChannelParams, ChannelType, CommitmentSpec, Side, SideConfig)
from lnp_plugin_api.channel_fees import check_initial, initial_spec
from lnp_plugin_api.channel_updates import UpdateLog
from lnp_plugin_api.chains import chain_hash
from lnp_plugin_api.closing import check_shutdown
from lnp_plugin_api.commitment import build_commitment
from lnp_plugin_api.messages import AcceptChannel, ChannelReady, FundingCreated, FundingSigned, OpenChannel
from lnp_plugin_api.services import ChannelSetup, Funded
from lnp_plugin_api.tx import Tx, p2wsh
from lnp_plugin_api.wire import format_scid, parse_scid

from .document import AWAITING_LOCK, Channel, channel_id_of, temporary_id
from .errors import ChannelError, crash_point

if TYPE_CHECKING:
    from .manager import ChannelManager

MIN_DUST_LIMIT = 354       # BOLT-2: below it, some outputs would not relay
MAX_HTLCS = 483
UPFRONT_BIT = 4            # option_upfront_shutdown_script (4/5)
ANYSEGWIT_BIT = 26         # option_shutdown_anysegwit (26/27)


@dataclass
class Opening:
    """An opening in progress (memory only)."""

    role: Side                          # LOCAL: we open
    peer_id: bytes
    temp_id: bytes
    dbid: int
    keys: dict[str, str]                # signd's channel_keys
    ours: SideConfig
    funding_sat: int
    push_msat: int
    feerate_per_kw: int
    channel_type: ChannelType
    private: bool = False
    min_depth: int = 0                  # the depth the accepter asked for
    theirs: SideConfig | None = None
    their_first_point: bytes | None = None
    funded: Funded | None = None
    params: ChannelParams | None = None
    spec: CommitmentSpec | None = None
    reply: Future[dict[str, Any]] | None = None   # the `open` RPC's answer
    extra: dict[str, Any] = field(default_factory=dict)
    upfront: bytes = b""                # our upfront_shutdown_script (empty: none committed)
    upfront_key: tuple[int, int] | None = None    # its wallet key
    their_upfront: bytes = b""          # theirs (empty: none, or the feature not negotiated)

    @property
    def our_first_point(self) -> bytes:
        return bytes.fromhex(self.keys["first_per_commitment_point"])


def our_config(mgr: "ChannelManager", keys: dict[str, str], funding_sat: int) -> SideConfig:
    """What we announce: our keys and the limits of the profile."""
    o = mgr.options
    bp = Basepoints(*(bytes.fromhex(keys[k]) for k in ("revocation_basepoint", "payment_basepoint",
                                                       "delayed_payment_basepoint", "htlc_basepoint")))
    return SideConfig(bytes.fromhex(keys["funding_pubkey"]), bp, o.dust_limit_sat, o.to_self_delay,
                      o.reserve_sat(funding_sat), o.htlc_minimum_msat, o.max_in_flight_msat(funding_sat),
                      o.max_accepted_htlcs)


def _their_config(msg: OpenChannel | AcceptChannel) -> SideConfig:
    bp = Basepoints(msg.revocation_basepoint, msg.payment_basepoint, msg.delayed_payment_basepoint,
                    msg.htlc_basepoint)
    return SideConfig(msg.funding_pubkey, bp, msg.dust_limit_satoshis, msg.to_self_delay,
                      msg.channel_reserve_satoshis, msg.htlc_minimum_msat, msg.max_htlc_value_in_flight_msat,
                      msg.max_accepted_htlcs)


def choose_type(mgr: "ChannelManager", peer_bits: set[int], asked: str | None) -> ChannelType:
    """The channel type to propose: the one asked for, else anchors when both sides support it."""
    pairs = {b & ~1 for b in peer_bits}
    if asked is not None:
        wanted = {"anchors": ANCHORS, "static_remotekey": STATIC_REMOTEKEY}.get(asked)
        if wanted is None:
            raise RpcError(RpcError.INVALID_PARAMS, "channel_type must be anchors or static_remotekey")
        if not set(wanted.bits) <= pairs:
            raise RpcError(RpcError.INVALID_PARAMS, f"the peer does not support {asked} channels")
        return wanted
    if mgr.options.anchors and ANCHORS_BIT in pairs and STATIC_REMOTEKEY_BIT in pairs:
        return ANCHORS
    if STATIC_REMOTEKEY_BIT not in pairs:
        raise RpcError(RpcError.INVALID_PARAMS, "the peer does not support option_static_remotekey")
    return STATIC_REMOTEKEY


def upfront_negotiated(peer_bits: set[int]) -> bool:
    """Whether the peer advertised option_upfront_shutdown_script (we always do)."""
    return UPFRONT_BIT in {b & ~1 for b in peer_bits}


def choose_upfront(mgr: "ChannelManager", op: Opening, peer_bits: set[int]) -> None:
    """Our upfront_shutdown_script: a fresh wallet address when both sides advertised the feature and the
    profile commits to one (`upfront_shutdown_script`), else empty (BOLT-2: 0x0000 commits to nothing)."""
    if mgr.options.upfront_shutdown_script and upfront_negotiated(peer_bits):
        to = mgr.funding.new_destination()
        op.upfront, op.upfront_key = to.script, to.key


def their_upfront(msg: OpenChannel | AcceptChannel, peer_bits: set[int]) -> bytes:
    """The peer's upfront_shutdown_script, checked; empty when it committed to none or the feature is not
    negotiated (BOLT-2: then a shutdown may pay anywhere)."""
    script = msg.upfront_shutdown_script or b""
    if not script or not upfront_negotiated(peer_bits):
        return b""
    problem = check_shutdown(script, ANYSEGWIT_BIT in {b & ~1 for b in peer_bits})
    if problem:
        raise ChannelError(f"upfront_shutdown_script: {problem}")
    return script


def check_their_limits(mgr: "ChannelManager", theirs: SideConfig, funding_sat: int) -> None:
    """BOLT-2's checks of the other side's announced limits (either message)."""
    o = mgr.options
    if theirs.to_self_delay > o.max_to_self_delay:
        raise ChannelError(f"to_self_delay {theirs.to_self_delay} is over our maximum {o.max_to_self_delay}")
    if theirs.max_accepted_htlcs > MAX_HTLCS:
        raise ChannelError(f"max_accepted_htlcs {theirs.max_accepted_htlcs} is over {MAX_HTLCS}")
    if theirs.dust_limit_sat < MIN_DUST_LIMIT:
        raise ChannelError(f"dust_limit_satoshis {theirs.dust_limit_sat} is below {MIN_DUST_LIMIT}")
    if theirs.channel_reserve_sat * 1000 > funding_sat * 1000:
        raise ChannelError("channel_reserve_satoshis is larger than the channel")
    if theirs.channel_reserve_sat < o.dust_limit_sat:
        raise ChannelError(f"channel_reserve_satoshis {theirs.channel_reserve_sat} is below our dust limit")
    if theirs.dust_limit_sat > o.reserve_sat(funding_sat):
        raise ChannelError(f"dust_limit_satoshis {theirs.dust_limit_sat} is above the reserve we ask")
    if theirs.max_htlc_value_in_flight_msat == 0 or theirs.max_accepted_htlcs == 0:
        raise ChannelError("the channel would allow no HTLC")


# --- opener ----------------------------------------------------------------------------------------------

def start_open(mgr: "ChannelManager", op: Opening) -> None:
    """Send our open_channel."""
    o = op.ours
    msg = OpenChannel(chain_hash(mgr.ctx.node.network), op.temp_id, op.funding_sat, op.push_msat, o.dust_limit_sat,
                      o.max_htlc_value_in_flight_msat, o.channel_reserve_sat, o.htlc_minimum_msat, op.feerate_per_kw,
                      o.to_self_delay, o.max_accepted_htlcs, o.funding_pubkey, o.basepoints.revocation,
                      o.basepoints.payment, o.basepoints.delayed_payment, o.basepoints.htlc, op.our_first_point,
                      0 if op.private else 1, upfront_shutdown_script=op.upfront,
                      channel_type=op.channel_type.to_bytes())
    mgr.send(op.peer_id, msg)


def on_accept_channel(mgr: "ChannelManager", op: Opening, msg: AcceptChannel) -> None:
    """Their limits are checked, the wallet funds the 2-of-2, signd signs their first commitment:
    funding_created goes out (nothing persisted yet: nothing can reach the chain before funding_signed)."""
    if op.role is not Side.LOCAL or op.theirs is not None:
        raise ChannelError("accept_channel we did not ask for")
    theirs = _their_config(msg)
    check_their_limits(mgr, theirs, op.funding_sat)
    if msg.channel_type is not None and msg.channel_type != op.channel_type.to_bytes():
        raise ChannelError("accept_channel has another channel_type than ours")
    if msg.minimum_depth > mgr.options.max_min_depth:
        raise ChannelError(f"minimum_depth {msg.minimum_depth} is over our maximum {mgr.options.max_min_depth}")
    if theirs.channel_reserve_sat < op.ours.dust_limit_sat:
        raise ChannelError("channel_reserve_satoshis is below our dust_limit_satoshis")
    op.their_upfront = their_upfront(msg, mgr.peer_bits(op.peer_id))
    op.theirs, op.their_first_point, op.min_depth = (theirs, msg.first_per_commitment_point,
                                                   max(1, msg.minimum_depth, op.min_depth))
    script = p2wsh(funding_script(op.ours.funding_pubkey, theirs.funding_pubkey))
    op.funded = funded = mgr.funding.fund([{"script": script.hex(), "value_sat": op.funding_sat}],
                                          label=f"channel with {op.peer_id.hex()[:16]}", purpose="channel")
    tx = Tx.parse(bytes.fromhex(funded.tx))
    vout = next(i for i, out in enumerate(tx.outputs)
                if out.script_pubkey == script and out.amount_sat == op.funding_sat)
    params = ChannelParams(op.ours, theirs, funded.txid, vout, op.funding_sat, Side.LOCAL, op.channel_type)
    _ready_and_sign_theirs(mgr, op, params)
    sig = op.extra["their_commitment_sig"]
    mgr.send(op.peer_id, FundingCreated(op.temp_id, bytes.fromhex(funded.txid)[::-1], vout, sig))


def on_funding_signed(mgr: "ChannelManager", op: Opening, msg: FundingSigned) -> Channel:
    """Their signature of our first commitment checks out: the channel is stored (awaiting_lock), the
    funding transaction watched, then broadcast."""
    if op.role is not Side.LOCAL or op.params is None or op.funded is None:
        raise ChannelError("funding_signed we did not ask for")
    params = op.params
    cid = channel_id_of(params.funding_txid, params.funding_output_index)
    if msg.channel_id != cid:
        raise ChannelError("funding_signed for another channel_id")
    _check_our_first(mgr, op, msg.signature)
    ch = _channel(mgr, op, cid, funding_tx=op.funded.tx)
    mgr.watch_funding(ch)
    with mgr.transaction() as tx:
        mgr.store(tx, ch, old_state="opening")
    crash_point("funding_signed_received", mgr.ctx.node.network)
    mgr.funding.broadcast(op.funded.reservation)
    crash_point("funding_broadcast", mgr.ctx.node.network)
    return ch


# --- accepter --------------------------------------------------------------------------------------------

def on_open_channel(mgr: "ChannelManager", peer_id: bytes, msg: OpenChannel, peer_bits: set[int]) -> Opening:
    """Check an open_channel against our limits and the `open_channel` decision; answer accept_channel."""
    o = mgr.options
    if msg.chain_hash != chain_hash(mgr.ctx.node.network):
        raise ChannelError("open_channel for another chain")
    if not o.min_funding_sat <= msg.funding_satoshis <= o.max_funding_sat:
        raise ChannelError(f"funding_satoshis {msg.funding_satoshis} is outside {o.min_funding_sat}.."
                           f"{o.max_funding_sat}")
    if msg.push_msat > msg.funding_satoshis * 1000:
        raise ChannelError("push_msat is more than the channel")
    theirs = _their_config(msg)
    check_their_limits(mgr, theirs, msg.funding_satoshis)
    problem = o.feerate_problem(msg.feerate_per_kw, mgr.feerate_per_kw())
    if problem:
        raise ChannelError(problem)
    ct = _their_type(mgr, msg, peer_bits)
    upfront = their_upfront(msg, peer_bits)
    body = {"peer_id": peer_id.hex(), "funding_sat": msg.funding_satoshis, "push_msat": msg.push_msat,
            "feerate_per_kw": msg.feerate_per_kw, "channel_type": ct.name, "to_self_delay": msg.to_self_delay,
            "channel_reserve_sat": msg.channel_reserve_satoshis, "dust_limit_sat": msg.dust_limit_satoshis,
            "announce": bool(msg.channel_flags & 1)}
    decision = mgr.ctx.decide("open_channel", body)
    if not decision.allowed:
        raise ChannelError(f"channel refused: {decision.reason}")
    dbid = mgr.next_dbid()
    keys = mgr.signer.channel_keys(dbid)
    ours = our_config(mgr, keys, msg.funding_satoshis)
    op = Opening(Side.REMOTE, peer_id, msg.temporary_channel_id, dbid, keys, ours, msg.funding_satoshis,
                 msg.push_msat, msg.feerate_per_kw, ct, private=not msg.channel_flags & 1, min_depth=o.min_depth,
                 theirs=theirs, their_first_point=msg.first_per_commitment_point, their_upfront=upfront)
    choose_upfront(mgr, op, peer_bits)
    reply = AcceptChannel(msg.temporary_channel_id, ours.dust_limit_sat, ours.max_htlc_value_in_flight_msat,
                          ours.channel_reserve_sat, ours.htlc_minimum_msat, o.min_depth, ours.to_self_delay,
                          ours.max_accepted_htlcs, ours.funding_pubkey, ours.basepoints.revocation,
                          ours.basepoints.payment, ours.basepoints.delayed_payment, ours.basepoints.htlc,
                          op.our_first_point, upfront_shutdown_script=op.upfront, channel_type=msg.channel_type)
    mgr.send(peer_id, reply)
    return op


def _their_type(mgr: "ChannelManager", msg: OpenChannel, peer_bits: set[int]) -> ChannelType:
    if msg.channel_type is not None:
        try:
            ct = ChannelType.from_bytes(msg.channel_type)
        except ValueError:
            raise ChannelError("unsupported channel_type") from None
        if set(ct.bits) - {STATIC_REMOTEKEY_BIT, ANCHORS_BIT, SCID_ALIAS_BIT}:
            raise ChannelError(f"unsupported channel_type {ct.name}")
        if SCID_ALIAS_BIT in ct.bits and msg.channel_flags & 1:
            raise ChannelError("channel_type option_scid_alias for an announced channel")
        if ct.anchors and not mgr.options.anchors:
            raise ChannelError("we do not accept anchor channels")
        return ct
    # No channel_type: the type follows from both init messages (BOLT-2)
    pairs = {b & ~1 for b in peer_bits}
    if mgr.options.anchors and {ANCHORS_BIT, STATIC_REMOTEKEY_BIT} <= pairs:
        return ANCHORS
    if STATIC_REMOTEKEY_BIT in pairs:
        return STATIC_REMOTEKEY
    raise ChannelError("channels without option_static_remotekey are not supported")


def on_funding_created(mgr: "ChannelManager", op: Opening, msg: FundingCreated) -> Channel:
    """Check their signature of our first commitment, sign theirs, store the channel and send
    funding_signed in the same transaction."""
    if op.role is not Side.REMOTE or op.params is not None or op.theirs is None:
        raise ChannelError("funding_created we did not ask for")
    txid = msg.funding_txid[::-1].hex()
    params = ChannelParams(op.ours, op.theirs, txid, msg.funding_output_index, op.funding_sat, Side.REMOTE,
                           op.channel_type)
    _ready(mgr, op, params)
    _check_our_first(mgr, op, msg.signature)
    _sign_theirs(mgr, op)
    cid = channel_id_of(txid, msg.funding_output_index)
    ch = _channel(mgr, op, cid, funding_tx=None)
    mgr.watch_funding(ch)
    with mgr.transaction() as tx:
        mgr.store(tx, ch, old_state="opening")
        mgr.send(op.peer_id, FundingSigned(cid, op.extra["their_commitment_sig"]), tx)
    crash_point("funding_signed_stored", mgr.ctx.node.network)
    return ch


# --- both ------------------------------------------------------------------------------------------------

def _ready(mgr: "ChannelManager", op: Opening, params: ChannelParams) -> None:
    """Check the first commitments and tell signd the channel."""
    assert op.theirs is not None
    spec = initial_spec(params, op.push_msat, op.feerate_per_kw)
    problem = check_initial(params, spec, extensions_for(params.channel_type))
    if problem:
        raise ChannelError(problem)
    t = op.theirs.basepoints
    setup = ChannelSetup(params.funding_txid, params.funding_output_index, params.funding_sat,
                         op.theirs.funding_pubkey,
                         {"revocation_basepoint": t.revocation, "payment_basepoint": t.payment,
                          "delayed_payment_basepoint": t.delayed_payment, "htlc_basepoint": t.htlc},
                         holder_to_self_delay=op.theirs.to_self_delay, counterparty_to_self_delay=op.ours.to_self_delay,
                         channel_type="anchors" if params.channel_type.anchors else "static_remotekey",
                         opener="holder" if params.opener is Side.LOCAL else "counterparty",
                         holder_shutdown_script=op.upfront or None)
    mgr.signer.ready_channel(op.dbid, setup)
    op.params, op.spec = params, spec


def _sign_theirs(mgr: "ChannelManager", op: Opening) -> None:
    assert op.params is not None and op.spec is not None and op.their_first_point is not None
    built = build_commitment(op.params, op.spec, Side.REMOTE, 0, op.their_first_point,
                             extensions_for(op.params.channel_type))
    sig, _ = mgr.signer.sign_counterparty_commitment(op.dbid, 0, built.tx.serialize(), op.their_first_point, [])
    op.extra["their_commitment_sig"] = sig


def _ready_and_sign_theirs(mgr: "ChannelManager", op: Opening, params: ChannelParams) -> None:
    _ready(mgr, op, params)
    _sign_theirs(mgr, op)


def _check_our_first(mgr: "ChannelManager", op: Opening, signature: bytes) -> None:
    """signd verifies their signature of our commitment 0 and records it as our latest."""
    assert op.params is not None and op.spec is not None
    built = build_commitment(op.params, op.spec, Side.LOCAL, 0, op.our_first_point,
                             extensions_for(op.params.channel_type))
    try:
        mgr.signer.validate_holder_commitment(op.dbid, 0, built.tx.serialize(), signature, [])
    except RpcError as e:
        raise ChannelError(f"bad signature of our first commitment: {e.message}") from None


def _channel(mgr: "ChannelManager", op: Opening, cid: bytes, funding_tx: str | None) -> Channel:
    assert op.params is not None and op.spec is not None and op.their_first_point is not None
    log = UpdateLog.start(op.params, op.spec, extensions_for(op.params.channel_type))
    # the upfront scripts are close data: closing.py reads them from `closing`
    upfront: dict[str, Any] = {"upfront_ours": op.upfront.hex(), "upfront_theirs": op.their_upfront.hex()}
    if op.upfront_key is not None:
        upfront["upfront_key"] = list(op.upfront_key)
    routing = {}
    if scid_alias_negotiated(mgr.peer_bits(op.peer_id)) or SCID_ALIAS_BIT in op.channel_type.bits:
        routing["local_alias"] = new_alias(mgr)
    return Channel(cid, op.peer_id, op.dbid, AWAITING_LOCK, op.params, log, op.min_depth,
                   {0: op.their_first_point}, private=op.private, funding_tx=funding_tx, closing=upfront,
                   routing=routing)


# --- option_scid_alias -----------------------------------------------------------------------------------

ALIAS_BLOCKS = (16_000_000, 16_250_000)   # far above any real block: an alias never names a real channel


def scid_alias_negotiated(peer_bits: set[int]) -> bool:
    """Whether the peer advertised option_scid_alias (we do)."""
    return SCID_ALIAS_BIT in {b & ~1 for b in peer_bits}


def new_alias(mgr: "ChannelManager") -> str:
    """A random short_channel_id alias, unrelated to the real one and unused by our other channels."""
    taken = {c.routing.get("local_alias") for c in mgr.channels.values()}
    while True:
        block = ALIAS_BLOCKS[0] + secrets.randbelow(ALIAS_BLOCKS[1] - ALIAS_BLOCKS[0])
        alias = format_scid(block << 40 | secrets.randbelow(1 << 24) << 16 | secrets.randbelow(1 << 16))
        if alias not in taken:
            return alias


def channel_ready(ch: Channel, second_point: bytes) -> ChannelReady:
    """Our channel_ready, with our alias when we chose one (BOLT-2: MUST with option_scid_alias)."""
    alias = ch.routing.get("local_alias")
    return ChannelReady(ch.channel_id, second_point, short_channel_id=parse_scid(alias) if alias else None)


def their_alias(ch: Channel, msg: ChannelReady) -> Channel:
    """The channel with the alias the peer's channel_ready gave (any channel_ready: the latest is kept)."""
    if msg.short_channel_id is None:
        return ch
    return replace(ch, routing={**ch.routing, "remote_alias": format_scid(msg.short_channel_id)})


def new_opening(mgr: "ChannelManager", peer_id: bytes, funding_sat: int, push_msat: int, feerate_per_kw: int,
                channel_type: ChannelType, private: bool) -> Opening:
    """An opening of ours, with a fresh channel index, its keys from signd and our upfront script."""
    if private and scid_alias_negotiated(mgr.peer_bits(peer_id)):
        channel_type = ChannelType(channel_type.bits | {SCID_ALIAS_BIT})   # the real scid stays ours alone
    dbid = mgr.next_dbid()
    keys = mgr.signer.channel_keys(dbid)
    op = Opening(Side.LOCAL, peer_id, temporary_id(peer_id, dbid), dbid, keys, our_config(mgr, keys, funding_sat),
                 funding_sat, push_msat, feerate_per_kw, channel_type, private=private)
    choose_upfront(mgr, op, mgr.peer_bits(peer_id))
    return op



def keep_their_alias(mgr: "ChannelManager", ch: Channel, msg: ChannelReady) -> None:
    """A later channel_ready with another alias: the latest is stored (BOLT-2: the receiver keeps one)."""
    new = their_alias(ch, msg)
    if new.routing != ch.routing:
        with mgr.transaction() as tx:
            mgr.store(tx, new)
