"""A channel in normal operation (BOLT-2): updates, commitment_signed, revoke_and_ack, and the HTLCs' fate.

Every function runs on the peer's worker. Each change of the update log is written with the message it
causes (persist before send), in the worker's batch: one storage transaction for every input it
handles in one go (batch.py); the log does the BOLT-2 bookkeeping
(`lnp_plugin_api.channel_updates`), the extensions the per-update rules, signd every signature.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any


from lnp_plugin_api import Continue, Fail, Resolve, RpcError
from lnp_plugin_api.bolt3 import MAX_INDEX, ShachainError, point
from lnp_plugin_api.channel import Side, Update, UpdateRefused
from lnp_plugin_api.channel_fees import dust_exposure_msat
from lnp_plugin_api.channel_updates import ProtocolViolation, update_owner
from lnp_plugin_api.commitment import BuiltCommitment, build_commitment
from lnp_plugin_api.messages import (CommitmentSigned, Message, RevokeAndAck, UpdateAddHtlc, UpdateFailHtlc,
                                     UpdateFailMalformedHtlc, UpdateFee, UpdateFulfillHtlc)
from lnp_plugin_api.onion import OnionError, PACKET_SIZE, process_onion, sha256_of_onion
from lnp_plugin_api.onion_errors import (INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, TEMPORARY_CHANNEL_FAILURE,
                                         TEMPORARY_NODE_FAILURE,
                                         UNKNOWN_NEXT_PEER, create_error_packet, failure)
from lnp_plugin_api.services import HtlcTx

from . import onchain
from .document import FORCE_CLOSING, NORMAL, ONCHAIN, SHUTDOWN, Channel
from .errors import ChannelError, crash_point
from .storage import remote_commitments

if TYPE_CHECKING:
    from .manager import ChannelManager

L, R = Side.LOCAL, Side.REMOTE
_INSERT_REMOTE = remote_commitments.insert()   # built once: one row per commitment we sign


def usable(mgr: "ChannelManager", peer_id: bytes, channel_id: bytes) -> Channel:
    """The peer's channel in `normal` state, or a ChannelError."""
    ch = mgr.channels.get(channel_id)
    if ch is None or ch.peer_id != peer_id:
        raise ChannelError("message for no channel of ours", warning=True)
    if ch.state not in (NORMAL, SHUTDOWN):   # after shutdown, the HTLCs left are settled as usual
        raise ChannelError(f"channel is {ch.state}, not normal")
    if channel_id not in mgr.live:
        # the peer broke BOLT-2's order (or a message of an earlier connection arrived late): ignored with a
        # warning, never a reason to fail the channel; what matters is retransmitted after reestablish
        raise ChannelError(f"channel {channel_id.hex()} not reestablished yet: message ignored", warning=True)
    return ch


def dust_problem(mgr: "ChannelManager", ch: Channel) -> str | None:
    """Why the HTLCs trimmed from either pending commitment are more than we accept to lose, or None."""
    limit = mgr.options.max_dust_htlc_exposure_msat
    for owner in (L, R):
        exposure = dust_exposure_msat(ch.params, ch.log.pending(owner, ch.extensions), owner)
        if exposure > limit:
            return f"dust HTLCs of {exposure} msat on the {owner.value} commitment, over our limit {limit}"
    return None


def _propose(ch: Channel, u: Update, budget_sides: tuple[Side, ...], fee_spike: bool = False) -> Channel:
    """The channel with `u` added to its log, after the extension's checks and the budget of each side."""
    exts = ch.extensions
    log = ch.log
    try:
        new = log.add(u, exts)   # the extension's checks first
        for side in budget_sides:
            problem = new.budget_after(log, side, exts, fee_spike and side is ch.params.opener)
            if problem:
                raise UpdateRefused(problem)
        return replace(ch, log=new)
    except (UpdateRefused, ProtocolViolation) as e:
        raise ChannelError(str(e)) from None


# --- HTLCs we offer (channeld.add_htlc) ------------------------------------------------------------------

