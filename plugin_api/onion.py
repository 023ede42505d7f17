"""BOLT-4 Sphinx onions: build an onion for a route, peel one layer at a hop, and the hop payload TLV.

The node's private key never leaves signd: a hop peels its layer with an `ecdh(ephemeral_pubkey) -> 32 bytes`
callable (BOLT-4's shared secret: SHA256 of the compressed ECDH point, what libsecp256k1 and signd's
`host.keys.ecdh` return). `ecdh_with_key` builds one from a private key for tests and for the origin side.

Failures: everything wrong with an incoming onion raises `OnionError`, whose `failure` is the BOLT-4 failure
message to return. Without a `shared_secret` (bad version, key or HMAC) it goes back in
`update_fail_malformed_htlc`; with one (a well-authenticated onion whose payload is unusable) it is encrypted
with `onion_errors.create_error_packet`. Route blinding and attributable errors are not implemented.
"""
from __future__ import annotations

import hashlib
import hmac as _hmac
from dataclasses import dataclass, field
from typing import Callable, Sequence

import coincurve

from .onion_errors import (FINAL_INCORRECT_CLTV_EXPIRY, FINAL_INCORRECT_HTLC_AMOUNT,
                           INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, INVALID_ONION_HMAC, INVALID_ONION_KEY,
                           INVALID_ONION_PAYLOAD, INVALID_ONION_VERSION, FailureMessage, failure, generate_key, hmac256,
                           stream, xor)
from .wire import Reader, TlvError, TlvRecord, TlvStream, WireError, encode_bigsize

VERSION = 0
HOP_PAYLOADS_SIZE = 1300                 # an HTLC onion's routing info
PACKET_SIZE = 1 + 33 + HOP_PAYLOADS_SIZE + 32
HMAC_SIZE = 32
_ZERO_HMAC = bytes(HMAC_SIZE)

Ecdh = Callable[[bytes], bytes]


class OnionError(ValueError):
    """An incoming onion that cannot be used; `failure` is the BOLT-4 failure to send back.

    `shared_secret` is None when the onion could not be authenticated (BADONION codes: answer with
    `update_fail_malformed_htlc`), else the hop's secret to encrypt the failure with."""

    def __init__(self, reason: str, failure: FailureMessage, shared_secret: bytes | None = None) -> None:
        super().__init__(reason)
        self.failure, self.shared_secret = failure, shared_secret

    @property
    def code(self) -> int:
        """The failure code."""
        return self.failure.code


# --- primitives -------------------------------------------------------------------------------------------

def ecdh_with_key(private_key: bytes) -> Ecdh:
    """An `ecdh` callable from a private key (tests and the origin side; a node's own key stays in signd)."""
    key = coincurve.PrivateKey(private_key)
    return lambda point: key.ecdh(point)


def _blind(pubkey: bytes, secret: bytes) -> bytes:
    return hashlib.sha256(pubkey + secret).digest()


def route_secrets(session_key: bytes, hop_pubkeys: Sequence[bytes]) -> list[bytes]:
    """The shared secret with each hop of a route (the origin keeps them to read a returned failure)."""
    return _route(session_key, hop_pubkeys)[1]


