"""The invoices and pay plugins' pure parts: `decode`'s view of every BOLT-11 example, amounts, payloads."""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import VECTORS
from lnp_plugin_api import FeatureSpec, RpcError, bolt11
from lnp_plugins.invoices.describe import describe
from lnp_plugins.invoices.ledger import hop_payload, invoice_features, parse_amount

V = json.loads((VECTORS / "bolt11-invoices.json").read_text())


@pytest.mark.parametrize("i", range(len(V["valid"])))
def test_decode_shows_every_field_of_the_spec_examples(i: int) -> None:
    inv = bolt11.decode(V["valid"][i]["invoice"])
    shown = json.loads(json.dumps(describe(inv, now=inv.timestamp)))    # JSON as the RPC answers
    assert shown["payment_hash"] == inv.payment_hash.hex() and shown["payee"] == inv.payee.hex()
    assert shown["amount_msat"] == inv.amount_msat and shown["expired"] is False
    assert shown.get("description") == inv.description
    assert len(shown.get("fallbacks", [])) == len(inv.fallbacks)
    assert all("address" in f for f in shown.get("fallbacks", []) if f["version"] in (0, 17, 18))
    assert [len(r) for r in shown.get("route_hints", [])] == [len(r) for r in inv.route_hints]
    assert len(shown.get("unknown_fields", [])) == len(inv.extra)
    if inv.metadata is not None:
        assert shown["payment_metadata"] == inv.metadata.hex()


def test_route_hints_and_fallbacks_are_readable() -> None:
    with_hints = next(v["invoice"] for v in V["valid"] if bolt11.decode(v["invoice"]).route_hints)
    hop = describe(bolt11.decode(with_hints))["route_hints"][0][0]
    assert set(hop) == {"pubkey", "short_channel_id", "fee_base_msat", "fee_proportional_millionths",
                        "cltv_expiry_delta"}
    assert hop["short_channel_id"].count("x") == 2
    p2pkh = [bolt11.decode(v["invoice"]) for v in V["valid"]
             if any(f.version == 17 for f in bolt11.decode(v["invoice"]).fallbacks)]
    prefixes = {describe(inv)["fallbacks"][0]["address"][0] + inv.network for inv in p2pkh}
    assert prefixes >= {"1mainnet", "mtestnet"}                  # each in its own network's form


def test_amounts() -> None:
    assert parse_amount("any") is None and parse_amount(" ANY ") is None
    assert parse_amount(1) == 1 and parse_amount("2500") == 2500
    for bad in (0, -1, True, "1.5", "", "lots", 21_000_000 * 10 ** 11 + 1):
        with pytest.raises(RpcError):
            parse_amount(bad)


def test_payload_of_an_htlc_accepted_body() -> None:
    p = hop_payload({"amt_to_forward": 5, "outgoing_cltv_value": 9, "short_channel_id": None,
                     "payment_secret": "11" * 32, "total_msat": 5, "payment_metadata": "abcd",
                     "unknown": {"10": "00", "65537": "ff"}})
    assert (p.amt_to_forward, p.payment_secret, p.payment_metadata) == (5, b"\x11" * 32, b"\xab\xcd")
    assert p.encrypted_recipient_data == b"\x00" and p.unknown == {65537: b"\xff"}   # blinded: refused later
    with pytest.raises(ValueError):
        hop_payload({"payment_secret": "zz"})


def test_invoice_features_follow_the_plugins() -> None:
    assert invoice_features(()) == {8, 14}
    assert invoice_features((FeatureSpec(9, contexts="IN9"), FeatureSpec(17, contexts="IN9"),
                             FeatureSpec(13, contexts="IN"))) == {9, 14, 17}


def test_pay_finds_an_attempt_by_its_htlc_through_an_index(tmp_path) -> None:
    """htlc_resolved looks an attempt up by (channel_id, htlc_id): an index, also in a database of schema 1."""
    from sqlalchemy import text

    from lnp_host.storage import Database
    from lnp_plugins.pay.storage import MODELS

    def plan(db: Database) -> str:
        query = "EXPLAIN QUERY PLAN SELECT * FROM pay_attempts WHERE channel_id = 'c' AND htlc_id = 1"
        with db.begin() as conn:
            return str(conn.execute(text(query)).all())

    db = Database("", tmp_path)
    db.migrate({"pay": MODELS})
    assert "pay_attempts_htlc" in plan(db)
    with db.begin() as conn:                                      # a database of schema 1, without the index
        conn.execute(text("DROP INDEX pay_attempts_htlc"))
        conn.execute(text("UPDATE lnp_schema_versions SET version = 1 WHERE plugin = 'pay'"))
    db.close()
    old = Database("", tmp_path)
    assert "pay_attempts_htlc" not in plan(old)
    assert old.migrate({"pay": MODELS}) == {"pay": (1, 2)}
    old.close()
    db = Database("", tmp_path)
    assert "pay_attempts_htlc" in plan(db)
    db.close()


