"""channeld's storage transactions: what a peer worker handles in one go shares one commit.

A peer's worker takes every input queued for it at once (a batch) and handles them in order. The
changes they make (channels, rows, events, wire messages) are buffered in one `ChannelTx` and written
in ONE storage transaction at the end of the batch (one fsync instead of one per message); every
message and event of the batch leaves after that commit (the host's outbox), so nothing leaves
before the state it depends on is on disk, and a crash before the commit loses the whole batch and
sends nothing of it. A channel is written once per batch, with only its HTLC rows that changed.

What must not wait for the end of the batch commits at once: a block opened with
`transaction()` (not `batched=True`) commits the batch so far and itself when it ends, as a
transaction of its own did before (closing, on chain, opening: they broadcast or answer right after).
What follows a commit without going through the outbox (a decision asked of another plugin, an RPC
answer, a developer's crash point) is run by `after_commit`, once the batch is committed.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from lnp_plugin_api import WireMessage

from . import storage
from .document import Channel

if TYPE_CHECKING:
    from .manager import ChannelManager


class ChannelTx:
    """The writes of one transaction, buffered until it commits: channels (the latest of each), statements,
    and the outbox rows (events and wire messages, in order)."""

    def __init__(self) -> None:
        self.channels: dict[bytes, Channel] = {}
        self.ops: list[tuple[str, Any, Any]] = []
        self.after: list[Callable[[], None]] = []
        self.replies: list[tuple["Future[Any]", bool, Any]] = []
        self.memo: dict[Any, Any] = {}      # answers asked once per batch (`Transactions.once`)
        # the current block's channels before it: in memory, and in this transaction (None: not in it)
        self.undo: dict[bytes, tuple[Channel | None, Channel | None]] | None = None

    def send_wire(self, msg: WireMessage) -> None:
        """A wire message, handed to the transport after the commit; stamped now, when it was decided (on
        the connection known now: the transport drops it if a newer connection began before this)."""
        if not msg.committed_at:
            msg = dataclasses.replace(msg, committed_at=time.time())
        self.ops.append(("wire", msg, None))

    def emit(self, event: str, body: dict[str, Any] | None = None) -> None:
        """A (durable) event, delivered after the commit."""
        self.ops.append(("emit", event, body or {}))

    def execute(self, statement: Any, params: Any = None) -> None:
        """A statement on channeld's tables (with its parameters, if any), run in the transaction."""
        self.ops.append(("exec", statement, params))

    @property
    def empty(self) -> bool:
        """Whether there is nothing to commit or to do after."""
        return not (self.channels or self.ops or self.after or self.replies)


class Transactions:
    """The manager's transactions, per worker thread: `transaction()`, `after_commit`, `run_batch`."""

    def __init__(self, mgr: "ChannelManager") -> None:
        self.mgr = mgr
        self.saved: dict[bytes, Channel] = {}     # each channel as committed (the base of incremental saves)
        self._local = threading.local()

    def _batch(self) -> ChannelTx | None:
        return getattr(self._local, "batch", None)

    @contextmanager
    def transaction(self, batched: bool = False) -> Iterator[ChannelTx]:
        """`with mgr.transaction() as tx:` channeld's writes and the messages that follow from them.

        Inside a worker's batch with `batched`, they join the batch's commit; otherwise they commit when the
        block ends (with the batch so far, which comes first). An exception in the block undoes the block's
        writes, in memory too (`mgr.channels`), and sends nothing of it.
        """
        batch = self._batch()
        tx = batch if batch is not None else ChannelTx()
        mark, tx.undo = len(tx.ops), {}
        try:
            yield tx
        except BaseException:
            del tx.ops[mark:]
            for cid, (in_memory, in_tx) in tx.undo.items():
                self._restore(cid, in_memory)
                if in_tx is None:
                    tx.channels.pop(cid, None)
                else:
                    tx.channels[cid] = in_tx
            raise
        finally:
            tx.undo = None
        if batch is None:
            self._commit(tx)
        elif not batched:
            self.flush()

    def stored(self, tx: ChannelTx, ch: Channel) -> None:
        """`ch` is the channel's new state in `tx` (mgr.store)."""
        if tx.undo is not None and ch.channel_id not in tx.undo:
            tx.undo[ch.channel_id] = (self.mgr.channels.get(ch.channel_id), tx.channels.get(ch.channel_id))
        tx.channels[ch.channel_id] = ch
        self.mgr.channels[ch.channel_id] = ch

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once what the current batch wrote is committed (at once outside a batch)."""
        batch = self._batch()
        if batch is None:
            fn()
        else:
            batch.after.append(fn)

    def reply(self, fut: "Future[Any]", ok: bool, value: Any) -> None:
        """Answer `fut` (an RPC or a control request) once the batch is committed."""
        batch = self._batch()
        if batch is None:
            _answer(fut, ok, value)
        else:
            batch.replies.append((fut, ok, value))

    def once(self, key: Any, fn: Callable[[], Any]) -> Any:
        """`fn()`, asked once per batch (e.g. whether the peer is connected, for every add_htlc of a batch)."""
        batch = self._batch()
        if batch is None:
            return fn()
        if key not in batch.memo:
            batch.memo[key] = fn()
        return batch.memo[key]

    def send_now(self, msg: WireMessage) -> bool:
        """Queue a message that depends on no state behind the batch's (same order on the wire); False
        outside a batch (the caller sends it at once)."""
        batch = self._batch()
        if batch is None:
            return False
        batch.send_wire(msg)
        return True

    def run_batch(self, items: list[Any], handle: Callable[[Any], None]) -> None:
        """Handle `items` in order, all of them in one transaction committed at the end."""
        self._local.batch = ChannelTx()
        try:
            for item in items:
                try:
                    handle(item)
                except Exception:  # one input's failure is that input's: the others and the commit go on
                    self.mgr.ctx.log.exception("unexpected failure handling %s", type(item).__name__)
        finally:
            batch, self._local.batch = self._local.batch, None
            self._commit(batch)

    def flush(self) -> None:
        """Commit what the current batch wrote so far (it goes on with a new transaction)."""
        batch = self._batch()
        if batch is not None:
            self._local.batch = ChannelTx()
            self._commit(batch)

    def _commit(self, tx: ChannelTx) -> None:
        if tx.empty:
            return
        try:
            if tx.channels or tx.ops:
                with self.mgr.ctx.transaction() as real:
                    for cid, ch in tx.channels.items():
                        storage.save(real.conn, ch, self.saved.get(cid))
                    for kind, a, b in tx.ops:
                        if kind == "exec":
                            real.conn.execute(a) if b is None else real.conn.execute(a, b)
                        elif kind == "wire":
                            real.send_wire(a)
                        else:
                            real.emit(a, b)
        except BaseException as e:
            # memory goes back to what is stored; nothing of the batch was sent
            for cid in tx.channels:
                self._restore(cid, self.saved.get(cid))
            for fut, _, _ in tx.replies:
                _answer(fut, False, RuntimeError(f"channeld could not store the change: {e!r}"))
            raise
        self.saved.update(tx.channels)
        for fut, ok, value in tx.replies:
            _answer(fut, ok, value)
        for fn in tx.after:
            try:
                fn()
            except Exception:
                self.mgr.ctx.log.exception("after a commit")

    def _restore(self, cid: bytes, ch: Channel | None) -> None:
        if ch is None:
            self.mgr.channels.pop(cid, None)
        else:
            self.mgr.channels[cid] = ch


def _answer(fut: "Future[Any]", ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)
