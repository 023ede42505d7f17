"""channeld's storage: the channel document apart from its HTLC rows, incremental saves, the schema-2
migration, and the worker's batched transactions (one commit, messages after it, undo on failure)."""
from __future__ import annotations

import hashlib
import json
import time
import os
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, select

from lnp_plugin_api import WireMessage
from lnp_plugin_api.bolt_extensions import extensions_for
from lnp_plugin_api.channel import CommitmentSpec, Side, Update
from lnp_plugin_api.channel_updates import UpdateLog
from lnp_plugins.channeld import storage
from lnp_plugins.channeld.batch import Transactions
from lnp_plugins.channeld.document import NORMAL, Channel

from test_channel_updates import STATIC_REMOTEKEY, make_params, pcp

L, R = Side.LOCAL, Side.REMOTE


def channel(n_htlcs: int, seed: int = 1) -> Channel:
    """A channel in `normal` with `n_htlcs` HTLCs offered (the first 25 in its log) and their onions kept."""
    params, exts = make_params(STATIC_REMOTEKEY), extensions_for(STATIC_REMOTEKEY)
    log = UpdateLog.start(params, CommitmentSpec(2500, 600_000_000, 400_000_000), exts)
    htlcs = {}
    for i in range(n_htlcs):
        ph = hashlib.sha256(bytes([seed, i % 256, i // 256])).hexdigest()
        if i < 25:   # the log takes max_accepted_htlcs (30) at most; the rows are the point here
            log = log.add(Update("add_htlc", "htlcs", L, {"id": i, "amount_msat": 1_000_000, "payment_hash": ph,
                                                           "cltv_expiry": 600}), exts)
        htlcs[f"out:{i}"] = {"onion": os.urandom(1366).hex(), "payment_hash": ph, "amount_msat": 1_000_000}
    return Channel(bytes([seed]) * 32, b"\x02" * 33, seed, NORMAL, params, log, 1, {0: pcp(2, 0), 1: pcp(2, 1)},
                   htlcs=htlcs, scid="101x1x0")


@pytest.fixture
def engine() -> Iterator[Any]:
    eng = create_engine("sqlite://")
    storage.metadata.create_all(eng)
    yield eng
    eng.dispose()


def same(a: Channel, b: Channel) -> None:
    assert a.to_json() == b.to_json() and dict(a.htlcs) == dict(b.htlcs)


def test_a_channel_with_many_htlcs_round_trips_and_its_document_holds_no_onion(engine: Any) -> None:
    ch = channel(120)
    with engine.begin() as conn:
        storage.save(conn, ch)
    with engine.begin() as conn:
        [back] = storage.load_all(conn)
        doc = conn.execute(select(storage.channels.c.data)).scalar_one()
    same(back, ch)
    assert back.log.pending(R, back.extensions) == ch.log.pending(R, ch.extensions)
    assert all(h["onion"] not in doc for h in ch.htlcs.values())
    assert len(doc) < 120 * 1366   # the onions (2732 hex characters each) live in their own rows


def test_a_save_writes_only_the_htlc_rows_that_changed(engine: Any) -> None:
    ch = channel(10)
    with engine.begin() as conn:
        storage.save(conn, ch)
        # mark a row that no change touches: an incremental save leaves it as it is
        conn.execute(storage.htlcs.update().where(storage.htlcs.c.key == "out:5").values(data='{"mark": 1}'))
    htlcs = {k: v for k, v in ch.htlcs.items() if k != "out:0"}          # one gone
    htlcs["out:1"] = {**htlcs["out:1"], "failure_code": 0x2002}           # one changed
    htlcs["in:0"] = {"onion": "00" * 1366}                                # one new
    new = replace(ch, htlcs=htlcs)
    with engine.begin() as conn:
        storage.save(conn, new, ch)
    with engine.begin() as conn:
        [back] = storage.load_all(conn)
    assert back.htlcs["out:5"] == {"mark": 1}
    assert {k: v for k, v in back.htlcs.items() if k != "out:5"} == {k: v for k, v in htlcs.items() if k != "out:5"}
    with engine.begin() as conn:   # without the stored state (`before` unknown): every row rewritten
        storage.save(conn, new)
        [back] = storage.load_all(conn)
    same(back, new)


def test_schema_2_moves_each_documents_htlcs_to_their_rows(engine: Any) -> None:
    ch = channel(7)
    with engine.begin() as conn:
        storage.htlcs.drop(conn)
        doc = {**ch.to_json(), "version": 1, "htlcs": dict(ch.htlcs)}
        conn.execute(storage.channels.insert().values(
            channel_id=ch.channel_id.hex(), dbid=ch.dbid, peer_id=ch.peer_id.hex(), state=ch.state, opener=True,
            capacity_sat=ch.params.funding_sat, channel_type="static_remotekey", data=json.dumps(doc), version=1,
            created_at=0.0, updated_at=0.0))
        storage.MODELS.migrations[2](conn)
    with engine.begin() as conn:
        [back] = storage.load_all(conn)
        row = conn.execute(select(storage.channels)).one()
    same(back, ch)
    assert row.version == 2 and "htlcs" not in json.loads(row.data)


def test_schema_2_again_after_an_interrupted_run(engine: Any) -> None:
    """SQLite commits CREATE TABLE at once: a run killed while moving rows leaves the table (and maybe
    rows) behind with the documents still at version 1; the next start moves them again, once."""
    ch = channel(5)
    with engine.begin() as conn:
        doc = {**ch.to_json(), "version": 1, "htlcs": dict(ch.htlcs)}
        conn.execute(storage.channels.insert().values(
            channel_id=ch.channel_id.hex(), dbid=ch.dbid, peer_id=ch.peer_id.hex(), state=ch.state, opener=True,
            capacity_sat=ch.params.funding_sat, channel_type="static_remotekey", data=json.dumps(doc), version=1,
            created_at=0.0, updated_at=0.0))
        conn.execute(storage.htlcs.insert().values(channel_id=ch.channel_id.hex(), key="out:0", data="{}"))
        storage.MODELS.migrations[2](conn)
        storage.MODELS.migrations[2](conn)   # and a run after one that went through changes nothing
    with engine.begin() as conn:
        [back] = storage.load_all(conn)
    same(back, ch)


# --- the worker's batch (batch.py) ------------------------------------------------------------------------

class FakeHost:
    """ctx.transaction over a real SQLite database; what each commit sent, in order."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.commits, self.fail = engine, [], False
        self.stamps: list[float] = []   # each message's committed_at (when channeld decided it)
        self.log = SimpleNamespace(exception=lambda *a: None)

    def _sent(self, sent: list, msg: WireMessage) -> None:
        self.stamps.append(msg.committed_at)
        sent.append(replace(msg, committed_at=0.0))

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        sent: list = []
        with self.engine.begin() as conn:
            yield SimpleNamespace(conn=conn, send_wire=lambda m: self._sent(sent, m), emit=lambda e, b: sent.append(e))
            if self.fail:
                raise OSError("disk full")
        self.commits.append(sent)


def manager(engine: Any) -> Any:
    mgr = SimpleNamespace(channels={}, ctx=FakeHost(engine))
    mgr.txs = Transactions(mgr)
    return mgr


def wire(n: int) -> WireMessage:
    return WireMessage(b"\x02" * 33, 130, bytes([n]))


def stored(engine: Any) -> dict[bytes, Channel]:
    with engine.begin() as conn:
        return {c.channel_id: c for c in storage.load_all(conn)}


def test_a_batch_commits_once_and_sends_after_the_commit(engine: Any) -> None:
    mgr, ch = manager(engine), channel(3)
    fut: Future = Future()
    seen_before_commit = []

    def step(i: int) -> None:
        with mgr.txs.transaction(batched=True) as tx:
            mgr.txs.stored(tx, replace(ch, htlcs={**ch.htlcs, f"in:{i}": {"onion": "00"}}))
            tx.send_wire(wire(i))
        seen_before_commit.append((len(mgr.ctx.commits), stored(engine)))

    def call(_: Any) -> None:
        step(0)
        mgr.txs.reply(fut, True, "ok")
        assert not fut.done()                      # answered once committed
        step(1)
    mgr.txs.run_batch([None], call)
    assert [c for c, _ in seen_before_commit] == [0, 0] and all(s == {} for _, s in seen_before_commit)
    assert mgr.ctx.commits == [[wire(0), wire(1)]] and fut.result() == "ok"
    assert set(stored(engine)[ch.channel_id].htlcs) == set(ch.htlcs) | {"in:1"}
    assert mgr.txs.saved[ch.channel_id] is mgr.channels[ch.channel_id]


def test_a_message_is_stamped_when_decided_not_when_the_batch_commits(engine: Any) -> None:
    """peerd drops a message stamped before the peer's current connection began: a batch committed
    after a reconnection must not pass off a message decided on the earlier connection as a new one."""
    mgr = manager(engine)

    def call(_: Any) -> None:
        with mgr.txs.transaction(batched=True) as tx:
            tx.send_wire(wire(0))
        time.sleep(0.05)                                   # the rest of the batch takes a while
    before = time.time()
    mgr.txs.run_batch([None], call)
    [stamp] = mgr.ctx.stamps
    assert before <= stamp < before + 0.04


def test_an_unbatched_block_commits_the_batch_so_far_first(engine: Any) -> None:
    mgr, ch = manager(engine), channel(1)

    def handle(_: Any) -> None:
        with mgr.txs.transaction(batched=True) as tx:
            mgr.txs.stored(tx, ch)
            tx.send_wire(wire(1))
        with mgr.txs.transaction() as tx:         # e.g. closing: commits when the block ends
            tx.send_wire(wire(2))
        assert mgr.ctx.commits == [[wire(1), wire(2)]]
        with mgr.txs.transaction(batched=True) as tx:
            tx.send_wire(wire(3))
    mgr.txs.run_batch([None], handle)
    assert mgr.ctx.commits == [[wire(1), wire(2)], [wire(3)]]


def test_a_failed_block_is_undone_and_the_rest_of_the_batch_goes_on(engine: Any) -> None:
    mgr, ch = manager(engine), channel(1)
    changed = replace(ch, state="shutdown")

    def handle(item: int) -> None:
        with mgr.txs.transaction(batched=True) as tx:
            mgr.txs.stored(tx, ch if item == 0 else changed)
            tx.send_wire(wire(item))
            if item == 1:
                raise ValueError("a bug half-way")
    mgr.txs.run_batch([0, 1, 2], handle)
    assert mgr.ctx.commits == [[wire(0), wire(2)]]
    assert stored(engine)[ch.channel_id].state == "shutdown"   # the third block's


def test_a_failed_commit_sends_nothing_and_memory_returns_to_what_is_stored(engine: Any) -> None:
    mgr, ch = manager(engine), channel(1)
    with mgr.txs.transaction() as tx:
        mgr.txs.stored(tx, ch)
    fut: Future = Future()
    mgr.ctx.fail = True

    def handle(_: Any) -> None:
        with mgr.txs.transaction(batched=True) as tx:
            mgr.txs.stored(tx, replace(ch, state="shutdown"))
            tx.send_wire(wire(1))
        mgr.txs.reply(fut, True, "ok")
    with pytest.raises(OSError):
        mgr.txs.run_batch([None], handle)
    assert len(mgr.ctx.commits) == 1 and mgr.channels[ch.channel_id] is ch
    assert isinstance(fut.exception(), RuntimeError)
    assert stored(engine)[ch.channel_id].state == NORMAL


def test_once_asks_once_per_batch(engine: Any) -> None:
    """e.g. whether the peer is connected: asked of peerd once for all the add_htlc calls of a batch."""
    mgr, asked = manager(engine), []

    def ask() -> bool:
        asked.append(1)
        return True
    mgr.txs.run_batch([1, 2, 3], lambda _: mgr.txs.once("peer", ask))
    assert len(asked) == 1
    mgr.txs.run_batch([4], lambda _: mgr.txs.once("peer", ask))
    assert len(asked) == 2
    mgr.txs.once("peer", ask)              # outside a batch: every time
    assert len(asked) == 3


def test_htlc_outcomes_linger_to_share_a_commit_other_inputs_do_not() -> None:
    """The worker hands inputs that only lead to our own updates (`decided`) together when they come a few ms
    apart (one commit for them); anything else goes at once."""
    import logging
    import threading
    import time

    from lnp_plugins.channeld.actor import PeerWorker
    batches: list = []
    done = threading.Event()

    def handle(items: list) -> None:
        batches.append(list(items))
        if items[-1] == "end":
            done.set()
    w = PeerWorker("p", handle, logging.getLogger("t"), linger=lambda i: i == "d", linger_s=0.5)
    try:
        w.put("d")
        time.sleep(0.05)
        w.put("d")
        time.sleep(0.05)
        w.put("x")                     # a peer's message: handed with them, no more waiting
        time.sleep(0.7)
        t0 = time.monotonic()
        w.put("end")
        assert done.wait(5) and time.monotonic() - t0 < 0.4
    finally:
        w.stop()
    assert batches == [["d", "d", "x"], ["end"]]
