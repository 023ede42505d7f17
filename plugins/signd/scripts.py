"""The BOLT-3 scripts signd rebuilds to check what it is asked to sign, and its signature helpers.

signd derives every script that pays one of its keys from the channel's parameters and its own keys,
so a request cannot make it sign for a script of the requester's choosing.
"""
from __future__ import annotations

import hashlib
from io import BytesIO

import coincurve
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact
from embit.hashes import hash160
from embit.transaction import Transaction

OP_IF, OP_ELSE, OP_ENDIF, OP_NOTIF, OP_IFDUP = 0x63, 0x67, 0x68, 0x64, 0x73
OP_DROP, OP_CHECKSIG, OP_CHECKSIGVERIFY, OP_CHECKMULTISIG, OP_CSV = 0x75, 0xAC, 0xAD, 0xAE, 0xB2
OP_DUP, OP_HASH160, OP_EQUALVERIFY = 0x76, 0xA9, 0x88
SIGHASH_ALL = 0x01
SIGHASH_SINGLE_ACP = 0x83  # SIGHASH_SINGLE|SIGHASH_ANYONECANPAY: anchors' HTLC signatures of the remote side


def push(data: bytes) -> bytes:
    """A push of up to 75 bytes."""
    return bytes([len(data)]) + data


def push_num(n: int) -> bytes:
    """A minimal script number push (OP_0..OP_16, else little-endian with a sign byte when needed)."""
    if n == 0:
        return b"\x00"
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "little")
    if body[-1] & 0x80:
        body += b"\x00"
    return push(body)


def funding_script(a: bytes, b: bytes) -> bytes:
    """2-of-2 multisig of the two funding pubkeys, lexicographically ordered."""
    low, high = sorted((a, b))
    return bytes([0x52]) + push(low) + push(high) + bytes([0x52, OP_CHECKMULTISIG])


def to_local_script(revocation_pubkey: bytes, to_self_delay: int, delayed_pubkey: bytes) -> bytes:
    """to_local (and HTLC second-stage outputs): revocable at once, or by the owner after the delay."""
    return (bytes([OP_IF]) + push(revocation_pubkey) + bytes([OP_ELSE]) + push_num(to_self_delay)
            + bytes([OP_CSV, OP_DROP]) + push(delayed_pubkey) + bytes([OP_ENDIF, OP_CHECKSIG]))


def anchors_to_remote_script(payment_pubkey: bytes) -> bytes:
    """option_anchors' to_remote: the payment key after one confirmation."""
    return push(payment_pubkey) + bytes([OP_CHECKSIGVERIFY, 0x51, OP_CSV])


def anchor_script(funding_pubkey: bytes) -> bytes:
    """An anchor output: its funding key's owner at once, anyone after 16 blocks."""
    return push(funding_pubkey) + bytes([OP_CHECKSIG, OP_IFDUP, OP_NOTIF, 0x60, OP_CSV, OP_ENDIF])


def p2wsh(script: bytes) -> bytes:
    """The P2WSH script_pubkey of a witness script."""
    return b"\x00\x20" + hashlib.sha256(script).digest()


def p2wpkh(pubkey: bytes) -> bytes:
    """The P2WPKH script_pubkey of a compressed pubkey."""
    return b"\x00\x14" + hash160(pubkey)


def p2pkh_code(pubkey: bytes) -> bytes:
    """The BIP143 script code of a P2WPKH spend."""
    return bytes([OP_DUP, OP_HASH160]) + push(hash160(pubkey)) + bytes([OP_EQUALVERIFY, OP_CHECKSIG])


def parse_tx(text: object) -> Transaction:
    """A whole transaction from hex; ValueError when it is not one."""
    raw = bytes.fromhex(str(text))
    stream = BytesIO(raw)
    try:
        tx = Transaction.read_from(stream)
    except Exception:
        raise ValueError("not a transaction") from None
    if stream.read(1) or not tx.vin or not tx.vout:
        raise ValueError("not a transaction")
    return tx


def pubkey(text: object) -> bytes:
    """A valid compressed public key from hex; ValueError otherwise."""
    data = bytes.fromhex(str(text))
    if len(data) != 33:
        raise ValueError("not a compressed public key")
    coincurve.PublicKey(data)
    return data


def sign(secret: bytes, digest: bytes) -> bytes:
    """A 64-byte compact ECDSA signature (low S, RFC6979), as BOLT-2 messages carry them."""
    return serialize_compact(der_to_cdata(coincurve.PrivateKey(secret).sign(digest, hasher=None)))


def der(compact: bytes, sighash: int) -> bytes:
    """The script form of a compact signature: DER and the sighash byte."""
    return cdata_to_der(deserialize_compact(compact)) + bytes([sighash])


def verify(key: bytes, compact: bytes, digest: bytes) -> bool:
    """Whether `compact` is `key`'s signature of `digest`."""
    try:
        return coincurve.PublicKey(key).verify(cdata_to_der(deserialize_compact(compact)), digest, hasher=None)
    except Exception:
        return False
