"""BOLT-1 codec against the official vectors (bigsize, TLV, init extensions, signed integers)."""
from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, strategies as st

from conftest import VECTORS
from lnp_plugin_api import features

from lnp_plugin_api.messages import INIT
from lnp_plugin_api.wire import (MessageSpec, TlvError, TlvRecord, TlvStream, WireError, decode_bigsize,
                             decode_signed, encode_bigsize, encode_signed, format_scid, split_message)

V = VECTORS


def load(name: str):
    return json.loads((V / name).read_text())


@pytest.mark.parametrize("v", load("bolt01-bigsize-decoding.json"), ids=lambda v: v["name"])
def test_bigsize_decoding(v: dict) -> None:
    if "exp_error" in v:
        with pytest.raises(WireError):
            decode_bigsize(bytes.fromhex(v["bytes"]))
    else:
        assert decode_bigsize(bytes.fromhex(v["bytes"])) == v["value"]


@pytest.mark.parametrize("v", load("bolt01-bigsize-encoding.json"), ids=lambda v: v["name"])
def test_bigsize_encoding(v: dict) -> None:
    assert encode_bigsize(v["value"]).hex() == v["bytes"]


@pytest.mark.parametrize("v", load("bolt01-signed-integers.json"), ids=lambda v: str(v["value"]))
def test_signed_integers(v: dict) -> None:
    assert encode_signed(v["value"]).hex() == v["bytes"]
    assert decode_signed(bytes.fromhex(v["bytes"])) == v["value"]


def namespaces() -> dict[str, TlvStream]:
    spec = load("bolt01-tlv.json")["namespaces"]
    return {ns: TlvStream(tuple(TlvRecord(int(t), r["name"], tuple((k, n) for k, n in r["fields"]))
                                for t, r in recs.items())) for ns, recs in spec.items()}


TLV_CASES = [(g["section"], ns, c) for g in load("bolt01-tlv.json")["groups"] for ns in g["namespaces"]
             for c in g["cases"]]


@pytest.mark.parametrize("section,ns,case", TLV_CASES, ids=lambda x: x if isinstance(x, str) else "")
def test_tlv_streams(section: str, ns: str, case: dict) -> None:
    stream = namespaces()[ns]
    data = bytes.fromhex(case["stream"])
    if not case["valid"]:
        with pytest.raises(WireError):
            stream.decode(data)
        return
    decoded = stream.decode(data)
    for name, fields in case.get("values", {}).items():
        for field, value in fields.items():
            got = decoded[name][field]
            if field == "scid":
                got = format_scid(got)
            assert (got.hex() if isinstance(got, bytes) else got) == value


def test_tlv_stream_rules() -> None:
    """Appending an invalid stream to a valid one fails; a higher-numbered valid one after a lower one is fine."""
    n1 = namespaces()["n1"]
    valid = [c for s, ns, c in TLV_CASES if ns == "n1" and c["valid"] and c["stream"]]
    invalid = [c for s, ns, c in TLV_CASES if ns == "n1" and not c["valid"]]
    for good in valid:
        for bad in invalid:
            with pytest.raises(WireError):
                n1.decode(bytes.fromhex(good["stream"] + bad["stream"]))
    assert n1.decode(bytes.fromhex("0100" + "fd00fe020226")) == {"tlv1": {"amount_msat": 0},
                                                                  "tlv4": {"cltv_delta": 550}}


@pytest.mark.parametrize("stream,tlv_type,offset", [
    ("0100" + "0201", 2, 2),             # value truncated
    ("0100" + "fd", 0, 2),               # type truncated
    ("0100" + "0a00", 10, 2),            # unknown even
    ("0100" + "fd00fe020226" + "0100", 1, 8),   # out of order
    ("01020001", 1, 0),                         # a non-minimal tu64
])
def test_tlv_errors_name_the_record_and_its_offset(stream: str, tlv_type: int, offset: int) -> None:
    """BOLT-4's invalid_onion_payload reports the failing record's type and offset: TlvError carries them."""
    with pytest.raises(TlvError) as e:
        namespaces()["n1"].decode(bytes.fromhex(stream))
    assert (e.value.type, e.value.offset) == (tlv_type, offset)


def test_init_extension_vectors() -> None:
    spec = load("bolt01-init-extension.json")
    for case in spec["valid"]:
        t, payload = split_message(bytes.fromhex(case["msg"]))
        assert t == 16 and "features" in INIT.decode(payload)
    for case in spec["invalid"]:
        t, payload = split_message(bytes.fromhex(case["msg"]))
        with pytest.raises(WireError):
            INIT.decode(payload)


def test_init_round_trip() -> None:
    chain = bytes.fromhex("06226e46111a0b59caaf126043eb5bbf28c34f3a5e332a1fc7b2b73cf188910f")
    msg = INIT.encode({"globalfeatures": b"", "features": b"\x02\x00",
                       "tlvs": {"networks": {"chains": [chain]}, "remote_addr": {"data": bytes([1, 127, 0, 0, 1, 0x26, 0x07])}}})
    t, payload = split_message(msg)
    out = INIT.decode(payload)
    assert out["features"] == b"\x02\x00" and out["tlvs"]["networks"]["chains"] == [chain]


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_bigsize_round_trip(value: int) -> None:
    assert decode_bigsize(encode_bigsize(value)) == value


@given(st.binary(max_size=200))
def test_decoders_never_fail_other_than_wire_error(data: bytes) -> None:
    for decode in (namespaces()["n1"].decode, INIT.decode, decode_bigsize,
                   MessageSpec(1, "x", (("u16_bytes", "a"), ("point", "p"))).decode):
        try:
            decode(data)
        except WireError:
            pass


@given(st.binary(max_size=40))
def test_feature_bits_decode(data: bytes) -> None:
    value = int.from_bytes(data, "big")
    assert features.decode(data) == {i for i in range(value.bit_length()) if value >> i & 1}


def test_feature_bits_decode_in_linear_time() -> None:
    """A peer's largest feature vector (65,535 bytes of 0xff) is decoded at once, not in seconds."""
    start = time.perf_counter()
    assert features.decode(b"\xff" * 65535) == set(range(65535 * 8))
    assert time.perf_counter() - start < 2.0