def add_htlc(mgr: "ChannelManager", peer_id: bytes, amount_msat: int, payment_hash: bytes, cltv_expiry: int,
             onion: bytes, channel_id: bytes | None) -> dict[str, Any]:
    """Offer an HTLC on a usable channel with the peer; stored, sent, then signed with the next batch."""
    if len(onion) != PACKET_SIZE:
        raise RpcError(RpcError.INVALID_PARAMS, f"onion must be {PACKET_SIZE} bytes")
    if len(payment_hash) != 32:
        raise RpcError(RpcError.INVALID_PARAMS, "payment_hash must be 32 bytes")
    candidates = [c for c in mgr.channels.values() if c.peer_id == peer_id and c.state == NORMAL
                  and c.channel_id in mgr.live and (channel_id is None or c.channel_id == channel_id)]
    if not candidates or mgr.txs.once(("peer", peer_id), lambda: mgr.transport.peer(peer_id.hex())) is None:
        raise RpcError(RpcError.INVALID_PARAMS, f"no usable channel with peer {peer_id.hex()}")
    problems = []
    for ch in sorted(candidates, key=lambda c: -c.log.local.local_msat):
        ids = ch.log.states["htlcs"]
        htlc_id = ids.next(L)  # type: ignore[attr-defined]
        u = Update("add_htlc", update_owner("add_htlc", ch.extensions), L,
                   {"id": htlc_id, "amount_msat": amount_msat, "payment_hash": payment_hash.hex(),
                    "cltv_expiry": cltv_expiry})
        sides = (L,) if ch.params.opener is L else (L, R)
        try:
            new = _propose(ch, u, sides, fee_spike=True)
        except ChannelError as e:
            problems.append(str(e))
            continue
        dust = dust_problem(mgr, new)
        if dust:
            problems.append(dust)
            continue
        info = {"onion": onion.hex(), "payment_hash": payment_hash.hex(), "amount_msat": amount_msat}
        new = replace(new, htlcs={**new.htlcs, f"out:{htlc_id}": info})
        with mgr.transaction(batched=True) as tx:
            mgr.store(tx, new)
            mgr.send(peer_id, UpdateAddHtlc(ch.channel_id, htlc_id, amount_msat, payment_hash, cltv_expiry, onion),
                     tx)
        mgr.after_commit(lambda: crash_point("add_htlc_stored", mgr.ctx.node.network))
        mgr.schedule_sign(new)
        return {"channel_id": ch.channel_id.hex(), "htlc_id": htlc_id}
    raise RpcError(RpcError.REFUSED, "; ".join(problems))


# --- update_fee (we opened the channel: its commitments' fee is ours to keep current) ---------------------

FEE_CHANGE = 0.2   # a relative change of our estimate that is worth an update_fee


def follow_fee(mgr: "ChannelManager", channel_id: bytes) -> None:
    """Propose update_fee when our estimate moved more than FEE_CHANGE from the channel's feerate."""
    ch = mgr.channels.get(channel_id)
    if ch is None or ch.state != NORMAL or ch.params.opener is not L or channel_id not in mgr.live:
        return
    current = ch.log.pending(R, ch.extensions).feerate_per_kw
    wanted = mgr.feerate_per_kw()
    if abs(wanted - current) <= current * FEE_CHANGE:
        return
    try:
        new = _propose(ch, Update("update_fee", update_owner("update_fee", ch.extensions), L,
                                  {"feerate_per_kw": wanted}), (L,))
    except ChannelError as e:
        mgr.ctx.log.info("channel %s: no update_fee to %d sat/kw: %s", channel_id.hex(), wanted, e)
        return
    with mgr.transaction(batched=True) as tx:
        mgr.store(tx, new)
        mgr.send(ch.peer_id, UpdateFee(channel_id, wanted), tx)
    mgr.schedule_sign(new)


# --- updates from the peer -------------------------------------------------------------------------------

