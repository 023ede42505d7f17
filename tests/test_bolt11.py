"""BOLT-11 invoices: every valid example decodes to its stated fields and re-encodes byte for byte with the
spec's key; every invalid one is refused for the spec's reason; round trips and hostile text (hypothesis)."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import coincurve
import pytest
from hypothesis import given, settings, strategies as st

from conftest import VECTORS
from lnp_plugin_api import bolt11
from lnp_plugin_api.bech32 import CHARSET, bech32_encode
from lnp_plugin_api.bolt11 import Fallback, Invoice, InvoiceError, RouteHintHop

V = json.loads((VECTORS / "bolt11-invoices.json").read_text())
KEY = bytes.fromhex(V["signing_privkey"])
SIGN = bolt11.sign_with_key(KEY)
PAYEE = bytes.fromhex("03e7156ae33b0a208d0744199163177e909e80176e55d97a2f221ede0f934dd9ad")
HASH = bytes.fromhex("0001020304050607080900010203040506070809000102030405060708090102")
SECRET = bytes.fromhex(V["payment_secret_default"])
T = 1496314658
CAKE = hashlib.sha256(b"One piece of chocolate cake, one icecream cone, one pickle, one slice of swiss cheese, "
                      b"one slice of salami, one lollypop, one piece of cherry pie, one sausage, one cupcake, and one "
                      b"slice of watermelon").digest()
BASE = dict(currency="bc", timestamp=T, payment_hash=HASH, payment_secret=SECRET, features=frozenset({8, 14}),
            payee=PAYEE)
SCID = lambda b, t, o: b << 40 | t << 16 | o  # noqa: E731

# What each valid example states (BOLT-11's breakdowns), beyond BASE; `fallback` is the address shown.
EXPECTED: list[dict] = [
    dict(description="Please consider supporting this project"),
    dict(amount_msat=250_000_000, description="1 cup coffee", expiry=60),
    dict(amount_msat=250_000_000, description="ナンセンス 1杯", expiry=60),
    dict(amount_msat=2_000_000_000, description_hash=CAKE),
    dict(currency="tb", amount_msat=2_000_000_000, description_hash=CAKE,
         fallback="mk2QpYatsKicvFVuTAQLBryyccRXMUaGHP"),
    dict(amount_msat=2_000_000_000, description_hash=CAKE, fallback="1RustyRX2oai4EYYDpQGWvEL62BBGqN9T",
         route_hints=((RouteHintHop(bytes.fromhex("029e03a901b85534ff1e92c43c74431f7ce72046060fcf7a95c37e148f78c77255"),
                                    SCID(66051, 263430, 1800), 1, 20, 3),
                       RouteHintHop(bytes.fromhex("039e03a901b85534ff1e92c43c74431f7ce72046060fcf7a95c37e148f78c77255"),
                                    SCID(197637, 395016, 2314), 2, 30, 4)),)),
    dict(amount_msat=2_000_000_000, description_hash=CAKE, fallback="3EktnHQD7RiAE6uzMj2ZifT9YgRrkSgzQX"),
    dict(amount_msat=2_000_000_000, description_hash=CAKE, fallback="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
    dict(amount_msat=2_000_000_000, description_hash=CAKE,
         fallback="bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3"),
    dict(amount_msat=2_000_000_000, description_hash=CAKE,
         fallback="bc1pptdvg0d2nj99568qn6ssdy4cygnwuxgw2ukmnwgwz7jpqjz2kszse2s3lm"),
    dict(amount_msat=967_878_534, timestamp=1572468703, expiry=604800, min_final_cltv_expiry_delta=10,
         payment_hash=bytes.fromhex("462264ede7e14047e9b249da94fefc47f41f7d02ee9b091815a5506bc8abf75f"),
         description='Blockstream Store: 88.85 USD for Blockstream Ledger Nano S x 1, "Back In My Day" Sticker x 2, '
                     '"I Got Lightning Working" Sticker x 2 and 1 more items',
         route_hints=((RouteHintHop(bytes.fromhex("03d06758583bb5154774a6eb221b1276c9e82d65bbaceca806d90e20c108f4b1c7"),
                                    SCID(589390, 3312, 1), 1000, 2500, 40),),)),
    dict(amount_msat=2_500_000_000, description="coffee beans", features=frozenset({8, 14, 99})),
    dict(amount_msat=2_500_000_000, description="coffee beans", features=frozenset({8, 14, 99})),
    dict(amount_msat=2_500_000_000, description="coffee beans", features=frozenset({8, 14, 99}), extra=10),
    dict(amount_msat=1_000_000_000, description="payment metadata inside", metadata=bytes.fromhex("01fafaf0"),
         features=frozenset({8, 14, 48})),
    dict(description="Please consider supporting this project"),
]
TITLES = [v["title"][:40] for v in V["valid"]]


@pytest.mark.parametrize("i", range(len(V["valid"])), ids=TITLES)
def test_valid_examples_decode_to_their_stated_fields(i: int) -> None:
    v, want = V["valid"][i], dict(EXPECTED[i])
    inv = bolt11.decode(v["invoice"])
    fallback, extra = want.pop("fallback", None), want.pop("extra", 0)
    assert inv == dataclasses.replace(Invoice(**{**BASE, **want}), fallbacks=inv.fallbacks, extra=inv.extra)
    assert len(inv.extra) == extra and not inv.payee_in_invoice
    if fallback:
        assert [f.address(inv.network) for f in inv.fallbacks] == [fallback]
        assert Fallback.from_address(fallback) == inv.fallbacks[0]
    else:
        assert inv.fallbacks == ()
    if "signature_rs" in v:
        assert inv.signature == bytes.fromhex(v["signature_rs"]) + bytes([v["recovery_flag"]])
        hrp, data5 = bolt11.unsigned_parts(inv)
        assert bolt11.signing_payload(hrp, data5).hex() == v["signing_data"]
        assert bolt11.signing_hash(hrp, data5).hex() == v["signing_hash"]


@pytest.mark.parametrize("i", range(len(V["valid"])), ids=TITLES)
def test_valid_examples_reencode_byte_for_byte(i: int) -> None:
    text = V["valid"][i]["invoice"]
    inv = bolt11.decode(text)
    if "high-S" in V["valid"][i]["title"]:
        # our signer writes low-S: the same invoice as the first example, whose low-S twin this is
        assert bolt11.encode(inv, SIGN) == V["valid"][0]["invoice"]
    else:
        assert bolt11.encode(inv, SIGN) == text.lower()
    # written from the typed fields alone (canonical order), it still says exactly the same
    canonical = bolt11.encode(dataclasses.replace(inv, wire=None), SIGN)
    assert bolt11.decode(canonical) == inv


@pytest.mark.parametrize("v", V["invalid"], ids=[v["reason"][:40] for v in V["invalid"]])
def test_invalid_examples_are_refused_for_the_spec_reason(v: dict) -> None:
    words = {"Same, but adding invalid unknown feature 100": "unknown feature bit 100",
             "Bech32 checksum is invalid.": "checksum is invalid",
             "Malformed bech32 string (no 1)": "no separator",
             "Malformed bech32 string (mixed case)": "mixed case",
             "Signature is not recoverable.": "not recoverable",
             "String is too short.": "too short",
             "Invalid multiplier": "invalid amount multiplier",
             "Invalid sub-millisatoshi precision.": "sub-millisatoshi",
             "Missing required `s` field.": "missing required s field",
             "Non canonical signature (high-S) with 'n' field defined": "low-S"}
    with pytest.raises(InvoiceError, match=words[v["reason"]]):
        bolt11.decode(v["invoice"])


# --- our own invoices ---------------------------------------------------------------------------------------

def regtest_invoice(**kw) -> Invoice:
    return Invoice(**{"currency": "bcrt", "timestamp": 1_700_000_000, "payment_hash": b"\x01" * 32,
                      "payment_secret": b"\x02" * 32, "amount_msat": 12_345, "description": "test", **kw})


def sign_and_decode(inv: Invoice, key: bytes = KEY) -> Invoice:
    return bolt11.decode(bolt11.encode(inv, bolt11.sign_with_key(key)))


def test_amounts_use_the_shortest_form_and_sub_msat_rules() -> None:
    for msat, hrp in [(100_000_000_000, "lnbcrt1"), (250_000_000, "lnbcrt2500u"), (1_000, "lnbcrt10n"),
                      (1, "lnbcrt10p"), (12_345, "lnbcrt123450p"), (2_000_000_000, "lnbcrt20m"), (None, "lnbcrt")]:
        inv = regtest_invoice(amount_msat=msat)
        assert bolt11.encode(inv, SIGN).startswith(hrp + "1")
        assert sign_and_decode(inv).amount_msat == msat
    for bad in ["lnbc0m", "lnbc1a", "lnbc25.5m", "lnbc11p", "lnxx1m", "lnbcm", "lnbc999999999999",
                "lnbc" + "9" * 5000]:  # more digits than int() takes: an InvoiceError, not a ValueError
        with pytest.raises(InvoiceError):
            bolt11._parse_hrp(bad)
    assert bolt11._parse_hrp("lntbs1u") == ("tbs", 100_000)
    assert bolt11.currency_for("regtest") == "bcrt" and bolt11.currency_for("testnet4") == "tb"


def test_payee_field_defaults_and_key_checks() -> None:
    inv = regtest_invoice(payee=PAYEE, payee_in_invoice=True, expiry=7)
    got = sign_and_decode(inv)
    assert got == inv and got.payee_in_invoice
    with pytest.raises(InvoiceError, match="not the payee"):  # signd signing with another key is caught
        bolt11.encode(inv, bolt11.sign_with_key(b"\x05" * 32))
    hrp, data5 = bolt11.unsigned_parts(inv)  # an n field that the signature does not match
    rs, rec = bolt11.sign_with_key(b"\x05" * 32)(hrp, data5)
    with pytest.raises(InvoiceError, match="does not match the n field"):
        bolt11.decode(bech32_encode(hrp, data5 + bolt11.bytes_to_words(rs + bytes([rec]))))
    d = sign_and_decode(regtest_invoice())
    assert (d.expiry, d.min_final_cltv_expiry_delta, d.payee) == (3600, 18, PAYEE)


def test_signd_can_check_what_it_signs() -> None:
    inv = regtest_invoice(description="pay me")
    seen = []

    def signd(hrp: str, data5: bytes) -> tuple[bytes, int]:
        seen.append(bolt11.decode_unsigned(hrp, data5))
        return SIGN(hrp, data5)
    bolt11.encode(inv, signd)
    assert seen == [inv]


def test_expiry_amount_and_feature_checks() -> None:
    inv = regtest_invoice(expiry=60)
    assert not inv.is_expired(1_700_000_060) and inv.is_expired(1_700_000_061)
    assert bolt11.amount_to_pay(inv) == 12_345 and bolt11.amount_to_pay(inv, 24_690) == 24_690
    for bad in (12_344, 24_691):
        with pytest.raises(InvoiceError):
            bolt11.amount_to_pay(inv, bad)
    with pytest.raises(InvoiceError, match="no amount"):
        bolt11.amount_to_pay(regtest_invoice(amount_msat=None))
    assert bolt11.amount_to_pay(regtest_invoice(amount_msat=None), 5) == 5
    assert bolt11.check_features(inv) is None
    assert "var_onion_optin" in bolt11.check_features(regtest_invoice(features=frozenset({14})))
    assert "payment_secret" in bolt11.check_features(regtest_invoice(features=frozenset({9})))
    assert "basic_mpp" in bolt11.check_features(regtest_invoice(features=frozenset({8, 14, 16})))
    assert bolt11.check_features(regtest_invoice(features=frozenset({9, 15, 17, 101}))) is None
    assert bolt11.check_features(regtest_invoice(features=frozenset({8, 14, 17})), supported={8, 14, 16}) is None
    assert "option_scid_alias" in bolt11.check_features(regtest_invoice(features=frozenset({8, 14, 51})))
    assert inv.matches_description("test") and not inv.matches_description("Test")
    h = regtest_invoice(description=None, description_hash=hashlib.sha256(b"long text").digest())
    assert h.matches_description("long text")


def test_reader_rules_on_hand_made_invoices() -> None:
    def text(fields: list[tuple[int, bytes]], hrp: str = "lnbcrt1m") -> str:
        data = bolt11.int_to_words(T, 7) + b"".join(bytes([t, len(d) >> 5, len(d) & 31]) + d for t, d in fields)
        rs, rec = SIGN(hrp, data)
        return bech32_encode(hrp, data + bolt11.bytes_to_words(rs + bytes([rec])))
    p = (bolt11.P, bolt11.bytes_to_words(HASH))
    s = (bolt11.S, bolt11.bytes_to_words(SECRET))
    d = (bolt11.D, bolt11.bytes_to_words(b"x"))
    h = (bolt11.H, bolt11.bytes_to_words(CAKE))
    assert bolt11.decode(text([p, s, d])).description == "x"
    with pytest.raises(InvoiceError, match="exactly one"):
        bolt11.decode(text([p, s]))
    with pytest.raises(InvoiceError, match="exactly one"):
        bolt11.decode(text([p, s, d, h]))
    with pytest.raises(InvoiceError, match="missing required p"):
        bolt11.decode(text([s, d, (bolt11.P, bolt11.bytes_to_words(HASH)[:-1])]))  # wrong length p is skipped
    with pytest.raises(InvoiceError, match="not minimally"):
        bolt11.decode(text([p, s, d, (bolt11.X, b"\x00\x01")]))
    with pytest.raises(InvoiceError, match="not minimally"):
        bolt11.decode(text([p, s, d, (bolt11.FEATURES, b"\x00\x01")]))
    with pytest.raises(InvoiceError, match="UTF-8"):
        bolt11.decode(text([p, s, (bolt11.D, bolt11.bytes_to_words(b"\xff\xfe"))]))
    dup = bolt11.decode(text([p, s, d, (bolt11.D, bolt11.bytes_to_words(b"second"))]))
    assert dup.description == "x" and len(dup.extra) == 1  # the first is preferred, the other kept for the signature
    assert bolt11.encode(dup, SIGN) == text([p, s, d, (bolt11.D, bolt11.bytes_to_words(b"second"))])
    bad_fallback = bolt11.decode(text([p, s, d, (bolt11.F, b"\x11" + b"\x00" * 5)]))  # P2PKH of the wrong size
    assert bad_fallback.fallbacks == () and len(bad_fallback.extra) == 1
    assert bolt11.decode("lightning:" + text([p, s, d]).upper()).description == "x"


def test_a_changed_decoded_invoice_is_written_afresh() -> None:
    inv = bolt11.decode(V["valid"][1]["invoice"])
    changed = dataclasses.replace(inv, description="2 cups coffee")
    again = bolt11.decode(bolt11.encode(changed, SIGN))
    assert again.description == "2 cups coffee" and again.expiry == 60


# --- hypothesis ---------------------------------------------------------------------------------------------

pubkeys = st.binary(min_size=32, max_size=32).filter(lambda k: 0 < int.from_bytes(k, "big") < bolt11._ORDER).map(
    lambda k: coincurve.PrivateKey(k).public_key.format())
hops = st.builds(RouteHintHop, pubkeys, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                 st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1))
fallbacks = st.one_of(st.builds(Fallback, st.sampled_from([17, 18]), st.binary(min_size=20, max_size=20)),
                      st.builds(Fallback, st.just(0), st.sampled_from([b"\x01" * 20, b"\x02" * 32])),
                      st.builds(Fallback, st.integers(1, 16), st.binary(min_size=2, max_size=40)))
invoices = st.builds(
    Invoice, currency=st.sampled_from(sorted(bolt11.CURRENCIES)), timestamp=st.integers(0, 2**35 - 1),
    payment_hash=st.binary(min_size=32, max_size=32), payment_secret=st.binary(min_size=32, max_size=32),
    amount_msat=st.one_of(st.none(), st.integers(1, 21_000_000 * 10**11)),
    description=st.text(max_size=100), expiry=st.integers(0, 2**40), min_final_cltv_expiry_delta=st.integers(0, 5000),
    features=st.frozensets(st.sampled_from([8, 9, 14, 15, 16, 17, 48, 49, 99, 101, 255])),
    fallbacks=st.lists(fallbacks, max_size=2).map(tuple),
    route_hints=st.lists(st.lists(hops, min_size=1, max_size=3).map(tuple), max_size=2).map(tuple),
    metadata=st.one_of(st.none(), st.binary(max_size=40)),
    payee_in_invoice=st.booleans())


@settings(max_examples=150, deadline=None)
@given(invoices)
def test_decode_of_encode_is_the_invoice(inv: Invoice) -> None:
    inv = dataclasses.replace(inv, payee=PAYEE)
    got = sign_and_decode(inv)
    assert got == inv
    assert bolt11.encode(got, SIGN) == bolt11.encode(inv, SIGN)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300),
                 st.builds(lambda hrp, words: bech32_encode(hrp, bytes(words)),
                           st.from_regex(r"ln[a-z]{1,5}[0-9]{0,6}[a-z]?", fullmatch=True),
                           st.lists(st.integers(0, 31), max_size=400)),
                 st.builds(lambda i, pos, c: V["valid"][i]["invoice"][:pos] + c + V["valid"][i]["invoice"][pos + 1:],
                           st.integers(0, len(V["valid"]) - 1), st.integers(0, 200), st.sampled_from(CHARSET))))
def test_random_text_only_ever_raises_invoice_error(text: str) -> None:
    try:
        inv = bolt11.decode(text)
    except InvoiceError:
        return
    assert inv.payee is not None and len(inv.payment_hash) == 32


def test_long_invoices_have_no_length_limit() -> None:
    inv = regtest_invoice(description="d" * 639, extra=tuple(bolt11.RawField(30, bytes([i % 32]) * 1023)
                                                             for i in range(100)))
    text = bolt11.encode(inv, SIGN)
    assert len(text) > 100_000
    assert bolt11.decode(text) == dataclasses.replace(inv, payee=PAYEE)
    with pytest.raises(InvoiceError, match="longer than 1023"):
        bolt11.encode(regtest_invoice(description="d" * 640), SIGN)
