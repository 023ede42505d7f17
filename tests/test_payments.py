"""The invoices and pay plugins in real node processes with real signd, against the FAKE channeld of
tests/plugins/lnp-fake-channeld (channeld's contract: htlc_accepted, channeld.add_htlc(s), htlc_resolved).
The payee node runs invoices; the payer node runs pay; the test carries HTLCs between their fake channelds."""
from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import coincurve
import pytest

from conftest import NodeProcess, wait_for
from lnp_plugin_api import RpcError, bolt11, onion, onion_errors
from lnp_plugin_api.bech32 import bech32_encode, bytes_to_words
from payment_tools import PAYEE, PAYER, install_fakes, invoice_of, onion_to, profile, relay_to_payee

HEIGHT = 500
PAYEE_KEY = b"\x31" * 32            # a fake payee the test plays (for the payer node's tests)
PAYEE_ID = coincurve.PrivateKey(PAYEE_KEY).public_key.format()
DETAILS = onion_errors.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS


@pytest.fixture(scope="module")
def fakes_site() -> Iterator[Path]:
    yield from install_fakes()


@pytest.fixture(scope="module")
def payee(nodes_module: Any, fakes_site: Path) -> NodeProcess:
    return nodes_module(profile(PAYEE), name="payee", site=fakes_site).start()


@pytest.fixture(scope="module")
def payer(nodes_module: Any, fakes_site: Path) -> NodeProcess:
    node = nodes_module(profile(PAYER), name="payer", site=fakes_site).start()
    with node.client() as c:
        c.fake_channeld_add_peer(peer_id=PAYEE_ID.hex())
    return node


def node_id(node: NodeProcess) -> bytes:
    with node.client() as c:
        return bytes.fromhex(c.info()["node_id"])


def receive(c: Any, inv: dict[str, Any], amount: int | None = None, cltv: int = HEIGHT + 40, height: int = HEIGHT,
            secret: bytes | None = None, total: int | None = None, htlc_id: int = 1, me: bytes = b"") -> dict:
    """An HTLC paying `inv` reaches the payee's fake channeld, which asks htlc_accepted."""
    decoded = bolt11.decode(inv["bolt11"])
    amount = decoded.amount_msat if amount is None else amount
    packet, _ = onion_to(me or decoded.payee, amount, cltv, decoded.payment_hash,
                         decoded.payment_secret if secret is None else secret, total)
    return c.fake_channeld_receive(peer_id="02" + "ab" * 32, htlc_id=htlc_id, amount_msat=amount,
                                   payment_hash=decoded.payment_hash.hex(), cltv_expiry=cltv, current_height=height,
                                   onion_hex=packet.hex())


def waiting(node: NodeProcess, label: str, into: list) -> None:
    """waitinvoice LABEL on a connection of its own (in a thread): its result or error goes `into`."""
    try:
        with node.client(timeout=30) as w:
            into.append(w.waitinvoice(label))
    except RpcError as e:
        into.append(e)


def failure_of(result: dict) -> onion_errors.FailureMessage:
    assert result["result"] == "fail", result
    return onion_errors.FailureMessage.decode(bytes.fromhex(result["failure"]))


# --- the payee: invoices ---------------------------------------------------------------------------------

