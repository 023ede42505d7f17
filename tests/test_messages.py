"""Typed BOLT-1/BOLT-2 messages (lnp_plugin_api.messages): round trips, malformed input, and the same bytes as
an independent codec (pyln-proto with the pyln-bolt1/2/7 message definitions)."""
from __future__ import annotations

import dataclasses
import io
import json

import coincurve
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import VECTORS
from lnp_plugin_api import messages as M
from lnp_plugin_api.wire import WireError, encode_bigsize

POINTS = [coincurve.PrivateKey.from_int(i).public_key.format() for i in range(1, 6)]
NOT_A_POINT = b"\x02" + b"\x00" * 32  # x = 0 is not on the curve

KIND: dict[str, st.SearchStrategy] = {
    "byte": st.integers(0, 0xFF),
    "u16": st.integers(0, 0xFFFF),
    "u32": st.integers(0, 0xFFFFFFFF),
    "u64": st.integers(0, 2**64 - 1),
    "short_channel_id": st.integers(0, 2**64 - 1),
    "u16_bytes": st.binary(max_size=300),
    "rest": st.binary(max_size=100),
    "point": st.sampled_from(POINTS),
    "chain_hashes": st.lists(st.binary(min_size=32, max_size=32), max_size=3),
    "u16_signatures": st.lists(st.binary(min_size=64, max_size=64), max_size=4),
    "signature": st.binary(min_size=64, max_size=64),
    **{k: st.binary(min_size=n, max_size=n) for k, n in
       [("chain_hash", 32), ("sha256", 32), ("channel_id", 32), ("32*byte", 32), ("1366*byte", 1366),
        ("80*byte", 80), ("840*byte", 840)]},
}


def strategy(cls: type[M.Message], tlvs: bool = True, extra: bool = True) -> st.SearchStrategy:
    """Any valid message of class `cls`."""
    args: dict[str, st.SearchStrategy] = {}
    for f in dataclasses.fields(cls):
        if "wire" in f.metadata:
            args[f.name] = KIND[f.metadata["wire"]]
        elif "tlv" in f.metadata:
            _, rec_fields, as_ = f.metadata["tlv"]
            parts = st.tuples(*(KIND[kind] for kind, _ in rec_fields))
            value = parts.map(lambda p, as_=as_: as_(*p) if as_ else p[0])
            args[f.name] = st.none() | value if tlvs else st.none()
    known = {rec.type for rec in cls.SPEC.tlvs.records}
    odd = st.integers(0, 2**20).map(lambda n: 2 * n + 1).filter(lambda t: t not in known)
    args["extra_tlvs"] = st.dictionaries(odd, st.binary(max_size=20), max_size=3) if extra else st.just({})
    return st.builds(cls, **args)


ALL = sorted(M.MESSAGES.values(), key=lambda c: c.TYPE)
ANY_MESSAGE = st.one_of(*(strategy(cls) for cls in ALL))
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fixed_size(cls: type[M.Message]) -> int:
    """Bytes of a message of `cls` with every variable-length field empty and no TLV."""
    sizes = {"byte": 1, "u16": 2, "u32": 4, "u64": 8, "short_channel_id": 8, "u16_bytes": 2, "point": 33,
             "u16_signatures": 2, "signature": 64, "chain_hash": 32, "sha256": 32, "channel_id": 32,
             "32*byte": 32, "1366*byte": 1366}
    return 2 + sum(sizes[kind] for kind, _ in cls.SPEC.fields)


def test_every_bolt2_message_is_declared() -> None:
    names = {cls.NAME for cls in ALL}
    assert names >= {"open_channel", "accept_channel", "funding_created", "funding_signed", "channel_ready",
                     "shutdown", "closing_signed", "update_add_htlc", "update_fulfill_htlc", "update_fail_htlc",
                     "update_fail_malformed_htlc", "commitment_signed", "revoke_and_ack", "update_fee",
                     "channel_reestablish", "init", "error", "warning", "ping", "pong"}


@FUZZ
@given(ANY_MESSAGE)
def test_round_trip(msg: M.Message) -> None:
    data = msg.encode()
    assert int.from_bytes(data[:2], "big") == msg.TYPE
    assert M.decode_message(data) == msg
    assert type(msg).decode(data).encode() == data


@FUZZ
@given(ANY_MESSAGE, st.data())
def test_truncated_message_is_refused_or_a_shorter_valid_one(msg: M.Message, data: st.DataObject) -> None:
    full = msg.encode()
    cut = data.draw(st.integers(0, len(full) - 1))
    try:
        shorter = M.decode_message(full[:cut])
    except WireError:
        return
    # only a cut between two TLV records leaves a valid message: the same one with fewer records
    assert cut >= fixed_size(type(msg)) and shorter.encode() == full[:cut]


