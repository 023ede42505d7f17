"""channel_reestablish (BOLT-2 "Message Retransmission"), with option_data_loss_protect's fields.

On each connection both sides send channel_reestablish for every channel before anything else, then
retransmit what the other missed: our last revoke_and_ack, our last commitment_signed with the updates
it carried, in the order first sent; channel_ready when no commitment was signed yet. A peer whose
numbers show we lost state makes us stop: the channel is failed without broadcasting anything (our
commitment may be revoked) and the peer is asked to close with an `error`.
"""
from __future__ import annotations

import time

from dataclasses import replace
from typing import TYPE_CHECKING

from lnp_plugin_api.bolt3 import MAX_INDEX
from lnp_plugin_api.channel import Side, Update
from lnp_plugin_api.commitment import build_commitment
from lnp_plugin_api.messages import (ChannelReestablish, CommitmentSigned, ErrorMessage, Message,
                                     RevokeAndAck,
                                     UpdateAddHtlc, UpdateFailHtlc, UpdateFailMalformedHtlc, UpdateFee,
                                     UpdateFulfillHtlc)
from lnp_plugin_api.services import HtlcTx

from .document import AWAITING_LOCK, CLOSING, FAILED, NEGOTIATING, NORMAL, ON_CHAIN, SHUTDOWN, Channel
from . import opening
from .errors import ChannelError

if TYPE_CHECKING:
    from .manager import ChannelManager

L, R = Side.LOCAL, Side.REMOTE


def ours(mgr: "ChannelManager", ch: Channel) -> ChannelReestablish:
    """Our channel_reestablish for `ch`."""
    log = ch.log
    nr = log.next_revocation_number
    last = ch.their_secrets.get(MAX_INDEX - (nr - 1)) if nr > 0 else None
    current = mgr.signer.per_commitment_point(ch.dbid, log.local_number)
    return ChannelReestablish(ch.channel_id, log.next_commitment_number, nr, last or bytes(32), current)


def send(mgr: "ChannelManager", ch: Channel) -> None:
    """Send our channel_reestablish once per connection."""
    if ch.channel_id in mgr.reestablish_sent or ch.state not in (AWAITING_LOCK, NORMAL, SHUTDOWN, NEGOTIATING, CLOSING):
        return
    mgr.reestablish_sent.add(ch.channel_id)
    mgr.send(ch.peer_id, ours(mgr, ch))


def on_reestablish(mgr: "ChannelManager", peer_id: bytes, msg: ChannelReestablish) -> None:
    """Compare numbers, retransmit what the peer missed, and take the channel back into use."""
    ch = mgr.channels.get(msg.channel_id)
    if ch is None or ch.peer_id != peer_id:
        raise ChannelError("channel_reestablish for no channel of ours", warning=True)
    if ch.state == FAILED:
        raise ChannelError(f"channel failed: {ch.failure}")
    if ch.state in ON_CHAIN:   # onchain.py: nothing to take back into use
        raise ChannelError(f"channel is {ch.state}")
    send(mgr, ch)
    log = ch.log
    ln, rn = log.local_number, log.remote_number
    # their next_revocation_number: the revoke_and_ack they await from us
    if msg.next_revocation_number > ln or msg.next_commitment_number > rn + 1:
        _behind(mgr, ch, msg)
        return
    if msg.next_revocation_number < ln - 1 or msg.next_commitment_number < rn:
        raise ChannelError(f"channel_reestablish numbers ({msg.next_commitment_number}, "
                           f"{msg.next_revocation_number}) are behind ours ({rn}, {ln}): the peer lost state")
    resend_revoke = msg.next_revocation_number == ln - 1
    resend_commit = msg.next_commitment_number == rn and log.remote_revoke_awaited
    if msg.next_commitment_number == rn and not log.remote_revoke_awaited:
        raise ChannelError("the peer expects a commitment_signed we never sent")
    steps = [("revoke", resend_revoke), ("commit", resend_commit)]
    if ch.last_sent == "revoke":   # the revoke went last: the commitment_signed before it
        steps.reverse()
    for what, due in steps:
        if due and what == "revoke":
            secret, next_point = mgr.signer.revoke_holder_commitment(ch.dbid, ln - 1)
            mgr.send(peer_id, RevokeAndAck(ch.channel_id, secret, next_point))
        elif due:
            _resend_commit(mgr, ch)
    if ch.state == AWAITING_LOCK or (ln == 0 and rn == 0 and msg.next_commitment_number == 1 and ch.ready_sent):
        if ch.ready_sent:
            mgr.send(peer_id, opening.channel_ready(ch, mgr.signer.per_commitment_point(ch.dbid, 1)))
    mgr.live.add(ch.channel_id)
    mgr.reestablished_at[ch.peer_id] = time.time()


def _resend_commit(mgr: "ChannelManager", ch: Channel) -> None:
    """Our updates in the peer's latest commitment, then that commitment_signed again (same transaction)."""
    n = ch.log.remote_number
    for u in ch.log.included(R, n):
        if u.proposer is L:
            mgr.send(ch.peer_id, update_message(ch, u))
    pcp = ch.their_points[n]
    built = build_commitment(ch.params, ch.log.remote, R, n, pcp, ch.extensions)
    stages = [HtlcTx(s.tx.serialize(), s.input_script) for s in built.second_stages]
    sig, htlc_sigs = mgr.signer.sign_counterparty_commitment(ch.dbid, n, built.tx.serialize(), pcp, stages)
    mgr.send(ch.peer_id, CommitmentSigned(ch.channel_id, sig, htlc_sigs))


def update_message(ch: Channel, u: Update) -> Message:
    """The wire message of one of our updates."""
    b, cid = u.body, ch.channel_id
    if u.kind == "add_htlc":
        onion = bytes.fromhex(ch.htlcs[f"out:{b['id']}"]["onion"])
        return UpdateAddHtlc(cid, int(b["id"]), int(b["amount_msat"]), bytes.fromhex(b["payment_hash"]),
                             int(b["cltv_expiry"]), onion)
    if u.kind == "fulfill_htlc":
        return UpdateFulfillHtlc(cid, int(b["id"]), bytes.fromhex(b["payment_preimage"]))
    if u.kind == "fail_htlc":
        return UpdateFailHtlc(cid, int(b["id"]), bytes.fromhex(b["reason"]))
    if u.kind == "fail_malformed_htlc":
        return UpdateFailMalformedHtlc(cid, int(b["id"]), bytes.fromhex(b["sha256_of_onion"]), int(b["failure_code"]))
    if u.kind == "update_fee":
        return UpdateFee(cid, int(b["feerate_per_kw"]))
    raise ValueError(f"no message for update {u.kind!r}")


def _behind(mgr: "ChannelManager", ch: Channel, msg: ChannelReestablish) -> None:
    """The peer has seen states we do not have: we lost data. Never broadcast; ask the peer to close."""
    why = (f"we are behind (peer expects commitment {msg.next_commitment_number}, revocation "
           f"{msg.next_revocation_number}; we have {ch.log.remote_number}, {ch.log.local_number}): "
           "please close the channel")
    mgr.ctx.log.error("channel %s: %s", ch.channel_id.hex(), why)
    with mgr.transaction() as tx:
        mgr.store(tx, replace(ch, state=FAILED, failure=f"data loss: {why}"))
        mgr.send(ch.peer_id, _error(ch, why), tx)


def _error(ch: Channel, why: str) -> Message:
    return ErrorMessage(ch.channel_id, why.encode()[:500])

