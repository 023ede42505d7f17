"""pay's sender: attempts queued together are stored in one transaction and offered to channeld at once,
off the service thread; refusals and answers come back to the payer."""
from __future__ import annotations

import hashlib
import threading
import time
from types import SimpleNamespace
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.pool import StaticPool

from lnp_plugin_api import RpcError, bolt11
from lnp_plugins.pay import storage
from lnp_plugins.pay.sender import Job, Sender

from payment_tools import invoice_of

PAYEE_KEY = b"\x21" * 32


class FakeCtx:
    """What the sender uses of a service context: storage, control requests, call_soon, the log."""

    def __init__(self) -> None:
        self.engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
        storage.metadata.create_all(self.engine)
        self.storage = SimpleNamespace(begin=self.engine.begin)
        self.commits = 0
        event.listen(self.engine, "commit", lambda conn: self._count())
        self.adds: list[dict] = []
        self.add_requests = 0
        self.lock = threading.Lock()
        self.back: list = []
        self.log = SimpleNamespace(info=lambda *a: None, warning=lambda *a: None, exception=lambda *a: None)

    def _count(self) -> None:
        self.commits += 1

    def request(self, name: str, body: dict, timeout: float = 30.0) -> Any:
        if name == "chain.info":
            return {"network": "regtest", "height": 500, "best_hash": "00" * 32, "syncing": False}
        assert name == "channeld.add_htlcs"
        with self.lock:
            self.add_requests += 1
        time.sleep(0.2)                      # channeld's batch: every add of the group waits together
        results: list = []
        with self.lock:
            for htlc in body["htlcs"]:
                self.adds.append(htlc)
                if htlc["amount_msat"] == 13_000:
                    results.append({"error": {"code": RpcError.REFUSED, "message": "no usable channel"}})
                else:
                    results.append({"channel_id": "ab" * 32, "htlc_id": len(self.adds)})
        return {"results": results}

    def call_soon(self, fn: Any) -> None:
        self.back.append(fn)


def test_a_group_of_attempts_is_stored_in_one_commit_and_offered_at_once() -> None:
    ctx = FakeCtx()
    calls: list = []
    payer = SimpleNamespace(ctx=ctx, stored=lambda h: calls.append(("stored", h)),
                            sent=lambda h: calls.append(("sent", h)),
                            refused=lambda a, h, r: calls.append(("refused", h, r)))
    amounts = [10_000, 11_000, 12_000, 13_000]
    jobs = []
    for i, amount in enumerate(amounts):
        text = invoice_of(PAYEE_KEY, amount_msat=amount, preimage=bytes([i + 1]) * 32)
        jobs.append(Job(text, bolt11.decode(text), amount))
    sender = Sender(payer)                   # its thread waits on an empty queue: the group is sent by hand
    try:
        ctx.commits = 0
        t0 = time.monotonic()
        sender._send(jobs)
        took = time.monotonic() - t0
    finally:
        sender.close()
    for fn in ctx.back:
        fn()
    assert ctx.commits == 3                  # a read (tried before?), the attempts, the HTLC ids channeld gave
    assert ctx.add_requests == 1 and took < 0.6   # in one request, not one 0.2 s round trip after another
    hashes = [hashlib.sha256(bytes([i + 1]) * 32).hexdigest() for i in range(len(jobs))]
    assert [c for c in calls if c[0] == "stored"] == [("stored", h) for h in hashes]
    assert {c[1] for c in calls if c[0] == "sent"} == set(hashes[:3])
    [refused] = [c for c in calls if c[0] == "refused"]
    assert refused[1] == hashes[3] and "no usable channel" in refused[2]
    with ctx.engine.begin() as conn:
        rows = {r.payment_hash: r for r in conn.execute(select(storage.attempts))}
    ctx.engine.dispose()
    assert {rows[h].status for h in hashes[:3]} == {"pending"} and rows[hashes[3]].status == "sending"
    assert all(rows[h].channel_id == "ab" * 32 for h in hashes[:3])


def test_attempt_ids_go_on_after_a_restart() -> None:
    """The sender gives the attempt ids itself: a new sender (a restarted node) starts after the stored ones."""
    ctx = FakeCtx()
    payer = SimpleNamespace(ctx=ctx, stored=lambda h: None, sent=lambda h: None, refused=lambda a, h, r: None)
    for round_ in range(2):
        sender = Sender(payer)
        try:
            text = invoice_of(PAYEE_KEY, amount_msat=10_000, preimage=bytes([round_ + 1]) * 32)
            sender._send([Job(text, bolt11.decode(text), 10_000)])
        finally:
            sender.close()
    with ctx.engine.begin() as conn:
        ids = [r.id for r in conn.execute(select(storage.attempts).order_by(storage.attempts.c.id))]
    ctx.engine.dispose()
    assert ids == [1, 2]


