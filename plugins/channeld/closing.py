"""Cooperative close (BOLT-2 "Channel Close"): shutdown, the closing_signed negotiation, the mutual close on chain.

States: normal -> shutdown (a shutdown sent or received: no new HTLC either way) -> negotiating (both
shutdowns exchanged, no HTLC left: closing_signed) -> closing (the agreed transaction broadcast) -> closed (it
is CLOSE_DEPTH deep). What the close needs is the channel document's `closing` mapping: our script and the
wallet key (or the user's destination) it pays, whether our shutdown went, the peer's script, and once agreed
the transaction, its fee and our signature. Each change is stored in the transaction that sends the message
depending on it. The negotiation itself lives in memory: BOLT-2 restarts it after a reconnection.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lnp_plugin_api import RpcError
from lnp_plugin_api.channel import Side
from lnp_plugin_api.closing import ClosingNegotiation, check_shutdown, closing_fee, signed_variant
from lnp_plugin_api.commitment import BuiltClosing, build_closing, funding_witness
from lnp_plugin_api.messages import ClosingSigned, FeeRange, Shutdown, UpdateAddHtlc, WarningMessage
from lnp_plugin_api.tx import compact_to_der

from .document import CLOSED, CLOSING, NEGOTIATING, NORMAL, SHUTDOWN, Channel
from .errors import ChannelError, crash_point, refused

if TYPE_CHECKING:
    from .manager import ChannelManager

L, R = Side.LOCAL, Side.REMOTE
CLOSE_DEPTH = 3                  # confirmations of the closing transaction before the channel is `closed`
ANYSEGWIT_BITS = (26, 27)        # option_shutdown_anysegwit
ACTIVE = (NORMAL, SHUTDOWN, NEGOTIATING, CLOSING)   # states in which we talk to the peer about the channel


@dataclass
class Negotiating:
    """A closing_signed negotiation in progress (memory only) and the txid we last signed."""

    negotiation: ClosingNegotiation
    signed_txid: str | None = None


def _state(mgr: "ChannelManager") -> dict[bytes, Any]:
    # per manager: in threads mode two nodes share this module, and a channel has the same id on both
    if not hasattr(mgr, "_closing"):
        mgr._closing = {"negotiations": {}, "waiters": {}}   # type: ignore[attr-defined]
    return mgr._closing  # type: ignore[attr-defined]


def anysegwit(mgr: "ChannelManager", peer_id: bytes) -> bool:
    """Whether both sides support option_shutdown_anysegwit (we do)."""
    return bool(mgr.peer_bits(peer_id) & set(ANYSEGWIT_BITS))


def destination_script(address: str, network: str) -> bytes:
    """The scriptPubKey of ADDRESS, which must be an address of `network`; a refusal otherwise."""
    from embit.script import Script, address_to_scriptpubkey
    from lnp_plugin_api.chains import embit_network
    try:
        script = address_to_scriptpubkey(address).data
        same = Script(script).address(embit_network(network)).lower() == address.lower()
    except Exception:  # embit raises several types for a bad address
        raise refused(f"not an address: {address!r}") from None
    if not same:
        raise refused(f"{address!r} is not an address of {network}")
    return script


def upfront(ch: Channel, side: Side) -> bytes:
    """The upfront_shutdown_script a side committed to at open (opening.py); empty: none."""
    return bytes.fromhex(ch.closing.get("upfront_ours" if side is L else "upfront_theirs", ""))


def _our_destination(mgr: "ChannelManager", ch: Channel) -> dict[str, Any]:
    """Where our shutdown pays: the upfront script we committed to (signd knows it as
    holder_shutdown_script), else a fresh wallet key."""
    committed = upfront(ch, L)
    if committed:
        return {"our_script": committed.hex()}
    to = mgr.funding.new_destination()
    return {"our_script": to.script.hex(), "our_key": list(to.key)}


def fail_connection(mgr: "ChannelManager", peer_id: bytes, why: str) -> None:
    """BOLT-1's "fail the connection": peerd closes it (the channel stays as it is)."""
    mgr.ctx.log.warning("peer %s: %s: disconnecting", peer_id.hex(), why)
    try:
        mgr.transport.disconnect(peer_id.hex())
    except RpcError as e:   # already gone
        mgr.ctx.log.info("peer %s not disconnected: %s", peer_id.hex(), e.message)


