"""BOLT-4 onions: construction and processing against the spec's vectors, failures and their obfuscation at
every hop, update_fail_malformed_htlc, the final node's checks, and hostile onions (hypothesis)."""
from __future__ import annotations

import hashlib
import json

import coincurve
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import VECTORS
from lnp_plugin_api import onion_errors as oe
from lnp_plugin_api.onion import (PACKET_SIZE, HopPayload, OnionError, build_onion, check_final_htlc,
                                  check_final_payload, check_final_payment, ecdh_with_key, generate_key,
                                  process_onion, route_secrets, sha256_of_onion, stream, xor)
from lnp_plugin_api.wire import Reader, TlvError

ONION = json.loads((VECTORS / "bolt04" / "onion-test.json").read_text())
ERRORS = json.loads((VECTORS / "bolt04" / "onion-error-test.json").read_text())
TRACE = json.loads((VECTORS / "bolt04-md-attributable-error-trace.json").read_text())
H = bytes.fromhex


def vector_route() -> tuple[bytes, list[bytes], list[bytes], bytes]:
    g = ONION["generate"]
    payloads = []
    for hop in g["hops"]:  # the vector's payloads carry their length prefix
        r = Reader(H(hop["payload"]))
        payloads.append(r.take(r.bigsize()))
        assert not r.remaining
    return H(g["session_key"]), [H(h["pubkey"]) for h in g["hops"]], payloads, H(g["associated_data"])


def test_construction_matches_the_vector_byte_for_byte() -> None:
    session, pubs, payloads, ad = vector_route()
    packet, secrets = build_onion(session, pubs, payloads, ad)
    assert packet.hex() == ONION["onion"]
    assert len(packet) == PACKET_SIZE
    assert secrets == route_secrets(session, pubs)


def test_each_hop_peels_its_layer_with_only_an_ecdh_callable() -> None:
    session, pubs, payloads, ad = vector_route()
    packet = H(ONION["onion"])
    for i, key in enumerate(ONION["decode"]):
        calls: list[bytes] = []

        def ecdh(point: bytes, k=coincurve.PrivateKey(H(key))) -> bytes:  # stands for signd's host.keys.ecdh
            calls.append(point)
            return k.ecdh(point)

        peeled = process_onion(packet, ad, ecdh)
        assert len(calls) == 1
        assert peeled.raw_payload == payloads[i]
        assert peeled.shared_secret == route_secrets(session, pubs)[i]
        assert peeled.is_final == (i == len(pubs) - 1)
        packet = peeled.next_onion
    assert packet is None


def test_vector_payloads_parse_to_typed_fields_and_reencode() -> None:
    _, _, payloads, _ = vector_route()
    first = HopPayload.decode(payloads[0])
    assert (first.amt_to_forward, first.outgoing_cltv_value, first.short_channel_id) == (15000, 1500, 1)
    second = HopPayload.decode(payloads[1])
    assert list(second.unknown) == [513]  # an unknown odd record is kept
    last = HopPayload.decode(payloads[4])
    assert last.short_channel_id is None and last.total_msat == 10000 and len(last.payment_secret) == 32
    for raw in payloads:
        assert HopPayload.decode(raw).encode() == raw


def test_typed_payloads_round_trip_through_an_onion() -> None:
    keys = [bytes([i + 1]) * 32 for i in range(3)]
    pubs = [coincurve.PrivateKey(k).public_key.format() for k in keys]
    hops = [HopPayload(amt_to_forward=1002, outgoing_cltv_value=150, short_channel_id=7),
            HopPayload(amt_to_forward=1001, outgoing_cltv_value=140, short_channel_id=8),
            HopPayload(amt_to_forward=1000, outgoing_cltv_value=130, payment_secret=b"\x11" * 32, total_msat=1000,
                       payment_metadata=b"meta", unknown={65537: b"x"})]
    packet, _ = build_onion(b"\x55" * 32, pubs, hops, b"\x99" * 32)
    for key, hop in zip(keys, hops):
        peeled = process_onion(packet, b"\x99" * 32, ecdh_with_key(key))
        assert peeled.payload == hop
        packet = peeled.next_onion
    assert packet is None


