"""The node's invoices: creating them (signed by signd), listing, waiting, and the final-hop checks of the
`htlc_accepted` decision that settle one."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from types import SimpleNamespace

from sqlalchemy import bindparam, func, select

from lnp_plugin_api import Continue, Fail, Resolve, RpcError, ServiceContext, bolt11, features, onion
from lnp_plugin_api.bech32 import CHARSET
from lnp_plugin_api.onion_errors import INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, FailureMessage, failure
from lnp_plugin_api.services import Signer

from .storage import invoices

MAX_LABEL = 200
MAX_DESCRIPTION = 639          # bytes: a `d` field holds at most 1023 5-bit values
MAX_EXPIRY = 10 * 365 * 86400
MAX_MSAT = 21_000_000 * 100_000_000_000
# prebuilt statements
_BY_LABEL = select(invoices).where(invoices.c.label == bindparam("label"))
_BY_HASH = select(invoices).where(invoices.c.payment_hash == bindparam("payment_hash"))
_MARK_PAID = invoices.update().where(invoices.c.label == bindparam("the_label"), invoices.c.status == "unpaid")


def invoice_features(specs: tuple[Any, ...]) -> frozenset[int]:
    """What our invoices advertise: the enabled plugins' invoice features, with var_onion_optin and
    payment_secret (required) unless a plugin already declares them."""
    bits = features.for_context(list(specs), "9")
    for pair in (8, 14):
        if pair not in bits and pair | 1 not in bits:
            bits.add(pair)
    return frozenset(bits)


def parse_amount(amount: int | str) -> int | None:
    """MSAT as given to `invoice`: a positive number of msat, or `any`."""
    if isinstance(amount, str):
        if amount.strip().lower() == "any":
            return None
        if not amount.strip().isdigit():
            raise RpcError(RpcError.INVALID_PARAMS, f"amount must be a number of msat or 'any', not {amount[:40]!r}")
        amount = int(amount)
    if isinstance(amount, bool) or not 0 < amount <= MAX_MSAT:
        raise RpcError(RpcError.INVALID_PARAMS, "amount must be more than 0 msat and at most 21 million bitcoin")
    return amount


def parse_preimage(text: str) -> bytes:
    """`invoice --preimage`: 32 bytes in hex; the error never repeats the value (a secret)."""
    try:
        raw = bytes.fromhex(text) if isinstance(text, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise RpcError(RpcError.INVALID_PARAMS, "preimage must be 32 bytes in hex (64 hex digits)")
    return raw


def hop_payload(p: dict[str, Any]) -> onion.HopPayload:
    """The onion payload of an `htlc_accepted` body (hex fields as bytes); raises on a malformed one."""
    def raw(key: str) -> bytes | None:
        return None if p.get(key) is None else bytes.fromhex(p[key])
    unknown = {int(k): bytes.fromhex(v) for k, v in (p.get("unknown") or {}).items()}
    return onion.HopPayload(amt_to_forward=p.get("amt_to_forward"), outgoing_cltv_value=p.get("outgoing_cltv_value"),
                            payment_secret=raw("payment_secret"), total_msat=p.get("total_msat"),
                            payment_metadata=raw("payment_metadata"),
                            encrypted_recipient_data=unknown.pop(10, None), current_path_key=unknown.pop(12, None),
                            unknown=unknown)


@dataclass
class Marking:
    """An HTLC that pays an invoice, waiting for `_record` to commit it; `answer` gets the decision."""

    row: Any
    htlc: str
    amount: int
    answer: Future


class Ledger:
    """The invoices of one node; every method runs on the plugin's service thread (timers hand over with
    `ctx.call_soon`)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.features = invoice_features(ctx.node.features)
        self.waiters: dict[str, list[Future]] = {}
        self.timers: dict[str, threading.Timer] = {}
        # the last pay_index given: this ledger alone marks invoices paid (on the service thread)
        with ctx.storage.begin() as conn:
            self.pay_index = conn.execute(select(func.max(invoices.c.pay_index))).scalar() or 0
        self.marking: dict[str, Marking] = {}   # label -> the HTLC paying it, to be recorded by `_record`
        self.record_due = False

    def close(self) -> None:
        """Stop the expiry timers; waiters left get an error."""
        for timer in self.timers.values():
            timer.cancel()
        for label in list(self.waiters):
            self._fail_waiters(label, RpcError(RpcError.SERVICE_UNAVAILABLE, "the invoices plugin stopped"))

    # --- commands ---------------------------------------------------------------------------------------

    def create(self, amount: int | str, label: str, description: str, expiry: int | None,
               preimage_hex: str | None = None, route_hints: tuple = ()) -> dict[str, Any]:
        """A new invoice, signed with the node key by signd; its preimage is `preimage_hex` (never logged nor
        echoed) or random, and kept here. `route_hints`: BOLT-11 `r` fields (bolt11.RouteHintHop tuples)."""
        amount_msat = parse_amount(amount)
        preimage = parse_preimage(preimage_hex) if preimage_hex is not None else os.urandom(32)
        expiry = int(self.ctx.config["expiry"]) if expiry is None else expiry
        if not label or len(label) > MAX_LABEL:
            raise RpcError(RpcError.INVALID_PARAMS, f"a label is 1 to {MAX_LABEL} characters")
        if not 0 < expiry <= MAX_EXPIRY:
            raise RpcError(RpcError.INVALID_PARAMS, f"expiry must be 1 to {MAX_EXPIRY} seconds")
        if len(description.encode("utf-8")) > MAX_DESCRIPTION:
            raise RpcError(RpcError.INVALID_PARAMS, f"a description is at most {MAX_DESCRIPTION} bytes")
        if self._row(label=label) is not None:
            raise RpcError(RpcError.INVALID_PARAMS, f"an invoice labelled {label!r} exists already")
        if self._row(payment_hash=hashlib.sha256(preimage).hexdigest()) is not None:
            raise RpcError(RpcError.INVALID_PARAMS, "an invoice with this preimage exists already")
        secret = os.urandom(32)
        inv = bolt11.Invoice(currency=bolt11.currency_for(self.ctx.node.network), timestamp=int(time.time()),
                             payment_hash=hashlib.sha256(preimage).digest(), payment_secret=secret,
                             amount_msat=amount_msat, description=description, expiry=expiry,
                             min_final_cltv_expiry_delta=int(self.ctx.config["min_final_cltv_expiry_delta"]),
                             features=self.features, payee=self.ctx.node.node_id, route_hints=tuple(route_hints))
        text = bolt11.encode(inv, self._sign)
        with self.ctx.storage.begin() as conn:
            conn.execute(invoices.insert().values(
                label=label, payment_hash=inv.payment_hash.hex(), preimage=preimage.hex(), payment_secret=secret.hex(),
                bolt11=text, amount_msat=amount_msat, description=description, created_at=inv.timestamp,
                expires_at=inv.expires_at, min_final_cltv_expiry_delta=inv.min_final_cltv_expiry_delta,
                status="unpaid"))
        self.ctx.log.info("invoice %r created: %s msat, payment hash %s", label,
                          "any" if amount_msat is None else amount_msat, inv.payment_hash.hex())
        return {"label": label, "bolt11": text, "payment_hash": inv.payment_hash.hex(),
                "payment_secret": secret.hex(), "amount_msat": amount_msat, "created_at": inv.timestamp,
                "expires_at": inv.expires_at}

    def _sign(self, hrp: str, data5: bytes) -> tuple[bytes, int]:
        sig = Signer(self.ctx).sign_invoice(hrp, "".join(CHARSET[w] for w in data5))
        return sig[:64], sig[64]

    def listing(self, label: str | None = None, payment_hash: str | None = None) -> list[dict[str, Any]]:
        """Invoices (one LABEL's, or one PAYMENT_HASH's), oldest first; never their preimages."""
        q = select(invoices).order_by(invoices.c.created_at, invoices.c.label)
        if label is not None:
            q = q.where(invoices.c.label == label)
        if payment_hash is not None:
            q = q.where(invoices.c.payment_hash == payment_hash.lower())
        with self.ctx.storage.begin() as conn:
            return [self._show(r) for r in conn.execute(q)]

    def wait(self, label: str) -> dict[str, Any] | Future:
        """The invoice once paid: at once when it is, else a Future (an error when it expires first)."""
        row = self._row(label=label)
        if row is None:
            raise RpcError(RpcError.INVALID_PARAMS, f"no invoice labelled {label!r}")
        shown = self._show(row)
        if shown["status"] == "paid":
            return shown
        if shown["status"] == "expired":
            raise RpcError(RpcError.REFUSED, f"invoice {label!r} expired unpaid")
        done: Future = Future()
        self.waiters.setdefault(label, []).append(done)
        if label not in self.timers:
            timer = threading.Timer(max(row.expires_at - time.time(), 0) + 1.0,
                                    lambda: self.ctx.call_soon(lambda: self._expired(label)))
            timer.daemon = True
            self.timers[label] = timer
            timer.start()
        return done

    def delete(self, label: str) -> dict[str, Any]:
        """Forget an unpaid (or expired) invoice; paid ones are kept as the record of a payment."""
        row = self._row(label=label)
        if row is None:
            raise RpcError(RpcError.INVALID_PARAMS, f"no invoice labelled {label!r}")
        if row.status == "paid" or label in self.marking:
            raise RpcError(RpcError.REFUSED, f"invoice {label!r} is paid: paid invoices are kept")
        shown = self._show(row)
        with self.ctx.storage.begin() as conn:
            conn.execute(invoices.delete().where(invoices.c.label == label, invoices.c.status == "unpaid"))
        self._fail_waiters(label, RpcError(RpcError.REFUSED, f"invoice {label!r} was deleted"))
        return shown

    # --- htlc_accepted ----------------------------------------------------------------------------------

    def on_htlc(self, body: dict[str, Any]) -> Continue | Fail | Resolve | Future:
        """BOLT-4's final-node checks for an HTLC paying one of our invoices; Continue for anything else."""
        try:
            if not body["is_final"]:
                return Continue()
            payment_hash = bytes.fromhex(body["payment_hash"])
            htlc = f"{body['channel_id']}:{int(body['htlc_id'])}"
            amount, cltv, height = int(body["amount_msat"]), int(body["cltv_expiry"]), int(body["current_height"])
            payload = hop_payload(body["payload"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            self.ctx.log.warning("htlc_accepted: a malformed request (%s): left to the next participant", e)
            return Continue()
        row = self._row(payment_hash=payment_hash.hex())
        if row is None:
            return Continue()  # not ours: another participant may know the hash
        being = self.marking.get(row.label)
        if being is not None:   # an HTLC being recorded as this invoice's payment
            if being.htlc == htlc:
                return being.answer
            return self._refuse(row, "already paid", failure(INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS,
                                                               htlc_msat=amount, height=height))
        if row.status == "paid":
            if row.paid_by == htlc:  # the same HTLC asked again (a restart): the same answer
                return Resolve({"preimage": row.preimage})
            return self._refuse(row, "already paid", failure(INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS,
                                                               htlc_msat=amount, height=height))
        problem = (onion.check_final_payload(payload) or onion.check_final_htlc(payload, amount, cltv)
                   or onion.check_final_payment(payload, amount, cltv, height,
                                                payment_secret=bytes.fromhex(row.payment_secret),
                                                invoice_amount_msat=row.amount_msat,
                                                min_final_cltv_expiry_delta=row.min_final_cltv_expiry_delta,
                                                expired=time.time() > row.expires_at))
        if problem is not None:
            return self._refuse(row, self._why(row, payload, amount, cltv, height), problem)
        # recorded with the others decided meanwhile, in one transaction, before the preimage leaves
        answer: Future = Future()
        self.marking[row.label] = Marking(row, htlc, amount, answer)
        if not self.record_due:
            self.record_due = True
            self.ctx.call_soon(self._record)
        return answer

    def _record(self) -> None:
        """Record the invoices paid since the last call, in one transaction; then answer their HTLCs with
        the preimage (a failed commit answers with the error: nothing was recorded, nothing is revealed)."""
        self.record_due = False
        group, self.marking = list(self.marking.values()), {}
        done: list[tuple[Marking, dict[str, Any] | None]] = []
        index = self.pay_index
        try:
            with self.ctx.transaction() as tx:
                for m in group:
                    paid = dict(status="paid", pay_index=index + 1, received_msat=m.amount, paid_at=time.time(),
                                paid_by=m.htlc)
                    if tx.conn.execute(_MARK_PAID, {"the_label": m.row.label, **paid}).rowcount != 1:
                        done.append((m, None))   # deleted meanwhile (delinvoice refuses that; kept safe anyway)
                        continue
                    index += 1
                    tx.emit("invoice_paid", {"label": m.row.label, "payment_hash": m.row.payment_hash,
                                             "amount_msat": m.row.amount_msat, "received_msat": m.amount,
                                             "pay_index": index})
                    done.append((m, paid))
        except Exception as e:
            self.ctx.log.error("recording %d paid invoice(s) failed: %s", len(group), type(e).__name__)
            for m in group:
                m.answer.set_exception(e)
            return
        self.pay_index = index
        for m, paid in done:
            if paid is None:
                m.answer.set_result(Continue())
                continue
            self.ctx.log.info("invoice %r paid: %d msat received (pay_index %d)", m.row.label, m.amount,
                              paid["pay_index"])
            shown = self._show(SimpleNamespace(**{**m.row._mapping, **paid}))   # the row as just written
            for waiter in self.waiters.pop(m.row.label, []):
                waiter.set_result(shown)
            self._drop_timer(m.row.label)
            m.answer.set_result(Resolve({"preimage": m.row.preimage}))

    def _refuse(self, row: Any, why: str, problem: FailureMessage) -> Fail:
        self.ctx.log.info("HTLC for invoice %r refused (%s): %s", row.label, why, problem.name)
        return Fail(f"invoice {row.label!r}: {why}", {"failure": problem.encode().hex()})

    @staticmethod
    def _why(row: Any, p: onion.HopPayload, amount: int, cltv: int, height: int) -> str:
        """What was wrong, for the log (the failure sent back is deliberately vaguer)."""
        total = p.total_msat if p.total_msat is not None else p.amt_to_forward
        if p.amt_to_forward is None or p.outgoing_cltv_value is None:
            return "onion payload incomplete"
        if cltv < p.outgoing_cltv_value or amount < p.amt_to_forward:
            return "HTLC below what the onion says"
        if time.time() > row.expires_at:
            return "invoice expired"
        if p.payment_secret is None or p.payment_secret.hex() != row.payment_secret:
            return "missing or wrong payment_secret"
        if total != p.amt_to_forward:
            return "multi-part payment (not supported yet)"
        if row.amount_msat is not None and not row.amount_msat <= total <= 2 * row.amount_msat:
            return f"amount {total} msat is not between {row.amount_msat} msat and twice it"
        if cltv < height + row.min_final_cltv_expiry_delta:
            return f"cltv_expiry {cltv} too close to height {height}"
        return "payload refused"

    # --- helpers ----------------------------------------------------------------------------------------

    def _row(self, label: str | None = None, payment_hash: str | None = None) -> Any:
        with self.ctx.storage.begin() as conn:
            if label is not None:
                return conn.execute(_BY_LABEL, {"label": label}).first()
            return conn.execute(_BY_HASH, {"payment_hash": payment_hash}).first()

    @staticmethod
    def _show(row: Any) -> dict[str, Any]:
        status = row.status
        if status == "unpaid" and time.time() > row.expires_at:
            status = "expired"
        out = {"label": row.label, "status": status, "bolt11": row.bolt11, "payment_hash": row.payment_hash,
               "amount_msat": row.amount_msat, "description": row.description, "created_at": row.created_at,
               "expires_at": row.expires_at}
        if row.status == "paid":
            out.update(pay_index=row.pay_index, amount_received_msat=row.received_msat, paid_at=int(row.paid_at))
        return out

    def _expired(self, label: str) -> None:
        self.timers.pop(label, None)
        row = self._row(label=label)
        if row is not None and row.status == "paid":
            return
        # the timer fires a second after the expiry, so the invoice can no longer be paid
        self._fail_waiters(label, RpcError(RpcError.REFUSED, f"invoice {label!r} expired unpaid"))

    def _fail_waiters(self, label: str, error: RpcError) -> None:
        for waiter in self.waiters.pop(label, []):
            waiter.set_exception(error)
        self._drop_timer(label)

    def _drop_timer(self, label: str) -> None:
        timer = self.timers.pop(label, None)
        if timer is not None:
            timer.cancel()