def find(mgr: "ChannelManager", key: str) -> Channel:
    """The channel named by channel_id, short_channel_id, or the node id of a peer with exactly one channel."""
    found = [c for c in mgr.channels.values() if key in (c.channel_id.hex(), c.scid)]
    if not found:
        found = [c for c in mgr.channels.values() if c.peer_id.hex() == key.lower() and c.state in ACTIVE]
        if len(found) > 1:
            raise refused(f"peer {key} has {len(found)} channels: name one")
    if not found:
        raise refused(f"no channel {key}")
    return found[0]


# --- the close RPC ----------------------------------------------------------------------------------------

def close(mgr: "ChannelManager", key: str, destination: str | None, reply: "Future[dict[str, Any]]",
          timeout: float) -> None:
    """Start a cooperative close (on the peer's worker); `reply` gets {channel_id, txid, fee_sat} once the
    closing transaction is agreed and broadcast, or {channel_id, state, txid: None} after `timeout` s while
    the close goes on."""
    ch = find(mgr, key)
    if ch.state == CLOSING or ch.state == CLOSED:
        reply.set_result(_result(ch))
        return
    if ch.state not in (NORMAL, SHUTDOWN, NEGOTIATING):
        raise refused(f"channel {ch.channel_id.hex()} is {ch.state}: it cannot be closed cooperatively")
    closing: dict[str, Any] = {**ch.closing, "shutdown_sent": False} if ch.state == NORMAL else {}
    if destination is not None:
        script = destination_script(destination, mgr.ctx.node.network)
        committed = upfront(ch, L)
        if committed and script != committed:
            raise refused(f"channel {ch.channel_id.hex()} committed to an upfront_shutdown_script at open: "
                          "a cooperative close pays it; close without --destination")
        problem = check_shutdown(script, anysegwit(mgr, ch.peer_id))
        if problem:
            raise refused(f"destination address {destination}: {problem}")
        if not committed:
            closing.update(our_script=script.hex(), destination=True)
    _state(mgr)["waiters"].setdefault(ch.channel_id, []).append(reply)
    timer = threading.Timer(timeout, lambda: _expire_reply(mgr, ch.channel_id, reply))
    timer.daemon = True
    timer.start()
    if ch.state != NORMAL:
        return                      # already closing: this caller waits with the others
    if "our_script" not in closing:
        closing.update(_our_destination(mgr, ch))
    new = ch.with_state(SHUTDOWN, closing=closing)
    with mgr.transaction() as tx:
        mgr.store(tx, new)
    progress(mgr, ch.channel_id)


def _result(ch: Channel) -> dict[str, Any]:
    c = ch.closing
    return {"channel_id": ch.channel_id.hex(), "state": ch.state, "txid": c.get("txid"), "fee_sat": c.get("fee")}


def _expire_reply(mgr: "ChannelManager", cid: bytes, reply: "Future[dict[str, Any]]") -> None:
    if reply.done():
        return
    ch = mgr.channels.get(cid)
    result = {"channel_id": cid.hex(), "state": ch.state if ch else None, "txid": None, "fee_sat": None,
              "message": "not agreed yet: the close goes on"}
    try:
        reply.set_result(result)
    except Exception:  # answered meanwhile
        pass


def _answer(mgr: "ChannelManager", ch: Channel) -> None:
    for reply in _state(mgr)["waiters"].pop(ch.channel_id, []):
        if not reply.done():
            try:
                reply.set_result(_result(ch))
            except Exception:  # the timeout answered meanwhile
                pass


# --- progress: shutdown when our updates are signed, negotiation when no HTLC is left -------------------------

def _our_unsigned(ch: Channel) -> bool:
    """Whether we proposed updates not yet in a commitment_signed of ours (BOLT-2: shutdown waits)."""
    return any(e.update.proposer is L and e.in_commitment(R) is None for e in ch.log.entries)


