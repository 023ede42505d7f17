"""BOLT-4 failures: the failure codes and messages, and the encrypted return packet.

The erring hop builds a packet with `create_error_packet(shared_secret, failure)`; each hop on the way back
re-obfuscates it with `wrap_error_packet(its_shared_secret, packet)`; the origin reads it with
`decode_error_packet(route_secrets, packet)`, which tells which hop sent it. `update_fail_malformed_htlc`
(for onions a hop could not authenticate) is checked with `check_fail_malformed` and turned into a normal
failure with `failure_from_malformed`. Attributable errors (`attribution_data`) are not implemented.
"""
from __future__ import annotations

import hashlib
import hmac as _hmac
from dataclasses import dataclass
from typing import Any, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from .wire import FIELD_TYPES, Reader, TlvStream, WireError

BADONION, PERM, NODE, UPDATE = 0x8000, 0x4000, 0x2000, 0x1000

TEMPORARY_NODE_FAILURE = NODE | 2
PERMANENT_NODE_FAILURE = PERM | NODE | 2
REQUIRED_NODE_FEATURE_MISSING = PERM | NODE | 3
INVALID_ONION_VERSION = BADONION | PERM | 4
INVALID_ONION_HMAC = BADONION | PERM | 5
INVALID_ONION_KEY = BADONION | PERM | 6
TEMPORARY_CHANNEL_FAILURE = UPDATE | 7
PERMANENT_CHANNEL_FAILURE = PERM | 8
REQUIRED_CHANNEL_FEATURE_MISSING = PERM | 9
UNKNOWN_NEXT_PEER = PERM | 10
AMOUNT_BELOW_MINIMUM = UPDATE | 11
FEE_INSUFFICIENT = UPDATE | 12
INCORRECT_CLTV_EXPIRY = UPDATE | 13
EXPIRY_TOO_SOON = UPDATE | 14
INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS = PERM | 15
FINAL_INCORRECT_CLTV_EXPIRY = 18
FINAL_INCORRECT_HTLC_AMOUNT = 19
CHANNEL_DISABLED = UPDATE | 20
EXPIRY_TOO_FAR = 21
INVALID_ONION_PAYLOAD = PERM | 22
MPP_TIMEOUT = 23
INVALID_ONION_BLINDING = BADONION | PERM | 24

_UPDATE = ("u16_bytes", "channel_update")
# code -> (name, fields after the code); a TLV stream may follow the fields.
FAILURES: dict[int, tuple[str, tuple[tuple[str, str], ...]]] = {
    TEMPORARY_NODE_FAILURE: ("temporary_node_failure", ()),
    PERMANENT_NODE_FAILURE: ("permanent_node_failure", ()),
    REQUIRED_NODE_FEATURE_MISSING: ("required_node_feature_missing", ()),
    INVALID_ONION_VERSION: ("invalid_onion_version", (("sha256", "sha256_of_onion"),)),
    INVALID_ONION_HMAC: ("invalid_onion_hmac", (("sha256", "sha256_of_onion"),)),
    INVALID_ONION_KEY: ("invalid_onion_key", (("sha256", "sha256_of_onion"),)),
    TEMPORARY_CHANNEL_FAILURE: ("temporary_channel_failure", (_UPDATE,)),
    PERMANENT_CHANNEL_FAILURE: ("permanent_channel_failure", ()),
    REQUIRED_CHANNEL_FEATURE_MISSING: ("required_channel_feature_missing", ()),
    UNKNOWN_NEXT_PEER: ("unknown_next_peer", ()),
    AMOUNT_BELOW_MINIMUM: ("amount_below_minimum", (("u64", "htlc_msat"), _UPDATE)),
    FEE_INSUFFICIENT: ("fee_insufficient", (("u64", "htlc_msat"), _UPDATE)),
    INCORRECT_CLTV_EXPIRY: ("incorrect_cltv_expiry", (("u32", "cltv_expiry"), _UPDATE)),
    EXPIRY_TOO_SOON: ("expiry_too_soon", (_UPDATE,)),
    INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS: ("incorrect_or_unknown_payment_details",
                                           (("u64", "htlc_msat"), ("u32", "height"))),
    FINAL_INCORRECT_CLTV_EXPIRY: ("final_incorrect_cltv_expiry", (("u32", "cltv_expiry"),)),
    FINAL_INCORRECT_HTLC_AMOUNT: ("final_incorrect_htlc_amount", (("u64", "incoming_htlc_amt"),)),
    CHANNEL_DISABLED: ("channel_disabled", (("u16", "disabled_flags"), _UPDATE)),
    EXPIRY_TOO_FAR: ("expiry_too_far", ()),
    INVALID_ONION_PAYLOAD: ("invalid_onion_payload", (("bigsize", "type"), ("u16", "offset"))),
    MPP_TIMEOUT: ("mpp_timeout", ()),
    INVALID_ONION_BLINDING: ("invalid_onion_blinding", (("sha256", "sha256_of_onion"),)),
}
BY_NAME = {name: code for code, (name, _) in FAILURES.items()}
_NO_TLVS = TlvStream()