def test_invoice_is_signed_by_the_node_and_decodes(payee: NodeProcess) -> None:
    me = node_id(payee)
    with payee.client() as c:
        made = c.invoice(50_000, "coffee", description="one coffee", expiry=900)
        inv = bolt11.decode(made["bolt11"])
        assert inv.payee == me and not inv.payee_in_invoice        # recovered from signd's signature
        assert (inv.amount_msat, inv.description, inv.expiry, inv.network) == (50_000, "one coffee", 900, "regtest")
        assert inv.payment_hash.hex() == made["payment_hash"] and inv.payment_secret.hex() == made["payment_secret"]
        assert inv.features == {8, 14} and inv.min_final_cltv_expiry_delta == 18
        assert bolt11.check_features(inv) is None
        shown = c.decode(made["bolt11"])
        assert shown["payee"] == me.hex() and shown["amount_msat"] == 50_000 and shown["expired"] is False
        assert shown["features"] == ["var_onion_optin/required", "payment_secret/required"]
        anyamount = c.invoice("any", "tip")
        assert bolt11.decode(anyamount["bolt11"]).amount_msat is None and anyamount["amount_msat"] is None
        listed = {i["label"]: i for i in c.listinvoices()}
        assert listed["coffee"]["status"] == "unpaid" and listed["tip"]["amount_msat"] is None
        assert c.listinvoices(payment_hash=made["payment_hash"])[0]["label"] == "coffee"
        assert "preimage" not in str(c.listinvoices()) and "preimage" not in made
        for bad, match in [((0, "zero"), "more than 0"), (("lots", "x"), "'any'"), ((1, "coffee"), "exists already"),
                           ((1, ""), "label")]:
            with pytest.raises(RpcError, match=match):
                c.invoice(*bad)
        with pytest.raises(RpcError, match="expiry"):
            c.invoice(1, "neg", expiry=0)


def test_invoice_with_a_given_preimage_settles_with_it(payee: NodeProcess) -> None:
    """`invoice --preimage HEX` (lnprototest's runner needs it): the hash is the preimage's, an HTLC is
    resolved with it; a bad or reused preimage is refused, and the value is never shown nor logged."""
    preimage = bytes.fromhex("5e" * 32)
    with payee.client() as c:
        made = c.invoice(60_000, "chosen", preimage=preimage.hex())
        assert made["payment_hash"] == hashlib.sha256(preimage).hexdigest()
        assert bolt11.decode(made["bolt11"]).payment_hash.hex() == made["payment_hash"]
        assert bolt11.decode(made["bolt11"]).route_hints == ()       # the fake channeld gives no hint
        got = receive(c, made, htlc_id=21)
        assert got["result"] == "resolve" and got["preimage"] == preimage.hex()
        secret = "7a" * 31 + "zz"
        for bad, match in [(secret, "32 bytes"), ("7a" * 31, "32 bytes"), (preimage.hex(), "exists already")]:
            with pytest.raises(RpcError, match=match) as e:
                c.invoice(1, f"bad {len(bad)} {match}", preimage=bad)
            assert bad not in e.value.message
        assert preimage.hex() not in str(c.listinvoices())
    assert preimage.hex() not in payee.log.read_text() and secret not in payee.log.read_text()


def test_decode_any_network_and_refusals(payee: NodeProcess) -> None:
    mainnet = ("lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcy"
               "q5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu9qrsgquk0rl77nj30yxdy8j9vdx85fkpmdla2087ne0x"
               "h8nhedh8w27kyke0lp53ut353s06fv3qfegext0eh0ymjpf39tuven09sam30g4vgpfna3rh")
    with payee.client() as c:
        got = c.decode(mainnet)
        assert (got["network"], got["amount_msat"], got["description"], got["expired"]) == \
            ("mainnet", 250_000_000, "1 cup coffee", True)
        assert got["payee"].startswith("03e7156ae3")
        with pytest.raises(RpcError, match="checksum"):
            c.decode(mainnet[:-1] + "x")