def on_update(mgr: "ChannelManager", peer_id: bytes, msg: Message) -> None:
    """update_add_htlc, update_fulfill_htlc, update_fail_htlc, update_fail_malformed_htlc, update_fee."""
    ch = usable(mgr, peer_id, msg.channel_id)  # type: ignore[attr-defined]
    exts = ch.extensions
    extra: dict[str, dict[str, Any]] = {}
    resolved: dict[str, Any] | None = None
    if isinstance(msg, UpdateAddHtlc):
        body: dict[str, Any] = {"id": msg.id, "amount_msat": msg.amount_msat, "payment_hash": msg.payment_hash.hex(),
                                "cltv_expiry": msg.cltv_expiry}
        kind, sides = "add_htlc", ((R,) if ch.params.opener is R else (R, L))
        extra[f"in:{msg.id}"] = {"onion": msg.onion_routing_packet.hex()}
    elif isinstance(msg, UpdateFulfillHtlc):
        kind, sides, body = "fulfill_htlc", (), {"id": msg.id, "payment_preimage": msg.payment_preimage.hex()}
    elif isinstance(msg, UpdateFailHtlc):
        kind, sides, body = "fail_htlc", (), {"id": msg.id, "reason": msg.reason.hex()}
    elif isinstance(msg, UpdateFailMalformedHtlc):
        kind, sides = "fail_malformed_htlc", ()
        body = {"id": msg.id, "sha256_of_onion": msg.sha256_of_onion.hex(), "failure_code": msg.failure_code}
    elif isinstance(msg, UpdateFee):
        if ch.params.opener is not R:
            raise ChannelError("update_fee from the side that did not open the channel")
        problem = mgr.options.feerate_problem(msg.feerate_per_kw, mgr.feerate_per_kw())
        if problem:
            raise ChannelError(problem)
        kind, sides, body = "update_fee", (R,), {"feerate_per_kw": msg.feerate_per_kw}
    else:
        raise ChannelError(f"unexpected {msg.NAME}")
    try:
        owner = update_owner(kind, exts)
    except UpdateRefused as e:
        raise ChannelError(str(e)) from None
    # The same update twice is a copy delivered again (at least once) after a reconnection: harmless, ignored.
    # A repeated HTLC update is always refused (its id is used, or its HTLC already being removed), so the log
    # is searched for it only then; a repeated update_fee would be accepted, so it is searched for first.
    if kind == "update_fee" and _repeated(ch, kind, body):
        mgr.ctx.log.info("channel %s: %s received twice, ignored", ch.channel_id.hex(), msg.NAME)
        return
    try:
        new = _propose(ch, Update(kind, owner, R, body), sides)
    except ChannelError:
        if kind != "update_fee" and _repeated(ch, kind, body):
            mgr.ctx.log.info("channel %s: %s received twice, ignored", ch.channel_id.hex(), msg.NAME)
            return
        raise
    dust = dust_problem(mgr, new) if kind == "add_htlc" else None
    if dust:  # BOLT-2: failed once committed, the channel kept
        extra[f"in:{msg.id}"]["refuse"] = dust  # type: ignore[attr-defined]
    if kind != "add_htlc" and kind != "update_fee":
        key = f"out:{msg.id}"  # type: ignore[attr-defined]
        htlc = ch.log.local.htlc(L, msg.id) or ch.log.remote.htlc(L, msg.id)  # type: ignore[attr-defined]
        info = dict(ch.htlcs.get(key, {}))
        if kind == "fulfill_htlc" and htlc is not None:
            info["resolved"] = True  # the preimage is the proof of payment: the payer learns it at once
            resolved = _resolved(ch, htlc.id, htlc.payment_hash, htlc.amount_msat,
                                 preimage=msg.payment_preimage.hex())  # type: ignore[attr-defined]
        elif kind == "fail_htlc":
            info["failure_onion"] = body["reason"]
        elif kind == "fail_malformed_htlc":
            info["failure_code"] = body["failure_code"]
        extra[key] = info
    new = replace(new, htlcs={**new.htlcs, **extra})
    with mgr.transaction(batched=True) as tx:
        mgr.store(tx, new)
        if resolved is not None:
            tx.emit("htlc_resolved", resolved)
    mgr.after_commit(lambda: crash_point(f"{kind}_received", mgr.ctx.node.network))