# --- Sphinx primitives (onion.py uses them too) -------------------------------------------------------------

def generate_key(key_type: bytes, secret: bytes) -> bytes:
    """BOLT-4 key generation: HMAC-SHA256 keyed by the key type (`rho`, `mu`, `um`, `pad`, `ammag`)."""
    return _hmac.new(key_type, secret, hashlib.sha256).digest()


def stream(key: bytes, length: int) -> bytes:
    """`length` bytes of ChaCha20 keystream under `key` with the all-zero nonce."""
    enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return enc.update(bytes(length))


def xor(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR of two strings, as long as the shorter."""
    n = min(len(a), len(b))
    return (int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


def hmac256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256."""
    return _hmac.new(key, data, hashlib.sha256).digest()


@dataclass(frozen=True)
class FailureMessage:
    """A BOLT-4 `failuremsg`: the code and the bytes after it (fields, then an optional TLV stream)."""

    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        """The bytes that go inside the return packet."""
        return self.code.to_bytes(2, "big") + self.data

    @classmethod
    def decode(cls, raw: bytes) -> FailureMessage:
        """Split a failure message; only its 2-byte code is required."""
        if len(raw) < 2:
            raise WireError("failure message shorter than its code")
        return cls(int.from_bytes(raw[:2], "big"), bytes(raw[2:]))

    @property
    def name(self) -> str:
        """BOLT-4's name, or `unknown_failure_0xNNNN`."""
        return FAILURES.get(self.code, (f"unknown_failure_{self.code:#06x}",))[0]

    @property
    def fields(self) -> dict[str, Any] | None:
        """The code's fields by name (extra bytes after them ignored, as BOLT-4 asks the origin), or None when
        the code is unknown or its data too short."""
        spec = FAILURES.get(self.code)
        if spec is None:
            return None
        r = Reader(self.data)
        try:
            return {name: FIELD_TYPES[kind][0](r) for kind, name in spec[1]}
        except WireError:
            return None

    @property
    def tlvs(self) -> dict[str, Any]:
        """The TLV stream after the fields (unknown odd records by number); empty when absent or unreadable."""
        spec = FAILURES.get(self.code)
        if spec is None:
            return {}
        r = Reader(self.data)
        try:
            for kind, _ in spec[1]:
                FIELD_TYPES[kind][0](r)
            return _NO_TLVS.decode(r.rest())
        except WireError:
            return {}

    def is_(self, flag: int) -> bool:
        """Whether a flag (BADONION, PERM, NODE, UPDATE) is set."""
        return bool(self.code & flag)

    def __str__(self) -> str:
        return self.name


def failure(code: int | str, tlvs: dict[str, bytes] | None = None, **fields: Any) -> FailureMessage:
    """Build a failure from its code (or name) and its fields, e.g.
    `failure(INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, htlc_msat=1000, height=800000)`.
    A missing `channel_update` is empty (BOLT-4 no longer requires one); `tlvs` are odd records by number."""
    code = BY_NAME[code] if isinstance(code, str) else code
    name, spec = FAILURES.get(code, ("", ()))
    if code not in FAILURES and fields:
        raise ValueError(f"unknown failure code {code:#06x} takes no named fields")
    extra = set(fields) - {n for _, n in spec}
    if extra:
        raise ValueError(f"{name} has no field {sorted(extra)}")
    values = {"channel_update": b"", **fields}
    missing = [n for _, n in spec if n not in values]
    if missing:
        raise ValueError(f"{name} needs {missing}")
    body = b"".join(FIELD_TYPES[kind][1](values[n]) for kind, n in spec)
    return FailureMessage(code, body + _NO_TLVS.encode(dict(tlvs or {})))


# --- the return packet --------------------------------------------------------------------------------------

MIN_PADDED_LEN = 256  # failure_len + pad_len, per BOLT-4


def _obfuscate(secret: bytes, packet: bytes) -> bytes:
    return xor(packet, stream(generate_key(b"ammag", secret), len(packet)))


def error_packet_payload(failure_msg: FailureMessage | bytes, padded_len: int = MIN_PADDED_LEN) -> bytes:
    """failure_len, failuremsg, pad_len, pad: the part the `um` HMAC covers."""
    raw = failure_msg.encode() if isinstance(failure_msg, FailureMessage) else bytes(failure_msg)
    if len(raw) > 0xFFFF:
        raise ValueError("failure message too long")
    pad = max(max(padded_len, MIN_PADDED_LEN) - len(raw), 0)
    return len(raw).to_bytes(2, "big") + raw + pad.to_bytes(2, "big") + bytes(pad)


def create_error_packet(shared_secret: bytes, failure_msg: FailureMessage | bytes,
                        padded_len: int = MIN_PADDED_LEN) -> bytes:
    """At the erring hop: the `reason` of `update_fail_htlc`, HMAC'd with `um` and obfuscated with `ammag`.

    `shared_secret` is the one `process_onion` returned for the incoming HTLC."""
    payload = error_packet_payload(failure_msg, padded_len)
    return _obfuscate(shared_secret, hmac256(generate_key(b"um", shared_secret), payload) + payload)


def wrap_error_packet(shared_secret: bytes, packet: bytes) -> bytes:
    """At an intermediate hop: re-obfuscate a packet coming back, with that hop's shared secret."""
    return _obfuscate(shared_secret, bytes(packet))


@dataclass(frozen=True)
class DecodedFailure:
    """A failure read by the origin: `hop` is the index in the route of the hop that sent it (0 = our peer),
    None when no hop's HMAC matches (a hop garbled it); `failure` is None when the packet is unreadable."""

    hop: int | None
    failure: FailureMessage | None


MAX_HOPS = 27  # the origin keeps decrypting this many times whoever failed, so timing does not tell


def decode_error_packet(secrets: Sequence[bytes], packet: bytes) -> DecodedFailure:
    """At the origin: peel the packet with each hop's secret (from `build_onion`) and find the one that made it.
    Never raises on hostile input."""
    packet = bytes(packet)
    found: DecodedFailure | None = None
    dummy = bytes(32)
    for i in range(max(MAX_HOPS, len(secrets))):
        ss = secrets[i] if i < len(secrets) else dummy
        packet = _obfuscate(ss, packet)
        ok = len(packet) >= 32 and _hmac.compare_digest(hmac256(generate_key(b"um", ss), packet[32:]), packet[:32])
        if ok and found is None and i < len(secrets):
            found = DecodedFailure(i, _read_payload(packet[32:]))
    return found or DecodedFailure(None, None)


def _read_payload(payload: bytes) -> FailureMessage | None:
    r = Reader(payload)
    try:
        raw = r.take(r.uint(2))
        r.take(r.uint(2))
        return FailureMessage.decode(raw)
    except WireError:
        return None


# --- update_fail_malformed_htlc -----------------------------------------------------------------------------

def check_fail_malformed(failure_code: int) -> str | None:
    """Why an `update_fail_malformed_htlc` breaks BOLT-2 (the channel must then fail), or None when fine."""
    if not failure_code & BADONION:
        return f"update_fail_malformed_htlc with failure_code {failure_code:#06x} lacking the BADONION bit"
    return None


def malformed_matches(sha256_of_onion: bytes, onion_sent: bytes) -> bool:
    """Whether the peer's `sha256_of_onion` is that of the onion we sent (an all-zero one also matches)."""
    return sha256_of_onion == bytes(32) or sha256_of_onion == hashlib.sha256(onion_sent).digest()


def failure_from_malformed(failure_code: int, sha256_of_onion: bytes) -> FailureMessage:
    """The failure to return upstream (or to read as the origin) for an `update_fail_malformed_htlc`:
    its failure_code with sha256_of_onion as data."""
    return FailureMessage(failure_code, bytes(sha256_of_onion))
