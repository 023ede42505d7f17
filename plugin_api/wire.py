"""BOLT-1 wire format: fundamental types, BigSize, TLV streams and message framing.

One codec for the host, the built-in plugins and third-party plugins. Messages and TLV records are
declared as field lists; decoding is strict (minimal encodings, ordered unique TLV types, the
even/odd rule) and every failure raises `WireError` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import coincurve


class WireError(ValueError):
    """Bytes that are not a valid encoding; the reason says why."""


class TlvError(WireError):
    """A TLV stream that does not decode: `type` is the offending record's type (0 when not known) and
    `offset` the byte offset of that record in the stream (BOLT-4's `invalid_onion_payload` reports both)."""

    def __init__(self, reason: str, type: int = 0, offset: int = 0) -> None:
        super().__init__(reason)
        self.type, self.offset = type, offset


class Reader:
    """Reads fundamental types from a byte string, failing on truncation."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = bytes(data), 0

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        """The next `n` bytes."""
        if n < 0 or self.pos + n > len(self.data):
            raise WireError(f"truncated: wanted {n} bytes, {self.remaining} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        """Everything not read yet."""
        return self.take(self.remaining)

    def uint(self, n: int) -> int:
        """A big-endian unsigned integer of `n` bytes."""
        return int.from_bytes(self.take(n), "big")

    def bigsize(self) -> int:
        """A BigSize, which must be minimally encoded."""
        first = self.uint(1)
        if first < 0xFD:
            return first
        size, floor = {0xFD: (2, 0xFD), 0xFE: (4, 0x10000), 0xFF: (8, 0x100000000)}[first]
        value = self.uint(size)
        if value < floor:
            raise WireError("decoded bigsize is not canonical")
        return value


def encode_bigsize(value: int) -> bytes:
    """BigSize encoding of an unsigned 64-bit value."""
    if value < 0xFD:
        return value.to_bytes(1, "big")
    if value <= 0xFFFF:
        return b"\xfd" + value.to_bytes(2, "big")
    if value <= 0xFFFFFFFF:
        return b"\xfe" + value.to_bytes(4, "big")
    return b"\xff" + value.to_bytes(8, "big")


def decode_bigsize(data: bytes) -> int:
    """Decode exactly one BigSize."""
    r = Reader(data)
    value = r.bigsize()
    if r.remaining:
        raise WireError("trailing bytes after bigsize")
    return value


def encode_truncated(value: int) -> bytes:
    """A tu16/tu32/tu64: big-endian without leading zero bytes."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_truncated(data: bytes, max_bytes: int) -> int:
    """Decode a tuNN, which must be minimal and at most `max_bytes` long."""
    if len(data) > max_bytes:
        raise WireError(f"truncated integer longer than {max_bytes} bytes")
    if data[:1] == b"\x00":
        raise WireError("truncated integer is not minimal")
    return int.from_bytes(data, "big")


def encode_signed(value: int) -> bytes:
    """A signed integer in the smallest of 1, 2, 4 or 8 bytes (two's complement, big-endian)."""
    for size in (1, 2, 4, 8):
        if -(1 << (8 * size - 1)) <= value < (1 << (8 * size - 1)):
            return value.to_bytes(size, "big", signed=True)
    raise WireError(f"{value} does not fit in 64 bits")


def decode_signed(data: bytes) -> int:
    """Decode a signed integer written by `encode_signed`, refusing non-minimal widths."""
    if len(data) not in (1, 2, 4, 8):
        raise WireError("signed integer must be 1, 2, 4 or 8 bytes")
    value = int.from_bytes(data, "big", signed=True)
    if encode_signed(value) != data:
        raise WireError("signed integer is not minimally encoded")
    return value


def format_scid(scid: int) -> str:
    """A short channel id as BLOCKxTXxOUTPUT."""
    return f"{scid >> 40}x{(scid >> 16) & 0xFFFFFF}x{scid & 0xFFFF}"


def parse_scid(text: str) -> int:
    """The inverse of `format_scid`; ValueError for anything else."""
    parts = text.split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a short channel id: {text[:40]!r}")
    block, tx, out = (int(p) for p in parts)
    if block >= 1 << 24 or tx >= 1 << 24 or out >= 1 << 16:
        raise ValueError(f"short channel id out of range: {text[:40]!r}")
    return block << 40 | tx << 16 | out


def _point(r: Reader) -> bytes:
    raw = r.take(33)
    try:
        coincurve.PublicKey(raw)
    except ValueError:
        raise WireError("invalid point") from None
    return raw


def _write_point(v: Any) -> bytes:
    return _point(Reader(_fixed(33)[1](v)))


# A field type: (read from a Reader that holds the rest of the record/message, write to bytes).
FieldCodec = tuple[Callable[[Reader], Any], Callable[[Any], bytes]]


def _fixed(n: int) -> FieldCodec:
    """N bytes exactly, on reading and on writing."""
    def write(v: Any) -> bytes:
        v = bytes(v)
        if len(v) != n:
            raise WireError(f"expected {n} bytes, got {len(v)}")
        return v
    return (lambda r: r.take(n), write)


def _read_signatures(r: Reader) -> list[bytes]:
    count = r.uint(2)
    if count * 64 > r.remaining:
        raise WireError(f"truncated: {count} signatures announced, {r.remaining} bytes left")
    return [r.take(64) for _ in range(count)]


def _write_signatures(sigs: Any) -> bytes:
    sigs = list(sigs)
    if len(sigs) > 0xFFFF:
        raise WireError("more than 65535 signatures")
    return len(sigs).to_bytes(2, "big") + b"".join(_fixed(64)[1](s) for s in sigs)

FIELD_TYPES: dict[str, FieldCodec] = {
    "byte": (lambda r: r.uint(1), lambda v: v.to_bytes(1, "big")),
    "u16": (lambda r: r.uint(2), lambda v: v.to_bytes(2, "big")),
    "u32": (lambda r: r.uint(4), lambda v: v.to_bytes(4, "big")),
    "u64": (lambda r: r.uint(8), lambda v: v.to_bytes(8, "big")),
    "tu16": (lambda r: decode_truncated(r.rest(), 2), encode_truncated),
    "tu32": (lambda r: decode_truncated(r.rest(), 4), encode_truncated),
    "tu64": (lambda r: decode_truncated(r.rest(), 8), encode_truncated),
    "bigsize": (lambda r: r.bigsize(), encode_bigsize),
    "point": (_point, _write_point),
    "short_channel_id": (lambda r: r.uint(8), lambda v: v.to_bytes(8, "big")),
    "chain_hash": _fixed(32),
    "sha256": _fixed(32),
    "channel_id": _fixed(32),
    "32*byte": _fixed(32),
    "signature": _fixed(64),  # compact r||s; whether it verifies is the receiver's check, not the codec's
    "1366*byte": _fixed(1366),  # an onion routing packet (BOLT-4)
    "80*byte": _fixed(80),
    "840*byte": _fixed(840),
    "u16_signatures": (_read_signatures, _write_signatures),  # a u16 count, then 64 bytes each
    "u16_bytes": (lambda r: r.take(r.uint(2)), lambda v: len(v).to_bytes(2, "big") + bytes(v)),
    "rest": (lambda r: r.rest(), lambda v: bytes(v)),
    "chain_hashes": (lambda r: [r.take(32) for _ in range(_count(r, 32))], lambda v: b"".join(v)),
}


def _count(r: Reader, size: int) -> int:
    if r.remaining % size:
        raise WireError(f"length is not a multiple of {size}")
    return r.remaining // size


@dataclass(frozen=True)
class TlvRecord:
    """A TLV record type: its number, name and fields (decoded in order from its value)."""

    type: int
    name: str
    fields: tuple[tuple[str, str], ...]  # (field type, field name)


@dataclass(frozen=True)
class TlvStream:
    """A namespace of known TLV records."""

    records: tuple[TlvRecord, ...] = ()
    _by_type: dict[int, TlvRecord] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_type.update({rec.type: rec for rec in self.records})

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode a whole stream: known records by name, unknown odd ones under their number."""
        r = Reader(data)
        out: dict[str, Any] = {}
        last = -1
        while r.remaining:
            start, t = r.pos, 0
            try:
                t = r.bigsize()
                value = r.take(r.bigsize())
                if t <= last:
                    raise WireError("TLV records out of order or duplicated")
                last = t
                rec = self._by_type.get(t)
                if rec is None:
                    if t % 2 == 0:
                        raise WireError(f"unknown even TLV type {t}")
                    out[str(t)] = value
                    continue
                vr = Reader(value)
                values = {name: FIELD_TYPES[kind][0](vr) for kind, name in rec.fields}
                if vr.remaining:
                    raise WireError(f"TLV {rec.name}: {vr.remaining} bytes more than its fields")
                out[rec.name] = values
            except TlvError:
                raise
            except WireError as e:
                raise TlvError(str(e), t, start) from None
        return out

    def encode(self, values: dict[str, Any]) -> bytes:
        """Encode records (known by name, unknown by number) in ascending type order."""
        parts: list[tuple[int, bytes]] = []
        by_name = {rec.name: rec for rec in self.records}
        for key, value in values.items():
            rec = by_name.get(key)
            if rec is None:
                parts.append((int(key), bytes(value)))
            else:
                parts.append((rec.type, b"".join(FIELD_TYPES[kind][1](value[name]) for kind, name in rec.fields)))
        return b"".join(encode_bigsize(t) + encode_bigsize(len(v)) + v for t, v in sorted(parts))


@dataclass(frozen=True)
class MessageSpec:
    """A peer message: type number, name, fields, and its extension TLV stream."""

    type: int
    name: str
    fields: tuple[tuple[str, str], ...]
    tlvs: TlvStream = TlvStream()

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode the payload (after the 2-byte type)."""
        r = Reader(payload)
        out = {name: FIELD_TYPES[kind][0](r) for kind, name in self.fields}
        out["tlvs"] = self.tlvs.decode(r.rest())
        return out

    def encode(self, values: dict[str, Any]) -> bytes:
        """The whole message, type included."""
        body = b"".join(FIELD_TYPES[kind][1](values[name]) for kind, name in self.fields)
        return self.type.to_bytes(2, "big") + body + self.tlvs.encode(values.get("tlvs", {}))


def split_message(msg: bytes) -> tuple[int, bytes]:
    """A message's type and payload."""
    if len(msg) < 2:
        raise WireError("message shorter than its type")
    return int.from_bytes(msg[:2], "big"), msg[2:]