def test_route_too_long_for_the_onion_is_refused() -> None:
    pubs = [coincurve.PrivateKey(bytes([i + 1]) * 32).public_key.format() for i in range(2)]
    with pytest.raises(ValueError, match="more than"):
        build_onion(b"\x01" * 32, pubs, [b"\x01" * 700, b"\x01" * 700], b"")
    with pytest.raises(ValueError, match="at least 2 bytes"):
        build_onion(b"\x01" * 32, pubs[:1], [b"\x01"], b"")


# --- hostile onions -----------------------------------------------------------------------------------------

def good_onion() -> tuple[bytes, bytes, bytes]:
    session, pubs, payloads, ad = vector_route()
    return build_onion(session, pubs, payloads, ad)[0], ad, H(ONION["decode"][0])


@pytest.mark.parametrize("mutate,code", [
    (lambda p: b"\x01" + p[1:], oe.INVALID_ONION_VERSION),
    (lambda p: p[:1] + b"\x04" + p[2:], oe.INVALID_ONION_KEY),
    (lambda p: p[:1] + b"\x02" + b"\xff" * 32 + p[34:], oe.INVALID_ONION_KEY),
    (lambda p: p[:100] + bytes([p[100] ^ 1]) + p[101:], oe.INVALID_ONION_HMAC),
    (lambda p: p[:-1] + bytes([p[-1] ^ 1]), oe.INVALID_ONION_HMAC),
    (lambda p: p[:-1], oe.INVALID_ONION_VERSION),
], ids=["version", "key-prefix", "key-not-on-curve", "payload-bit", "hmac-bit", "short"])
def test_malformed_onions_give_badonion_failures(mutate, code) -> None:
    packet, ad, key = good_onion()
    bad = mutate(packet)
    with pytest.raises(OnionError) as e:
        process_onion(bad, ad, ecdh_with_key(key))
    assert e.value.code == code and e.value.failure.is_(oe.BADONION)
    assert e.value.shared_secret is None  # answered with update_fail_malformed_htlc
    assert e.value.failure.fields == {"sha256_of_onion": sha256_of_onion(bad)}


def test_wrong_associated_data_is_a_bad_hmac() -> None:
    packet, _, key = good_onion()
    with pytest.raises(OnionError) as e:
        process_onion(packet, b"\x00" * 32, ecdh_with_key(key))
    assert e.value.code == oe.INVALID_ONION_HMAC


def onion_with_raw_frame(frame: bytes, key: bytes = b"\x07" * 32) -> tuple[bytes, bytes]:
    """An onion whose HMAC is right but whose first frame is `frame` (hostile origin)."""
    pub = coincurve.PrivateKey(key).public_key.format()
    ss = route_secrets(b"\x03" * 32, [pub])[0]
    mix = xor((frame + bytes(1300))[:1300], stream(generate_key(b"rho", ss), 1300))
    import hmac as h
    mac = h.new(generate_key(b"mu", ss), mix + b"AD", hashlib.sha256).digest()
    return b"\x00" + coincurve.PrivateKey(b"\x03" * 32).public_key.format() + mix + mac, key