def test_htlc_resolved_before_the_senders_callbacks_settles_the_payment_once() -> None:
    """channeld may resolve an HTLC before the sender's call_soon callbacks ran on the service thread: the
    payer still finds the attempt (the sender handed it over before offering it), and a repeat does nothing."""
    from lnp_plugins.pay.payer import Payer

    ctx = FakeCtx()
    emitted: list = []
    ctx.transaction = lambda: _tx(ctx, emitted)
    ctx.node = SimpleNamespace(features=(), network="regtest", node_id=b"\x02" * 33)
    ctx.log.error = lambda *a: None
    payer = Payer(ctx)
    try:
        preimage = b"\x05" * 32
        text = invoice_of(PAYEE_KEY, amount_msat=10_000, preimage=preimage)
        done = payer.pay(text, None, 30.0)
        deadline = time.monotonic() + 5
        while not ctx.adds and time.monotonic() < deadline:   # channeld took the HTLC (the sender's thread)
            time.sleep(0.01)
        resolved = {"channel_id": "ab" * 32, "htlc_id": 1, "payment_hash": hashlib.sha256(preimage).hexdigest(),
                    "preimage": preimage.hex()}
        payer.on_resolved([resolved])        # before any callback of the sender ran here
        assert [name for name, _ in emitted] == ["payment_succeeded"]
        for fn in list(ctx.back):
            fn()
        payer.on_resolved([resolved])        # delivered again: already applied
        assert len(emitted) == 1 and done.result(1)["status"] == "complete"
        assert payer.listing(text)[0]["status"] == "complete"
    finally:
        payer.close()
        ctx.engine.dispose()


def test_a_window_of_htlc_resolved_is_one_transaction_and_a_failed_commit_applies_none_of_it() -> None:
    """htlc_resolved comes a window at a time: one transaction for all of it; when that commit fails,
    nothing is applied (memory included) and the window delivered again settles every payment once."""
    from lnp_plugins.pay.payer import Payer

    ctx = FakeCtx()
    emitted: list = []
    fail = [True]

    class Tx:
        def __enter__(self) -> "Tx":
            self._begin = ctx.engine.begin()
            self.conn = self._begin.__enter__()
            self.rows: list = []
            return self

        def emit(self, name: str, body: dict) -> None:
            self.rows.append((name, body))

        def __exit__(self, kind: Any, *exc: Any) -> Any:
            if kind is None and fail[0]:
                fail[0] = False
                self._begin.__exit__(RuntimeError, RuntimeError("disk full"), None)
                raise RuntimeError("disk full")
            out = self._begin.__exit__(kind, *exc)
            if kind is None:
                emitted.extend(self.rows)
            return out

    ctx.transaction = Tx
    ctx.node = SimpleNamespace(features=(), network="regtest", node_id=b"\x02" * 33)
    ctx.log.error = lambda *a: None
    payer = Payer(ctx)
    try:
        preimages = [bytes([9 + i]) * 32 for i in range(3)]
        texts = [invoice_of(PAYEE_KEY, amount_msat=10_000, preimage=p) for p in preimages]
        waits = [payer.pay(t, None, 30.0) for t in texts]
        deadline = time.monotonic() + 5
        while len(ctx.adds) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        by_hash = {a["payment_hash"]: i + 1 for i, a in enumerate(ctx.adds)}
        window = [{"channel_id": "ab" * 32, "htlc_id": by_hash[hashlib.sha256(p).hexdigest()],
                   "payment_hash": hashlib.sha256(p).hexdigest(), "preimage": p.hex()} for p in preimages]
        try:
            payer.on_resolved(window)
            raise AssertionError("the failed commit must reach the caller (the window comes again)")
        except RuntimeError:
            pass
        assert emitted == [] and not any(w.done() for w in waits)
        assert all(r["status"] == "pending" for t in texts for r in payer.listing(t))
        payer._take()                        # memory read again from the tables (the failed window changed it)
        commits = ctx.commits
        payer.on_resolved(window)            # delivered again
        assert ctx.commits == commits + 1    # the whole window in one commit
        assert [name for name, _ in emitted] == ["payment_succeeded"] * 3
        assert [w.result(1)["status"] for w in waits] == ["complete"] * 3
        payer.on_resolved(window)            # and again: already applied
        assert len(emitted) == 3
    finally:
        payer.close()
        ctx.engine.dispose()