def _repeated(ch: Channel, kind: str, body: dict[str, Any]) -> bool:
    """Whether the peer's update `kind` with `body` is in the log already."""
    return any(e.update.kind == kind and e.update.proposer is R and e.update.body == body for e in ch.log.entries)


def _resolved(ch: Channel, htlc_id: int, payment_hash: bytes, amount_msat: int, preimage: str | None = None,
              failure_onion: str | None = None, failure_code: int | None = None) -> dict[str, Any]:
    return {"channel_id": ch.channel_id.hex(), "htlc_id": htlc_id, "payment_hash": payment_hash.hex(),
            "amount_msat": amount_msat, "preimage": preimage, "failure_onion": failure_onion,
            "failure_code": failure_code}


# --- commitment_signed and revoke_and_ack -----------------------------------------------------------------

def sign(mgr: "ChannelManager", channel_id: bytes) -> None:
    """Send commitment_signed if the peer's next commitment has changes and we may sign."""
    ch = mgr.channels.get(channel_id)
    if ch is None or ch.state not in (NORMAL, SHUTDOWN) or channel_id not in mgr.live or not ch.log.can_sign_remote():
        return
    if not _reestablished_on_current_connection(mgr, ch.peer_id):
        return  # `live` is of a connection that is gone (its peer_disconnected not seen yet): reestablish first
    log, spec = ch.log.sign_remote(ch.extensions)
    n = log.remote_number
    pcp = ch.their_points[n]
    built = build_commitment(ch.params, spec, R, n, pcp, ch.extensions)
    stages = [HtlcTx(s.tx.serialize(), s.input_script) for s in built.second_stages]
    sig, htlc_sigs = mgr.signer.sign_counterparty_commitment(ch.dbid, n, built.tx.serialize(), pcp, stages)
    new = replace(ch, log=log, last_sent="commit")
    with mgr.transaction(batched=True) as tx:
        mgr.store(tx, new)
        _remember_remote(tx, ch, n, built)
        mgr.send(ch.peer_id, CommitmentSigned(ch.channel_id, sig, htlc_sigs), tx)
    mgr.after_commit(lambda: crash_point("commitment_signed_stored", mgr.ctx.node.network))


def _reestablished_on_current_connection(mgr: "ChannelManager", peer_id: bytes) -> bool:
    """Whether the peer's connection now is the one our channels were re-established on: a new one (made
    after our last reestablish) must see channel_reestablish before any commitment_signed (BOLT-2)."""
    current = mgr.txs.once(("peer", peer_id), lambda: mgr.transport.peer(peer_id.hex()))
    if current is None:
        return False
    return float(current.get("connected_since", 0)) <= mgr.reestablished_at.get(peer_id, 0.0)


def _remember_remote(tx: Any, ch: Channel, n: int, built: BuiltCommitment) -> None:
    """What a penalty needs if the peer ever broadcasts this commitment after revoking it."""
    htlcs = built.spec.shared_json()["htlcs"]   # [{offerer, id, amount_msat, payment_hash, cltv_expiry}]
    tx.execute(_INSERT_REMOTE, {"channel_id": ch.channel_id.hex(), "number": n, "txid": built.txid,
                                "htlcs": json.dumps(htlcs), "feerate_per_kw": built.spec.feerate_per_kw})