def test_htlc_settles_the_invoice_once(payee: NodeProcess) -> None:
    with payee.client() as c:
        made = c.invoice(70_000, "settle", description="")
        waited: list = []
        waiter = threading.Thread(target=waiting, args=(payee, "settle", waited))
        waiter.start()
        time.sleep(0.3)  # waitinvoice is waiting (a Future): the service still answers others
        assert c.listinvoices("settle")[0]["status"] == "unpaid"
        got = receive(c, made, amount=75_000, htlc_id=7)          # a little more than asked: accepted
        assert got["result"] == "resolve" and got["by"] == "invoices"
        assert hashlib.sha256(bytes.fromhex(got["preimage"])).hexdigest() == made["payment_hash"]
        waiter.join(10)
        paid = waited[0]
        assert paid["status"] == "paid" and paid["amount_received_msat"] == 75_000 and paid["pay_index"] >= 1
        assert receive(c, made, amount=75_000, htlc_id=7) == got   # the same HTLC asked again: the same answer
        again = failure_of(receive(c, made, amount=75_000, htlc_id=8))  # another HTLC for a paid invoice
        assert again.code == DETAILS
        wait_for(lambda: any(e["name"] == "invoice_paid" and e["body"]["label"] == "settle"
                             for e in c.fake_channeld_events()))
        events = [e["body"] for e in c.fake_channeld_events() if e["name"] == "invoice_paid"
                  and e["body"]["label"] == "settle"]
        assert events == [{"label": "settle", "payment_hash": made["payment_hash"], "amount_msat": 70_000,
                           "received_msat": 75_000, "pay_index": paid["pay_index"]}]
        assert c.waitinvoice("settle")["status"] == "paid"
        with pytest.raises(RpcError, match="paid invoices are kept"):
            c.delinvoice("settle")
    logs = (payee.data_dir / "lnp-host.log").read_text() + payee.log.read_text()
    assert got["preimage"] not in logs


def test_htlc_refusals(payee: NodeProcess) -> None:
    with payee.client() as c:
        made = c.invoice(100_000, "refusals")
        h = bytes.fromhex(made["payment_hash"])
        cases = {
            "wrong secret": dict(secret=b"\x99" * 32),
            "below the invoice": dict(amount=99_999),
            "above twice": dict(amount=200_001),
            "cltv too soon": dict(cltv=HEIGHT + 17),
            "multi-part": dict(total=200_000),
        }
        for why, kw in cases.items():
            f = failure_of(receive(c, made, **kw))
            assert f.code == DETAILS, why
            assert f.fields["height"] == HEIGHT, why
        no_secret = failure_of(c.fake_channeld_receive(
            peer_id="02" + "ab" * 32, htlc_id=20, amount_msat=100_000, payment_hash=h.hex(), cltv_expiry=HEIGHT + 40,
            current_height=HEIGHT, onion_hex=onion_to(node_id(payee), 100_000, HEIGHT + 40, h, None)[0].hex()))
        assert no_secret.code == DETAILS
        # the onion says more than the HTLC carries: the previous hop took some
        packet, _ = onion_to(node_id(payee), 100_000, HEIGHT + 40, h, bytes.fromhex(made["payment_secret"]))
        short = failure_of(c.fake_channeld_receive(peer_id="02" + "ab" * 32, htlc_id=21, amount_msat=99_000,
                                                   payment_hash=h.hex(), cltv_expiry=HEIGHT + 40,
                                                   current_height=HEIGHT, onion_hex=packet.hex()))
        assert short.name == "final_incorrect_htlc_amount" and short.fields == {"incoming_htlc_amt": 99_000}
        assert c.listinvoices("refusals")[0]["status"] == "unpaid"
        # an unknown hash is left to the next participant (channeld's default then fails it)
        other = invoice_of(PAYEE_KEY, preimage=b"\x77" * 32)
        assert receive(c, {"bolt11": other}, me=node_id(payee)) == {"result": "continue"}
        # and it still pays
        assert receive(c, made)["result"] == "resolve"


def test_expired_invoice_is_refused_and_listed_expired(payee: NodeProcess) -> None:
    with payee.client() as c:
        made = c.invoice(1_000, "brief", expiry=1)
        waited: list = []
        t = threading.Thread(target=waiting, args=(payee, "brief", waited))
        t.start()
        time.sleep(2.1)
        assert c.listinvoices("brief")[0]["status"] == "expired"
        assert failure_of(receive(c, made)).code == DETAILS
        t.join(10)
        assert isinstance(waited[0], RpcError) and "expired" in waited[0].message
        with pytest.raises(RpcError, match="expired"):
            c.waitinvoice("brief")
        assert c.delinvoice("brief")["status"] == "expired"
        assert c.listinvoices("brief") == []
        with pytest.raises(RpcError, match="no invoice"):
            c.waitinvoice("brief")