@pytest.mark.parametrize("frame,tlv_type", [
    (b"\x00", 0), (b"\x01\x02", 0),
    (b"\xfd\x05\x00" + b"\x01" * 1280, 0),           # fits the 2*1300 unwrapped bytes, not the 1300 allowed
    (b"\x07" + H("02010104020001"), 4),               # a non-minimal tu32
    (b"\x03" + H("0c01ff"), 12),                      # a truncated point
    (b"\x03" + H("1401ff"), 20),                      # an unknown even type
    (b"\x06" + H("04010502010a"), 2),                 # records out of order
], ids=["len0", "len1", "past-the-end", "non-minimal", "short-point", "unknown-even", "order"])
def test_authenticated_but_unusable_payloads_give_invalid_onion_payload(frame: bytes, tlv_type: int) -> None:
    packet, key = onion_with_raw_frame(frame)
    with pytest.raises(OnionError) as e:
        process_onion(packet, b"AD", ecdh_with_key(key))
    assert e.value.code == oe.INVALID_ONION_PAYLOAD
    assert e.value.shared_secret is not None  # encrypted back like any failure
    assert e.value.failure.fields["type"] == tlv_type


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(min_size=0, max_size=1400), st.booleans())
def test_random_onions_only_ever_raise_onion_error(data: bytes, full_size: bool) -> None:
    if full_size:  # a valid header, so that the HMAC check is reached
        pub = coincurve.PrivateKey(b"\x03" * 32).public_key.format()
        data = (b"\x00" + pub + data).ljust(PACKET_SIZE, b"\x00")[:PACKET_SIZE]
    packet = data
    try:
        process_onion(packet, b"AD", ecdh_with_key(b"\x07" * 32))
    except OnionError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=1300))
def test_authenticated_random_payloads_only_ever_raise_onion_error(frame: bytes) -> None:
    packet, key = onion_with_raw_frame(frame)
    try:
        peeled = process_onion(packet, b"AD", ecdh_with_key(key))
    except OnionError as e:
        assert e.shared_secret is not None and e.code == oe.INVALID_ONION_PAYLOAD
    else:
        assert HopPayload.decode(peeled.raw_payload) == peeled.payload


# --- failures -----------------------------------------------------------------------------------------------

def test_error_vector_every_key_and_the_final_packet() -> None:
    g = ERRORS["generate"]
    secrets = route_secrets(H(g["session_key"]), [H(h["pubkey"]) for h in g["hops"]])
    for ss, hop in zip(secrets, g["hops"]):
        assert ss.hex() == hop["hop_shared_secret"]
        assert generate_key(b"ammag", ss).hex() == hop["ammag_key"]
    erring = g["hops"][4]
    assert generate_key(b"um", secrets[4]).hex() == erring["um_key"]
    assert oe.error_packet_payload(H(g["failure_message"])).hex() == erring["payload"]
    packet = oe.create_error_packet(secrets[4], oe.FailureMessage.decode(H(g["failure_message"])))
    for i in (3, 2, 1, 0):
        packet = oe.wrap_error_packet(secrets[i], packet)
    assert packet.hex() == ERRORS["errorpacket"]
    got = oe.decode_error_packet(secrets, packet)
    assert got.hop == 4 and got.failure.code == oe.TEMPORARY_NODE_FAILURE


def test_error_trace_every_step_of_the_obfuscation() -> None:
    """BOLT-4's error trace (the failure with a TLV, 1024 bytes of padding): the encoded message, the HMAC'd
    payload, the raw packet, then each hop's ammag key, keystream and packet."""
    f, c = TRACE["failure_message"], TRACE["create"]
    msg = oe.failure(f["name"], htlc_msat=f["htlc_msat"], height=f["height"],
                     tlvs={str(f["tlv"]["type"]): H(f["tlv"]["value"])})
    payload = oe.error_packet_payload(msg, 1024)
    assert c["encoded_failure_message"] == payload[2:].hex()  # the trace prints the message with its padding
    assert payload.hex() == c["payload"]
    ss = H(c["shared_secret"])
    assert generate_key(b"um", ss).hex() == c["um_key"]
    packet = oe.create_error_packet(ss, msg, 1024)
    first = TRACE["forward"][0]
    assert xor(packet, stream(generate_key(b"ammag", ss), len(packet))).hex() == c["raw_error_packet"]
    assert packet.hex() == first["error_packet"]
    for step in TRACE["forward"][1:]:
        ss = H(step["shared_secret"])
        assert generate_key(b"ammag", ss).hex() == step["ammag_key"]
        assert stream(generate_key(b"ammag", ss), len(packet)).hex() == step["stream"]
        packet = oe.wrap_error_packet(ss, packet)
        assert packet.hex() == step["error_packet"]
    secrets = route_secrets(H(TRACE["sessionkey"]), [H(p) for p in TRACE["pubkeys"]])
    got = oe.decode_error_packet(secrets, packet)
    assert got.hop == TRACE["failure_source_node"]
    assert got.failure == msg and got.failure.fields == {"htlc_msat": 100, "height": 800000}
    assert got.failure.tlvs == {str(f["tlv"]["type"]): H(f["tlv"]["value"])}


