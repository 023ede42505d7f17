"""channeld's runtime: the channels in memory, one worker per peer, and the routing of inputs to them.

Inputs (peer messages, RPC requests, watchd events, peer connections) arrive on channeld's service
thread and are queued to the peer's `PeerWorker`; everything that waits on another service (signd, the
wallet, watchd, the chain backend) or writes a channel runs there, one input at a time per peer. A
channel is only ever changed by its peer's worker; `channels` (the RPC) reads the database.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, Callable

from lnp_plugin_api import RpcError, ServiceContext, WireMessage
from lnp_plugin_api.chain import ChainClient, parse_block
from lnp_plugin_api.features import decode as decode_features
from lnp_plugin_api.messages import ChannelUpdate, ClosingSigned, Shutdown
from lnp_plugin_api.timers import Timers
from lnp_plugin_api.messages import (AcceptChannel, ChannelReady, ChannelReestablish, CommitmentSigned, ErrorMessage, FundingCreated,
                                     FundingSigned, Message, OpenChannel, RevokeAndAck, UpdateAddHtlc, UpdateFailHtlc,
                                     UpdateFailMalformedHtlc, UpdateFee, UpdateFulfillHtlc, WarningMessage,
                                     decode_message)
from lnp_plugin_api.services import ChainWatch, Funding, PeerTransport, Signer
from lnp_plugin_api.channel import Side
from lnp_plugin_api.onion_errors import TEMPORARY_CHANNEL_FAILURE
from lnp_plugin_api.wire import WireError, format_scid

from . import closing, hints, normal, onchain, opening, reestablish, storage
from .actor import PeerWorker
from .batch import ChannelTx, Transactions
from .document import AWAITING_LOCK, FAILED, IN_USE, NEGOTIATING, NORMAL, SHUTDOWN, Channel
from .errors import ChannelError, crash_point
from .opening import Opening
from .options import Options

OWNER = "channeld"                      # our watches' owner in watchd
FALLBACK_FEERATE_PER_KW = 2500          # when the backend has no estimate (regtest)
OPENING_TIMEOUT = 60.0                  # seconds an opening may wait for the peer before it is abandoned
ZERO_ID = bytes(32)


def printable(data: bytes, limit: int = 300) -> str:
    """A peer's error text, safe to log and show."""
    return "".join(c if c.isprintable() else "?" for c in data[:limit].decode("utf-8", "replace"))