# --- the payer: pay ----------------------------------------------------------------------------------------

def offered(c: Any, payment_hash: str) -> list[dict]:
    return [h for h in c.fake_channeld_offered() if h["payment_hash"] == payment_hash]


def paying(node: NodeProcess, text: str, into: list, **kw: Any) -> None:
    """pay on a connection of its own (in a thread): its result or error goes `into`."""
    try:
        with node.client(timeout=30) as p:
            into.append(p.pay(text, **kw))
    except RpcError as e:
        into.append(e)


def test_pay_a_direct_peer(payer: NodeProcess) -> None:
    text = invoice_of(PAYEE_KEY, amount_msat=42_000, preimage=b"\x01" * 32)
    h = hashlib.sha256(b"\x01" * 32).hexdigest()
    with payer.client() as c:
        got: list = []
        t = threading.Thread(target=paying, args=(payer, text, got), kwargs={"wait": 20})
        t.start()
        wait_for(lambda: offered(c, h))
        htlc = offered(c, h)[0]
        # the onion is the payee's to read: amount, CLTV (height + 18 + margin 3) and the invoice's secret
        peeled = onion.process_onion(bytes.fromhex(htlc["onion"]), bytes.fromhex(h), onion.ecdh_with_key(PAYEE_KEY))
        assert peeled.is_final and htlc["cltv_expiry"] == HEIGHT + 18 + 3 and htlc["amount_msat"] == 42_000
        p = peeled.payload
        assert (p.amt_to_forward, p.outgoing_cltv_value, p.payment_secret, p.total_msat) == \
            (42_000, HEIGHT + 21, b"\x11" * 32, 42_000)
        assert htlc["peer_id"] == PAYEE_ID.hex()
        c.fake_channeld_resolve(htlc_id=htlc["htlc_id"], preimage=(b"\x01" * 32).hex())
        t.join(10)
        done = got[0]
        assert done["status"] == "complete" and done["preimage"] == (b"\x01" * 32).hex()
        assert (done["amount_msat"], done["fee_msat"], done["destination"]) == (42_000, 0, PAYEE_ID.hex())
        # paying it again sends nothing: the stored result
        assert c.pay(text) == done and len(offered(c, h)) == 1
        listed = c.listpayments(text)
        assert listed[0]["status"] == "complete" and "preimage" not in listed[0]
        assert c.listpayments(payment_hash=h) == listed
        wait_for(lambda: any(e["name"] == "payment_succeeded" and e["body"]["payment_hash"] == h
                             for e in c.fake_channeld_events()))
        event = next(e["body"] for e in c.fake_channeld_events() if e["name"] == "payment_succeeded")
        assert event == {"payment_hash": h, "preimage": (b"\x01" * 32).hex(), "amount_msat": 42_000, "fee_msat": 0,
                         "destination": PAYEE_ID.hex()}
    logs = (payer.data_dir / "lnp-host.log").read_text() + payer.log.read_text()
    assert (b"\x01" * 32).hex() not in logs