def test_a_garbled_or_short_return_packet_is_unattributed_not_a_crash() -> None:
    secrets = [bytes([i]) * 32 for i in range(1, 4)]
    packet = oe.create_error_packet(secrets[1], oe.failure(oe.TEMPORARY_NODE_FAILURE))
    packet = oe.wrap_error_packet(secrets[0], packet)
    assert oe.decode_error_packet(secrets, packet).hop == 1
    garbled = packet[:50] + bytes([packet[50] ^ 1]) + packet[51:]
    assert oe.decode_error_packet(secrets, garbled) == oe.DecodedFailure(None, None)
    assert oe.decode_error_packet(secrets, b"") == oe.DecodedFailure(None, None)
    assert oe.decode_error_packet(secrets, b"\x01" * 31) == oe.DecodedFailure(None, None)


@given(st.binary(max_size=600), st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5))
def test_random_return_packets_never_raise(packet: bytes, secrets: list[bytes]) -> None:
    got = oe.decode_error_packet(secrets, packet)
    assert got.hop is None or 0 <= got.hop < len(secrets)


def test_every_failure_code_has_its_flags_and_fields() -> None:
    assert oe.INVALID_ONION_HMAC == 0xC005 and oe.TEMPORARY_CHANNEL_FAILURE == 0x1007
    assert oe.REQUIRED_NODE_FEATURE_MISSING == 0x6003 and oe.INVALID_ONION_BLINDING == 0xC018
    assert oe.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS == 0x400F and oe.MPP_TIMEOUT == 23
    assert len(oe.FAILURES) == 22
    for code, (name, fields) in oe.FAILURES.items():
        values = {n: (b"\x00" * 32 if kind == "sha256" else b"" if kind == "u16_bytes" else 1)
                  for kind, n in fields}
        msg = oe.failure(name, **values)
        assert msg.code == code and msg.name == name
        assert oe.FailureMessage.decode(msg.encode()).fields == values
    upd = oe.failure(oe.AMOUNT_BELOW_MINIMUM, htlc_msat=5, channel_update=b"\x01\x02")
    assert upd.is_(oe.UPDATE) and not upd.is_(oe.PERM)
    assert upd.data == (5).to_bytes(8, "big") + b"\x00\x02\x01\x02"
    assert oe.failure(oe.EXPIRY_TOO_SOON).data == b"\x00\x00"  # no channel_update: len 0
    assert oe.FailureMessage(0x4099, b"junk").name == "unknown_failure_0x4099"
    assert oe.FailureMessage(oe.FEE_INSUFFICIENT, b"\x00").fields is None  # too short: no crash
    with pytest.raises(ValueError):
        oe.failure(oe.FEE_INSUFFICIENT)  # htlc_msat missing
    with pytest.raises(ValueError):
        oe.failure(oe.MPP_TIMEOUT, height=1)


