"""Paying a BOLT-11 invoice of a direct peer: checks, then the attempt to the sender (sender.py: the one-hop
onion, stored, `channeld.add_htlcs`), and the `htlc_resolved` events that settle each attempt. Every method
runs on the plugin's service thread (the sender calls back through `ctx.call_soon`)."""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future
from typing import Any, Callable, Mapping

from sqlalchemy import bindparam, select

from lnp_plugin_api import RpcError, ServiceContext, bolt11, onion_errors
from lnp_plugin_api.timers import Timer, Timers

from .inflight import Attempt, InFlight, Pending
from .sender import Job, Sender
from .storage import attempts, payments

MAX_LOCAL_ATTEMPTS = 3   # attempts of a payment whose HTLCs never left the node, while its caller waits
RETRY_DELAY = 1.0        # seconds before such a new attempt (the peer may be reconnecting)
# prebuilt statements (the SET columns come from the parameters)
_PAYMENT = select(payments).where(payments.c.payment_hash == bindparam("h"))
_SET_PAYMENT = payments.update().where(payments.c.payment_hash == bindparam("h"))
_SET_ATTEMPT = attempts.update().where(attempts.c.id == bindparam("a_id"))
_BY_HTLC = select(attempts.c.id).where(attempts.c.channel_id == bindparam("c"), attempts.c.htlc_id == bindparam("i"))