def on_commitment_signed(mgr: "ChannelManager", peer_id: bytes, msg: CommitmentSigned) -> None:
    """Check their signatures of our next commitment (signd), then revoke our previous one."""
    ch = usable(mgr, peer_id, msg.channel_id)
    try:
        log, spec = ch.log.receive_commitment_signed(ch.extensions)
    except ProtocolViolation as e:
        raise ChannelError(str(e)) from None
    n = log.local_number
    pcp = mgr.signer.per_commitment_point(ch.dbid, n)
    built = build_commitment(ch.params, spec, L, n, pcp, ch.extensions)
    if len(msg.htlc_signatures) != len(built.second_stages):
        raise ChannelError(f"{len(msg.htlc_signatures)} HTLC signatures for {len(built.second_stages)} HTLC outputs")
    stages = [HtlcTx(s.tx.serialize(), s.input_script, sig) for s, sig in zip(built.second_stages,
                                                                             msg.htlc_signatures)]
    try:
        mgr.signer.validate_holder_commitment(ch.dbid, n, built.tx.serialize(), msg.signature, stages)
    except RpcError as e:
        raise ChannelError(f"bad commitment_signed: {e.message}") from None
    crash_point("commitment_signed_checked", mgr.ctx.node.network)
    secret, next_point = mgr.signer.revoke_holder_commitment(ch.dbid, n - 1)
    new = _forget_settled(mgr, replace(ch, log=log.send_revoke(), last_sent="revoke"))
    with mgr.transaction(batched=True) as tx:
        mgr.store(tx, new[0])
        mgr.send(peer_id, RevokeAndAck(ch.channel_id, secret, next_point), tx)
        for event in new[1]:
            tx.emit("htlc_resolved", event)
    mgr.after_commit(lambda: crash_point("revoke_and_ack_stored", mgr.ctx.node.network))
    after_change(mgr, new[0])


def on_revoke_and_ack(mgr: "ChannelManager", peer_id: bytes, msg: RevokeAndAck) -> None:
    """Their previous commitment is revoked: keep the secret (shachain), take their next point."""
    ch = usable(mgr, peer_id, msg.channel_id)
    if not ch.log.remote_revoke_awaited:
        raise ChannelError("revoke_and_ack without a commitment_signed of ours")
    old = ch.log.remote_number - 1
    if point(msg.per_commitment_secret) != ch.their_points.get(old):
        raise ChannelError(f"per_commitment_secret does not match commitment {old}'s point")
    secrets = type(ch.their_secrets).from_json(ch.their_secrets.to_json())
    try:
        secrets.insert(msg.per_commitment_secret, MAX_INDEX - old)
    except ShachainError as e:
        raise ChannelError(f"per_commitment_secret: {e}") from None
    try:
        mgr.signer.validate_counterparty_revocation(ch.dbid, old, msg.per_commitment_secret)
    except RpcError as e:
        raise ChannelError(f"bad revoke_and_ack: {e.message}") from None
    crash_point("revoke_and_ack_checked", mgr.ctx.node.network)
    points = {k: v for k, v in ch.their_points.items() if k > old}
    points[old + 2] = msg.next_per_commitment_point
    new, events = _forget_settled(mgr, replace(ch, log=ch.log.receive_revoke(), their_points=points,
                                               their_secrets=secrets))
    with mgr.transaction(batched=True) as tx:
        mgr.store(tx, new)
        for event in events:
            tx.emit("htlc_resolved", event)
    mgr.after_commit(lambda: crash_point("revocation_received", mgr.ctx.node.network))
    after_change(mgr, new)


def _forget_settled(mgr: "ChannelManager", ch: Channel) -> tuple[Channel, list[dict[str, Any]]]:
    """Drop what we kept of HTLCs gone from both commitments; htlc_resolved for ours the peer failed."""
    present = {(h.offerer, h.id) for spec in (ch.log.local, ch.log.remote) for h in spec.htlcs}
    present |= {(e.update.proposer, int(e.update.body["id"])) for e in ch.log.entries if e.update.kind == "add_htlc"}
    kept, events = {}, []
    for key, info in ch.htlcs.items():
        side, htlc_id = (L if key.startswith("out:") else R), int(key.split(":")[1])
        if (side, htlc_id) in present:
            kept[key] = info
            continue
        mgr.asked.pop((ch.channel_id, htlc_id), None) if side is R else None
        if side is L and not info.get("resolved"):
            ph, amount = info.get("payment_hash", ""), int(info.get("amount_msat", 0))
            events.append({"channel_id": ch.channel_id.hex(), "htlc_id": htlc_id, "payment_hash": ph,
                           "amount_msat": amount, "preimage": None, "failure_onion": info.get("failure_onion"),
                           "failure_code": info.get("failure_code")})
    return replace(ch, htlcs=kept), events