def test_update_fail_malformed_checks() -> None:
    packet, ad, key = good_onion()
    bad = packet[:-1] + bytes([packet[-1] ^ 1])
    with pytest.raises(OnionError) as e:  # the hop that cannot read it
        process_onion(bad, ad, ecdh_with_key(key))
    sha, code = e.value.failure.fields["sha256_of_onion"], e.value.code
    assert oe.check_fail_malformed(code) is None  # what the upstream node checks
    assert oe.check_fail_malformed(oe.TEMPORARY_NODE_FAILURE) is not None
    assert oe.malformed_matches(sha, bad) and oe.malformed_matches(bytes(32), bad)
    assert not oe.malformed_matches(sha, packet)
    relayed = oe.failure_from_malformed(code, sha)
    assert relayed == oe.failure(oe.INVALID_ONION_HMAC, sha256_of_onion=sha)


# --- the final node -----------------------------------------------------------------------------------------

SECRET = b"\x22" * 32
FINAL = HopPayload(amt_to_forward=5000, outgoing_cltv_value=600, payment_secret=SECRET, total_msat=5000)


def test_the_payer_builds_the_final_payload() -> None:
    assert HopPayload.final(5000, 600, SECRET) == FINAL
    mpp = HopPayload.final(5000, 600, SECRET, total_msat=9000, payment_metadata=b"m")
    assert (mpp.total_msat, mpp.payment_metadata) == (9000, b"m")


def test_final_payload_must_carry_amount_and_cltv() -> None:
    assert check_final_payload(FINAL) is None
    got = check_final_payload(HopPayload(outgoing_cltv_value=600))
    assert got.code == oe.INVALID_ONION_PAYLOAD and got.fields == {"type": 2, "offset": 0}
    assert check_final_payload(HopPayload(amt_to_forward=1)).fields["type"] == 4
    assert check_final_payload(HopPayload(amt_to_forward=1, outgoing_cltv_value=1,
                                          encrypted_recipient_data=b"x")).fields["type"] == 10


def test_final_htlc_against_the_onion() -> None:
    assert check_final_htlc(FINAL, 5000, 600) is None
    assert check_final_htlc(FINAL, 6000, 700) is None
    got = check_final_htlc(FINAL, 5000, 599)
    assert got.code == oe.FINAL_INCORRECT_CLTV_EXPIRY and got.fields == {"cltv_expiry": 599}
    got = check_final_htlc(FINAL, 4999, 600)
    assert got.code == oe.FINAL_INCORRECT_HTLC_AMOUNT and got.fields == {"incoming_htlc_amt": 4999}


@pytest.mark.parametrize("change,ok", [
    ({}, True),
    ({"payment_secret": None}, False),                       # unknown payment hash
    ({"expired": True}, False),
    ({"invoice_amount_msat": 5001}, False),                   # paid less than asked
    ({"invoice_amount_msat": 2499}, False),                   # more than twice
    ({"invoice_amount_msat": 2500}, True),
    ({"invoice_amount_msat": None}, True),                     # any amount
    ({"height": 590}, False),                                 # 600 < 590 + 18
    ({"height": 582}, True),
    ({"payload": FINAL.__class__(amt_to_forward=5000, outgoing_cltv_value=600)}, False),   # no secret
    ({"payload": FINAL.__class__(amt_to_forward=5000, outgoing_cltv_value=600, payment_secret=b"\x23" * 32,
                                 total_msat=5000)}, False),    # wrong secret
    ({"payload": FINAL.__class__(amt_to_forward=5000, outgoing_cltv_value=600, payment_secret=SECRET,
                                 total_msat=10000)}, False),   # a multi-part payment we do not do
    ({"payload": FINAL.__class__(amt_to_forward=5000, outgoing_cltv_value=600, payment_secret=SECRET,
                                 total_msat=10000), "mpp": True, "invoice_amount_msat": 10000}, True),
])
def test_final_payment_against_the_invoice(change: dict, ok: bool) -> None:
    args = {"payload": FINAL, "height": 500, "payment_secret": SECRET, "invoice_amount_msat": 5000, **change}
    got = check_final_payment(args.pop("payload"), 5000, 600, args.pop("height"), min_final_cltv_expiry_delta=18,
                              **args)
    if ok:
        assert got is None
    else:
        assert got.code == oe.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS
        assert got.fields["htlc_msat"] == 5000


