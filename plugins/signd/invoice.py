"""BOLT-11 invoice signatures: signd signs an invoice of this node's network only.

The signed message is the human-readable part's bytes followed by the data part's 5-bit words
packed into bytes (zero-padded); the signature is recoverable (64 bytes and a recovery id).
"""
from __future__ import annotations

import hashlib
import re

from lnp_plugin_api import RpcError

BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
PREFIXES = {"mainnet": "bc", "testnet": "tb", "testnet4": "tb", "signet": "tbs", "regtest": "bcrt"}
PAYMENT_HASH, PAYEE, TIMESTAMP_WORDS = 1, 19, 7  # the `p` and `n` fields; 35 bits of timestamp


def words(data: str) -> list[int]:
    """The 5-bit words of a bech32 data part (lowercase); ValueError otherwise."""
    if not data or any(c not in BECH32 for c in data):
        raise ValueError("not bech32")
    return [BECH32.index(c) for c in data]


def _bytes(words: list[int]) -> bytes:
    """5-bit words as bytes, the incomplete last byte dropped (BOLT-11 field data)."""
    bits = "".join(f"{w:05b}" for w in words)
    return int(bits[:len(bits) // 8 * 8], 2).to_bytes(len(bits) // 8, "big") if len(bits) >= 8 else b""


def check_invoice(network: str, hrp: str, data: list[int], node_id: bytes) -> None:
    """Refuse (RpcError REFUSED) what is not an invoice of `network` with a timestamp and a
    payment hash, or names another payee (`n`) than `node_id`. This is the one place that decides
    what signd signs as an invoice: a full decoder (plugin_api/bolt11.py) takes over here by
    checking the same arguments."""
    prefix = PREFIXES.get(network, "")
    if not re.fullmatch(f"ln{prefix}(\\d+[munp]?)?", hrp):
        raise RpcError(RpcError.REFUSED, f"not an invoice of this node's network (ln{prefix}...): refused")
    at, fields = TIMESTAMP_WORDS, set()
    while at < len(data):
        if at + 3 > len(data):
            raise RpcError(RpcError.REFUSED, "a tagged field is cut short: refused")
        kind, size = data[at], data[at + 1] * 32 + data[at + 2]
        if at + 3 + size > len(data):
            raise RpcError(RpcError.REFUSED, "a tagged field is longer than the invoice: refused")
        if kind == PAYMENT_HASH and size == 52:
            fields.add(kind)
        if kind == PAYEE and size == 53 and _bytes(data[at + 3:at + 3 + size]) != node_id:
            raise RpcError(RpcError.REFUSED, "the invoice names another payee (n): refused")
        at += 3 + size
    if len(data) < TIMESTAMP_WORDS or PAYMENT_HASH not in fields:
        raise RpcError(RpcError.REFUSED, "an invoice needs a timestamp and a payment hash: refused")


def signed_message(hrp: str, data: list[int]) -> bytes:
    """hrp bytes || the data words as bytes, zero-padded (BOLT-11's signed message, before SHA256)."""
    bits = "".join(f"{w:05b}" for w in data)
    bits += "0" * (-len(bits) % 8)
    return hrp.encode() + int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else hrp.encode()


def digest(hrp: str, data: list[int]) -> bytes:
    """SHA256 of the signed message."""
    return hashlib.sha256(signed_message(hrp, data)).digest()