def after_change(mgr: "ChannelManager", ch: Channel) -> None:
    """What may follow a new commitment or revocation: our commitment_signed, decisions on HTLCs."""
    if ch.log.can_sign_remote():
        mgr.schedule_sign(ch)
    ask_pending(mgr, ch)


# --- HTLCs offered to us: the htlc_accepted decision -----------------------------------------------------

def ask_pending(mgr: "ChannelManager", ch: Channel) -> None:
    """Ask `htlc_accepted` for each HTLC irrevocably committed to us and not yet being resolved."""
    if ch.channel_id not in mgr.live:
        return
    for h in ch.log.local.htlcs:
        key = (ch.channel_id, h.id)
        if h.offerer is not R or key in mgr.asked or not ch.log.irrevocably_committed(R, h.id):
            continue
        info = ch.htlcs.get(f"in:{h.id}", {})
        onion = bytes.fromhex(info.get("onion", ""))
        try:
            peeled = process_onion(onion, h.payment_hash, mgr.signer.onion_ecdh)
            if info.get("refuse"):
                mgr.ctx.log.info("HTLC %d failed: %s", h.id, info["refuse"])
                raise OnionError(str(info["refuse"]), failure(TEMPORARY_CHANNEL_FAILURE), peeled.shared_secret)
        except OnionError as e:
            if e.shared_secret is None:
                _remove(mgr, ch.channel_id, h.id, "fail_malformed_htlc",
                        {"sha256_of_onion": sha256_of_onion(onion).hex(), "failure_code": e.code})
            else:
                _remove(mgr, ch.channel_id, h.id, "fail_htlc",
                        {"reason": create_error_packet(e.shared_secret, e.failure).hex()})
            ch = mgr.channels[ch.channel_id]
            continue
        mgr.asked[key] = peeled.shared_secret
        p = peeled.payload
        body = {"channel_id": ch.channel_id.hex(), "peer_id": ch.peer_id.hex(), "short_channel_id": ch.scid,
                "htlc_id": h.id, "amount_msat": h.amount_msat, "payment_hash": h.payment_hash.hex(),
                "cltv_expiry": h.cltv_expiry, "current_height": mgr.txs.once("height", mgr.height),
                "is_final": peeled.is_final,
                "next_onion": peeled.next_onion.hex() if peeled.next_onion else None,
                "payload": {"amt_to_forward": p.amt_to_forward, "outgoing_cltv_value": p.outgoing_cltv_value,
                            "short_channel_id": None if p.short_channel_id is None else str(p.short_channel_id),
                            "payment_secret": p.payment_secret.hex() if p.payment_secret else None,
                            "total_msat": p.total_msat,
                            "payment_metadata": p.payment_metadata.hex() if p.payment_metadata else None,
                            "unknown": {str(t): v.hex() for t, v in p.unknown.items()}}}
        peer, cid = ch.peer_id, ch.channel_id
        # asked once the HTLC's irrevocable commitment is on disk (the end of the worker's batch)
        mgr.after_commit(lambda b=body, peer=peer, cid=cid: mgr.ctx.decide_async(
            "htlc_accepted", b, on_done=lambda result: mgr.worker(peer).put(("decided", cid, b, result))))


