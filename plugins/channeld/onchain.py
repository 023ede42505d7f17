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

import hashlib
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select

from lnp_plugin_api import RpcError
from lnp_plugin_api.bolt3 import MAX_INDEX
from lnp_plugin_api.channel import CommitmentSpec, Htlc, Side
from lnp_plugin_api.commitment import BuiltCommitment, BuiltOutput, build_commitment
from lnp_plugin_api.onchain import (Action, Closing, Facts, Known, Spent, classify, commitment_number,
                                    must_force_close, plan)
from lnp_plugin_api.onchain_tx import (Sweep, SweepInput, Uneconomical, anchor_cpfp, htlc_transaction, output_input,
                                       second_stage_input, stage_output_input, sweep, wallet_input)
from lnp_plugin_api.services import WalletDestination
from lnp_plugin_api.onion_errors import PERMANENT_CHANNEL_FAILURE
from lnp_plugin_api.tx import SIGHASH_ALL, Tx, TxIn, der_to_compact

from .errors import crash_point
from .document import AWAITING_LOCK, CLOSED, FAILED, FORCE_CLOSING, NORMAL, ONCHAIN, Channel
from .storage import remote_commitments

if TYPE_CHECKING:
    from .manager import ChannelManager

L, R = Side.LOCAL, Side.REMOTE
CLOSE_DEPTH = 6          # confirmations of every resolving transaction before the channel is `closed`
OPEN_STATES = (AWAITING_LOCK, NORMAL, FAILED)
DUST = 330


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
    crash_point("force_closing_stored", mgr.ctx.node.network)
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
        crash_point("commitment_tx_stored", mgr.ctx.node.network)
    watch_funding_spend(mgr, ch)
    _broadcast(mgr, oc["commitment_tx"], "our commitment")
    _bump(mgr, ch.channel_id)
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
    watched (channels opened before channeld watched it; watchd keeps one watch per outpoint); a channel
    awaiting its funding: its peer kept connected, and the funding transaction (opener) sent again."""
    if ch.state == FORCE_CLOSING:
        _sign_and_send(mgr, ch)
    elif ch.state in OPEN_STATES:
        watch_funding_spend(mgr, ch)
    if ch.state == AWAITING_LOCK:   # stopped between storing the channel and sending the funding transaction
        mgr._keep_connected(ch.peer_id)
        if ch.funding_tx:
            _broadcast(mgr, ch.funding_tx, "funding transaction")


# --- the chain's events ---

def concerns(ch: Channel, body: dict[str, Any]) -> bool:
    """Whether watchd's outpoint_spent `body` is about `ch` (its funding output, or its closing's outputs)."""
    txid, _, vout = str(body.get("outpoint", "")).partition(":")
    p = ch.params
    return ((txid, vout) == (p.funding_txid, str(p.funding_output_index))
            or ch.onchain.get("spend", {}).get("txid") == txid
            or any(s["txid"] == txid for s in ch.onchain.get("sent", {}).values())
            # a cheater's HTLC transaction (its output is taken by the penalty)
            or any(s["txid"] == txid for s in ch.onchain.get("spent", {}).values()))


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
        elif ch.state == ONCHAIN and concerns(ch, body):   # the output of an HTLC transaction (ours or a cheater's)
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
            # from its block: watchd may have processed later blocks (spending them) before this watch
            mgr.watch.watch_outpoint(closing.txid, out.index, since=height)
    step(mgr, ch.channel_id)


def _output_spent(mgr: "ChannelManager", ch: Channel, vout: int, raw: str, height: int | None) -> None:
    spending = _record(mgr, ch, "spent", str(vout), ch.onchain["spend"]["txid"], vout, raw, height)
    if any(s["txid"] == spending.txid() and k.startswith("htlc_tx:") for k, s in ch.onchain.get("sent", {}).items()):
        vin = next(k for k, i in enumerate(spending.inputs) if i.vout == vout and i.txid == ch.onchain["spend"]["txid"])
        # our HTLC transaction's output (swept after the delay), looked for from the block of that transaction
        mgr.watch.watch_outpoint(spending.txid(), vin, since=height)
    step(mgr, ch.channel_id)


def _record(mgr: "ChannelManager", ch: Channel, field: str, key: str, txid: str, vout: int, raw: str,
            height: int | None) -> Tx:
    """Store what spent output `txid:vout` (under onchain[field][key]); the spending transaction."""
    spending = Tx.parse(bytes.fromhex(raw))
    vin = next(k for k, i in enumerate(spending.inputs) if i.txid == txid and i.vout == vout)
    oc = dict(ch.onchain)
    # an HTLC transaction's output for input `vin` is output `vin` (SIGHASH_SINGLE): its amount, for a penalty
    amount = spending.outputs[vin].amount_sat if vin < len(spending.outputs) else None
    oc[field] = {**oc.get(field, {}), key: {
        "txid": spending.txid(), "height": height, "vin": vin, "amount_sat": amount,
        "witness": [w.hex() for w in spending.inputs[vin].witness]}}
    with mgr.transaction() as tx:
        mgr.store(tx, replace(ch, onchain=oc))
    return spending


def _mined_at(oc: dict[str, Any], txid: str) -> int | None:
    """The block of a transaction spending one of the closing's outputs, as recorded (None: unknown)."""
    for record in oc.get("spent", {}).values():
        if record["txid"] == txid:
            return record["height"]
    return None


