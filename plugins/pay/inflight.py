"""What the payer keeps in memory so that `pay` and `htlc_resolved` read no table: the pending payments and the
attempts not settled yet, loaded at start.

Why it stays right: the pay plugin is the only writer of its tables. The sender thread stores new payments and
attempts, then hands them over (`Sender.handed`, a queue) BEFORE channeld can resolve them; the payer (the
service thread) takes what was handed before each lookup, and changes its own copy only after its own commits.
So an attempt unknown here is not ours or already settled, and a payment not here is not pending.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from .storage import attempts, payments

UNSETTLED = ("sending", "pending")


@dataclass
class Attempt:
    """An attempt not settled yet (status sending, or pending once channeld gave its HTLC id)."""

    id: int
    payment_hash: str
    shared_secrets: str
    status: str
    channel_id: str | None = None
    htlc_id: int | None = None


@dataclass
class Pending:
    """A pending payment: its row as stored, and its latest attempt's id (only that one's failure counts)."""

    row: dict[str, Any]
    latest: int


class InFlight:
    """The pending payments and unsettled attempts; used on the service thread only."""

    def __init__(self) -> None:
        self.payments: dict[str, Pending] = {}
        self.attempts: dict[int, Attempt] = {}
        self.by_htlc: dict[tuple[str, int], Attempt] = {}
        self.by_hash: dict[str, dict[int, Attempt]] = {}

    def load(self, conn: Any) -> None:
        """What the database holds (at start, after the payer's recovery)."""
        pending = payments.c.status == "pending"
        rows = conn.execute(select(payments).where(pending)).all()
        latest = dict(conn.execute(select(attempts.c.payment_hash, func.max(attempts.c.id))
                                   .where(attempts.c.payment_hash.in_(select(payments.c.payment_hash).where(pending)))
                                   .group_by(attempts.c.payment_hash)).all())
        for r in rows:
            self.payments[r.payment_hash] = Pending(dict(r._mapping), latest.get(r.payment_hash, 0))
        for a in conn.execute(select(attempts).where(attempts.c.status.in_(UNSETTLED))):
            self.add(Attempt(a.id, a.payment_hash, a.shared_secrets, a.status, a.channel_id, a.htlc_id))

    def add(self, attempt: Attempt) -> None:
        """An attempt stored (its HTLC id known or not)."""
        self.attempts[attempt.id] = attempt
        self.by_hash.setdefault(attempt.payment_hash, {})[attempt.id] = attempt
        if attempt.channel_id is not None and attempt.htlc_id is not None:
            self.by_htlc[(attempt.channel_id, attempt.htlc_id)] = attempt

    def offered(self, attempt_id: int, channel_id: str, htlc_id: int) -> None:
        """channeld's HTLC id of a stored attempt (none to note when it is settled already)."""
        attempt = self.attempts.get(attempt_id)
        if attempt is not None and attempt.status == "sending":
            attempt.status, attempt.channel_id, attempt.htlc_id = "pending", channel_id, htlc_id
            self.by_htlc[(channel_id, htlc_id)] = attempt

    def find(self, channel_id: str, htlc_id: int, payment_hash: str) -> Attempt | None:
        """The attempt of an HTLC; else (its add_htlc answer never came: a timeout, a restart) the payment's
        latest attempt still sending."""
        found = self.by_htlc.get((channel_id, htlc_id))
        if found is None:
            sending = [a for a in self.by_hash.get(payment_hash, {}).values() if a.status == "sending"]
            found = max(sending, key=lambda a: a.id, default=None)
        return found

    def settled(self, attempt: Attempt) -> None:
        """The attempt is settled (complete or failed) in the database."""
        self.attempts.pop(attempt.id, None)
        if attempt.channel_id is not None and attempt.htlc_id is not None:
            self.by_htlc.pop((attempt.channel_id, attempt.htlc_id), None)
        same = self.by_hash.get(attempt.payment_hash)
        if same is not None:
            same.pop(attempt.id, None)
            if not same:
                del self.by_hash[attempt.payment_hash]