def on_decided(mgr: "ChannelManager", channel_id: bytes, body: dict[str, Any], result: Any) -> None:
    """Carry out the htlc_accepted outcome: fulfill, fail with the participant's failure, or fail."""
    htlc_id = int(body["htlc_id"])
    secret = mgr.asked.get((channel_id, htlc_id))
    ch = mgr.channels.get(channel_id)
    if ch is not None and isinstance(result, Resolve) and (ch.state in (FORCE_CLOSING, ONCHAIN)
                                                           or channel_id not in mgr.live):
        preimage = _preimage(result.payload)    # kept for a claim on chain (onchain.py) whatever follows
        if preimage is not None and hashlib.sha256(preimage).hexdigest() == body["payment_hash"]:
            onchain.keep_preimage(mgr, channel_id, htlc_id, preimage)
    if (secret is None or ch is None or ch.state not in (NORMAL, SHUTDOWN)
            or not ch.log.irrevocably_committed(R, htlc_id)):
        return
    if channel_id not in mgr.live:  # disconnected meanwhile: asked again after channel_reestablish
        mgr.asked.pop((channel_id, htlc_id), None)
        return
    fail_with = None
    if isinstance(result, Resolve):
        preimage = _preimage(result.payload)
        if preimage is not None and hashlib.sha256(preimage).hexdigest() == body["payment_hash"]:
            _remove(mgr, channel_id, htlc_id, "fulfill_htlc", {"payment_preimage": preimage.hex()})
            return
        mgr.ctx.log.warning("htlc_accepted: %s resolved HTLC %d with a wrong preimage", result.by, htlc_id)
        fail_with = failure(TEMPORARY_NODE_FAILURE)
    elif isinstance(result, Fail):
        raw = _failure_bytes(result.payload)
        fail_with = raw if raw is not None else failure(TEMPORARY_NODE_FAILURE)
    elif isinstance(result, Continue):
        fail_with = (failure(INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, htlc_msat=int(body["amount_msat"]),
                             height=int(body["current_height"])) if body["is_final"]
                     else failure(UNKNOWN_NEXT_PEER))
    _remove(mgr, channel_id, htlc_id, "fail_htlc", {"reason": create_error_packet(secret, fail_with).hex()})


def _preimage(payload: Any) -> bytes | None:
    try:
        value = bytes.fromhex(payload["preimage"]) if isinstance(payload, dict) else bytes(payload)
    except (KeyError, ValueError, TypeError):
        return None
    return value if len(value) == 32 else None


def _failure_bytes(payload: Any) -> bytes | None:
    try:
        return bytes.fromhex(payload["failure"]) if isinstance(payload, dict) else bytes(payload)
    except (KeyError, ValueError, TypeError):
        return None


def _remove(mgr: "ChannelManager", channel_id: bytes, htlc_id: int, kind: str, fields: dict[str, Any]) -> None:
    """We settle an HTLC the peer offered: the update stored and sent, signed with the next batch."""
    ch = mgr.channels[channel_id]
    body = {"id": htlc_id, **fields}
    new = _propose(ch, Update(kind, update_owner(kind, ch.extensions), L, body), ())
    if kind == "fulfill_htlc":   # kept until the HTLC is gone from both commitments (a claim on chain needs it)
        key = f"in:{htlc_id}"
        new = replace(new, htlcs={**new.htlcs, key: {**new.htlcs.get(key, {}), "preimage": fields["payment_preimage"]}})
    cid = ch.channel_id
    if kind == "fulfill_htlc":
        msg: Message = UpdateFulfillHtlc(cid, htlc_id, bytes.fromhex(fields["payment_preimage"]))
    elif kind == "fail_htlc":
        msg = UpdateFailHtlc(cid, htlc_id, bytes.fromhex(fields["reason"]))
    else:
        msg = UpdateFailMalformedHtlc(cid, htlc_id, bytes.fromhex(fields["sha256_of_onion"]), fields["failure_code"])
    with mgr.transaction(batched=True) as tx:
        mgr.store(tx, new)
        mgr.send(ch.peer_id, msg, tx)
    mgr.after_commit(lambda: crash_point(f"{kind}_stored", mgr.ctx.node.network))
    mgr.schedule_sign(new)
