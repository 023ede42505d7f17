"""channeld on chain (BOLT-5): force close, the funding output's spend, and the resolution of its outputs.

Everything runs on the peer's worker. The channel document's `onchain` mapping is the whole state:
- `reason`, `number`: why and which of our commitments we force-closed with (`commitment`: its txid);
- `spend`: the transaction that spent the funding output {txid, tx, height (None: in the mempool)};
- `spent`: per output index of that transaction, what spent it {txid, height, witness, vin};
- `sent`: per action key, the transaction we made for it {txid, tx}, stored BEFORE it is broadcast, so a
  restart broadcasts the same transaction again (never a second, different one).
`plan` (lnp_plugin_api.onchain) is called again at each block with the facts as stored: no other state.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from lnp_plugin_api import RpcError
from lnp_plugin_api.channel import Htlc, Side
from lnp_plugin_api.commitment import BuiltCommitment, build_commitment
from lnp_plugin_api.onchain import Action, Closing, Facts, Known, Spent, classify, must_force_close, plan
from lnp_plugin_api.onchain_tx import Sweep, Uneconomical, htlc_transaction, output_input, stage_output_input, sweep
from lnp_plugin_api.onion_errors import PERMANENT_CHANNEL_FAILURE
from lnp_plugin_api.tx import SIGHASH_ALL, Tx, der_to_compact

from .document import AWAITING_LOCK, CLOSED, FAILED, FORCE_CLOSING, NORMAL, ONCHAIN, Channel

if TYPE_CHECKING:
    from .manager import ChannelManager

L, R = Side.LOCAL, Side.REMOTE
CLOSE_DEPTH = 6          # confirmations of every resolving transaction before the channel is `closed`
OPEN_STATES = (AWAITING_LOCK, NORMAL, FAILED)


def may_force_close(ch: Channel) -> str | None:
    """Why `ch` must not go to chain by our commitment (None: it may)."""
    if ch.state not in OPEN_STATES:
        return f"channel is {ch.state}"
    if ch.failure and ch.failure.startswith("data loss"):
        # we are behind: our commitment is revoked, broadcasting it would give everything to the peer
        return "we lost data (the peer has newer state): our commitment must not be broadcast"
    return None


def force_close(mgr: "ChannelManager", channel_id: bytes, reason: str) -> dict[str, Any]:
    """Put our latest commitment on chain: persist `force_closing`, have signd sign it (signd then
    treats the channel as gone to chain), broadcast, watch the funding output. {channel_id, txid}."""
    ch = mgr.channels.get(channel_id)
    if ch is None:
        raise RpcError(RpcError.INVALID_PARAMS, f"no channel {channel_id.hex()}")
    if ch.state in (FORCE_CLOSING, ONCHAIN, CLOSED):
        return {"channel_id": channel_id.hex(), "txid": ch.onchain.get("commitment"), "state": ch.state}
    refused = may_force_close(ch)
    if refused:
        raise RpcError(RpcError.REFUSED, refused)
    number = ch.log.local_number
    with mgr.transaction() as tx:   # before signd signs: a restart finishes the close, never forgets it
        mgr.store(tx, ch.with_state(FORCE_CLOSING, onchain={"reason": reason, "number": number}))
    return _sign_and_send(mgr, mgr.channels[channel_id])


def _sign_and_send(mgr: "ChannelManager", ch: Channel) -> dict[str, Any]:
    oc = dict(ch.onchain)
    if "commitment_tx" not in oc:
        going = mgr.signer.sign_holder_commitment(ch.dbid, int(oc["number"]))
        # the peer's signatures of our HTLC transactions (in the order validated: the second stages')
        oc.update(commitment=going["txid"], commitment_tx=going["tx"],
                  htlc_sigs=[h["counterparty_signature"] for h in going.get("htlcs", [])])
        with mgr.transaction() as tx:
            mgr.store(tx, replace(ch, onchain=oc))
    watch_funding_spend(mgr, ch)
    _broadcast(mgr, oc["commitment_tx"], "our commitment")
    mgr.ctx.log.warning("channel %s force-closed (%s): commitment %s", ch.channel_id.hex(), oc["reason"],
                        oc["commitment"])
    return {"channel_id": ch.channel_id.hex(), "txid": oc["commitment"], "state": FORCE_CLOSING}


def watch_funding_spend(mgr: "ChannelManager", ch: Channel) -> None:
    """Have watchd tell us (durably) when the funding output is spent."""
    mgr.watch.watch_outpoint(ch.params.funding_txid, ch.params.funding_output_index)


def _broadcast(mgr: "ChannelManager", raw_hex: str, what: str) -> None:
    try:
        mgr.chain.broadcast(bytes.fromhex(raw_hex))
    except RpcError as e:   # not yet valid (a delay), or already spent: the next block tries again
        mgr.ctx.log.info("%s not broadcast: %s", what, e.message)


def resume(mgr: "ChannelManager", ch: Channel) -> None:
    """After a restart: a force close signed or not yet, broadcast again; an open channel's funding output
    watched (channels opened before channeld watched it; watchd keeps one watch per outpoint)."""
    if ch.state == FORCE_CLOSING:
        _sign_and_send(mgr, ch)
    elif ch.state in OPEN_STATES:
        watch_funding_spend(mgr, ch)


# --- the chain's events ---

def concerns(ch: Channel, body: dict[str, Any]) -> bool:
    """Whether watchd's outpoint_spent `body` is about `ch` (its funding output, or its closing's outputs)."""
    txid, _, vout = str(body.get("outpoint", "")).partition(":")
    p = ch.params
    return ((txid, vout) == (p.funding_txid, str(p.funding_output_index))
            or ch.onchain.get("spend", {}).get("txid") == txid
            or any(s["txid"] == txid for s in ch.onchain.get("sent", {}).values()))


def on_spent(mgr: "ChannelManager", peer_id: bytes, body: dict[str, Any]) -> None:
    """watchd's outpoint_spent for the peer's channels: the funding output (→ `onchain`) or an output of
    the closing transaction."""
    outpoint, raw, height = str(body.get("outpoint", "")), str(body.get("spending_tx", "")), body.get("height")
    txid, _, vout = outpoint.partition(":")
    for ch in [c for c in mgr.channels.values() if c.peer_id == peer_id]:
        p = ch.params
        if (txid, vout) == (p.funding_txid, str(p.funding_output_index)) and ch.state != CLOSED:
            if ch.closing.get("txid") and Tx.parse(bytes.fromhex(raw)).txid() == ch.closing["txid"]:
                continue   # our agreed mutual close: closing.py follows it to `closed`
            _funding_spent(mgr, ch, raw, height)
        elif ch.state == ONCHAIN and ch.onchain.get("spend", {}).get("txid") == txid:
            _output_spent(mgr, ch, int(vout), raw, height)
        elif ch.state == ONCHAIN and concerns(ch, body):   # the output of our HTLC transaction
            _record(mgr, ch, "stage_spent", f"{txid}:{vout}", txid, int(vout), raw, height)


def _funding_spent(mgr: "ChannelManager", ch: Channel, raw: str, height: int | None) -> None:
    spending = Tx.parse(bytes.fromhex(raw))
    oc = dict(ch.onchain)
    spend = oc.get("spend")
    if spend is not None and spend["txid"] == spending.txid() and (spend["height"] == height or height is None):
        return   # the same event again
    oc["spend"] = {"txid": spending.txid(), "tx": raw, "height": height}
    if spend is None or spend["txid"] != spending.txid():
        oc["spent"] = {}   # another transaction (a reorg): what we knew of the outputs is void
    closing = _classify(mgr, replace(ch, onchain=oc), spending)
    oc["kind"] = closing.kind
    with mgr.transaction() as tx:
        mgr.store(tx, ch.with_state(ONCHAIN, onchain=oc))
    mgr.ctx.log.warning("channel %s: funding spent by %s (%s)", ch.channel_id.hex(), closing.txid, closing.kind)
    for out in closing.outputs:
        if out.descriptor is not None and out.descriptor.kind != "anchor":
            mgr.watch.watch_outpoint(closing.txid, out.index)
    step(mgr, ch.channel_id)


def _output_spent(mgr: "ChannelManager", ch: Channel, vout: int, raw: str, height: int | None) -> None:
    spending = _record(mgr, ch, "spent", str(vout), ch.onchain["spend"]["txid"], vout, raw, height)
    if any(s["txid"] == spending.txid() and k.startswith("htlc_tx:") for k, s in ch.onchain.get("sent", {}).items()):
        vin = next(k for k, i in enumerate(spending.inputs) if i.vout == vout and i.txid == ch.onchain["spend"]["txid"])
        mgr.watch.watch_outpoint(spending.txid(), vin)   # our HTLC transaction's output (swept after the delay)
    step(mgr, ch.channel_id)


def _record(mgr: "ChannelManager", ch: Channel, field: str, key: str, txid: str, vout: int, raw: str,
            height: int | None) -> Tx:
    """Store what spent output `txid:vout` (under onchain[field][key]); the spending transaction."""
    spending = Tx.parse(bytes.fromhex(raw))
    vin = next(k for k, i in enumerate(spending.inputs) if i.txid == txid and i.vout == vout)
    oc = dict(ch.onchain)
    oc[field] = {**oc.get(field, {}), key: {
        "txid": spending.txid(), "height": height, "vin": vin,
        "witness": [w.hex() for w in spending.inputs[vin].witness]}}
    with mgr.transaction() as tx:
        mgr.store(tx, replace(ch, onchain=oc))
    return spending


def on_block(mgr: "ChannelManager", channel_id: bytes, height: int) -> None:
    """A new block: an open channel whose HTLC nears its deadline goes to chain; a closing one moves on."""
    ch = mgr.channels.get(channel_id)
    if ch is None:
        return
    if ch.state == NORMAL:
        for owner in (L, R):
            htlc = must_force_close(ch.log.latest(owner), height, {})
            if htlc is not None:
                force_close(mgr, channel_id, f"HTLC {htlc.id} near its expiry {htlc.cltv_expiry} at {height}")
                return
    elif ch.state == FORCE_CLOSING:
        _broadcast(mgr, ch.onchain.get("commitment_tx", ""), "our commitment")
    elif ch.state == ONCHAIN:
        step(mgr, channel_id, height)


# --- classification and resolution ---

def _classify(mgr: "ChannelManager", ch: Channel, spending: Tx) -> Closing:
    number = ch.log.local_number
    pcp = mgr.signer.per_commitment_point(ch.dbid, number)
    local = build_commitment(ch.params, ch.log.latest(L), L, number, pcp, ch.extensions)
    remote: dict[int, BuiltCommitment] = {}
    rn = ch.log.remote_number
    if rn in ch.their_points:
        remote[rn] = build_commitment(ch.params, ch.log.latest(R), R, rn, ch.their_points[rn], ch.extensions)
    return classify(spending, Known(ch.params, ch.extensions, local, remote, secrets=ch.their_secrets))


def step(mgr: "ChannelManager", channel_id: bytes, height: int | None = None) -> None:
    """Plan with the stored facts and make each due transaction (stored, then broadcast)."""
    ch = mgr.channels.get(channel_id)
    if ch is None or ch.state != ONCHAIN:
        return
    height = mgr.height() if height is None else height
    oc = ch.onchain
    closing = _classify(mgr, ch, Tx.parse(bytes.fromhex(oc["spend"]["tx"])))
    sent = oc.get("sent", {})
    ours = {s["txid"] for s in sent.values()}
    spent = {int(k): _spent(v, ours) for k, v in oc.get("spent", {}).items()}
    stage_spent = {(k.split(":")[0], int(k.split(":")[1])): _spent(v, ours)
                   for k, v in oc.get("stage_spent", {}).items()}
    facts = Facts(height, oc["spend"]["height"], {}, spent, stage_spent)
    for action in plan(closing, facts):
        if action.kind in ("sweep", "penalty", "htlc_tx", "sweep_stage") and action.due(height):
            key = f"{action.kind}:{_target(action)}"
            _make(mgr, ch.channel_id, key, lambda a=action: _build(mgr, ch, closing, a))
        elif action.kind in ("fail_htlc", "preimage") and action.htlc is not None:
            _resolve_offered(mgr, channel_id, action.htlc, action.preimage)
        elif action.kind == "done":
            heights = [s.height for s in [*spent.values(), *stage_spent.values()]] + [facts.confirmed]
            if all(h is not None and height - h + 1 >= CLOSE_DEPTH for h in heights):
                with mgr.transaction() as tx:
                    mgr.store(tx, mgr.channels[channel_id].with_state(CLOSED))
    ch = mgr.channels[channel_id]
    for key, s in ch.onchain.get("sent", {}).items():   # not mined yet: again (a restart, a full mempool)
        if s["txid"] not in {v.txid for v in [*spent.values(), *stage_spent.values()] if v.height is not None}:
            _broadcast(mgr, s["tx"], key)


def _spent(v: dict[str, Any], ours: set[str]) -> Spent:
    return Spent(v["txid"], v["height"], v["txid"] in ours, tuple(bytes.fromhex(w) for w in v["witness"]),
                 int(v["vin"]))


def _target(action: Action) -> str:
    """What an action spends, as its key in onchain.sent."""
    if action.kind == "penalty":
        return ",".join(map(str, action.outputs))
    if action.kind == "sweep_stage":
        return f"{action.txid}:{action.vout}"
    return str(action.output)


def _resolve_offered(mgr: "ChannelManager", channel_id: bytes, htlc: Htlc, preimage: bytes | None) -> None:
    """An HTLC we offered is settled on chain: by the peer's claim with `preimage` (fulfilled), or timed
    out for good (failed). htlc_resolved once (onchain.resolved_htlcs)."""
    ch = mgr.channels[channel_id]
    done = list(ch.onchain.get("resolved_htlcs", []))
    if htlc.offerer is not L or htlc.id in done:
        return
    oc = {**ch.onchain, "resolved_htlcs": done + [htlc.id]}
    with mgr.transaction() as tx:
        mgr.store(tx, replace(ch, onchain=oc))
        tx.emit("htlc_resolved", {"channel_id": channel_id.hex(), "htlc_id": htlc.id,
                                  "payment_hash": htlc.payment_hash.hex(), "amount_msat": htlc.amount_msat,
                                  "preimage": preimage.hex() if preimage else None, "failure_onion": None,
                                  "failure_code": None if preimage else PERMANENT_CHANNEL_FAILURE})


def _make(mgr: "ChannelManager", channel_id: bytes, key: str, build: Callable[[], Sweep | None]) -> None:
    ch = mgr.channels[channel_id]
    if key in ch.onchain.get("sent", {}):
        return
    try:
        made = build()
    except Uneconomical as e:
        mgr.ctx.log.info("channel %s: %s not worth sweeping yet: %s", channel_id.hex(), key, e)
        return
    if made is None:
        return
    oc = dict(ch.onchain)
    oc["sent"] = {**oc.get("sent", {}), key: {"txid": made.txid, "tx": made.tx.serialize().hex()}}
    with mgr.transaction() as tx:
        mgr.store(tx, replace(ch, onchain=oc))
    _broadcast(mgr, oc["sent"][key]["tx"], key)


def _build(mgr: "ChannelManager", ch: Channel, closing: Closing, action: Action) -> Sweep | None:
    """The signed transaction for a `sweep` or `penalty` action, to a fresh wallet key."""
    assert closing.built is not None
    by_index = {o.index: o for o in closing.outputs}
    pcp = closing.built.keys.per_commitment_point
    if action.kind == "htlc_tx":
        return _htlc_tx(mgr, ch, closing.built, action)
    if action.kind == "sweep":
        assert action.output is not None and action.path is not None
        inputs = [output_input(closing.txid, by_index[action.output], action.path, pcp,
                               commitment_number=closing.number)]
    elif action.kind == "sweep_stage":
        assert action.txid is not None
        stage = next(s for s in closing.built.second_stages if s.output_index == action.output)
        inputs = [stage_output_input(action.txid, stage, "delayed", pcp, vout=action.vout,
                                     commitment_number=closing.number)]
    else:
        inputs = [output_input(closing.txid, by_index[i], "revocation", pcp, closing.revocation_secret,
                               commitment_number=closing.number) for i in action.outputs]
    dest = mgr.funding.new_destination()
    made = sweep(action.kind if action.kind == "penalty" else action.path or "sweep", inputs, dest.script,
                 mgr.feerate_per_kw(), destination_path=dest.key)
    return _signed(mgr, ch, made)


def _signed(mgr: "ChannelManager", ch: Channel, made: Sweep) -> Sweep:
    sigs = [mgr.signer.sign_input(ch.dbid, r) for r in made.sign_requests()]
    return replace(made, tx=made.finalize(sigs))


def _htlc_tx(mgr: "ChannelManager", ch: Channel, built: BuiltCommitment, action: Action) -> Sweep | None:
    """Our HTLC-timeout/success transaction for commitment output `action.output`, with the peer's
    signature; signd adds ours (sign_holder_htlc)."""
    k = next(k for k, s in enumerate(built.second_stages) if s.output_index == action.output)
    stage = built.second_stages[k]
    if stage.stage.remote_sighash != SIGHASH_ALL:
        # anchors: the HTLC transaction carries no fee; wallet fee inputs need a wallet request channeld lacks
        mgr.ctx.log.warning("channel %s: HTLC transaction with anchors needs fee inputs (not supported yet)",
                            ch.channel_id.hex())
        return None
    remote_sig = der_to_compact(bytes.fromhex(ch.onchain["htlc_sigs"][k])[:-1])
    return _signed(mgr, ch, htlc_transaction(built, stage, remote_sig, action.preimage))