def test_a_malformed_htlc_resolved_is_dropped_and_delivery_goes_on(payer: NodeProcess) -> None:
    text = invoice_of(PAYEE_KEY, amount_msat=8_000, preimage=b"\x08" * 32)
    h = hashlib.sha256(b"\x08" * 32).hexdigest()
    with payer.client() as c:
        assert c.pay(text, wait=0.1)["status"] == "pending"
        htlc = offered(c, h)[0]
        c.fake_channeld_emit(body={"channel_id": htlc["channel_id"], "htlc_id": "x", "payment_hash": h})
        c.fake_channeld_emit(body={"channel_id": htlc["channel_id"], "htlc_id": htlc["htlc_id"], "payment_hash": h,
                                   "preimage": "zz"})
        c.fake_channeld_resolve(htlc_id=htlc["htlc_id"], preimage=(b"\x08" * 32).hex())
        wait_for(lambda: c.listpayments(text)[0]["status"] == "complete")
    assert "htlc_resolved: a malformed event (ValueError)" in (payer.data_dir / "lnp-host.log").read_text()


def test_no_answer_from_channeld_leaves_the_payment_pending(payer: NodeProcess) -> None:
    """channeld stored the HTLC but its answer was lost: pending, and htlc_resolved still settles it."""
    text = invoice_of(PAYEE_KEY, amount_msat=7_000, preimage=b"\x09" * 32)
    h = hashlib.sha256(b"\x09" * 32).hexdigest()
    with payer.client() as c:
        c.fake_channeld_crash_next()
        assert c.pay(text, wait=0.1)["status"] == "pending"
        assert c.pay(text, wait=0.1)["status"] == "pending" and len(offered(c, h)) == 1   # not sent twice
        c.fake_channeld_resolve(htlc_id=offered(c, h)[0]["htlc_id"], preimage=(b"\x09" * 32).hex())
        wait_for(lambda: c.listpayments(text)[0]["status"] == "complete")


def test_pay_failure_is_decoded_and_may_be_retried(payer: NodeProcess) -> None:
    text = invoice_of(PAYEE_KEY, amount_msat=10_000, preimage=b"\x02" * 32)
    h = hashlib.sha256(b"\x02" * 32).hexdigest()
    with payer.client() as c:
        pending = c.pay(text, wait=0.2)                   # nothing settles it yet: pending, not failed
        assert pending["status"] == "pending" and "stays pending" in pending["message"]
        htlc = offered(c, h)[0]
        assert c.pay(text, wait=0.2)["status"] == "pending" and len(offered(c, h)) == 1   # the same one
        peeled = onion.process_onion(bytes.fromhex(htlc["onion"]), bytes.fromhex(h), onion.ecdh_with_key(PAYEE_KEY))
        reason = onion_errors.create_error_packet(peeled.shared_secret, onion_errors.failure(
            DETAILS, htlc_msat=10_000, height=HEIGHT))
        c.fake_channeld_resolve(htlc_id=htlc["htlc_id"], failure_onion=reason.hex())
        wait_for(lambda: c.listpayments(payment_hash=h)[0]["status"] == "failed")
        failed = c.listpayments(payment_hash=h)[0]
        assert failed["failure_code"] == DETAILS
        assert failed["failure_reason"] == "incorrect_or_unknown_payment_details from the payee"
        wait_for(lambda: any(e["name"] == "payment_failed" and e["body"]["payment_hash"] == h
                             for e in c.fake_channeld_events()))
        # a failed payment may be tried again: a new HTLC; this one comes back malformed
        got: list = []
        t = threading.Thread(target=paying, args=(payer, text, got), kwargs={"wait": 20})
        t.start()
        wait_for(lambda: len(offered(c, h)) == 2)
        second = offered(c, h)[1]
        c.fake_channeld_resolve(htlc_id=htlc["htlc_id"], failure_onion=reason.hex())   # the old one, again
        c.fake_channeld_resolve(htlc_id=second["htlc_id"], failure_code=onion_errors.INVALID_ONION_HMAC)
        t.join(10)
        assert isinstance(got[0], RpcError) and "invalid_onion_hmac" in got[0].message
        again = c.listpayments(payment_hash=h)[0]
        assert again["attempts"] == 2 and again["failure_code"] == onion_errors.INVALID_ONION_HMAC


