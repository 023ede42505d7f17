"""Bech32 (BIP-173) without the 90-character limit, as BOLT-11 uses it, and 5-bit value conversions.

5-bit data is carried as `bytes` holding one value 0..31 per byte.
"""
from __future__ import annotations

import re
from functools import reduce
from operator import xor

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_VALUES = {c: i for i, c in enumerate(CHARSET)}
_BITS = [format(i, "05b") for i in range(32)]
_WORDS = bytes(_VALUES.get(chr(b), 255) for b in range(256))  # a byte -> its 5-bit value; 255: not bech32
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Bech32Error(ValueError):
    """Text that is not valid bech32; the message says why."""


# what the five top bits of the checksum add once shifted out: the XOR of their generators, by value
_TOP = tuple(reduce(xor, (g for i, g in enumerate(_GEN) if top >> i & 1), 0) for top in range(32))


def _polymod(values: bytes) -> int:
    chk = 1
    top = _TOP
    for v in values:
        chk = (chk & 0x1FFFFFF) << 5 ^ v ^ top[chk >> 25]
    return chk


def _expand(hrp: str) -> bytes:
    return bytes(ord(c) >> 5 for c in hrp) + b"\x00" + bytes(ord(c) & 31 for c in hrp)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(hrp, 5-bit data without the checksum); refuses mixed case, bad characters and a bad checksum."""
    if _NOT_PRINTABLE.search(text):
        raise Bech32Error("invalid character in bech32 string")
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("malformed bech32 string: mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1:
        raise Bech32Error("malformed bech32 string: no separator '1' after a human-readable part")
    if pos + 7 > len(text):
        raise Bech32Error("malformed bech32 string: checksum too short")
    hrp, data = text[:pos], words_of(text[pos + 1:])
    if _polymod(_expand(hrp) + data) != 1:
        raise Bech32Error("bech32 checksum is invalid")
    return hrp, data[:-6]


def words_of(text: str) -> bytes:
    """The 5-bit values of lower-case bech32 characters (a data part, no checksum checked)."""
    words = text.encode("ascii").translate(_WORDS) if text.isascii() else None
    if words is None or 255 in words:
        bad = next(c for c in text if c not in _VALUES)
        raise Bech32Error(f"invalid bech32 character {bad!r}")
    return words


def bech32_encode(hrp: str, data: bytes) -> str:
    """Lower-case bech32 of `hrp` and 5-bit `data`, with its checksum."""
    mod = _polymod(_expand(hrp) + bytes(data) + bytes(6)) ^ 1
    checksum = bytes(mod >> 5 * (5 - i) & 31 for i in range(6))
    return hrp + "1" + "".join(CHARSET[v] for v in bytes(data) + checksum)


def words_to_int(words: bytes) -> int:
    """Big-endian 5-bit values as an integer (in linear time: an invoice has no length limit)."""
    return int("".join(map(_BITS.__getitem__, words)), 2) if words else 0


def int_to_words(value: int, nwords: int | None = None) -> bytes:
    """An integer as big-endian 5-bit values: minimal (no leading zero value) unless `nwords` is given."""
    if nwords is None:
        nwords = (value.bit_length() + 4) // 5
    return bytes((value >> 5 * (nwords - 1 - i)) & 31 for i in range(nwords))


def words_to_bytes(words: bytes) -> bytes:
    """5-bit values to bytes, dropping the trailing bits that do not fill a byte."""
    nbits = 5 * len(words)
    return (words_to_int(words) >> nbits % 8).to_bytes(nbits // 8, "big")


def words_to_padded_bytes(words: bytes) -> bytes:
    """5-bit values to bytes, appending zero bits up to a byte boundary."""
    nbytes = (5 * len(words) + 7) // 8
    return (words_to_int(words) << 8 * nbytes - 5 * len(words)).to_bytes(nbytes, "big")


def bytes_to_words(data: bytes) -> bytes:
    """Bytes to 5-bit values, appending zero bits up to a multiple of 5."""
    nwords = (8 * len(data) + 4) // 5
    return int_to_words(int.from_bytes(data, "big") << 5 * nwords - 8 * len(data), nwords)
