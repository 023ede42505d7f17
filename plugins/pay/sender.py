"""Sending the attempts `pay` decided, in groups, off the plugin's service thread.

`pay` checks an invoice on the service thread and queues the attempt here. The sender's thread takes
every attempt queued at once: which of their payments were tried before (one read: a complete one is
not sent again, a failed one is tried again), one chain height, each onion, the payments and attempts
written in ONE storage transaction (each attempt is on disk before channeld can send its HTLC), then
the whole group to channeld in one `channeld.add_htlcs` request (one batch there) and the HTLCs' ids in one more
transaction. Each stored attempt is handed to the payer (`handed`, see inflight.py) before its HTLC
is offered, and its HTLC id once offered. So paying does not wait for one commit and one channeld round
trip per payment, and the service thread stays free for `pay` calls and `htlc_resolved`. Outcomes that
touch the payer's state (a refusal, the answer's timer) go back to the service thread (`ctx.call_soon`).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import bindparam, func, select

from lnp_plugin_api import RpcError, bolt11, onion
from lnp_plugin_api.chain import ChainClient
from lnp_plugin_api.tx import SECP256K1_ORDER

from .inflight import Attempt
from .storage import attempts, payments

if TYPE_CHECKING:
    from .payer import Payer

CLTV_MARGIN = 3          # blocks on top of the invoice's delta: the payee's tip may be ahead of ours
ADD_HTLC_TIMEOUT = 30.0
GROUP = 200              # attempts sent in one go at most
# channeld errors after which the HTLC may have been stored: the payment stays pending (htlc_resolved tells)
AMBIGUOUS = (RpcError.TIMEOUT, RpcError.SERVICE_UNAVAILABLE, RpcError.INTERNAL_ERROR)
STOP = None
# prebuilt statements, run once for a whole group (executemany)
_BEFORE = select(payments).where(payments.c.payment_hash.in_(bindparam("hashes", expanding=True)))
_PAYMENT_AGAIN = payments.update().where(payments.c.payment_hash == bindparam("h"))
_OFFERED = attempts.update().where(attempts.c.id == bindparam("a_id"), attempts.c.status == "sending")


@dataclass
class Job:
    """One attempt to send: the invoice and the amount (checked by the payer)."""

    text: str
    inv: bolt11.Invoice
    amount: int


def _session_key() -> bytes:
    while True:
        key = os.urandom(32)
        if 0 < int.from_bytes(key, "big") < SECP256K1_ORDER:  # else not a private key: draw again
            return key


class Sender:
    """A queue of attempts and the thread that sends them in groups."""

    def __init__(self, payer: "Payer") -> None:
        self.payer, self.ctx = payer, payer.ctx
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # to the payer: ("stored", payment row, Attempt), then ("offered", attempt id, channel_id, htlc_id)
        self.handed: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._last_id = self._stored_last_id()
        self._thread = threading.Thread(target=self._run, name="pay-sender", daemon=True)
        self._thread.start()

    def put(self, job: Job) -> None:
        """Queue an attempt (the payer's `sending` holds its hash until `done` is called back)."""
        self._queue.put(job)

    def close(self) -> None:
        """End the thread once what it is sending is sent."""
        self._queue.put(STOP)
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            jobs = [self._queue.get()]
            while jobs[-1] is not STOP and len(jobs) < GROUP:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = jobs[-1] is STOP
            group = [j for j in jobs if j is not None]
            if group:
                try:
                    self._send(group)
                except Exception as e:  # never end the thread: those payments are told, the next ones go on
                    self.ctx.log.exception("pay: sending %d attempts failed", len(group))
                    error = (e if isinstance(e, RpcError)
                             else RpcError(RpcError.INTERNAL_ERROR, f"payment not sent: {e!r}"))
                    for job in group:
                        self._back(lambda j=job: self.payer.not_sent(j.inv.payment_hash.hex(), error))
            if stop:
                return

    def _back(self, fn: Callable[[], None]) -> None:
        self.ctx.call_soon(fn)

    def _send(self, group: list[Job]) -> None:
        with self.ctx.storage.begin() as conn:   # the group's payments tried before (failed, or complete)
            before = {r.payment_hash: r for r in conn.execute(
                _BEFORE, {"hashes": [job.inv.payment_hash.hex() for job in group]})}
        complete = {h: dict(r._mapping) for h, r in before.items() if r.status == "complete"}
        for hash_hex, row in complete.items():   # paid already: nothing is sent again
            self._back(lambda h=hash_hex, r=row: self.payer.paid_already(h, r))
        group = [job for job in group if job.inv.payment_hash.hex() not in complete]
        if not group:
            return
        height = ChainClient(self.ctx).info().height
        now = time.time()
        built = []
        for job in group:
            cltv = height + job.inv.min_final_cltv_expiry_delta + CLTV_MARGIN
            hop = onion.HopPayload.final(job.amount, cltv, job.inv.payment_secret, total_msat=job.amount,
                                         payment_metadata=job.inv.metadata)
            packet, secrets = onion.build_onion(_session_key(), [job.inv.payee], [hop], job.inv.payment_hash)
            self._last_id += 1   # this thread alone inserts attempts: the ids are ours to give (a gap is harmless)
            hash_hex = job.inv.payment_hash.hex()
            tried = before[hash_hex].attempts if hash_hex in before else 0
            row = dict(payment_hash=hash_hex, bolt11=job.text, destination=job.inv.payee.hex(),
                       amount_msat=job.amount, status="pending", preimage=None, created_at=now, completed_at=None,
                       failure_reason=None, failure_code=None, attempts=tried + 1)
            built.append((job, cltv, packet, row, Attempt(self._last_id, hash_hex, b"".join(secrets).hex(), "sending")))
        with self.ctx.storage.begin() as conn:  # every attempt on disk before channeld can send anything
            new = [row for _, _, _, row, _ in built if row["payment_hash"] not in before]
            if new:
                conn.execute(payments.insert(), new)
            again = [{**{k: v for k, v in row.items() if k != "payment_hash"}, "h": row["payment_hash"]}
                     for _, _, _, row, _ in built if row["payment_hash"] in before]
            if again:
                conn.execute(_PAYMENT_AGAIN, again)
            conn.execute(attempts.insert(), [
                dict(id=a.id, payment_hash=a.payment_hash, shared_secrets=a.shared_secrets, amount_msat=job.amount,
                     cltv_expiry=cltv, status="sending", created_at=now, channel_id=None, htlc_id=None)
                for job, cltv, _, _, a in built])
        for job, _, _, row, attempt in built:   # the payer knows them before channeld can resolve them
            self.handed.put(("stored", row, attempt))
            # stored: a `pay` of the same invoice now finds it pending
            self._back(lambda h=row["payment_hash"]: self.payer.stored(h))
        answers = self._offer([{"peer_id": row["destination"], "amount_msat": job.amount,
                                "payment_hash": row["payment_hash"], "cltv_expiry": cltv, "onion": packet.hex()}
                               for job, cltv, packet, row, _ in built])
        offered = []
        for (job, _, _, row, attempt), added in zip(built, answers):
            hash_hex = row["payment_hash"]
            if isinstance(added, RpcError):
                self._refused(job, attempt.id, added)
                continue
            offered.append({"a_id": attempt.id, "channel_id": str(added["channel_id"]),
                            "htlc_id": int(added["htlc_id"]), "status": "pending"})
            self.handed.put(("offered", attempt.id, offered[-1]["channel_id"], offered[-1]["htlc_id"]))
            self.ctx.log.info("payment %s: HTLC %s:%s offered, %d msat to %s", hash_hex, added["channel_id"],
                              added["htlc_id"], job.amount, row["destination"])
            self._back(lambda h=hash_hex: self.payer.sent(h))
        if offered:
            with self.ctx.storage.begin() as conn:   # htlc_resolved may have settled one already: kept as it is
                conn.execute(_OFFERED, offered)

    def _stored_last_id(self) -> int:
        with self.ctx.storage.begin() as conn:
            return conn.execute(select(func.max(attempts.c.id))).scalar() or 0

    def _offer(self, htlcs: list[dict[str, Any]]) -> list[dict[str, Any] | RpcError]:
        """The group's HTLCs to channeld in one request (`channeld.add_htlcs`): each one's {channel_id,
        htlc_id}, or its refusal; the request's own error (e.g. no answer) for each one when it failed."""
        try:
            got = self.ctx.request("channeld.add_htlcs", {"htlcs": htlcs}, timeout=ADD_HTLC_TIMEOUT)["results"]
            if not isinstance(got, list) or len(got) != len(htlcs):
                raise RpcError(RpcError.INTERNAL_ERROR, "channeld.add_htlcs answered with another number of results")
        except RpcError as e:
            return [e] * len(htlcs)
        return [RpcError(int(r["error"].get("code", RpcError.INTERNAL_ERROR)), str(r["error"].get("message", "")))
                if isinstance(r, dict) and "error" in r else r for r in got]

    def _refused(self, job: Job, attempt: int, e: RpcError) -> None:
        """channeld did not take the HTLC: still pending if it may have (ambiguous), else failed."""
        hash_hex, payee = job.inv.payment_hash.hex(), job.inv.payee.hex()
        if e.code in AMBIGUOUS:
            self.ctx.log.warning("payment %s: channeld did not answer (%s); it stays pending until channeld "
                                 "reports the HTLC", hash_hex, e.message)
            self._back(lambda: self.payer.sent(hash_hex))
            return
        reason = (f"channeld refused the HTLC to {payee}: {e.message} (only direct payments to a "
                  "peer with a channel are implemented; multi-hop routing comes later)")
        if e.code == RpcError.METHOD_NOT_FOUND:
            reason = "no channeld: enable the channeld plugin to pay invoices"
        self._back(lambda: self.payer.refused(attempt, hash_hex, reason))