def on_block(mgr: "ChannelManager", channel_id: bytes, height: int) -> None:
    """A new block: an open channel whose HTLC nears its deadline goes to chain; a closing one moves on."""
    ch = mgr.channels.get(channel_id)
    if ch is None:
        return
    if ch.state == NORMAL:
        for owner in (L, R):
            htlc = must_force_close(ch.log.latest(owner), height, known_preimages(ch))
            if htlc is not None:
                force_close(mgr, channel_id, f"HTLC {htlc.id} near its expiry {htlc.cltv_expiry} at {height}")
                return
    elif ch.state == FORCE_CLOSING:
        _broadcast(mgr, ch.onchain.get("commitment_tx", ""), "our commitment")
        _bump(mgr, channel_id)
    elif ch.state == ONCHAIN:
        step(mgr, channel_id, height)


# --- preimages ---

def known_preimages(ch: Channel) -> dict[bytes, bytes]:
    """The preimages of HTLCs offered to us that we know, by payment hash: kept per HTLC (`keep_preimage`,
    and normal.py when it fulfills) until the HTLC is gone from both commitments."""
    found = [bytes.fromhex(info["preimage"]) for key, info in ch.htlcs.items()
             if key.startswith("in:") and info.get("preimage")]
    return {hashlib.sha256(p).digest(): p for p in found}


def keep_preimage(mgr: "ChannelManager", channel_id: bytes, htlc_id: int, preimage: bytes) -> None:
    """The preimage of HTLC `htlc_id` offered to us, decided while the peer was away or once the channel
    went to chain: kept, so that it forces the channel to chain before the HTLC expires (must_force_close)
    and is claimed there (HTLC-success, or by the preimage path from their commitment)."""
    ch = mgr.channels.get(channel_id)
    key = f"in:{htlc_id}"
    present = any(h.offerer is R and h.id == htlc_id for owner in (L, R) for h in ch.log.latest(owner).htlcs) \
        if ch is not None else False
    if ch is None or not present or ch.htlcs.get(key, {}).get("preimage") == preimage.hex():
        return
    with mgr.transaction() as tx:
        mgr.store(tx, replace(ch, htlcs={**ch.htlcs, key: {**ch.htlcs.get(key, {}), "preimage": preimage.hex()}}))
    if ch.state == ONCHAIN:
        step(mgr, channel_id)


# --- classification and resolution ---

def _classify(mgr: "ChannelManager", ch: Channel, spending: Tx) -> Closing:
    number = ch.log.local_number
    pcp = mgr.signer.per_commitment_point(ch.dbid, number)
    local = build_commitment(ch.params, ch.log.latest(L), L, number, pcp, ch.extensions)
    remote: dict[int, BuiltCommitment] = {}
    rn = ch.log.remote_number
    if rn in ch.their_points:
        remote[rn] = build_commitment(ch.params, ch.log.latest(R), R, rn, ch.their_points[rn], ch.extensions)
    revoked: dict[int, CommitmentSpec] = {}
    n = commitment_number(ch.params, spending)
    if n is not None and n < rn and ch.their_secrets.get(MAX_INDEX - n) is not None:
        spec = _revoked_spec(mgr, ch, n)
        if spec is not None:
            revoked[n] = spec
    return classify(spending, Known(ch.params, ch.extensions, local, remote, revoked, ch.their_secrets))