def test_an_htlc_that_never_left_the_node_is_retried(payer: NodeProcess) -> None:
    """channeld's htlc_resolved with temporary_channel_failure and no onion: the add was dropped before the peer
    signed it (a disconnection). Nothing was paid: pay tries again while its caller waits; otherwise the
    payment fails saying so, and `pay` may try it again."""
    text = invoice_of(PAYEE_KEY, amount_msat=11_000, preimage=b"\x0a" * 32)
    h = hashlib.sha256(b"\x0a" * 32).hexdigest()
    dropped = {"failure_code": onion_errors.TEMPORARY_CHANNEL_FAILURE}
    with payer.client() as c:
        got: list = []
        t = threading.Thread(target=paying, args=(payer, text, got), kwargs={"wait": 20})
        t.start()
        wait_for(lambda: offered(c, h))
        c.fake_channeld_resolve(htlc_id=offered(c, h)[0]["htlc_id"], **dropped)
        wait_for(lambda: len(offered(c, h)) == 2)                 # a new HTLC, the payment still pending
        assert c.listpayments(text)[0]["status"] == "pending"
        c.fake_channeld_resolve(htlc_id=offered(c, h)[1]["htlc_id"], preimage=(b"\x0a" * 32).hex())
        t.join(10)
        assert got[0]["status"] == "complete" and got[0]["attempts"] == 2
        # nobody waiting: the payment fails, clearly, and may be paid again
        text = invoice_of(PAYEE_KEY, amount_msat=12_000, preimage=b"\x0b" * 32)
        h = hashlib.sha256(b"\x0b" * 32).hexdigest()
        assert c.pay(text, wait=0.1)["status"] == "pending"
        c.fake_channeld_resolve(htlc_id=offered(c, h)[0]["htlc_id"], **dropped)
        wait_for(lambda: c.listpayments(text)[0]["status"] == "failed")
        failed = c.listpayments(text)[0]
        assert "never reached the peer" in failed["failure_reason"] and "could not read" not in failed["failure_reason"]
        assert failed["failure_code"] == onion_errors.TEMPORARY_CHANNEL_FAILURE
        assert c.pay(text, wait=0.1)["status"] == "pending" and len(offered(c, h)) == 2


def missing_secret_invoice() -> str:
    """A (signed) invoice without the `s` field, which BOLT-11 requires."""
    inv = bolt11.Invoice(currency="bcrt", timestamp=int(time.time()), payment_hash=b"\x05" * 32,
                         payment_secret=b"\x11" * 32, amount_msat=1000, description="x")
    hrp, data5 = bolt11.unsigned_parts(inv)
    assert data5[7 + 3 + 52] == bolt11.S                  # after the timestamp: p (52 values), then s
    no_s = data5[:7 + 3 + 52] + data5[7 + 3 + 52 + 3 + 52:]
    sig = coincurve.PrivateKey(PAYEE_KEY).sign_recoverable(bolt11.signing_hash(hrp, no_s), hasher=None)
    return bech32_encode(hrp, no_s + bytes_to_words(sig))