def test_tlv_error_names_the_record_and_offset() -> None:
    with pytest.raises(TlvError) as e:
        HopPayload.decode(bytes.fromhex("02010104020001"))  # type 2 fine, type 4 non-minimal at offset 3
    assert (e.value.type, e.value.offset) == (4, 3)


# --- properties and interoperability ------------------------------------------------------------------------

payloads = st.builds(
    HopPayload, amt_to_forward=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    outgoing_cltv_value=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    short_channel_id=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    payment_metadata=st.one_of(st.none(), st.binary(max_size=50)),
    unknown=st.dictionaries(st.integers(20, 2**64 - 1).map(lambda t: t | 1), st.binary(max_size=20), max_size=3),
).filter(lambda p: len(p.encode()) >= 2)
route_keys = st.lists(st.integers(1, 2**200).map(lambda k: k.to_bytes(32, "big")), min_size=1, max_size=6,
                      unique=True)


@settings(max_examples=60, deadline=None)
@given(route_keys, st.data())
def test_any_route_builds_and_peels_back_to_its_payloads(keys: list[bytes], data) -> None:
    hops = [data.draw(payloads) for _ in keys]
    pubs = [coincurve.PrivateKey(k).public_key.format() for k in keys]
    try:
        packet, secrets = build_onion(b"\x31" * 32, pubs, hops, b"AD")
    except ValueError:
        return  # too long for 1300 bytes
    for i, (key, hop) in enumerate(zip(keys, hops)):
        peeled = process_onion(packet, b"AD", ecdh_with_key(key))
        assert peeled.payload == hop and peeled.shared_secret == secrets[i]
        packet = peeled.next_onion
    assert packet is None


def test_interop_with_pyln_proto_both_ways() -> None:
    pyln = pytest.importorskip("pyln.proto.onion")
    from pyln.proto.primitives import PrivateKey, PublicKey, Secret
    keys = [bytes([i + 1]) * 32 for i in range(4)]
    pubs = [coincurve.PrivateKey(k).public_key.format() for k in keys]
    hops = [HopPayload(amt_to_forward=1000 + i, outgoing_cltv_value=100 + i, short_channel_id=i) for i in range(3)]
    hops.append(HopPayload(amt_to_forward=1000, outgoing_cltv_value=100, payment_secret=b"\x11" * 32,
                           total_msat=1000, unknown={77: b"\x01" * 300}))
    ours, _ = build_onion(b"\x09" * 32, pubs, hops, b"AD")
    theirs = pyln.RoutingOnion.from_bin(ours)
    for key, hop in zip(keys, hops):  # pyln peels our onion
        payload, theirs = theirs.unwrap(PrivateKey(key), b"AD")
        assert payload.to_bytes()[len(payload.to_bytes()) - len(hop.encode()):] == hop.encode()
    assert theirs is None
    # and we peel theirs: payloads of one size only, as pyln-proto's filler code asserts on mixed sizes
    frames = [pyln.SphinxHop(PublicKey(p), encode_frame(h.encode())) for p, h in zip(pubs[:3], hops[:3])]
    packet = pyln.SphinxPath(frames, b"AD", Secret(b"\x09" * 32)).compile().to_bin()
    for key, hop in zip(keys[:3], hops[:3]):
        peeled = process_onion(packet, b"AD", ecdh_with_key(key))
        assert peeled.payload == hop
        packet = peeled.next_onion
    assert packet is None


def encode_frame(raw: bytes) -> bytes:
    from lnp_plugin_api.wire import encode_bigsize
    return encode_bigsize(len(raw)) + raw