def _revoked_spec(mgr: "ChannelManager", ch: Channel, number: int) -> CommitmentSpec | None:
    """What we kept of their commitment `number` when we signed it (normal.py's _remember_remote): its
    HTLCs and feerate, enough to rebuild the scripts of its HTLC outputs (balances are not kept: 0)."""
    t = remote_commitments
    with mgr.ctx.storage.begin() as conn:
        row = conn.execute(select(t.c.htlcs, t.c.feerate_per_kw).where(
            t.c.channel_id == ch.channel_id.hex(), t.c.number == number)).first()
    if row is None:
        return None
    return CommitmentSpec(int(row.feerate_per_kw), 0, 0, tuple(Htlc.from_json(h) for h in json.loads(row.htlcs)))


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
    facts = Facts(height, oc["spend"]["height"], known_preimages(ch), spent, stage_spent)
    covered = _covered(oc)
    for action in plan(closing, facts):
        for stage in action.stages:   # a cheater's HTLC transaction: learn when its output is spent
            mgr.watch.watch_outpoint(*stage, since=_mined_at(oc, stage[0]))
        if action.kind == "penalty" and {(closing.txid, i) for i in action.outputs} | set(action.stages) <= covered:
            continue   # our penalty spends them all: its spends are still being reported one by one
        if action.kind in ("sweep", "penalty", "htlc_tx", "sweep_stage") and action.due(height):
            key = f"{action.kind}:{_target(action)}"
            _make(mgr, ch.channel_id, key, lambda a=action: _build(mgr, ch, closing, a))
        elif action.kind == "cpfp":
            _cpfp(mgr, ch, closing)
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


def _covered(oc: dict[str, Any]) -> set[tuple[str, int]]:
    """The outputs that a transaction of ours spends, unless another transaction spent one of its inputs
    (then it can never confirm, and what else it spends is to be taken again)."""
    seen = {(oc["spend"]["txid"], int(k)): v["txid"] for k, v in oc.get("spent", {}).items()}
    seen |= {(k.split(":")[0], int(k.split(":")[1])): v["txid"] for k, v in oc.get("stage_spent", {}).items()}
    covered: set[tuple[str, int]] = set()
    for s in oc.get("sent", {}).values():
        outpoints = {(i.txid, i.vout) for i in Tx.parse(bytes.fromhex(s["tx"])).inputs}
        if all(seen.get(o, s["txid"]) == s["txid"] for o in outpoints):
            covered |= outpoints
    return covered


def _spent(v: dict[str, Any], ours: set[str]) -> Spent:
    return Spent(v["txid"], v["height"], v["txid"] in ours, tuple(bytes.fromhex(w) for w in v["witness"]),
                 int(v["vin"]))


def _target(action: Action) -> str:
    """What an action spends, as its key in onchain.sent."""
    if action.kind == "penalty":
        return ",".join(map(str, action.outputs)) + "".join(f"+{t}:{v}" for t, v in action.stages)
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
    if not any(h.offerer is L and h.id == htlc.id for owner in (L, R) for h in ch.log.latest(owner).htlcs):
        return   # in a revoked commitment only: settled off chain since (resolved then)
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
    except RpcError as e:   # e.g. no wallet coin to pay an HTLC transaction's fee: the next block tries again
        mgr.ctx.log.warning("channel %s: %s not made: %s", channel_id.hex(), key, e.message)
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
                               preimage=action.preimage, commitment_number=closing.number)]
    elif action.kind == "sweep_stage":
        assert action.txid is not None
        stage = next(s for s in closing.built.second_stages if s.output_index == action.output)
        inputs = [stage_output_input(action.txid, stage, "delayed", pcp, vout=action.vout,
                                     commitment_number=closing.number)]
    else:
        inputs = [output_input(closing.txid, by_index[i], "revocation", pcp, closing.revocation_secret,
                               commitment_number=closing.number) for i in action.outputs]
        inputs += [_revoked_stage_input(ch, closing, by_index, txid, vout) for txid, vout in action.stages]
    dest = mgr.funding.new_destination()
    made = sweep(action.kind if action.kind == "penalty" else action.path or "sweep", inputs, dest.script,
                 mgr.feerate_per_kw(), destination_path=dest.key)
    return _signed(mgr, ch, made)


def _revoked_stage_input(ch: Channel, closing: Closing, by_index: dict[int, BuiltOutput], txid: str,
                         vout: int) -> SweepInput:
    """Output `vout` of the cheater's HTLC transaction `txid` (which spent one of the revoked commitment's
    HTLC outputs by its input `vout`), taken by the revocation key: its script is the second stage's of
    that HTLC output, its amount the one seen on chain."""
    assert closing.built is not None
    index, seen = next((int(k), v) for k, v in ch.onchain["spent"].items() if (v["txid"], v["vin"]) == (txid, vout))
    desc = by_index[index].descriptor
    assert desc is not None and desc.second_stage is not None
    amount = seen.get("amount_sat") or desc.second_stage.amount_sat   # recorded since; else as pre-signed
    return second_stage_input(txid, vout, int(amount), desc.second_stage, "revocation",
                              closing.built.keys.per_commitment_point, closing.revocation_secret, closing.number)