def test_an_htlc_resolved_delivered_again_leaves_the_next_attempt_alone() -> None:
    """An attempt whose HTLC never left the node fails and a new attempt is made; the first one's event,
    delivered again (at least once) while the new attempt is still being offered, must not settle it."""
    from lnp_plugins.pay.payer import Payer

    ctx = FakeCtx()
    ctx.transaction = lambda: _tx(ctx)
    ctx.node = SimpleNamespace(features=(), network="regtest", node_id=b"\x02" * 33)
    ctx.log.error = lambda *a: None
    payer = Payer(ctx)
    try:
        preimage = b"\x0c" * 32
        h = hashlib.sha256(preimage).hexdigest()
        text = invoice_of(PAYEE_KEY, amount_msat=10_000, preimage=preimage)
        done = payer.pay(text, None, 30.0)
        wait = lambda cond: [time.sleep(0.01) for _ in range(500) if not cond()]  # noqa: E731
        wait(lambda: len(ctx.adds) == 1)
        for fn in list(ctx.back):
            fn()
        ctx.back.clear()
        first = {"channel_id": "ab" * 32, "htlc_id": 1, "payment_hash": h, "failure_code": 0x1007}
        payer.on_resolved([first])           # never left the node: tried again in a second
        wait(lambda: bool(ctx.back))
        for fn in list(ctx.back):
            fn()
        wait(lambda: len(ctx.engine.connect().execute(select(storage.attempts)).all()) == 2)
        payer.on_resolved([first])           # delivered again while the second is being offered
        wait(lambda: len(ctx.adds) == 2)
        with ctx.engine.begin() as conn:
            rows = conn.execute(select(storage.attempts).order_by(storage.attempts.c.id)).all()
        assert [r.status for r in rows] == ["failed", "pending"] and not done.done()
        payer.on_resolved([{"channel_id": "ab" * 32, "htlc_id": 2, "payment_hash": h, "preimage": preimage.hex()}])
        assert done.result(1)["status"] == "complete"
    finally:
        payer.close()
        ctx.engine.dispose()


class _tx:
    """ctx.transaction over the fake's engine; emitted events go to `emitted` (when given)."""

    def __init__(self, ctx: Any, emitted: list | None = None) -> None:
        self.ctx, self.emitted = ctx, emitted

    def __enter__(self) -> "_tx":
        self._begin = self.ctx.engine.begin()
        self.conn = self._begin.__enter__()
        return self

    def emit(self, name: str, body: dict) -> None:
        if self.emitted is not None:
            self.emitted.append((name, body))

    def __exit__(self, *exc: Any) -> Any:
        return self._begin.__exit__(*exc)


def test_inflight_loads_pending_payments_and_unsettled_attempts() -> None:
    """At start the payer's memory holds what the database says is pending, and nothing else."""
    from lnp_plugins.pay.inflight import InFlight

    ctx = FakeCtx()
    pay = dict(bolt11="-", destination="02" * 33, amount_msat=1, preimage=None, created_at=0.0, completed_at=None,
               failure_reason=None, failure_code=None, attempts=1)
    tried = dict(shared_secrets="00" * 32, amount_msat=1, cltv_expiry=1, created_at=0.0)
    with ctx.engine.begin() as conn:
        conn.execute(storage.payments.insert(), [dict(pay, payment_hash="aa", status="pending"),
                                                 dict(pay, payment_hash="bb", status="complete")])
        conn.execute(storage.attempts.insert(), [
            dict(tried, id=1, payment_hash="aa", status="failed", channel_id=None, htlc_id=None),
            dict(tried, id=2, payment_hash="bb", status="complete", channel_id="c", htlc_id=1),
            dict(tried, id=3, payment_hash="aa", status="pending", channel_id="c", htlc_id=2),
            dict(tried, id=4, payment_hash="aa", status="sending", channel_id=None, htlc_id=None)])
    inflight = InFlight()
    with ctx.engine.begin() as conn:
        inflight.load(conn)
    ctx.engine.dispose()
    assert list(inflight.payments) == ["aa"] and inflight.payments["aa"].latest == 4
    assert sorted(inflight.attempts) == [3, 4]
    assert inflight.find("c", 2, "aa").id == 3 and inflight.find("c", 1, "bb") is None
    assert inflight.find("c", 9, "aa").id == 4                   # no answer from add_htlc: the one still sending
    inflight.settled(inflight.attempts[4])
    assert inflight.find("c", 9, "aa") is None and inflight.find("c", 2, "aa").id == 3