@FUZZ
@given(ANY_MESSAGE, st.binary(min_size=1, max_size=1))
def test_one_byte_more_is_refused(msg: M.Message, extra: bytes) -> None:
    # one byte is a TLV type without its length
    with pytest.raises(WireError):
        M.decode_message(msg.encode() + extra)


@FUZZ
@given(st.sampled_from(ALL), st.binary(max_size=1500))
def test_random_payload_only_raises_wire_error(cls: type[M.Message], payload: bytes) -> None:
    try:
        msg = M.decode_message(cls.TYPE.to_bytes(2, "big") + payload)
    except WireError:
        return
    assert msg.encode() == cls.TYPE.to_bytes(2, "big") + payload


def test_wrong_type_and_unknown_type() -> None:
    data = M.UpdateFee(bytes(32), 253).encode()
    with pytest.raises(WireError, match="expected revoke_and_ack"):
        M.RevokeAndAck.decode(data)
    with pytest.raises(WireError, match="unknown message type 9999"):
        M.decode_message(b"\x27\x0f")
    with pytest.raises(WireError):
        M.decode_message(b"\x00")


def tlv_bytes(t: int, value: bytes) -> bytes:
    return encode_bigsize(t) + encode_bigsize(len(value)) + value


def test_tlv_even_odd_rule() -> None:
    base = M.ChannelReady(bytes(32), POINTS[0]).encode()
    # unknown odd: kept, and sent again as it came
    msg = M.decode_message(base + tlv_bytes(1, (5).to_bytes(8, "big")) + tlv_bytes(7, b"hi"))
    assert msg.short_channel_id == 5 and msg.extra_tlvs == {7: b"hi"}
    assert msg.encode() == base + tlv_bytes(1, (5).to_bytes(8, "big")) + tlv_bytes(7, b"hi")
    with pytest.raises(WireError, match="unknown even TLV type 2"):
        M.decode_message(base + tlv_bytes(2, b""))
    with pytest.raises(WireError, match="out of order"):
        M.decode_message(base + tlv_bytes(7, b"") + tlv_bytes(1, bytes(8)))
    with pytest.raises(WireError, match="more than its fields"):  # the alias is exactly 8 bytes
        M.decode_message(base + tlv_bytes(1, bytes(9)))
    with pytest.raises(WireError, match="truncated"):
        M.decode_message(base + tlv_bytes(1, bytes(7)))


def test_known_even_tlvs_are_understood() -> None:
    # the even records of the spec are known, so a peer using them is not refused
    opening = M.OpenChannel(bytes(32), bytes(32), 10**6, 0, 546, 10**9, 10**4, 1, 253, 144, 483, *POINTS, POINTS[0], 1)
    script = bytes.fromhex("0014") + bytes(20)
    data = opening.encode() + tlv_bytes(0, script) + tlv_bytes(1, b"\x10\x00")
    msg = M.decode_message(data)
    assert msg.upfront_shutdown_script == script and msg.channel_type == b"\x10\x00"
    add = M.UpdateAddHtlc(bytes(32), 0, 1000, bytes(32), 500, bytes(1366))
    assert M.decode_message(add.encode() + tlv_bytes(0, POINTS[1])).blinded_path == POINTS[1]
    with pytest.raises(WireError, match="invalid point"):
        M.decode_message(add.encode() + tlv_bytes(0, NOT_A_POINT))


def test_invalid_point_is_refused() -> None:
    good = M.RevokeAndAck(bytes(32), bytes(32), POINTS[0]).encode()
    with pytest.raises(WireError, match="invalid point"):
        M.decode_message(good[:-33] + NOT_A_POINT)


def test_commitment_signed_count_beyond_the_message() -> None:
    data = M.CommitmentSigned(bytes(32), bytes(64), []).encode()
    with pytest.raises(WireError, match="3 signatures announced"):
        M.decode_message(data[:-2] + b"\x00\x03" + bytes(64))