class ChannelManager:
    """Every channel of the node and the openings in progress."""

    def __init__(self, ctx: ServiceContext, options: Options) -> None:
        self.ctx, self.options = ctx, options
        self.signer = Signer(ctx)
        self.funding = Funding(ctx)
        self.chain = ChainClient(ctx)
        self.watch = ChainWatch(ctx, OWNER)
        self.transport = PeerTransport(ctx)
        self.channels: dict[bytes, Channel] = {}           # by channel_id; changed by the peer's worker only
        self.openings: dict[bytes, Opening] = {}            # by temporary_channel_id
        self.peer_features: dict[bytes, set[int]] = {}
        self._workers: dict[bytes, PeerWorker] = {}
        self._lock = threading.Lock()                      # workers, openings and dbid across threads
        self._dbid = 0
        self.asked: dict[tuple[bytes, int], bytes] = {}   # HTLCs put to htlc_accepted -> their onion secret
        self._signing: set[bytes] = set()                  # channels with a commitment_signed scheduled
        self._delayed = Timers("channeld-delayed")   # the scheduled signing rounds
        self.live: set[bytes] = set()                      # channels reestablished on the current connection
        self.reestablished_at: dict[bytes, float] = {}     # peer -> when a channel was last made live (time.time)
        self.reestablish_sent: set[bytes] = set()          # our channel_reestablish went on this connection
        self.txs = Transactions(self)

    # --- lifecycle ---

    def start(self) -> None:
        """Load the stored channels."""
        with self.ctx.storage.begin() as conn:
            for ch in storage.load_all(conn):
                self.channels[ch.channel_id] = ch
            self._dbid = storage.max_dbid(conn)
        self.txs.saved = dict(self.channels)
        for ch in list(self.channels.values()):  # a restart is a disconnection (BOLT-2)
            self._forget_unsigned(ch)
        with self.ctx.storage.begin() as conn:
            deep = storage.confirmed(conn)
        for ch in list(self.channels.values()):  # deep enough before a restart, channel_ready not sent yet
            if ch.state == AWAITING_LOCK and not ch.ready_sent and ch.channel_id.hex() in deep:
                self.worker(ch.peer_id).put(("depth", ch.channel_id, {"height": deep[ch.channel_id.hex()]}))
        closing.resume(self)   # cooperative close
        for ch in list(self.channels.values()):  # a force close interrupted by a stop goes on
            self.submit(ch.peer_id, lambda c=ch: onchain.resume(self, c))

    def stop(self) -> None:
        """Stop the workers; openings in progress are abandoned (their inputs released)."""
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for w in workers:
            w.stop()
        for op in list(self.openings.values()):
            self._abort(op, "channeld stopped")

    def worker(self, peer_id: bytes) -> PeerWorker:
        """The worker of a peer (started on first use)."""
        with self._lock:
            w = self._workers.get(peer_id)
            if w is None or not w.alive:
                w = self._workers[peer_id] = PeerWorker(peer_id.hex(), self._handle_batch, self.ctx.log,
                                                        linger=lambda item: item[0] == "decided",
                                                        linger_s=self.options.commit_interval_ms / 1000)
            return w

    def submit(self, peer_id: bytes, fn: Callable[[], Any]) -> "Future[Any]":
        """Run `fn()` on the peer's worker; a Future of its result (an RPC may return it)."""
        fut: Future[Any] = Future()
        self.worker(peer_id).put(("call", fn, fut))
        return fut

    def next_dbid(self) -> int:
        """A channel index never used before (signd derives the channel's keys from it)."""
        with self._lock:
            self._dbid += 1
            return self._dbid

    # --- helpers for the protocol modules ---

    def transaction(self, batched: bool = False) -> Any:
        """`with mgr.transaction() as tx:` writes and the messages that follow from them (batch.py:
        `batched` ones join the worker's batch, committed at its end)."""
        return self.txs.transaction(batched)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once the worker's batch so far is committed (batch.py)."""
        self.txs.after_commit(fn)

    def send(self, peer_id: bytes, msg: Message, tx: ChannelTx | None = None) -> None:
        """Send a message to the peer: with `tx`, after that transaction commits (persist before send);
        without, at once (on a worker: after what its batch so far sends)."""
        wire = WireMessage(peer_id, msg.TYPE, msg.encode()[2:])
        if tx is not None:
            tx.send_wire(wire)
        elif not self.txs.send_now(wire):
            self.ctx.send_wire(wire)

    def send_at_once(self, peer_id: bytes, msg: Message) -> None:
        """Send a message that depends on no stored state now, ahead of what the worker's batch holds."""
        self.ctx.send_wire(WireMessage(peer_id, msg.TYPE, msg.encode()[2:]))

    def store(self, tx: ChannelTx, ch: Channel, old_state: str | None = None) -> None:
        """Write a channel in `tx`, and `channel_state_changed` when its state changed."""
        previous = self.channels.get(ch.channel_id)
        old = old_state if previous is None else previous.state
        if old != ch.state:
            tx.emit("channel_state_changed", {"channel_id": ch.channel_id.hex(), "peer_id": ch.peer_id.hex(),
                                              "old_state": old, "new_state": ch.state,
                                              "short_channel_id": ch.scid})
        self.txs.stored(tx, ch)

    def feerate_per_kw(self) -> int:
        """Our estimate for commitments (sat per 1000 weight), from the backend's 6-block estimate."""
        try:
            fees = self.chain.fees()
        except RpcError:
            fees = {}
        for target in sorted(fees, key=lambda t: (abs(t - 6), t)):
            return max(253, fees[target] // 4)
        return FALLBACK_FEERATE_PER_KW

    def watch_funding(self, ch: Channel) -> None:
        """Have watchd tell us when the funding transaction is `min_depth` deep, and when its output is spent."""
        self.watch.watch_txid(ch.params.funding_txid, [ch.min_depth])
        onchain.watch_funding_spend(self, ch)

    def schedule_sign(self, ch: Channel) -> None:
        """Send commitment_signed for `ch` after commit_interval_ms (updates meanwhile join it)."""
        with self._lock:
            if ch.channel_id in self._signing:
                return
            self._signing.add(ch.channel_id)
        item = ("sign", ch.channel_id)
        delay = self.options.commit_interval_ms / 1000
        if delay <= 0:
            self.worker(ch.peer_id).put(item)
            return
        self._delayed.at(delay, lambda: self.worker(ch.peer_id).put(item))

    def height(self) -> int:
        """The chain's tip as watchd has processed it."""
        return int(self.watch.status()["height"])

    def peer_bits(self, peer_id: bytes) -> set[int]:
        """The peer's init features (from peer_connected, else asked of peerd)."""
        bits = self.peer_features.get(peer_id)
        if bits is None:
            found = self.transport.peer(peer_id.hex())
            bits = decode_features(bytes.fromhex(found["features"])) if found else set()
        return bits

    # --- inputs (service thread) ---

    def on_wire(self, msg: WireMessage) -> None:
        """A message from a peer: to its worker."""
        self.worker(msg.peer_id).put(("wire", msg))

    def on_peer_event(self, name: str, body: dict[str, Any]) -> None:
        """peer_connected / peer_disconnected."""
        try:
            peer_id = bytes.fromhex(str(body["id"]))
        except (KeyError, ValueError):
            return
        if name == "peer_connected":
            self.peer_features[peer_id] = decode_features(bytes.fromhex(str(body.get("features", ""))))
        else:
            self.peer_features.pop(peer_id, None)
        self.worker(peer_id).put((name, body))

    def on_depth(self, body: dict[str, Any]) -> None:
        """watchd's tx_depth: a funding transaction is deep enough."""
        if body.get("owner") != OWNER or closing.on_depth(self, body):
            return
        for ch in list(self.channels.values()):
            if ch.params.funding_txid == body.get("txid") and ch.state == AWAITING_LOCK:
                with self.ctx.storage.begin() as conn:   # before the event is acknowledged
                    storage.note_confirmed(conn, ch.channel_id.hex(), int(body["height"]))
                self.worker(ch.peer_id).put(("depth", ch.channel_id, body))

    def on_block(self, height: int) -> None:
        """A new block: the channels we opened follow our fee estimate (update_fee); HTLCs near their
        expiry and closes on chain move on (onchain.on_block)."""
        for ch in list(self.channels.values()):
            if ch.state == NORMAL and ch.opener:
                self.worker(ch.peer_id).put(("fee", ch.channel_id))
        for ch in list(self.channels.values()):
            if ch.state in (NORMAL, SHUTDOWN, NEGOTIATING, onchain.FORCE_CLOSING, onchain.ONCHAIN):
                self.submit(ch.peer_id, lambda c=ch.channel_id: onchain.on_block(self, c, height))

    def on_spent(self, body: dict[str, Any]) -> None:
        """watchd's outpoint_spent (durable): handled on the worker before the event is acknowledged."""
        if body.get("owner") != OWNER:
            return
        for peer_id in {ch.peer_id for ch in self.channels.values() if onchain.concerns(ch, body)}:
            self.submit(peer_id, lambda p=peer_id: onchain.on_spent(self, p, body)).result(timeout=120)

    # --- the worker ---

    def _handle_batch(self, items: list[tuple]) -> None:
        self.txs.run_batch(items, self._handle)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "call":   # answered once what it wrote is committed
            _, fn, fut = item
            try:
                self.txs.reply(fut, True, fn())
            except BaseException as e:
                self.txs.reply(fut, False, e)
        elif kind == "wire":
            self._on_message(item[1])
        elif kind == "depth":
            self._funding_deep(item[1], item[2])
        elif kind == "sign":
            with self._lock:
                self._signing.discard(item[1])
            self._guarded(item[1], lambda: normal.sign(self, item[1]))
            self._guarded(item[1], lambda: closing.progress(self, item[1]))   # cooperative close
        elif kind == "fee":
            self._guarded(item[1], lambda: normal.follow_fee(self, item[1]))
        elif kind == "decided":
            self._guarded(item[1], lambda: normal.on_decided(self, item[1], item[2], item[3]))
        elif kind == "peer_connected":
            self._connected(bytes.fromhex(item[1]["id"]))
        elif kind == "peer_disconnected":
            peer_id = bytes.fromhex(item[1]["id"])
            for op in [o for o in self.openings.values() if o.peer_id == peer_id]:
                self._abort(op, "the peer disconnected")
            if not self._stale_disconnection(peer_id):
                self._disconnected(peer_id)

    def _guarded(self, channel_id: bytes, fn: Callable[[], None]) -> None:
        """Run a step of a channel's protocol that we started; a ChannelError fails the channel."""
        try:
            fn()
        except ChannelError as e:
            ch = self.channels.get(channel_id)
            if ch is not None:
                self._fail(ch.peer_id, channel_id, str(e), e.warning)

    def _stale_disconnection(self, peer_id: bytes) -> bool:
        """Whether a peer_disconnected concerns an earlier connection than the one our channels were
        re-established on (events and peer messages travel apart, so it can come late): that connection
        is still up, and was made before our last reestablish."""
        try:
            current = self.transport.peer(peer_id.hex())
        except RpcError:
            return False
        if current is None:
            return False
        return float(current.get("connected_since", 0)) <= self.reestablished_at.get(peer_id, 0.0)

    def _disconnected(self, peer_id: bytes) -> None:
        """BOLT-2: updates not yet signed are forgotten on a disconnection; channels wait for reestablish."""
        for ch in list(self.channels.values()):
            if ch.peer_id == peer_id:
                self.live.discard(ch.channel_id)
                self.reestablish_sent.discard(ch.channel_id)
                self._forget_unsigned(ch)

    def _forget_unsigned(self, ch: Channel) -> None:
        """Drop the updates the receiver never signed. Our removals are decided again after reestablish; our
        adds never reached a commitment: htlc_resolved says so (failure_code temporary_channel_failure)."""
        if ch.state not in (NORMAL, SHUTDOWN):
            return
        log, dropped = ch.log.disconnected(ch.extensions)
        if not dropped:
            return
        events, htlcs = [], dict(ch.htlcs)
        for u in dropped:
            htlc_id = int(u.body.get("id", -1))
            if u.kind == "add_htlc" and u.proposer is Side.LOCAL:
                htlcs.pop(f"out:{htlc_id}", None)
                events.append({"channel_id": ch.channel_id.hex(), "htlc_id": htlc_id,
                               "payment_hash": u.body["payment_hash"], "amount_msat": int(u.body["amount_msat"]),
                               "preimage": None, "failure_onion": None, "failure_code": TEMPORARY_CHANNEL_FAILURE})
            elif u.kind == "add_htlc":
                htlcs.pop(f"in:{htlc_id}", None)
            elif u.proposer is Side.LOCAL:
                self.asked.pop((ch.channel_id, htlc_id), None)
        with self.transaction() as tx:
            self.store(tx, replace(ch, log=log, htlcs=htlcs))
            for event in events:
                tx.emit("htlc_resolved", event)

    def _on_message(self, wire: WireMessage) -> None:
        try:
            msg = decode_message(wire.type.to_bytes(2, "big") + wire.payload)
        except WireError as e:
            self.ctx.log.info("malformed message of type %d from %s: %s", wire.type, wire.peer_id.hex(), e)
            self.send(wire.peer_id, WarningMessage(ZERO_ID, f"malformed message of type {wire.type}".encode()))
            return
        channel_key = getattr(msg, "temporary_channel_id", None) or getattr(msg, "channel_id", None)
        try:
            self._dispatch(wire.peer_id, msg)
        except ChannelError as e:
            self._fail(wire.peer_id, channel_key or ZERO_ID, str(e), e.warning)
        except RpcError as e:  # another service refused or did not answer: the attempt (not the channel) fails
            self.ctx.log.warning("peer %s: %s failed: %s", wire.peer_id.hex(), msg.NAME, e.message)
            op = self.openings.get(channel_key or b"")
            if op is not None:
                self._fail(wire.peer_id, op.temp_id, f"internal error: {e.message}", False)

    def _dispatch(self, peer_id: bytes, msg: Message) -> None:
        if isinstance(msg, OpenChannel):
            if msg.temporary_channel_id in self.openings:
                raise ChannelError("temporary_channel_id already in use")
            op = opening.on_open_channel(self, peer_id, msg, self.peer_bits(peer_id))
            self.openings[op.temp_id] = op
            self._expire(op)
        elif isinstance(msg, (AcceptChannel, FundingCreated, FundingSigned)):
            key = msg.temporary_channel_id if not isinstance(msg, FundingSigned) else None
            op = self.openings.get(key) if key else self._opening_by_channel_id(msg.channel_id)
            if op is None or op.peer_id != peer_id:
                raise ChannelError(f"{msg.NAME} for no opening of ours")
            if isinstance(msg, AcceptChannel):
                opening.on_accept_channel(self, op, msg)
            else:
                fn = opening.on_funding_signed if isinstance(msg, FundingSigned) else opening.on_funding_created
                ch = fn(self, op, msg)
                self.openings.pop(op.temp_id, None)
                self.live.add(ch.channel_id)              # opened on this connection: nothing to reestablish
                self.reestablished_at[ch.peer_id] = time.time()
                self.reestablish_sent.add(ch.channel_id)
                self._keep_connected(peer_id)
                if op.reply is not None and not op.reply.done():
                    op.reply.set_result({"channel_id": ch.channel_id.hex(), "funding_txid": ch.params.funding_txid,
                                         "funding_vout": ch.params.funding_output_index,
                                         "channel_type": ch.params.channel_type.name})
        elif isinstance(msg, (UpdateAddHtlc, UpdateFulfillHtlc, UpdateFailHtlc, UpdateFailMalformedHtlc, UpdateFee)):
            if isinstance(msg, UpdateAddHtlc):
                closing.check_add(self, msg)
            normal.on_update(self, peer_id, msg)
        elif isinstance(msg, CommitmentSigned):
            normal.on_commitment_signed(self, peer_id, msg)
            closing.progress(self, msg.channel_id)
        elif isinstance(msg, RevokeAndAck):
            normal.on_revoke_and_ack(self, peer_id, msg)
            closing.progress(self, msg.channel_id)
        elif isinstance(msg, ChannelReestablish):
            reestablish.on_reestablish(self, peer_id, msg)
            ch = self.channels[msg.channel_id]
            if ch.state in (NORMAL, SHUTDOWN) and ch.channel_id in self.live:
                normal.after_change(self, ch)
            if ch.channel_id in self.live:
                closing.after_reestablish(self, ch)
        elif isinstance(msg, Shutdown):
            closing.on_shutdown(self, peer_id, msg)
        elif isinstance(msg, ClosingSigned):
            closing.on_closing_signed(self, peer_id, msg)
        elif isinstance(msg, ChannelReady):
            self._channel_ready(peer_id, msg)
        elif isinstance(msg, ChannelUpdate):
            hints.on_channel_update(self, peer_id, msg)   # the peer's fees for our route hints
        elif isinstance(msg, ErrorMessage):
            self._peer_error(peer_id, msg)
        elif isinstance(msg, WarningMessage):
            self.ctx.log.info("warning from %s: %s", peer_id.hex(), printable(msg.data))

    def _keep_connected(self, peer_id: bytes) -> None:
        """A peer we have a channel with is redialled by peerd after a drop or a restart."""
        try:
            self.transport.set_persistent(peer_id.hex(), True)
        except RpcError as e:
            self.ctx.log.info("peer %s not made persistent: %s", peer_id.hex(), e.message)

    def _opening_by_channel_id(self, cid: bytes) -> Opening | None:
        from .document import channel_id_of
        for op in self.openings.values():
            if op.params is not None and channel_id_of(op.params.funding_txid,
                                                       op.params.funding_output_index) == cid:
                return op
        return None

    # --- funding depth and channel_ready ---

    def _funding_deep(self, cid: bytes, body: dict[str, Any]) -> None:
        ch = self.channels.get(cid)
        if ch is None or ch.state != AWAITING_LOCK or ch.ready_sent:
            return
        height = int(body["height"])   # watchd: the block that confirmed it
        scid = self._scid(height, ch.params.funding_txid, ch.params.funding_output_index)
        crash_point("funding_deep", self.ctx.node.network)
        second = self.signer.per_commitment_point(ch.dbid, 1)
        ready = replace(ch, ready_sent=True, scid=scid, funding_tx=None)
        if ready.ready_received:
            ready = ready.with_state(NORMAL)
        with self.transaction() as tx:
            self.store(tx, ready)
            self.send(ch.peer_id, opening.channel_ready(ready, second), tx)
        crash_point("channel_ready_stored", self.ctx.node.network)

    def _scid(self, height: int, txid: str, vout: int) -> str:
        found = self.chain.block(height)
        if found is None:
            raise RuntimeError(f"no block at height {height}")
        for index, t in enumerate(parse_block(found[1])[2]):
            if t.txid().hex() == txid:
                return format_scid(height << 40 | index << 16 | vout)
        raise RuntimeError(f"funding transaction {txid} is not in block {height}")

    def _channel_ready(self, peer_id: bytes, msg: ChannelReady) -> None:
        ch = self.channels.get(msg.channel_id)
        if ch is None or ch.peer_id != peer_id:
            raise ChannelError("channel_ready for no channel of ours", warning=True)
        if ch.ready_received or ch.state != AWAITING_LOCK:
            opening.keep_their_alias(self, ch, msg)   # a retransmission (BOLT-2: ignore it), maybe a new alias
            return
        points = {**ch.their_points, 1: msg.second_per_commitment_point}
        new = replace(opening.their_alias(ch, msg), ready_received=True, their_points=points)
        if new.ready_sent:
            new = new.with_state(NORMAL)
        with self.transaction() as tx:
            self.store(tx, new)
        crash_point("channel_ready_received", self.ctx.node.network)

    def _connected(self, peer_id: bytes) -> None:
        """channel_reestablish for each of the peer's channels, before anything else about them."""
        for ch in list(self.channels.values()):
            if ch.peer_id == peer_id:
                reestablish.send(self, ch)

    # --- failures ---

    def _peer_error(self, peer_id: bytes, msg: ErrorMessage) -> None:
        text = printable(msg.data)
        for op in [o for o in self.openings.values() if o.peer_id == peer_id
                   and msg.channel_id in (ZERO_ID, o.temp_id)]:
            self._abort(op, f"the peer refused: {text}")
        for ch in list(self.channels.values()):
            if (ch.peer_id == peer_id and msg.channel_id in (ZERO_ID, ch.channel_id)
                    and ch.state in IN_USE):
                with self.transaction() as tx:
                    self.store(tx, ch.with_state(FAILED, failure=f"error from the peer: {text}"))
                self._go_to_chain(ch.channel_id, f"error from the peer: {text}")

    def _fail(self, peer_id: bytes, key: bytes, reason: str, warning: bool) -> None:
        """We refuse what the peer did: tell it, and stop the opening or the channel."""
        self.ctx.log.warning("peer %s, channel %s: %s", peer_id.hex(), key.hex(), reason)
        if warning:
            self.send(peer_id, WarningMessage(key, reason.encode()[:500]))
            return
        op = self.openings.get(key) or self._opening_by_channel_id(key)
        ch = self.channels.get(key)
        if ch is not None and ch.peer_id == peer_id and ch.state in IN_USE:
            with self.transaction() as tx:
                self.store(tx, ch.with_state(FAILED, failure=reason))
                self.send(peer_id, ErrorMessage(key, reason.encode()[:500]), tx)
            self._go_to_chain(ch.channel_id, reason)
            return
        self.send(peer_id, ErrorMessage(key, reason.encode()[:500]))
        if op is not None:
            self._abort(op, reason)

    def _go_to_chain(self, channel_id: bytes, reason: str) -> None:
        """A failed channel goes to chain by our commitment, unless we are behind (onchain.may_force_close)."""
        ch = self.channels[channel_id]
        if onchain.may_force_close(ch) is None:
            try:
                onchain.force_close(self, channel_id, reason)
            except RpcError as e:
                self.ctx.log.warning("channel %s: force close failed: %s", channel_id.hex(), e.message)

    def _abort(self, op: Opening, why: str) -> None:
        """Forget an opening: its wallet inputs are released and the `open` caller told why."""
        self.openings.pop(op.temp_id, None)
        if op.funded is not None:
            try:
                self.funding.release(op.funded.reservation)
            except RpcError as e:
                self.ctx.log.warning("could not release the inputs of an abandoned opening: %s", e.message)
        if op.reply is not None and not op.reply.done():
            op.reply.set_exception(RpcError(RpcError.REFUSED, f"channel opening failed: {why}"))

    # --- RPC (on the worker) ---

    def open(self, peer_id: bytes, funding_sat: int, push_msat: int, feerate_per_kw: int | None, private: bool,
             channel_type: str | None, min_depth: int, reply: "Future[dict[str, Any]]") -> None:
        """Start opening a channel; `reply` gets the result once the funding transaction is sent."""
        if self.transport.peer(peer_id.hex()) is None:
            raise RpcError(RpcError.INVALID_PARAMS, f"peer {peer_id.hex()} is not connected")
        ct = opening.choose_type(self, self.peer_bits(peer_id), channel_type)
        op = opening.new_opening(self, peer_id, funding_sat, push_msat, feerate_per_kw or self.feerate_per_kw(),
                                 ct, private)
        op.reply, op.min_depth = reply, min_depth
        self.openings[op.temp_id] = op
        opening.start_open(self, op)
        self._expire(op)

    def _expire(self, op: Opening) -> None:
        """Abandon `op` if it is still in progress after OPENING_TIMEOUT (the peer went quiet)."""
        def check() -> None:
            if self.openings.get(op.temp_id) is op:
                self._abort(op, f"no answer from the peer in {OPENING_TIMEOUT:.0f} s")
        timer = threading.Timer(OPENING_TIMEOUT, lambda: self.worker(op.peer_id).put(("call", check, Future())))
        timer.daemon = True
        timer.start()