def _quiet(ch: Channel) -> bool:
    """No HTLC in either commitment, nothing in flight: the closing negotiation may start."""
    log = ch.log
    return (not log.entries and not log.local.htlcs and not log.remote.htlcs and not log.remote_revoke_awaited
            and not log.local_revoke_owed)


def progress(mgr: "ChannelManager", cid: bytes) -> None:
    """After any change of a closing channel: send our shutdown when due, start negotiating when quiet."""
    ch = mgr.channels.get(cid)
    if ch is None or ch.state != SHUTDOWN or cid not in mgr.live:
        return
    c = dict(ch.closing)
    if not c.get("shutdown_sent"):
        if _our_unsigned(ch):
            if ch.log.can_sign_remote():
                mgr.schedule_sign(ch)
            return
        c["shutdown_sent"] = True
        ch = replace(ch, closing=c)
        with mgr.transaction() as tx:
            mgr.store(tx, ch)
            mgr.send(ch.peer_id, Shutdown(cid, bytes.fromhex(c["our_script"])), tx)
        crash_point("shutdown_stored", mgr.ctx.node.network)
    if c.get("their_script") and _quiet(ch):
        _start_negotiation(mgr, ch.with_state(NEGOTIATING))


def _balances(ch: Channel) -> tuple[int, int]:
    return ch.log.local.local_msat, ch.log.local.remote_msat


def _scripts(ch: Channel) -> tuple[bytes, bytes]:
    return bytes.fromhex(ch.closing["our_script"]), bytes.fromhex(ch.closing["their_script"])


def _negotiation(mgr: "ChannelManager", ch: Channel) -> ClosingNegotiation:
    """A new negotiation: our range around our estimate (the profile's ratios), the opener's capped by its
    balance."""
    ours, theirs = _scripts(ch)
    feerate = mgr.feerate_per_kw()
    preferred = closing_fee(feerate, ours, theirs)
    lo = int(preferred * mgr.options.min_fee_ratio)
    hi = int(preferred * mgr.options.max_fee_ratio)
    local, remote = _balances(ch)
    payer_sat = (local if ch.opener else remote) // 1000
    hi = max(0, min(hi, payer_sat))
    lo = min(lo, hi)
    return ClosingNegotiation(ch.opener, min(preferred, hi), (lo, hi))


def _build(ch: Channel, fee: int) -> BuiltClosing:
    ours, theirs = _scripts(ch)
    local, remote = _balances(ch)
    return build_closing(ch.params, local, remote, ours, theirs, fee, ch.params.opener, ch.params.local.dust_limit_sat)


def _sign(mgr: "ChannelManager", ch: Channel, built: BuiltClosing) -> bytes:
    holder = built.output_sides.index(L) if L in built.output_sides else None
    c = ch.closing
    key = tuple(c["our_key"]) if c.get("our_key") else None
    dest = bytes.fromhex(c["our_script"]) if c.get("destination") else None
    return mgr.signer.sign_mutual_close(ch.dbid, built.tx.serialize(), holder, wallet_output=key,  # type: ignore
                                        destination=dest)


def _closing_signed(ch: Channel, fee: int, sig: bytes, rng: tuple[int, int] | None) -> ClosingSigned:
    return ClosingSigned(ch.channel_id, fee, sig, FeeRange(*rng) if rng else None)


def _start_negotiation(mgr: "ChannelManager", ch: Channel) -> None:
    """Both shutdowns exchanged, no HTLC left: negotiating; the opener sends the first closing_signed."""
    neg = _negotiation(mgr, ch)
    msg = None
    if ch.opener:
        step = neg.first_offer()
        neg = step.state
        built = _build(ch, step.send)  # type: ignore[arg-type]
        msg = _closing_signed(ch, step.send, _sign(mgr, ch, built), step.fee_range)  # type: ignore[arg-type]
        _state(mgr)["negotiations"][ch.channel_id] = Negotiating(neg, built.tx.txid())
    else:
        _state(mgr)["negotiations"][ch.channel_id] = Negotiating(neg)
    with mgr.transaction() as tx:
        mgr.store(tx, ch)
        if msg is not None:
            mgr.send(ch.peer_id, msg, tx)
    crash_point("negotiating_stored", mgr.ctx.node.network)