@pytest.mark.parametrize("bad, match", [
    (lambda: M.UpdateFee(bytes(31), 253), "expected 32 bytes"),
    (lambda: M.UpdateFee(bytes(32), 2**32), "does not fit"),
    (lambda: M.UpdateFee(bytes(32), -1), "does not fit"),
    (lambda: M.UpdateFee(bytes(32), "253"), "does not fit"),
    (lambda: M.RevokeAndAck(bytes(32), bytes(32), NOT_A_POINT), "invalid point"),
    (lambda: M.CommitmentSigned(bytes(32), bytes(64), [bytes(63)]), "expected 64 bytes"),
    (lambda: M.ClosingSigned(bytes(32), 1, bytes(64), fee_range=(1,)), "expected 2 values"),
    (lambda: M.ClosingSigned(bytes(32), 1, bytes(64), fee_range=5), "does not fit"),
    (lambda: M.UpdateFee(bytes(32), 253, extra_tlvs={"x": b""}), "does not fit"),
    (lambda: M.UpdateFee(None, 253), "does not fit"),
    (lambda: M.UpdateFee(bytes(32), 253, extra_tlvs={2: b""}), "must be odd"),
    (lambda: M.ChannelReady(bytes(32), POINTS[0], extra_tlvs={1: b""}), "not a known record"),
    (lambda: M.UpdateFailHtlc(bytes(32), 0, bytes(65536)), "does not fit"),
    (lambda: M.Ping(0, bytes(65531)), "more than a message can carry"),
])
def test_encoding_a_bad_value_is_a_wire_error(bad, match: str) -> None:
    with pytest.raises(WireError, match=match):
        bad().encode()


def test_bolt1_appendix_c_init_extensions() -> None:
    vectors = json.loads((VECTORS / "bolt01-init-extension.json").read_text())
    for case in vectors["valid"]:
        data = bytes.fromhex(case["msg"])
        assert M.Init.decode(data).encode() == data
    for case in vectors["invalid"]:
        with pytest.raises(WireError):
            M.Init.decode(bytes.fromhex(case["msg"]))


def test_ping_fields() -> None:
    ping = M.decode_message(bytes.fromhex("0012fffc0002abcd"))
    assert ping == M.Ping(num_pong_bytes=65532, ignored=b"\xab\xcd")


# ---- interop: the same bytes as pyln-proto with the pyln-bolt1/2 definitions -------------------------------

pyln_message = pytest.importorskip("pyln.proto.message")
bolt1 = pytest.importorskip("pyln.spec.bolt1")
bolt2 = pytest.importorskip("pyln.spec.bolt2")
bolt7 = pytest.importorskip("pyln.spec.bolt7")  # channel_update
PYLN_NS = pyln_message.MessageNamespace(bolt1.csv + bolt2.csv + bolt7.csv)
RENAMED = {"htlc_signatures": "htlc_signature"}


def pyln_knows(cls: type[M.Message]) -> list[str]:
    """Our TLV fields that the pyln-bolt2 definitions (an older spec) declare for `cls`."""
    csv = "\n".join(bolt1.csv + bolt2.csv + bolt7.csv)
    return [rec.name for rec in cls.SPEC.tlvs.records if f"tlvtype,{cls.NAME}_tlvs,{rec.name}," in csv]


def as_py(kind: str, value):
    """Our value as pyln's to_py() shows it."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [v.hex() for v in value]
    if kind == "short_channel_id":
        return f"{value >> 40}x{(value >> 16) & 0xFFFFFF}x{value & 0xFFFF}"
    return value


def pyln_strategy(cls: type[M.Message]) -> st.SearchStrategy:
    """Messages with only the TLV records pyln knows (newer ones are left out)."""
    known = set(pyln_knows(cls))
    newer = {rec.name: st.none() for rec in cls.SPEC.tlvs.records if rec.name not in known}
    return strategy(cls, extra=False).flatmap(lambda m: st.builds(dataclasses.replace, st.just(m), **newer))


@FUZZ
@given(st.sampled_from(ALL).flatmap(pyln_strategy))
def test_same_bytes_as_pyln(msg: M.Message) -> None:
    data = msg.encode()
    theirs = pyln_message.Message.read(PYLN_NS, io.BytesIO(data))
    fields = theirs.to_py()
    for kind, name in msg.SPEC.fields:
        assert fields[RENAMED.get(name, name)] == as_py(kind, getattr(msg, name)), name
    for rec in msg.SPEC.tlvs.records:
        value = getattr(msg, rec.name)
        if value is None:
            assert rec.name not in fields.get("tlvs", {})
            continue
        parts = value if len(rec.fields) > 1 else (value,)
        assert fields["tlvs"][rec.name] == {n: as_py(k, v) for (k, n), v in zip(rec.fields, parts)}
    out = io.BytesIO()
    theirs.write(out)
    assert out.getvalue() == data

