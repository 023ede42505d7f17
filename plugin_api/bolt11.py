"""BOLT-11 invoices: `decode` text into a typed `Invoice` (every reader rule), `encode` one with a signer.

The node key stays in signd: `encode(invoice, sign)` hands `sign(hrp, data5)` the human-readable part and the
5-bit data (one value 0..31 per byte) it must sign; signd can `decode_unsigned(hrp, data5)` to see what it
signs, then sign `signing_hash(hrp, data5)` recoverably. `sign_with_key` does that with a private key (tests).

A decoded invoice keeps its exact wire fields, so re-encoding it gives back the same text (and signature) as
long as nothing was changed; an invoice built or changed in code is written in a canonical order.
Where the spec's text says a `p`/`h`/`s`/`n` field of the wrong length fails the invoice but its examples
keep one as "ignored", we follow the examples (as the implementations do): such fields are skipped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import coincurve

from . import features as _features
from .bech32 import (Bech32Error, bech32_decode, bech32_encode, bytes_to_words, int_to_words, words_to_bytes,
                     words_to_int, words_to_padded_bytes)
from .tx import SECP256K1_ORDER as _ORDER, verify

CURRENCIES = {"bc": "mainnet", "tb": "testnet", "tbs": "signet", "bcrt": "regtest"}
_NETWORK_CURRENCY = {"mainnet": "bc", "testnet": "tb", "testnet4": "tb", "signet": "tbs", "regtest": "bcrt"}
DEFAULT_EXPIRY = 3600
DEFAULT_MIN_FINAL_CLTV_EXPIRY_DELTA = 18
# var_onion_optin and payment_secret, required: what an invoice we write advertises by default.
DEFAULT_FEATURES = frozenset({8, 14})
_MSAT_PER_BTC = 100_000_000_000
_MULTIPLIERS = {"m": 100_000_000, "u": 100_000, "n": 100}     # msat per unit; `p` is a tenth of a msat
_MAX_MSAT = 21_000_000 * _MSAT_PER_BTC

# Tagged field types (5-bit values of the bech32 characters).
P, S, D, M, N, H, X, C, F, R, FEATURES = 1, 16, 13, 27, 19, 23, 6, 24, 9, 3, 5

Signer = Callable[[str, bytes], tuple[bytes, int]]  # (hrp, data5) -> (64-byte r||s, recovery id)


class InvoiceError(ValueError):
    """Text that is not a valid invoice, or an invoice that cannot be paid; the message says why."""


@dataclass(frozen=True)
class RawField:
    """A tagged field as on the wire: its type and its 5-bit values (one per byte)."""

    tag: int
    data: bytes


@dataclass(frozen=True)
class RouteHintHop:
    """One hop of an `r` field: the channel from `pubkey` with its fees and CLTV delta."""

    pubkey: bytes
    short_channel_id: int
    fee_base_msat: int
    fee_proportional_millionths: int
    cltv_expiry_delta: int


@dataclass(frozen=True)
class Fallback:
    """An `f` field: `version` 0-16 (a witness program), 17 (P2PKH hash) or 18 (P2SH hash)."""

    version: int
    program: bytes

    @property
    def script_pubkey(self) -> bytes:
        """The output script."""
        if self.version == 17:
            return b"\x76\xa9\x14" + self.program + b"\x88\xac"
        if self.version == 18:
            return b"\xa9\x14" + self.program + b"\x87"
        op = 0 if self.version == 0 else 0x50 + self.version
        return bytes([op, len(self.program)]) + self.program

    def address(self, network: str) -> str:
        """The address on `network` (mainnet, testnet, signet, regtest)."""
        from embit.script import Script
        from .chains import embit_network
        return Script(self.script_pubkey).address(embit_network(network))

    @classmethod
    def from_address(cls, address: str) -> Fallback:
        """The fallback for an address (any network)."""
        from embit.script import address_to_scriptpubkey
        try:
            spk = address_to_scriptpubkey(address).data
        except Exception as e:  # embit raises several types for a bad address
            raise InvoiceError(f"not an address: {address!r} ({e})") from None
        if len(spk) == 25 and spk[:3] == b"\x76\xa9\x14":
            return cls(17, spk[3:23])
        if len(spk) == 23 and spk[:2] == b"\xa9\x14":
            return cls(18, spk[2:22])
        return cls(0 if spk[0] == 0 else spk[0] - 0x50, spk[2:])


@dataclass(frozen=True)
class Invoice:
    """A BOLT-11 invoice. `payee` is the node id (from `n` or recovered from the signature once decoded);
    `payee_in_invoice` says whether the `n` field carries it. `extra` keeps unknown fields and fields readers
    skip (unknown fallback versions, wrong lengths, duplicates): the signature covers them."""

    currency: str
    timestamp: int
    payment_hash: bytes
    payment_secret: bytes
    amount_msat: int | None = None
    description: str | None = None
    description_hash: bytes | None = None
    expiry: int = DEFAULT_EXPIRY
    min_final_cltv_expiry_delta: int = DEFAULT_MIN_FINAL_CLTV_EXPIRY_DELTA
    features: frozenset[int] = DEFAULT_FEATURES
    fallbacks: tuple[Fallback, ...] = ()
    route_hints: tuple[tuple[RouteHintHop, ...], ...] = ()
    metadata: bytes | None = None
    payee: bytes | None = None
    payee_in_invoice: bool = False
    extra: tuple[RawField, ...] = ()
    signature: bytes | None = field(default=None, compare=False, repr=False)  # r||s||recid once signed
    wire: tuple[str, tuple[RawField, ...]] | None = field(default=None, compare=False, repr=False)

    @property
    def network(self) -> str:
        """mainnet, testnet (or testnet4), signet or regtest."""
        return CURRENCIES[self.currency]

    @property
    def expires_at(self) -> int:
        """Unix time after which the invoice must not be paid."""
        return self.timestamp + self.expiry

    def is_expired(self, now: float | None = None) -> bool:
        """Whether `now` (default: the current time) is past the expiry."""
        return (time.time() if now is None else now) > self.expires_at

    def matches_description(self, text: str) -> bool:
        """Whether `text` is this invoice's description (or hashes to its `h` field)."""
        if self.description_hash is not None:
            return hashlib.sha256(text.encode()).digest() == self.description_hash
        return self.description == text