def _signed(mgr: "ChannelManager", ch: Channel, made: Sweep) -> Sweep:
    sigs = [mgr.signer.sign_input(ch.dbid, r) for r in made.sign_requests()]
    return replace(made, tx=made.finalize(sigs))


def _htlc_tx(mgr: "ChannelManager", ch: Channel, built: BuiltCommitment, action: Action) -> Sweep | None:
    """Our HTLC-timeout/success transaction for commitment output `action.output`, with the peer's
    signature; signd adds ours (sign_holder_htlc)."""
    k = next(k for k, s in enumerate(built.second_stages) if s.output_index == action.output)
    stage = built.second_stages[k]
    remote_sig = der_to_compact(bytes.fromhex(ch.onchain["htlc_sigs"][k])[:-1])
    if stage.stage.remote_sighash == SIGHASH_ALL:   # its fee was taken from the HTLC amount
        return _signed(mgr, ch, htlc_transaction(built, stage, remote_sig, action.preimage))
    # anchors: it carries no fee (the peer signed SIGHASH_SINGLE|ANYONECANPAY): a wallet coin pays it
    return _with_fee_coin(mgr, ch, lambda coin, dest, rate: htlc_transaction(
        built, stage, remote_sig, action.preimage, [coin], dest.script, rate, change_path=dest.key))


FEE_COIN_WEIGHT = 1500      # above any HTLC transaction's or anchor child's weight with one wallet input


def _bump(mgr: "ChannelManager", channel_id: bytes) -> None:
    """Our commitment just broadcast (or not mined yet at a new block): CPFP through our anchor if needed
    (`plan`'s `cpfp` does it too, once the commitment is seen in the mempool)."""
    ch = mgr.channels[channel_id]
    if "commitment_tx" in ch.onchain and "cpfp:anchor" not in ch.onchain.get("sent", {}):
        closing = _classify(mgr, ch, Tx.parse(bytes.fromhex(ch.onchain["commitment_tx"])))
        if closing.kind == "local" and any(o.descriptor and o.descriptor.kind == "anchor" for o in closing.outputs):
            _cpfp(mgr, ch, closing)


def _cpfp(mgr: "ChannelManager", ch: Channel, closing: Closing) -> None:
    """Our commitment is in the mempool below the feerate we want it mined at (our estimate, or the
    `onchain_feerate_per_kw` option): a child spending our anchor and a wallet coin pays for both."""
    assert closing.built is not None
    parent = Tx.parse(bytes.fromhex(ch.onchain["commitment_tx"]))
    weight = weight_of(parent)
    target = max(mgr.feerate_per_kw(), mgr.options.onchain_feerate_per_kw)
    if closing.built.fee_sat * 1000 >= target * weight:
        return
    extra = target * weight // 1000 - closing.built.fee_sat
    _make(mgr, ch.channel_id, "cpfp:anchor", lambda: _with_fee_coin(mgr, ch, lambda coin, dest, rate: anchor_cpfp(
        closing.built, L, [coin], dest.script, rate, weight, closing.built.fee_sat, destination_path=dest.key),
        target, extra))


def weight_of(tx: Tx) -> int:
    """A signed transaction's weight: 3 x its size without witnesses, plus its full size."""
    bare = Tx(tuple(TxIn(i.txid, i.vout, i.sequence) for i in tx.inputs), tx.outputs, tx.locktime, tx.version)
    return 3 * len(bare.serialize()) + len(tx.serialize())


def _with_fee_coin(mgr: "ChannelManager", ch: Channel, build: Callable[[SweepInput, WalletDestination, int], Sweep],
                   rate: int | None = None, extra_sat: int = 0) -> Sweep:
    """`build` (at feerate `rate`, default our estimate) with a wallet coin reserved for its fee (and
    `extra_sat` more) and wallet change, signed: the channel's inputs by signd's channel policy, the coin
    by the wallet (which signs that coin only). The coin is released if that fails."""
    rate = mgr.feerate_per_kw() if rate is None else rate
    coin = mgr.funding.fee_coin(rate * FEE_COIN_WEIGHT // 1000 + extra_sat + 2 * DUST)
    try:
        made = build(wallet_input(coin.txid, coin.vout, coin.value_sat, coin.pubkey, coin.key),
                     mgr.funding.new_destination(), rate)
        sigs = [b"" if r.path == "wallet" else mgr.signer.sign_input(ch.dbid, r) for r in made.sign_requests()]
        signed = mgr.funding.sign_fee_coin(coin.reservation, made.wallet_psbt(coin.fingerprint, coin.account))
        for i, sig in made.wallet_signatures(signed).items():
            sigs[i] = sig
        return replace(made, tx=made.finalize(sigs))
    except Exception:
        mgr.funding.release(coin.reservation)
        raise