# --- messages from the peer ---------------------------------------------------------------------------------

def check_add(mgr: "ChannelManager", msg: UpdateAddHtlc) -> None:
    """BOLT-2: no update_add_htlc after the sender's shutdown."""
    ch = mgr.channels.get(msg.channel_id)
    if ch is not None and ch.state != NORMAL and ch.closing.get("their_script"):
        raise ChannelError("update_add_htlc after shutdown")


def on_shutdown(mgr: "ChannelManager", peer_id: bytes, msg: Shutdown) -> None:
    """The peer's shutdown: its script checked, ours answered once our updates are signed."""
    ch = mgr.channels.get(msg.channel_id)
    if ch is None or ch.peer_id != peer_id or ch.state not in ACTIVE:
        raise ChannelError("shutdown for no open channel of ours", warning=True)
    committed = upfront(ch, R)
    if committed and msg.scriptpubkey != committed:
        # BOLT-2: MUST fail the connection (MAY warn); the channel stays as it is
        # at once, not after the worker's batch: the disconnection that follows must not overtake it
        mgr.send_at_once(peer_id, WarningMessage(ch.channel_id, b"shutdown scriptpubkey differs from the "
                                                                b"upfront_shutdown_script"))
        fail_connection(mgr, peer_id, "shutdown scriptpubkey differs from its upfront_shutdown_script")
        return
    problem = check_shutdown(msg.scriptpubkey, anysegwit(mgr, peer_id))
    if problem:
        # BOLT-2: a warning (the channel stays as it is)
        mgr.send(peer_id, WarningMessage(ch.channel_id, problem.encode()[:500]))
        return
    c = dict(ch.closing)
    if c.get("their_script") and c["their_script"] != msg.scriptpubkey.hex():
        raise ChannelError("shutdown scriptpubkey changed")
    c["their_script"] = msg.scriptpubkey.hex()
    _state(mgr)["negotiations"].pop(ch.channel_id, None)
    if ch.state == NORMAL:
        c.update(_our_destination(mgr, ch), shutdown_sent=False)
        ch = ch.with_state(SHUTDOWN, closing=c)
    else:
        ch = replace(ch, closing=c)
    with mgr.transaction() as tx:
        mgr.store(tx, ch)
    crash_point("shutdown_received", mgr.ctx.node.network)
    if ch.state == NEGOTIATING and ch.channel_id in mgr.live:   # a retransmission after a reconnection
        _start_negotiation(mgr, ch)
    elif ch.state == CLOSING:
        mgr.send(peer_id, Shutdown(ch.channel_id, bytes.fromhex(c["our_script"])))
    progress(mgr, ch.channel_id)