def _route(session_key: bytes, hop_pubkeys: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """The session's public key (the onion's first ephemeral key) and the shared secret with each hop."""
    ek = coincurve.PrivateKey(session_key)
    first = epk = ek.public_key.format()
    secrets = []
    for i, pub in enumerate(hop_pubkeys):
        ss = ek.ecdh(bytes(pub))
        secrets.append(ss)
        if i + 1 < len(hop_pubkeys):  # the next hop's ephemeral key (none is needed after the last hop)
            ek = ek.multiply(_blind(epk, ss))
            epk = ek.public_key.format()
    return first, secrets


# --- hop payload --------------------------------------------------------------------------------------------

PAYLOAD_TLVS = TlvStream((
    TlvRecord(2, "amt_to_forward", (("tu64", "amt_to_forward"),)),
    TlvRecord(4, "outgoing_cltv_value", (("tu32", "outgoing_cltv_value"),)),
    TlvRecord(6, "short_channel_id", (("short_channel_id", "short_channel_id"),)),
    TlvRecord(8, "payment_data", (("sha256", "payment_secret"), ("tu64", "total_msat"))),
    TlvRecord(10, "encrypted_recipient_data", (("rest", "encrypted_recipient_data"),)),
    TlvRecord(12, "current_path_key", (("point", "path_key"),)),
    TlvRecord(16, "payment_metadata", (("rest", "payment_metadata"),)),
    TlvRecord(18, "total_amount_msat", (("tu64", "total_msat"),)),
))


@dataclass(frozen=True)
class HopPayload:
    """A hop's onion payload (BOLT-4 `payload` TLV). Unknown odd records are kept in `unknown` (type -> value)."""

    amt_to_forward: int | None = None
    outgoing_cltv_value: int | None = None
    short_channel_id: int | None = None
    payment_secret: bytes | None = None      # with total_msat: the `payment_data` record
    total_msat: int | None = None
    payment_metadata: bytes | None = None
    encrypted_recipient_data: bytes | None = None
    current_path_key: bytes | None = None
    total_amount_msat: int | None = None
    unknown: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The TLV stream (without the length prefix the onion adds)."""
        if (self.payment_secret is None) != (self.total_msat is None):
            raise ValueError("payment_secret and total_msat go together (payment_data)")
        v: dict = {str(t): b for t, b in self.unknown.items()}
        simple = {"amt_to_forward": self.amt_to_forward, "outgoing_cltv_value": self.outgoing_cltv_value,
                  "short_channel_id": self.short_channel_id, "payment_metadata": self.payment_metadata,
                  "encrypted_recipient_data": self.encrypted_recipient_data}
        v.update({k: {k: x} for k, x in simple.items() if x is not None})
        if self.payment_secret is not None:
            v["payment_data"] = {"payment_secret": self.payment_secret, "total_msat": self.total_msat}
        if self.current_path_key is not None:
            v["current_path_key"] = {"path_key": self.current_path_key}
        if self.total_amount_msat is not None:
            v["total_amount_msat"] = {"total_msat": self.total_amount_msat}
        return PAYLOAD_TLVS.encode(v)

    @classmethod
    def final(cls, amount_msat: int, cltv_expiry: int, payment_secret: bytes, total_msat: int | None = None,
              payment_metadata: bytes | None = None) -> HopPayload:
        """The payload for the payee (BOLT-4's "payload for the last node"): the amount and expiry of the HTLC it
        gets, the invoice's secret and metadata, `total_msat` the whole payment (default: this amount)."""
        return cls(amt_to_forward=amount_msat, outgoing_cltv_value=cltv_expiry, payment_secret=payment_secret,
                   total_msat=amount_msat if total_msat is None else total_msat, payment_metadata=payment_metadata)

    @classmethod
    def decode(cls, data: bytes) -> HopPayload:
        """Parse a payload; raises `TlvError` (with the offending type and offset) when it is not valid."""
        d = PAYLOAD_TLVS.decode(data)
        pd = d.get("payment_data", {})
        return cls(
            amt_to_forward=d.get("amt_to_forward", {}).get("amt_to_forward"),
            outgoing_cltv_value=d.get("outgoing_cltv_value", {}).get("outgoing_cltv_value"),
            short_channel_id=d.get("short_channel_id", {}).get("short_channel_id"),
            payment_secret=pd.get("payment_secret"), total_msat=pd.get("total_msat"),
            payment_metadata=d.get("payment_metadata", {}).get("payment_metadata"),
            encrypted_recipient_data=d.get("encrypted_recipient_data", {}).get("encrypted_recipient_data"),
            current_path_key=d.get("current_path_key", {}).get("path_key"),
            total_amount_msat=d.get("total_amount_msat", {}).get("total_msat"),
            unknown={int(k): v for k, v in d.items() if k.isdigit()})


# --- construction -------------------------------------------------------------------------------------------

def _hop_bytes(payload: bytes | HopPayload) -> bytes:
    raw = payload.encode() if isinstance(payload, HopPayload) else bytes(payload)
    if len(raw) < 2:
        raise ValueError("a hop payload is at least 2 bytes (lengths 0 and 1 are reserved)")
    return raw


def _filler(secrets: Sequence[bytes], shifts: Sequence[int], size: int) -> bytes:
    """The bytes the hops before the last one will append, as the last hop will see them."""
    filler = b""
    for ss, shift in zip(secrets[:-1], shifts[:-1]):
        padded = filler + bytes(shift)
        filler = xor(padded, stream(generate_key(b"rho", ss), size + shift)[size - len(filler):])
    return filler


def build_onion(session_key: bytes, hop_pubkeys: Sequence[bytes], payloads: Sequence[bytes | HopPayload],
                associated_data: bytes, size: int = HOP_PAYLOADS_SIZE) -> tuple[bytes, list[bytes]]:
    """An onion packet for the route and the shared secret of each hop (keep them to read a failure).

    `payloads` are TLV streams (bytes without the length prefix) or `HopPayload`s; `associated_data` is the
    payment hash for an HTLC; `size` is 1300 for HTLCs (onion messages may use another size)."""
    if not hop_pubkeys or len(hop_pubkeys) != len(payloads):
        raise ValueError("one payload per hop, at least one hop")
    raws = [_hop_bytes(p) for p in payloads]
    frames = [encode_bigsize(len(r)) + r for r in raws]
    shifts = [len(f) + HMAC_SIZE for f in frames]
    if sum(shifts) > size:
        raise ValueError(f"payloads take {sum(shifts)} bytes, more than the onion's {size}")
    session_pubkey, secrets = _route(session_key, hop_pubkeys)
    filler = _filler(secrets, shifts, size)
    mix = stream(generate_key(b"pad", session_key), size)
    next_hmac = _ZERO_HMAC
    for i in reversed(range(len(frames))):
        mix = frames[i] + next_hmac + mix[:size - shifts[i]]
        mix = xor(mix, stream(generate_key(b"rho", secrets[i]), size))
        if i == len(frames) - 1 and filler:
            mix = mix[:size - len(filler)] + filler
        next_hmac = hmac256(generate_key(b"mu", secrets[i]), mix + associated_data)
    packet = bytes([VERSION]) + session_pubkey + mix + next_hmac
    return packet, secrets


# --- processing ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeeledOnion:
    """One layer taken off: our payload, the shared secret (store it with the HTLC to encrypt a failure later),
    and the onion for the next hop, None when we are the final node."""

    payload: HopPayload
    raw_payload: bytes
    shared_secret: bytes
    next_onion: bytes | None

    @property
    def is_final(self) -> bool:
        """True when no hop follows."""
        return self.next_onion is None


def sha256_of_onion(packet: bytes) -> bytes:
    """What `update_fail_malformed_htlc` and the BADONION failures carry."""
    return hashlib.sha256(packet).digest()


def _bad_onion(reason: str, code: int, packet: bytes) -> OnionError:
    return OnionError(reason, failure(code, sha256_of_onion=sha256_of_onion(packet)))


def process_onion(packet: bytes, associated_data: bytes, ecdh: Ecdh, size: int = HOP_PAYLOADS_SIZE) -> PeeledOnion:
    """Peel our layer of `packet`. Raises `OnionError` (only that) when the onion is unusable.

    Errors from `ecdh` itself (signd unreachable) propagate unchanged: they are not the peer's fault."""
    packet = bytes(packet)
    if len(packet) != size + 66:
        raise _bad_onion(f"onion is {len(packet)} bytes, not {size + 66}", INVALID_ONION_VERSION, packet)
    if packet[0] != VERSION:
        raise _bad_onion(f"unknown onion version {packet[0]}", INVALID_ONION_VERSION, packet)
    pubkey, hop_payloads, their_hmac = packet[1:34], packet[34:34 + size], packet[34 + size:]
    try:
        point = coincurve.PublicKey(pubkey)
    except ValueError:
        raise _bad_onion("onion ephemeral key is not a valid point", INVALID_ONION_KEY, packet) from None
    ss = ecdh(pubkey)
    ours = hmac256(generate_key(b"mu", ss), hop_payloads + associated_data)
    if not _hmac.compare_digest(ours, their_hmac):
        raise _bad_onion("onion HMAC does not match", INVALID_ONION_HMAC, packet)
    unwrapped = xor(hop_payloads + bytes(size), stream(generate_key(b"rho", ss), 2 * size))
    r = Reader(unwrapped)
    try:
        length = r.bigsize()
        if length < 2:
            raise WireError(f"payload length {length} is reserved")
        raw = r.take(length)
        next_hmac = r.take(HMAC_SIZE)
        if r.remaining < size:
            raise WireError(f"payload of {length} bytes overflows the onion")
    except WireError as e:
        raise OnionError(f"onion payload framing: {e}", failure(INVALID_ONION_PAYLOAD, type=0, offset=0), ss) from None
    try:
        payload = HopPayload.decode(raw)
    except TlvError as e:
        raise OnionError(f"onion payload: {e}", failure(INVALID_ONION_PAYLOAD, type=e.type, offset=e.offset),
                         ss) from None
    if next_hmac == _ZERO_HMAC:
        return PeeledOnion(payload, raw, ss, None)
    try:
        next_key = point.multiply(_blind(pubkey, ss)).format()
    except ValueError:  # a blinding factor out of range: negligible, but never a crash
        raise OnionError("cannot blind the next ephemeral key", failure(INVALID_ONION_PAYLOAD, type=0, offset=0),
                         ss) from None
    next_onion = bytes([VERSION]) + next_key + unwrapped[r.pos:r.pos + size] + next_hmac
    return PeeledOnion(payload, raw, ss, next_onion)


# --- the final node's checks (pure: the caller passes what it knows) ----------------------------------------

def check_final_payload(payload: HopPayload) -> FailureMessage | None:
    """The final node's payload rules: `invalid_onion_payload` naming the missing or unsupported type."""
    for t, present in ((10, payload.encrypted_recipient_data is not None), (12, payload.current_path_key is not None)):
        if present:  # route blinding is not implemented (nor advertised)
            return failure(INVALID_ONION_PAYLOAD, type=t, offset=0)
    if payload.amt_to_forward is None:
        return failure(INVALID_ONION_PAYLOAD, type=2, offset=0)
    if payload.outgoing_cltv_value is None:
        return failure(INVALID_ONION_PAYLOAD, type=4, offset=0)
    return None


def check_final_htlc(payload: HopPayload, amount_msat: int, cltv_expiry: int) -> FailureMessage | None:
    """The HTLC against the onion: a CLTV or an amount below what the sender put in the onion (the previous
    hop took too much). Call after `check_final_payload`."""
    if payload.outgoing_cltv_value is not None and cltv_expiry < payload.outgoing_cltv_value:
        return failure(FINAL_INCORRECT_CLTV_EXPIRY, cltv_expiry=cltv_expiry)
    if payload.amt_to_forward is not None and amount_msat < payload.amt_to_forward:
        return failure(FINAL_INCORRECT_HTLC_AMOUNT, incoming_htlc_amt=amount_msat)
    return None


def check_final_payment(payload: HopPayload, amount_msat: int, cltv_expiry: int, current_height: int, *,
                        payment_secret: bytes | None, invoice_amount_msat: int | None,
                        min_final_cltv_expiry_delta: int, expired: bool = False,
                        mpp: bool = False) -> FailureMessage | None:
    """The payment against our invoice: `incorrect_or_unknown_payment_details` when the hash is unknown
    (`payment_secret` None), the secret is missing or wrong, the amount is below the invoice's or above
    twice it, the CLTV is too close, or the invoice has expired. Without `mpp`, `total_msat` must equal
    `amt_to_forward` (a multi-part payment we cannot complete)."""
    details = failure(INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, htlc_msat=amount_msat, height=current_height)
    if payment_secret is None or expired:
        return details
    if payload.payment_secret is None or not _hmac.compare_digest(payload.payment_secret, payment_secret):
        return details
    amt = payload.amt_to_forward if payload.amt_to_forward is not None else amount_msat
    total = payload.total_msat if payload.total_msat is not None else amt
    if not mpp and total != amt:
        return details
    if invoice_amount_msat is not None and not invoice_amount_msat <= total <= 2 * invoice_amount_msat:
        return details
    if cltv_expiry < current_height + min_final_cltv_expiry_delta:
        return details
    return None