# --- signing ------------------------------------------------------------------------------------------------

def signing_payload(hrp: str, data5: bytes) -> bytes:
    """What the signature covers: the hrp's UTF-8 bytes and the data part padded to whole bytes."""
    return hrp.encode() + words_to_padded_bytes(bytes(data5))


def signing_hash(hrp: str, data5: bytes) -> bytes:
    """SHA256 of `signing_payload`: the message hash the node key signs."""
    return hashlib.sha256(signing_payload(hrp, data5)).digest()


def sign_with_key(private_key: bytes) -> Signer:
    """A signer from a private key (tests; the node's key is in signd)."""
    key = coincurve.PrivateKey(private_key)

    def sign(hrp: str, data5: bytes) -> tuple[bytes, int]:
        sig = key.sign_recoverable(signing_hash(hrp, data5), hasher=None)
        return sig[:64], sig[64]
    return sign


# --- the human-readable part --------------------------------------------------------------------------------

def currency_for(network: str) -> str:
    """The invoice currency prefix of a network."""
    return _NETWORK_CURRENCY[network]


def _parse_hrp(hrp: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"ln([a-z]+)([0-9]*)([a-z]?)", hrp)
    if not m:
        raise InvoiceError(f"invalid human-readable part {hrp[:40]!r}: expected ln, a currency, an amount")
    currency, digits, mult = m.groups()
    if currency not in CURRENCIES:
        raise InvoiceError(f"unknown currency prefix {currency!r}")
    if not digits:
        if mult:
            raise InvoiceError(f"amount multiplier {mult!r} without an amount")
        return currency, None
    if len(digits) > 25:  # more than the bitcoin supply in pico-BTC; also keeps int() off huge strings
        raise InvoiceError("amount exceeds the bitcoin supply")
    amount = int(digits)
    if mult == "p":
        if amount % 10:
            raise InvoiceError("invalid sub-millisatoshi precision: a pico amount must end in 0")
        msat = amount // 10
    elif mult:
        if mult not in _MULTIPLIERS:
            raise InvoiceError(f"invalid amount multiplier {mult!r}")
        msat = amount * _MULTIPLIERS[mult]
    else:
        msat = amount * _MSAT_PER_BTC
    if msat == 0:
        raise InvoiceError("amount is zero")
    if msat > _MAX_MSAT:
        raise InvoiceError("amount exceeds the bitcoin supply")
    return currency, msat