class Payer:
    """The payments of one node."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.waiters: dict[str, list[Future]] = {}
        self.unarmed: dict[str, list[tuple[Future, float]]] = {}   # waits that start once the HTLC is offered
        self.sending: set[str] = set()                             # queued to the sender, not stored yet
        self.clock = Timers("pay-timers")   # one thread for every payment's wait and retry
        self.deadlines: dict[Future, Timer] = {}
        self.supported = {s.pair for s in ctx.node.features} | set(bolt11.DEFAULT_FEATURES)
        self._recover()
        self.inflight = InFlight()
        self.stale = False   # `inflight` changed by a transaction that failed: `_take` reads it again
        with ctx.storage.begin() as conn:
            self.inflight.load(conn)
        self.sender = Sender(self)

    def _recover(self) -> None:
        """A payment left pending with its last attempt failed (a retry was due when the node stopped) fails:
        nothing was paid, and `pay` tries it again."""
        with self.ctx.storage.begin() as conn:
            for row in conn.execute(select(payments).where(payments.c.status == "pending")).all():
                last = conn.execute(select(attempts.c.status).where(attempts.c.payment_hash == row.payment_hash)
                                    .order_by(attempts.c.id.desc())).scalar()
                if last == "failed":
                    conn.execute(payments.update().where(payments.c.payment_hash == row.payment_hash).values(
                        status="failed", completed_at=time.time(), failure_code=onion_errors.TEMPORARY_CHANNEL_FAILURE,
                        failure_reason="the HTLC never reached the peer and the node stopped before trying again; "
                                       "nothing was paid: pay again to retry"))

    def close(self) -> None:
        """Stop the timers; callers still waiting get an error (their payments stay as they are)."""
        self.sender.close()
        self.clock.close()
        for hash_hex in list(self.waiters):
            self._wake(hash_hex, error=RpcError(RpcError.SERVICE_UNAVAILABLE, "the pay plugin stopped"))

    # --- pay ----------------------------------------------------------------------------------------

    def pay(self, text: str, amount_msat: int | None, wait: float) -> dict[str, Any] | Future:
        """Pay `text` (or wait for the same payment in flight); a Future of the outcome."""
        try:
            inv = bolt11.decode(text)
        except bolt11.InvoiceError as e:
            raise RpcError(RpcError.INVALID_PARAMS, f"not a valid invoice: {e}") from None
        hash_hex = inv.payment_hash.hex()
        self._take()
        if hash_hex in self.sending:   # the same payment, queued and not stored yet
            return self._wait(hash_hex, wait, armed=False)
        if hash_hex in self.inflight.payments:
            return self._wait(hash_hex, wait)
        try:
            amount = self._check(inv, amount_msat)
        except RpcError:
            row = self._payment(hash_hex)
            if row is not None and row["status"] == "complete":
                return self.show(row, with_preimage=True)  # paid already: no check applies, nothing is sent
            raise
        done = self._wait(hash_hex, wait, armed=False)   # WAIT counts from when the HTLC is offered
        # new, failed or complete: the sender reads which for the whole group (a complete one is not sent again)
        self._send(Job(text.strip(), inv, amount))
        return done

    def _send(self, job: Job) -> None:
        """One attempt, to the sender: stored, then offered through `channeld.add_htlcs`. A refusal fails the
        payment (`refused`); an ambiguous error leaves it pending (htlc_resolved tells)."""
        self.sending.add(job.inv.payment_hash.hex())
        self.sender.put(job)

    # --- the sender's outcomes (on the service thread) --------------------------------------------------

    def stored(self, hash_hex: str) -> None:
        """The attempt is on disk: `pay` of the same invoice finds the payment pending."""
        self._take()
        self.sending.discard(hash_hex)

    def _take(self) -> None:
        """What the sender stored and offered (before channeld could resolve any of it)."""
        if self.stale:   # a failed window changed memory: read it again (raises while the database is away)
            fresh = InFlight()
            with self.ctx.storage.begin() as conn:
                fresh.load(conn)
            self.inflight, self.stale = fresh, False
        handed = self.sender.handed
        while not handed.empty():
            what, *item = handed.get_nowait()
            if what == "stored":
                row, attempt = item
                self.inflight.payments[row["payment_hash"]] = Pending(row, attempt.id)
                self.inflight.add(attempt)
                self.sending.discard(row["payment_hash"])
            else:   # offered
                self.inflight.offered(*item)

    def paid_already(self, hash_hex: str, row: dict[str, Any]) -> None:
        """The payment was complete: its callers get it as it was, and nothing was sent."""
        self.sending.discard(hash_hex)
        self._wake(hash_hex, result=self.show(row, with_preimage=True))

    def sent(self, hash_hex: str) -> None:
        """channeld took the HTLC (or may have): the callers' waits start."""
        for done, wait in self.unarmed.pop(hash_hex, []):
            if not done.done():
                self._arm(hash_hex, done, wait)

    def refused(self, attempt_id: int, hash_hex: str, reason: str) -> None:
        """channeld refused the HTLC: nothing was sent; the payment fails and its callers are told."""
        self._take()
        attempt = self.inflight.attempts.get(attempt_id)
        if attempt is not None:
            self._in_transaction(lambda tx, then: self._settle(attempt, tx, then, failed=(reason, None)))

    def not_sent(self, hash_hex: str, error: RpcError) -> None:
        """The sender could not send the attempt (e.g. no chain backend): its callers get the error."""
        self.sending.discard(hash_hex)
        self._wake(hash_hex, error=error)

    def _retry(self, hash_hex: str) -> None:
        """A new attempt for a payment whose HTLC never left this node, while its caller still waits."""
        pending = self.inflight.payments.get(hash_hex)
        if pending is None:
            return
        row = pending.row
        try:
            inv = bolt11.decode(row["bolt11"])
        except bolt11.InvoiceError:
            return
        self._send(Job(row["bolt11"], inv, row["amount_msat"]))

    def _check(self, inv: bolt11.Invoice, amount_msat: int | None) -> int:
        """The amount to send, after the checks that refuse an invoice before anything is sent."""
        ours = bolt11.currency_for(self.ctx.node.network)
        if inv.currency != ours:
            raise RpcError(RpcError.INVALID_PARAMS, f"the invoice is for {inv.network} ({inv.currency}); this node "
                                                    f"runs on {self.ctx.node.network} ({ours})")
        if inv.is_expired():
            raise RpcError(RpcError.REFUSED, f"the invoice expired at {inv.expires_at} (Unix time)")
        problem = bolt11.check_features(inv, self.supported)
        if problem is not None:
            raise RpcError(RpcError.REFUSED, problem)
        if inv.amount_msat is None and amount_msat is None:
            raise RpcError(RpcError.INVALID_PARAMS, "the invoice has no amount: give --amount-msat")
        if inv.amount_msat is not None and amount_msat is not None and amount_msat != inv.amount_msat:
            raise RpcError(RpcError.INVALID_PARAMS, f"--amount-msat {amount_msat} differs from the invoice's "
                                                    f"{inv.amount_msat} msat")
        amount = inv.amount_msat if inv.amount_msat is not None else amount_msat
        if isinstance(amount, bool) or amount <= 0:
            raise RpcError(RpcError.INVALID_PARAMS, "the amount must be more than 0 msat")
        if inv.payee == self.ctx.node.node_id:
            raise RpcError(RpcError.INVALID_PARAMS, "this is an invoice of this node: it cannot pay itself")
        return amount

    # --- htlc_resolved --------------------------------------------------------------------------------

    def on_resolved(self, bodies: list[dict[str, Any]]) -> None:
        """channeld settled HTLCs we offered (a window of htlc_resolved events): complete or fail their
        payments in one transaction, once (deliveries repeat); the callers are told after the commit."""
        def apply(tx: Any, then: list[Callable[[], None]]) -> None:
            for body in bodies:
                try:
                    self._resolved(body, tx, then)
                except (KeyError, TypeError, ValueError) as e:  # retrying would not help: say so and go on
                    self.ctx.log.error("htlc_resolved: a malformed event (%s): dropped", type(e).__name__)
        self._in_transaction(apply)

    def _in_transaction(self, apply: Callable[[Any, list[Callable[[], None]]], None]) -> None:
        """`apply(tx, then)` in one transaction, then what it left in `then` (waking callers, timers). A
        failure leaves nothing applied: the in-memory state is read again from the tables (it was changed
        as the transaction went), and the error goes on (a durable event comes again)."""
        self._take()
        then: list[Callable[[], None]] = []
        try:
            with self.ctx.transaction() as tx:
                apply(tx, then)
        except BaseException:
            self.stale = True   # read again from the tables before anything else uses it
            raise
        for fn in then:
            fn()

    def _resolved(self, body: dict[str, Any], tx: Any, then: list[Callable[[], None]]) -> None:
        channel_id, htlc_id = str(body.get("channel_id")), int(body.get("htlc_id", -1))
        attempt = self.inflight.find(channel_id, htlc_id, str(body.get("payment_hash", "")).lower())
        if attempt is None:
            return  # not ours, or already applied
        if (attempt.channel_id, attempt.htlc_id) != (channel_id, htlc_id) and tx.conn.execute(
                _BY_HTLC, {"c": channel_id, "i": htlc_id}).first() is not None:
            return  # an attempt settled already, delivered again: not the payment's attempt still sending
        hash_hex = attempt.payment_hash
        if body.get("preimage"):
            preimage = bytes.fromhex(body["preimage"])
            if hashlib.sha256(preimage).hexdigest() != hash_hex:
                self.ctx.log.error("payment %s: htlc_resolved carries a preimage of another hash: ignored", hash_hex)
                return
            self._settle(attempt, tx, then, preimage=preimage)
            return
        secrets = bytes.fromhex(attempt.shared_secrets)
        secrets_list = [secrets[i:i + 32] for i in range(0, len(secrets), 32)]
        if body.get("failure_onion"):
            got = onion_errors.decode_error_packet(secrets_list, bytes.fromhex(body["failure_onion"]))
            if got.failure is None:
                reason, code = "an unreadable failure came back", None
            else:
                who = "the payee" if got.hop == len(secrets_list) - 1 else f"hop {got.hop}"
                reason, code = f"{got.failure.name} from {who}", got.failure.code
        elif body.get("failure_code") is not None and int(body["failure_code"]) & onion_errors.BADONION:
            code = int(body["failure_code"])
            reason = f"{onion_errors.FailureMessage(code).name}: our peer could not read the onion"
        elif body.get("failure_code") is not None:
            # channeld's word that the HTLC never left this node (the peer disconnected before signing it):
            # nothing was paid, so another attempt is safe
            code = int(body["failure_code"])
            if self.waiters.get(hash_hex) and self._attempts(hash_hex) < MAX_LOCAL_ATTEMPTS:
                self._retry_later(attempt, tx, then)
                return
            reason = (f"{onion_errors.FailureMessage(code).name}: the HTLC never reached the peer (disconnected "
                      "before it was committed); nothing was paid: pay again to retry")
        else:
            reason, code = "the HTLC failed without a reason", None
        self._settle(attempt, tx, then, failed=(reason, code))

    def _attempts(self, hash_hex: str) -> int:
        pending = self.inflight.payments.get(hash_hex)
        return 0 if pending is None else int(pending.row["attempts"])

    def _retry_later(self, attempt: Attempt, tx: Any, then: list[Callable[[], None]]) -> None:
        """The attempt failed before leaving the node: another one in RETRY_DELAY s (once committed), the
        payment still pending."""
        hash_hex = attempt.payment_hash
        tx.conn.execute(_SET_ATTEMPT, {"a_id": attempt.id, "status": "failed"})
        self.inflight.settled(attempt)
        then.append(lambda: self._retry_timer(hash_hex))

    def _retry_timer(self, hash_hex: str) -> None:
        self.ctx.log.info("payment %s: the HTLC never left this node; trying again in %g s", hash_hex, RETRY_DELAY)

        self.clock.at(RETRY_DELAY, lambda: self.ctx.call_soon(lambda: self._retry(hash_hex)))

    def _settle(self, attempt: Attempt, tx: Any, then: list[Callable[[], None]], preimage: bytes | None = None,
                failed: tuple[str, int | None] | None = None) -> None:
        """The outcome of an attempt, its payment's and the event in transaction `tx`; the waiters in `then`."""
        hash_hex = attempt.payment_hash
        pending = self.inflight.payments.get(hash_hex)
        # a payment no longer pending (a late success after it failed): its row from the database
        row = dict(pending.row) if pending is not None else self._payment(hash_hex)
        changes: dict[str, Any] | None = None
        now = time.time()
        if row is None:   # an attempt without its payment: nothing more to change
            pass
        elif preimage is not None and row["status"] != "complete":  # a success counts whichever attempt it was
            changes = dict(status="complete", preimage=preimage.hex(), completed_at=now, failure_reason=None,
                           failure_code=None)
            event = ("payment_succeeded", {"payment_hash": hash_hex, "preimage": preimage.hex(),
                                           "amount_msat": row["amount_msat"], "fee_msat": 0,
                                           "destination": row["destination"]})
        elif preimage is None and pending is not None and pending.latest == attempt.id:
            reason, code = failed   # an older attempt's failure changes nothing
            changes = dict(status="failed", completed_at=now, failure_reason=reason, failure_code=code)
            event = ("payment_failed", {"payment_hash": hash_hex, "reason": reason, "failure_code": code,
                                        "destination": row["destination"], "amount_msat": row["amount_msat"]})
        tx.conn.execute(_SET_ATTEMPT, {"a_id": attempt.id, "status": "complete" if preimage else "failed"})
        if changes is not None:
            tx.conn.execute(_SET_PAYMENT, {"h": hash_hex, **changes})
            tx.emit(*event)
        self.inflight.settled(attempt)
        if row is None:
            return
        if changes is not None:
            row.update(changes)
            self.inflight.payments.pop(hash_hex, None)   # no longer pending
        then.append(lambda: self._told(hash_hex, row))

    def _told(self, hash_hex: str, row: dict[str, Any]) -> None:
        """A settled payment's callers get its outcome (after the commit)."""
        self.ctx.log.info("payment %s: %s", hash_hex, row["status"] if row["status"] != "failed"
                          else f"failed ({row['failure_reason']})")
        if row["status"] == "complete":
            self._wake(hash_hex, result=self.show(row, with_preimage=True))
        elif row["status"] == "failed":
            self._wake(hash_hex, error=RpcError(RpcError.REFUSED, f"payment failed: {row['failure_reason']}",
                                                 data=self.show(row)))

    # --- waiting and listing ----------------------------------------------------------------------------

    def _wait(self, hash_hex: str, wait: float, armed: bool = True) -> Future:
        """A Future of the payment's outcome, or of its pending state after `wait` s (counted from now, or
        once the HTLC is offered when not `armed`)."""
        done: Future = Future()
        self.waiters.setdefault(hash_hex, []).append(done)
        if armed:
            self._arm(hash_hex, done, wait)
        else:
            self.unarmed.setdefault(hash_hex, []).append((done, wait))
        return done

    def _arm(self, hash_hex: str, done: Future, wait: float) -> None:
        def timed_out() -> None:
            self.deadlines.pop(done, None)
            if not done.done():
                self.waiters.get(hash_hex, []).remove(done)
                row = self._payment(hash_hex)
                shown = self.show(row) if row is not None else {"payment_hash": hash_hex, "status": "pending"}
                done.set_result({**shown, "message": f"not settled within {wait:g} s: the payment stays "
                                                     "pending; `pay` it again to wait, or see listpayments"})
        self.deadlines[done] = self.clock.at(wait, lambda: self.ctx.call_soon(timed_out))

    def _wake(self, hash_hex: str, result: dict[str, Any] | None = None, error: RpcError | None = None) -> None:
        self.unarmed.pop(hash_hex, None)
        for waiter in self.waiters.pop(hash_hex, []):
            deadline = self.deadlines.pop(waiter, None)
            if deadline is not None:
                deadline.cancel()
            if not waiter.done():
                waiter.set_exception(error) if error is not None else waiter.set_result(result)

    def listing(self, text: str | None = None, payment_hash: str | None = None) -> list[dict[str, Any]]:
        """Payments (of one invoice or payment hash), oldest first."""
        if text is not None:
            try:
                payment_hash = bolt11.decode(text).payment_hash.hex()
            except bolt11.InvoiceError as e:
                raise RpcError(RpcError.INVALID_PARAMS, f"not a valid invoice: {e}") from None
        q = select(payments).order_by(payments.c.created_at)
        if payment_hash is not None:
            q = q.where(payments.c.payment_hash == payment_hash.lower())
        with self.ctx.storage.begin() as conn:
            return [self.show(r._mapping) for r in conn.execute(q)]

    def _payment(self, hash_hex: str) -> dict[str, Any] | None:
        """The payment's row as stored (a copy), None if there is none."""
        with self.ctx.storage.begin() as conn:
            found = conn.execute(_PAYMENT, {"h": hash_hex}).first()
        return None if found is None else dict(found._mapping)

    @staticmethod
    def show(row: Mapping[str, Any], with_preimage: bool = False) -> dict[str, Any]:
        """A payment as the commands show it; the preimage only to `pay` (its caller asked for it)."""
        out: dict[str, Any] = {"payment_hash": row["payment_hash"], "status": row["status"],
                               "destination": row["destination"], "amount_msat": row["amount_msat"], "fee_msat": 0,
                               "bolt11": row["bolt11"], "created_at": int(row["created_at"]),
                               "attempts": row["attempts"]}
        if row["completed_at"] is not None:
            out["completed_at"] = int(row["completed_at"])
        if row["status"] == "complete" and with_preimage:
            out["preimage"] = row["preimage"]
        if row["status"] == "failed":
            out.update(failure_reason=row["failure_reason"], failure_code=row["failure_code"])
        return out