class _Tx:
    """What the ledger uses of a host transaction: its connection, and the events emitted (kept here)."""

    def __init__(self, db: Any, emitted: list) -> None:
        self._begin, self.emitted = db.begin(), emitted

    def __enter__(self) -> "_Tx":
        self.conn = self._begin.__enter__()
        return self

    def emit(self, name: str, body: dict) -> None:
        self.emitted.append((name, body))

    def __exit__(self, *exc: Any) -> Any:
        return self._begin.__exit__(*exc)


PREIMAGES = [bytes([i]) * 32 for i in (1, 2, 3)]


def ledger_with_invoices(tmp_path: Any) -> tuple[Any, Any, list, list]:
    """A database with three unpaid invoices (of PREIMAGES), and what a Ledger uses of its context;
    (database, context, events emitted, functions handed to call_soon)."""
    from lnp_host.storage import Database
    from lnp_plugins.invoices.storage import MODELS, invoices

    db = Database("", tmp_path)
    db.migrate({"invoices": MODELS})
    emitted: list = []
    soon: list = []
    quiet = SimpleNamespace(info=lambda *a: None, warning=lambda *a: None, error=lambda *a: None)
    ctx = SimpleNamespace(storage=db, transaction=lambda: _Tx(db, emitted), log=quiet,
                          node=SimpleNamespace(features=()), config={}, call_soon=soon.append)
    with db.begin() as conn:
        conn.execute(invoices.insert(), [dict(
            label=f"l{i}", payment_hash=hashlib.sha256(p).hexdigest(), preimage=p.hex(), payment_secret="11" * 32,
            bolt11="-", amount_msat=5_000, description="", created_at=int(time.time()),
            expires_at=int(time.time()) + 600, min_final_cltv_expiry_delta=18, status="unpaid")
            for i, p in enumerate(PREIMAGES)])
    return db, ctx, emitted, soon


def htlc(i: int, htlc_id: int | None = None) -> dict:
    """htlc_accepted's body for an HTLC paying invoice l<i> (its id: i unless given)."""
    return {"is_final": True, "payment_hash": hashlib.sha256(PREIMAGES[i]).hexdigest(), "channel_id": "ab" * 32,
            "htlc_id": i if htlc_id is None else htlc_id, "amount_msat": 5_000, "cltv_expiry": 140,
            "current_height": 100, "payload": {"amt_to_forward": 5_000, "outgoing_cltv_value": 140,
                                               "payment_secret": "11" * 32, "total_msat": 5_000}}


def test_pay_index_goes_on_after_a_restart(tmp_path) -> None:
    """The ledger counts pay_index in memory: a restarted one goes on from the highest stored."""
    from lnp_plugin_api import Resolve
    from lnp_plugins.invoices.ledger import Ledger

    db, ctx, emitted, soon = ledger_with_invoices(tmp_path)

    def decided(answer: Any) -> Any:   # the service loop runs the recording it was asked for
        while soon:
            soon.pop(0)()
        return answer.result(0) if isinstance(answer, Future) else answer
    assert isinstance(decided(Ledger(ctx).on_htlc(htlc(0))), Resolve)
    ledger = Ledger(ctx)                                         # restarted
    assert isinstance(decided(ledger.on_htlc(htlc(1))), Resolve) and isinstance(decided(ledger.on_htlc(htlc(2))), Resolve)
    assert [body["pay_index"] for _, body in emitted] == [1, 2, 3]
    assert [r["pay_index"] for r in ledger.listing()] == [1, 2, 3]
    db.close()


def test_htlcs_decided_together_are_recorded_in_one_commit_before_any_preimage(tmp_path) -> None:
    """The ledger answers htlc_accepted with a Future: what was decided before the service loop came back
    is committed in one transaction, and only then do the preimages leave. Meanwhile a second HTLC for
    the same invoice is refused, and the same HTLC asked again gets the same answer."""
    from sqlalchemy import event

    from lnp_plugin_api import Fail, Resolve
    from lnp_plugins.invoices.ledger import Ledger

    db, ctx, emitted, soon = ledger_with_invoices(tmp_path)
    commits: list = []
    event.listen(db.engine, "commit", lambda conn: commits.append(1))
    ledger = Ledger(ctx)
    answers = [ledger.on_htlc(htlc(i)) for i in range(3)]
    assert all(isinstance(a, Future) and not a.done() for a in answers)   # nothing revealed before the commit
    assert ledger.on_htlc(htlc(0)) is answers[0]                         # the same HTLC again
    assert isinstance(ledger.on_htlc(htlc(0, htlc_id=7)), Fail)           # another HTLC for a paid invoice
    assert len(soon) == 1 and not emitted
    commits.clear()
    soon.pop()()
    assert len(commits) == 1 and [b["pay_index"] for _, b in emitted] == [1, 2, 3]
    assert [a.result(0).payload["preimage"] for a in answers] == [p.hex() for p in PREIMAGES]
    assert all(isinstance(a.result(0), Resolve) for a in answers)
    assert isinstance(ledger.on_htlc(htlc(1)), Resolve)                  # asked again after: the same answer
    db.close()