def _amount_text(msat: int) -> str:
    if msat % _MSAT_PER_BTC == 0:
        return str(msat // _MSAT_PER_BTC)
    for mult, unit in _MULTIPLIERS.items():
        if msat % unit == 0:
            return f"{msat // unit}{mult}"
    return f"{msat * 10}p"


def hrp_of(invoice: Invoice) -> str:
    """The human-readable part: ln, the currency, the amount in the shortest form."""
    if invoice.currency not in CURRENCIES:
        raise InvoiceError(f"unknown currency {invoice.currency!r}")
    if invoice.amount_msat is not None and not 0 < invoice.amount_msat <= _MAX_MSAT:
        raise InvoiceError(f"amount {invoice.amount_msat} msat is out of range")
    return "ln" + invoice.currency + ("" if invoice.amount_msat is None else _amount_text(invoice.amount_msat))


# --- tagged fields ------------------------------------------------------------------------------------------

_FIXED = {P: ("payment_hash", 52), S: ("payment_secret", 52), H: ("description_hash", 52), N: ("payee", 53)}
_INTS = {X: "expiry", C: "min_final_cltv_expiry_delta", FEATURES: "features"}


def _parse_field(f: RawField) -> tuple[str, object] | None:
    """A field's (attribute, value), None for a field readers skip; raises on one that spoils the invoice."""
    if f.tag in _FIXED:
        name, length = _FIXED[f.tag]
        if len(f.data) != length:
            return None
        value = words_to_bytes(f.data)
        if f.tag == N:
            try:
                coincurve.PublicKey(value)
            except ValueError:
                return None
        return name, value
    if f.tag == D:
        try:
            return "description", words_to_bytes(f.data).decode("utf-8")
        except UnicodeDecodeError:
            raise InvoiceError("description is not valid UTF-8") from None
    if f.tag == M:
        return "metadata", words_to_bytes(f.data)
    if f.tag in _INTS:
        if f.data[:1] == b"\x00":
            raise InvoiceError(f"{_INTS[f.tag]} field is not minimally encoded")
        value = words_to_int(f.data)
        if f.tag == FEATURES:
            return "features", frozenset(b for b in range(value.bit_length()) if value >> b & 1)
        return _INTS[f.tag], value
    if f.tag == F and f.data:
        fb = Fallback(f.data[0], words_to_bytes(f.data[1:]))
        ok = {17: (20,), 18: (20,), 0: (20, 32)}.get(fb.version, range(2, 41) if fb.version <= 16 else ())
        return ("fallbacks", fb) if len(fb.program) in ok else None
    if f.tag == R:
        raw = words_to_bytes(f.data)
        if not raw or len(raw) % 51:
            return None
        return "route_hints", tuple(
            RouteHintHop(raw[i:i + 33], int.from_bytes(raw[i + 33:i + 41], "big"),
                         int.from_bytes(raw[i + 41:i + 45], "big"), int.from_bytes(raw[i + 45:i + 49], "big"),
                         int.from_bytes(raw[i + 49:i + 51], "big")) for i in range(0, len(raw), 51))
    return None


def _parse_fields(currency: str, amount: int | None, timestamp: int, raw: tuple[RawField, ...],
                  wire: tuple[str, tuple[RawField, ...]]) -> Invoice:
    values: dict[str, object] = {}
    fallbacks, hints, extra = [], [], []
    for f in raw:
        parsed = _parse_field(f)
        if parsed is None:
            extra.append(f)
        elif parsed[0] == "fallbacks":
            fallbacks.append(parsed[1])
        elif parsed[0] == "route_hints":
            hints.append(parsed[1])
        elif parsed[0] in values:  # a later duplicate: the first is the preferred one
            extra.append(f)
        else:
            values[parsed[0]] = parsed[1]
    if "payment_hash" not in values:
        raise InvoiceError("missing required p field (payment_hash)")
    if "payment_secret" not in values:
        raise InvoiceError("missing required s field (payment_secret)")
    if ("description" in values) == ("description_hash" in values):
        raise InvoiceError("an invoice has either a d field or an h field, exactly one")
    feats = values.pop("features", frozenset())
    unknown = sorted(b for b in feats if b % 2 == 0 and b not in _features.KNOWN)
    if unknown:
        raise InvoiceError(f"invoice requires unknown feature bit {unknown[0]}")
    return Invoice(currency=currency, amount_msat=amount, timestamp=timestamp, features=feats,
                   fallbacks=tuple(fallbacks), route_hints=tuple(hints), extra=tuple(extra),
                   payee_in_invoice="payee" in values, wire=wire, **values)


def _canonical_fields(inv: Invoice) -> list[RawField]:
    if len(inv.payment_hash) != 32 or len(inv.payment_secret) != 32:
        raise InvoiceError("payment_hash and payment_secret are 32 bytes")
    if (inv.description is None) == (inv.description_hash is None):
        raise InvoiceError("an invoice has either a description or a description_hash, exactly one")
    out = [RawField(P, bytes_to_words(inv.payment_hash)), RawField(S, bytes_to_words(inv.payment_secret))]
    if inv.description is not None:
        out.append(RawField(D, bytes_to_words(inv.description.encode("utf-8"))))
    else:
        if len(inv.description_hash) != 32:
            raise InvoiceError("description_hash is 32 bytes")
        out.append(RawField(H, bytes_to_words(inv.description_hash)))
    if inv.metadata is not None:
        out.append(RawField(M, bytes_to_words(inv.metadata)))
    if inv.expiry != DEFAULT_EXPIRY:
        out.append(RawField(X, int_to_words(inv.expiry)))
    out.append(RawField(C, int_to_words(inv.min_final_cltv_expiry_delta)))
    if inv.payee_in_invoice:
        if inv.payee is None or len(inv.payee) != 33:
            raise InvoiceError("payee_in_invoice needs a 33-byte payee")
        out.append(RawField(N, bytes_to_words(inv.payee)))
    for fb in inv.fallbacks:
        out.append(RawField(F, bytes([fb.version]) + bytes_to_words(fb.program)))
    for route in inv.route_hints:
        out.append(RawField(R, bytes_to_words(b"".join(
            h.pubkey + h.short_channel_id.to_bytes(8, "big") + h.fee_base_msat.to_bytes(4, "big")
            + h.fee_proportional_millionths.to_bytes(4, "big") + h.cltv_expiry_delta.to_bytes(2, "big")
            for h in route))))
    if inv.features:
        out.append(RawField(FEATURES, int_to_words(sum(1 << b for b in inv.features))))
    return out + list(inv.extra)


# --- decoding -----------------------------------------------------------------------------------------------

def decode_unsigned(hrp: str, data5: bytes) -> Invoice:
    """The invoice an `(hrp, data5)` pair describes, before signing (what signd checks before it signs)."""
    currency, amount = _parse_hrp(hrp)
    data5 = bytes(data5)
    if data5 and max(data5) > 31:
        raise InvoiceError("data values must be 5-bit")
    if len(data5) < 7:
        raise InvoiceError("too short for a timestamp")
    raw_fields = _split_fields(data5[7:])
    return _parse_fields(currency, amount, words_to_int(data5[:7]), raw_fields, wire=(hrp, raw_fields))


def _split_fields(words: bytes) -> tuple[RawField, ...]:
    out, i = [], 0
    while i < len(words):
        if i + 3 > len(words):
            raise InvoiceError("truncated tagged field")
        length = words[i + 1] << 5 | words[i + 2]
        if i + 3 + length > len(words):
            raise InvoiceError("tagged field longer than the invoice")
        out.append(RawField(words[i], words[i + 3:i + 3 + length]))
        i += 3 + length
    return tuple(out)


def decode(text: str) -> Invoice:
    """Decode and check an invoice (an optional `lightning:` prefix is allowed). Raises `InvoiceError` only."""
    if not isinstance(text, str):
        raise InvoiceError("an invoice is text")
    text = text.strip()
    if text[:10].lower() == "lightning:":
        text = text[10:]
    try:
        hrp, words = bech32_decode(text)
    except Bech32Error as e:
        raise InvoiceError(str(e)) from None
    if len(words) < 7 + 104:
        raise InvoiceError("string is too short for a timestamp and a signature")
    data5, sig5 = words[:-104], words[-104:]
    inv = decode_unsigned(hrp, data5)
    sig = words_to_bytes(sig5)
    rs, recid = sig[:64], sig[64]
    if recid > 3:
        raise InvoiceError(f"invalid signature recovery id {recid}")
    msg, signature = signing_hash(hrp, data5), sig
    if inv.payee_in_invoice:
        if int.from_bytes(rs[32:], "big") > _ORDER // 2:
            raise InvoiceError("signature is not in low-S form while the n field is given")
        if not verify(inv.payee, rs, msg):
            raise InvoiceError("signature does not match the n field")
        payee = inv.payee
    else:
        s = int.from_bytes(rs[32:], "big")
        if s > _ORDER // 2:  # readers accept high-S here: recover from its low-S twin (BOLT-11's example)
            sig = rs[:32] + (_ORDER - s).to_bytes(32, "big") + bytes([recid])
        try:
            payee = coincurve.PublicKey.from_signature_and_message(sig, msg, hasher=None).format()
        except Exception:  # coincurve raises ValueError or its own errors for unrecoverable signatures
            raise InvoiceError("signature is not recoverable") from None
    return dataclasses.replace(inv, payee=payee, signature=signature)


# --- encoding -----------------------------------------------------------------------------------------------

def unsigned_parts(invoice: Invoice) -> tuple[str, bytes]:
    """(hrp, data5) to sign: the decoded wire form when `invoice` still says the same, else canonical."""
    if invoice.wire is not None:
        hrp, raw = invoice.wire
        data5 = int_to_words(invoice.timestamp, 7) + _join(raw)
        try:
            again = decode_unsigned(hrp, data5)
        except InvoiceError:
            again = None
        if again is not None and _same(again, invoice):
            return hrp, data5
    if not 0 <= invoice.timestamp < 1 << 35:
        raise InvoiceError("timestamp out of range")
    return hrp_of(invoice), int_to_words(invoice.timestamp, 7) + _join(_canonical_fields(invoice))


def _same(a: Invoice, b: Invoice) -> bool:
    """Equal as written (a payee that is only recovered from the signature is not written)."""
    def norm(x: Invoice) -> Invoice:
        return x if x.payee_in_invoice else dataclasses.replace(x, payee=None)
    return norm(a) == norm(b)


def _join(fields: Iterable[RawField]) -> bytes:
    out = b""
    for f in fields:
        if len(f.data) > 1023:
            raise InvoiceError(f"tagged field {f.tag} is longer than 1023 values")
        out += bytes([f.tag, len(f.data) >> 5, len(f.data) & 31]) + f.data
    return out


def encode(invoice: Invoice, sign: Signer) -> str:
    """The invoice text, signed by `sign(hrp, data5) -> (r||s, recovery id)`. The signature is checked: it must
    recover `invoice.payee` when one is set."""
    hrp, data5 = unsigned_parts(invoice)
    rs, recid = sign(hrp, data5)
    if len(rs) != 64 or recid not in range(4):
        raise InvoiceError("the signer returned a malformed signature")
    try:
        signer_key = coincurve.PublicKey.from_signature_and_message(
            bytes(rs) + bytes([recid]), signing_hash(hrp, data5), hasher=None).format()
    except Exception:
        raise InvoiceError("the signer's signature is not recoverable") from None
    if invoice.payee is not None and signer_key != invoice.payee:
        raise InvoiceError("the signature is not the payee's")
    return bech32_encode(hrp, data5 + bytes_to_words(bytes(rs) + bytes([recid])))


# --- the payer's checks -------------------------------------------------------------------------------------

def check_features(invoice: Invoice, supported: Iterable[int] = DEFAULT_FEATURES) -> str | None:
    """Why we cannot pay this invoice for its features, or None: `supported` are the feature bits (either of a
    pair) we implement; the invoice must offer var_onion_optin and payment_secret, set every dependency, and
    require nothing else we lack."""
    ours = {b & ~1 for b in supported}
    pairs = {b & ~1 for b in invoice.features}
    for need in (8, 14):
        if need not in pairs:
            return f"invoice lacks {_features.KNOWN[need]}"
    lacking = sorted(b for b in invoice.features if b % 2 == 0 and b not in ours)
    if lacking:
        return "invoice requires features we do not support: " + ", ".join(
            f"{_features.KNOWN.get(b, 'unknown')} (bit {b})" for b in lacking)
    for pair in sorted(pairs):
        missing = [d for d in _features.DEPENDENCIES.get(pair, ()) if d not in pairs]
        if missing:
            return f"invoice sets {_features.KNOWN[pair]} without " + ", ".join(_features.KNOWN[d] for d in missing)
    return None


def amount_to_pay(invoice: Invoice, amount_msat: int | None = None) -> int:
    """The amount to send: the invoice's (or up to twice it when `amount_msat` is given), or `amount_msat` for
    an invoice without an amount. Raises `InvoiceError`."""
    if invoice.amount_msat is None:
        if amount_msat is None or amount_msat <= 0:
            raise InvoiceError("the invoice has no amount: give one")
        return amount_msat
    if amount_msat is None:
        return invoice.amount_msat
    if not invoice.amount_msat <= amount_msat <= 2 * invoice.amount_msat:
        raise InvoiceError(f"amount {amount_msat} msat is not between the invoice's {invoice.amount_msat} msat "
                           "and twice it")
    return amount_msat
