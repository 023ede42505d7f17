"""BOLT-9 feature vectors and checks, peer addresses and BOLT-7 address descriptors, chain hashes."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from lnp_plugin_api import FeatureSpec
from lnp_plugin_api import features
from lnp_plugin_api.addresses import (DNS, IPV4, IPV6, TORV3, Address, AddressError, decode_descriptor,
                                  encode_descriptor, parse_address, parse_peer)
from lnp_plugin_api.chains import chain_hash, network_of
from lnp_plugin_api.messages import ERROR, PING, PONG, WARNING
from lnp_plugin_api.wire import WireError

ONION = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion"
NODE = "031b84c5567b126440995d3ed5aaba0565d71e1834604819ff9c17f5e9d5dd078f"


def test_feature_vectors() -> None:
    assert features.encode(set()) == b""
    assert features.encode({0}) == b"\x01"
    assert features.encode({9, 15}) == b"\x82\x00"
    assert features.decode(b"\x00\x82\x00") == {9, 15}  # leading zero bytes are fine to read
    assert features.names({8, 17}) == ["var_onion_optin/required", "basic_mpp/optional"]
    spec = FeatureSpec(19)
    assert (spec.pair, spec.wire_bit, spec.name) == (18, 19, "option_support_large_channel")
    assert FeatureSpec(19, required=True).wire_bit == 18
    assert features.for_context([FeatureSpec(19), FeatureSpec(48, contexts="9")], "I") == {19}


@given(st.sets(st.integers(min_value=0, max_value=300)))
def test_feature_round_trip(bits: set[int]) -> None:
    assert features.decode(features.encode(bits)) == bits


def test_peer_feature_checks() -> None:
    ours = [FeatureSpec(19), FeatureSpec(62, required=True)]
    assert features.check_peer({62}, ours) is None
    assert features.check_peer({63, 101}, ours) is None               # unknown odd: ignored
    assert "do not support: unknown (bit 100)" in features.check_peer({62, 100}, ours)
    assert "do not support: option_anchors (bit 22)" in features.check_peer({62, 22}, ours)
    assert "lacks features we require: option_splice" in features.check_peer({19}, ours)
    assert "without its dependency payment_secret" in features.check_peer({17, 63}, ours)
    assert features.check_peer({17, 15, 63}, ours) is None


@pytest.mark.parametrize("text, kind, host, port", [
    ("1.2.3.4", IPV4, "1.2.3.4", 9735),
    ("1.2.3.4:1", IPV4, "1.2.3.4", 1),
    ("[::1]:9736", IPV6, "::1", 9736),
    ("[2001:db8::1]", IPV6, "2001:db8::1", 9735),
    ("2001:db8::1", IPV6, "2001:db8::1", 9735),
    (f"{ONION}:9735", TORV3, ONION, 9735),
    (ONION.upper(), TORV3, ONION, 9735),
    ("node.example.com:19735", DNS, "node.example.com", 19735),
])
def test_addresses(text: str, kind: int, host: str, port: int) -> None:
    addr = parse_address(text)
    assert (addr.kind, addr.host, addr.port) == (kind, host, port)
    assert parse_address(str(addr)) == addr
    assert decode_descriptor(encode_descriptor(addr)) == addr


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("1.2.3.4:x", "not a number"), ("1.2.3.4:65536", "out of range"), ("[::1", "missing"),
    ("[::1]x", "':PORT'"), ("bad_host!:1", "not an IP"), ("abcdefghijklmnop.onion", "v2"),
    (ONION[:-7] + "a.onion", "not a valid Tor v3"), ("a" * 56 + ".onion", "not a valid Tor v3"),
])
def test_bad_addresses(text: str, words: str) -> None:
    with pytest.raises(AddressError, match=words.replace("(", r"\(")):
        parse_address(text)


def test_peer_strings() -> None:
    node_id, addr = parse_peer(f"{NODE}@[::1]:9")
    assert node_id.hex() == NODE and addr == Address(IPV6, "::1", 9)
    assert parse_peer(NODE) == (bytes.fromhex(NODE), None)
    for bad in ("", "02" + "00" * 32, NODE[:-2] + "zz", "05" + NODE[2:], f"{NODE}@"):
        with pytest.raises(AddressError):
            parse_peer(bad)


def test_descriptor_vectors() -> None:
    assert encode_descriptor(Address(IPV4, "1.2.3.4", 9735)) == bytes.fromhex("01010203042607")
    assert decode_descriptor(bytes.fromhex("09ffff")) is None  # unknown type: cannot be read further
    with pytest.raises(WireError):
        decode_descriptor(bytes.fromhex("0101020304260700"))
    with pytest.raises(WireError):
        decode_descriptor(bytes.fromhex("010102"))


@given(st.binary(max_size=300))
def test_descriptor_decoder_fails_only_with_wire_error(data: bytes) -> None:
    try:
        decode_descriptor(data)
    except WireError:
        pass


@given(st.binary(max_size=300))
def test_peer_message_decoders_fail_only_with_wire_error(data: bytes) -> None:
    for spec in (PING, PONG, ERROR, WARNING):
        try:
            spec.decode(data)
        except WireError:
            pass


def test_chain_hashes() -> None:
    # BOLT-0: chain_hash of regtest's genesis, in wire order
    assert chain_hash("regtest").hex() == "06226e46111a0b59caaf126043eb5bbf28c34f3a5e332a1fc7b2b73cf188910f"
    assert chain_hash("mainnet").hex().endswith("0000000000")
    assert network_of(chain_hash("testnet")) == "testnet"
    assert network_of(bytes(32)) is None