def on_closing_signed(mgr: "ChannelManager", peer_id: bytes, msg: ClosingSigned) -> None:
    """A fee proposal: its signature checked, then agreed, countered, or the channel failed."""
    ch = mgr.channels.get(msg.channel_id)
    if ch is None or ch.peer_id != peer_id:
        raise ChannelError("closing_signed for no channel of ours", warning=True)
    if ch.state == CLOSING:   # the peer missed our last closing_signed: the agreed one again
        c = ch.closing
        mgr.send(peer_id, _closing_signed(ch, int(c["fee"]), bytes.fromhex(c["signature"]), (c["fee"], c["fee"])))
        return
    if ch.channel_id not in mgr.live:
        # a message of an earlier connection, or the peer broke BOLT-2's order: the negotiation starts again
        # after channel_reestablish, never a reason to fail the channel
        raise ChannelError(f"channel {ch.channel_id.hex()} not reestablished yet: closing_signed ignored",
                           warning=True)
    if ch.state == SHUTDOWN:  # both shutdowns may be in, our move to negotiating not made yet (after a restart)
        progress(mgr, ch.channel_id)
        ch = mgr.channels[ch.channel_id]
    if ch.state != NEGOTIATING:
        raise ChannelError(f"closing_signed while the channel is {ch.state}")
    crash_point("closing_signed_received", mgr.ctx.node.network)
    ours, theirs = _scripts(ch)
    local, remote = _balances(ch)
    built = signed_variant(ch.params, local, remote, ours, theirs, msg.fee_satoshis, msg.signature)
    if built is None:
        raise ChannelError(f"closing_signed: bad signature for fee {msg.fee_satoshis}")
    current = _state(mgr)["negotiations"].get(ch.channel_id) or Negotiating(_negotiation(mgr, ch))
    rng = (msg.fee_range.min_fee_satoshis, msg.fee_range.max_fee_satoshis) if msg.fee_range else None
    step = current.negotiation.receive(msg.fee_satoshis, rng)
    if step.error:
        raise ChannelError(f"closing negotiation failed: {step.error}")
    if step.agreed is None:
        counter = _build(ch, step.send)  # type: ignore[arg-type]
        _state(mgr)["negotiations"][ch.channel_id] = Negotiating(step.state, counter.tx.txid())
        mgr.send(peer_id, _closing_signed(ch, step.send, _sign(mgr, ch, counter), step.fee_range))  # type: ignore
        return
    _state(mgr)["negotiations"].pop(ch.channel_id, None)
    sig = _sign(mgr, ch, built)
    txid = built.tx.txid()
    echo = step.send is not None or current.signed_txid != txid
    signed = built.tx.with_witness(0, funding_witness(ch.params, compact_to_der(sig), compact_to_der(msg.signature)))
    c = {**ch.closing, "txid": signed.txid(), "tx": signed.serialize().hex(), "fee": step.agreed,
         "signature": sig.hex()}
    new = ch.with_state(CLOSING, closing=c)
    with mgr.transaction() as tx:
        mgr.store(tx, new)
        if echo:
            mgr.send(peer_id, _closing_signed(ch, step.agreed, sig, step.fee_range), tx)
    crash_point("mutual_close_stored", mgr.ctx.node.network)
    broadcast(mgr, new)
    _answer(mgr, new)


def broadcast(mgr: "ChannelManager", ch: Channel) -> None:
    """Send the agreed closing transaction (again: the backend accepts one it has) and watch its depth."""
    try:
        mgr.chain.broadcast(bytes.fromhex(ch.closing["tx"]))
    except RpcError as e:   # the peer may have sent it first, or it is already mined
        mgr.ctx.log.info("channel %s: closing transaction not sent: %s", ch.channel_id.hex(), e.message)
    mgr.watch.watch_txid(ch.closing["txid"], [CLOSE_DEPTH])


def on_depth(mgr: "ChannelManager", body: dict[str, Any]) -> bool:
    """watchd's tx_depth for a closing transaction: the channel is closed. False if it is not one."""
    for ch in list(mgr.channels.values()):
        if ch.state == CLOSING and ch.closing.get("txid") == body.get("txid"):
            def done(cid: bytes = ch.channel_id) -> None:
                current = mgr.channels[cid]
                if current.state == CLOSING:
                    with mgr.transaction() as tx:
                        mgr.store(tx, current.with_state(CLOSED))
            mgr.submit(ch.peer_id, done)
            return True
    return False


def after_reestablish(mgr: "ChannelManager", ch: Channel) -> None:
    """BOLT-2: our shutdown again if we sent one; the negotiation restarts (the opener offers on their
    shutdown)."""
    _state(mgr)["negotiations"].pop(ch.channel_id, None)
    if ch.state in (SHUTDOWN, NEGOTIATING, CLOSING) and ch.closing.get("shutdown_sent"):
        mgr.send(ch.peer_id, Shutdown(ch.channel_id, bytes.fromhex(ch.closing["our_script"])))
    progress(mgr, ch.channel_id)


def resume(mgr: "ChannelManager") -> None:
    """At start: closing transactions agreed before a restart are sent again and watched."""
    for ch in list(mgr.channels.values()):
        if ch.state == CLOSING:
            mgr.submit(ch.peer_id, lambda ch=ch: broadcast(mgr, ch))