def test_pay_refusals_send_nothing(payer: NodeProcess) -> None:
    stranger = b"\x32" * 32
    cases = [
        (invoice_of(PAYEE_KEY, timestamp=int(time.time()) - 700, expiry=600), {}, "expired"),
        (invoice_of(PAYEE_KEY, network="mainnet"), {}, "is for mainnet"),
        (invoice_of(PAYEE_KEY, amount_msat=None), {}, "no amount"),
        (invoice_of(PAYEE_KEY), {"amount_msat": 50_001}, "differs from the invoice"),
        (invoice_of(PAYEE_KEY, features=frozenset({8, 14, 16, 22})), {}, "option_anchors"),
        (invoice_of(PAYEE_KEY, features=frozenset({8})), {}, "lacks payment_secret"),
        (missing_secret_invoice(), {}, "payment_secret"),
        ("lnbcrt1garbage", {}, "not a valid invoice"),
    ]
    with payer.client() as c:
        before = len(c.fake_channeld_offered())
        for text, kw, match in cases:
            with pytest.raises(RpcError, match=match):
                c.pay(text, **kw)
        assert len(c.fake_channeld_offered()) == before
        # not a peer we have a channel with: channeld refuses, the payment is failed, nothing was sent
        text = invoice_of(stranger, preimage=b"\x03" * 32)
        with pytest.raises(RpcError, match="direct payments") as e:
            c.pay(text)
        assert "no channel with" in e.value.message and len(c.fake_channeld_offered()) == before
        assert c.listpayments(text)[0]["status"] == "failed"
        # an amount-less invoice with an amount
        text = invoice_of(PAYEE_KEY, amount_msat=None, preimage=b"\x04" * 32)
        assert c.pay(text, amount_msat=1234, wait=0.1)["status"] == "pending"
        assert offered(c, hashlib.sha256(b"\x04" * 32).hexdigest())[0]["amount_msat"] == 1234


def pay_across(payer: NodeProcess, payee: NodeProcess, label: str) -> None:
    """The payee node's invoice, paid by the payer node; the test carries the HTLC between their fake channelds
    as the real channelds will over a channel."""
    payer_id, payee_id = node_id(payer), node_id(payee)
    with payer.client() as a, payee.client() as b:
        a.fake_channeld_add_peer(peer_id=payee_id.hex())
        made = b.invoice(21_000, label, description="two nodes")
        got: list = []
        t = threading.Thread(target=paying, args=(payer, made["bolt11"], got), kwargs={"wait": 20})
        t.start()
        wait_for(lambda: offered(a, made["payment_hash"]))
        htlc = offered(a, made["payment_hash"])[0]
        answer = relay_to_payee(b, htlc, payer_id.hex(), HEIGHT)
        assert answer["result"] == "resolve"
        a.fake_channeld_resolve(htlc_id=htlc["htlc_id"], preimage=answer["preimage"])
        t.join(10)
        assert got[0]["status"] == "complete" and got[0]["preimage"] == answer["preimage"]
        assert b.listinvoices(label)[0]["status"] == "paid"


def test_pay_across_two_nodes_through_the_fakes(payer: NodeProcess, payee: NodeProcess) -> None:
    pay_across(payer, payee, "across")


def test_pay_across_two_nodes_in_processes_mode(nodes: Any, fakes_site: Path) -> None:
    """Each service in its own process: htlc_accepted, add_htlc and htlc_resolved cross the buses."""
    payer = nodes(profile(PAYER, "processes"), name="pp", site=fakes_site).start()
    payee = nodes(profile(PAYEE, "processes"), name="pe", site=fakes_site).start()
    pay_across(payer, payee, "processes")
    assert payer.stop() == 0 and payee.stop() == 0


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_restart_while_pending(nodes: Any, fakes_site: Path, mode: str) -> None:
    node = nodes(profile(PAYER, mode), name=f"restart{mode[0]}", site=fakes_site).start()
    text = invoice_of(PAYEE_KEY, amount_msat=9_000, preimage=b"\x06" * 32)
    h = hashlib.sha256(b"\x06" * 32).hexdigest()
    with node.client() as c:
        c.fake_channeld_add_peer(peer_id=PAYEE_ID.hex())
        assert c.pay(text, wait=0.1)["status"] == "pending"
    assert node.stop() == 0
    node.start()
    with node.client() as c:
        assert c.listpayments(text)[0]["status"] == "pending"
        htlc = offered(c, h)[0]
        c.fake_channeld_resolve(htlc_id=htlc["htlc_id"], preimage=(b"\x06" * 32).hex())
        wait_for(lambda: c.listpayments(text)[0]["status"] == "complete")
        assert c.pay(text)["preimage"] == (b"\x06" * 32).hex() and len(offered(c, h)) == 1
    assert node.stop() == 0
