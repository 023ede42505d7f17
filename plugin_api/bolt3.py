"""BOLT-3 key material: key derivation, the per-commitment secret generator, and compact storage of
the counterparty's revealed secrets (the "shachain").

Public derivations (pubkeys, revocation pubkeys) are used by channeld; the private ones only by signd.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import coincurve
from embit.hashes import ripemd160

from .tx import SECP256K1_ORDER as ORDER, SIGHASH_ALL, der_with_sighash, hash160_of_sha256

MAX_INDEX = (1 << 48) - 1  # commitment numbers count down from here


def _sha(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _scalar(data: bytes) -> int:
    return int.from_bytes(data, "big")


def point(secret: bytes) -> bytes:
    """The compressed public key of a 32-byte secret."""
    return coincurve.PrivateKey(secret).public_key.format()


def derive_pubkey(basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """pubkey = basepoint + SHA256(per_commitment_point || basepoint)·G."""
    tweak = _sha(per_commitment_point, basepoint)
    return coincurve.PublicKey(basepoint).add(tweak).format()


def derive_privkey(basepoint_secret: bytes, per_commitment_point: bytes) -> bytes:
    """privkey = basepoint_secret + SHA256(per_commitment_point || basepoint)."""
    tweak = _sha(per_commitment_point, point(basepoint_secret))
    return ((_scalar(basepoint_secret) + _scalar(tweak)) % ORDER).to_bytes(32, "big")


def derive_revocation_pubkey(revocation_basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """revocation_basepoint·SHA256(revocation_basepoint || pcp) + pcp·SHA256(pcp || revocation_basepoint)."""
    a = coincurve.PublicKey(revocation_basepoint).multiply(_sha(revocation_basepoint, per_commitment_point))
    b = coincurve.PublicKey(per_commitment_point).multiply(_sha(per_commitment_point, revocation_basepoint))
    return coincurve.PublicKey.combine_keys([a, b]).format()


def derive_revocation_privkey(revocation_basepoint_secret: bytes, per_commitment_secret: bytes) -> bytes:
    """The secret of `derive_revocation_pubkey`, known once the per-commitment secret is revealed."""
    rb, pcp = point(revocation_basepoint_secret), point(per_commitment_secret)
    value = (_scalar(revocation_basepoint_secret) * _scalar(_sha(rb, pcp))
             + _scalar(per_commitment_secret) * _scalar(_sha(pcp, rb))) % ORDER
    return value.to_bytes(32, "big")


def per_commitment_secret(seed: bytes, index: int) -> bytes:
    """BOLT-3's generate_from_seed: the secret for commitment number `index` (48 bits)."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError("index must fit in 48 bits")
    return _derive(seed, 48, index)


def _derive(base: bytes, bits: int, index: int) -> bytes:
    """Flip and hash each of the lowest `bits` bits set in `index`, highest first."""
    p = bytearray(base)
    for b in range(bits - 1, -1, -1):
        if index >> b & 1:
            p[b // 8] ^= 1 << (b % 8)
            p[:] = _sha(bytes(p))
    return bytes(p)


def _trailing_zeros(index: int) -> int:
    for b in range(48):
        if index >> b & 1:
            return b
    return 48


class ShachainError(ValueError):
    """A revealed secret that does not match the ones received before it."""


@dataclass
class Shachain:
    """The counterparty's revealed per-commitment secrets in at most 49 entries (BOLT-3 Appendix D)."""

    known: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # bucket -> (secret, index)

    def insert(self, secret: bytes, index: int) -> None:
        """Store the secret for commitment `index`; it must derive every secret stored below its bucket."""
        bucket = _trailing_zeros(index)
        for b in range(bucket):
            stored = self.known.get(b)
            if stored is None:
                continue
            if _derive(secret, bucket, stored[1]) != stored[0]:
                raise ShachainError(f"secret for index {index} does not derive the one for index {stored[1]}")
        self.known[bucket] = (secret, index)

    def get(self, index: int) -> bytes | None:
        """The secret for commitment `index`, if it was revealed."""
        for b in range(48, -1, -1):
            stored = self.known.get(b)
            if stored is None:
                continue
            secret, stored_index = stored
            mask = ~((1 << b) - 1) & MAX_INDEX
            if index & mask == stored_index & mask:
                return _derive(secret, b, index)
        return None

    def to_json(self) -> dict[str, list]:
        """A form to persist."""
        return {str(b): [s.hex(), i] for b, (s, i) in self.known.items()}

    @classmethod
    def from_json(cls, data: dict[str, list]) -> "Shachain":
        """Inverse of `to_json`."""
        return cls({int(b): (bytes.fromhex(s), int(i)) for b, (s, i) in data.items()})


# --- Scripts (BOLT-3 "Commitment Transaction Outputs" and "HTLC-Timeout and HTLC-Success Transactions") ---

OP_0, OP_1, OP_2, OP_16 = 0x00, 0x51, 0x52, 0x60
OP_IF, OP_NOTIF, OP_ELSE, OP_ENDIF = 0x63, 0x64, 0x67, 0x68
OP_DROP, OP_DUP, OP_IFDUP, OP_SWAP, OP_SIZE = 0x75, 0x76, 0x73, 0x7C, 0x82
OP_EQUAL, OP_EQUALVERIFY, OP_HASH160 = 0x87, 0x88, 0xA9
OP_CHECKSIG, OP_CHECKSIGVERIFY, OP_CHECKMULTISIG = 0xAC, 0xAD, 0xAE
OP_CLTV, OP_CSV = 0xB1, 0xB2


def push(data: bytes) -> bytes:
    """A direct push of up to 75 bytes (keys and hashes in BOLT-3 scripts)."""
    if len(data) > 75:
        raise ValueError("push longer than 75 bytes")
    return bytes([len(data)]) + data


def push_int(n: int) -> bytes:
    """A minimal script number push (OP_0, OP_1..OP_16, or little-endian bytes with a sign bit)."""
    if n == 0:
        return bytes([OP_0])
    if 1 <= n <= 16:
        return bytes([OP_1 - 1 + n])
    if n < 0:
        raise ValueError("negative script numbers are not used here")
    raw = n.to_bytes((n.bit_length() + 7) // 8, "little")
    if raw[-1] & 0x80:
        raw += b"\x00"
    return push(raw)


def funding_script(pubkey_a: bytes, pubkey_b: bytes) -> bytes:
    """2-of-2 multisig of the two funding pubkeys, lesser first."""
    k1, k2 = sorted((pubkey_a, pubkey_b))
    return bytes([OP_2]) + push(k1) + push(k2) + bytes([OP_2, OP_CHECKMULTISIG])


def funding_witness_of(signatures: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The witness spending the funding output from both (funding pubkey, DER signature) pairs (SIGHASH_ALL):
    the signatures in the order of their keys, then the 2-of-2 script."""
    (key1, sig1), (key2, sig2) = sorted(signatures)
    return [b"", der_with_sighash(sig1, SIGHASH_ALL), der_with_sighash(sig2, SIGHASH_ALL), funding_script(key1, key2)]


def to_local_script(revocation_pubkey: bytes, to_self_delay: int, delayed_pubkey: bytes) -> bytes:
    """to_local (and the second-stage HTLC output): revocation key now, or the delayed key after the CSV."""
    return (bytes([OP_IF]) + push(revocation_pubkey) + bytes([OP_ELSE]) + push_int(to_self_delay)
            + bytes([OP_CSV, OP_DROP]) + push(delayed_pubkey) + bytes([OP_ENDIF, OP_CHECKSIG]))


def to_remote_anchor_script(remote_pubkey: bytes) -> bytes:
    """to_remote with option_anchors: the remote key after one confirmation."""
    return push(remote_pubkey) + bytes([OP_CHECKSIGVERIFY, OP_1, OP_CSV])


def anchor_script(funding_pubkey: bytes) -> bytes:
    """An anchor: its side's funding key, or anyone after 16 blocks."""
    return push(funding_pubkey) + bytes([OP_CHECKSIG, OP_IFDUP, OP_NOTIF, OP_16, OP_CSV, OP_ENDIF])


def _htlc_head(revocation_pubkey: bytes, remote_htlcpubkey: bytes) -> bytes:
    """What both HTLC scripts start with: the revocation path, then the remote key and a 32-byte size test."""
    return (bytes([OP_DUP, OP_HASH160]) + push(hash160_of_sha256(revocation_pubkey))
            + bytes([OP_EQUAL, OP_IF, OP_CHECKSIG, OP_ELSE]) + push(remote_htlcpubkey)
            + bytes([OP_SWAP, OP_SIZE]) + push(b"\x20") + bytes([OP_EQUAL]))


def offered_htlc_script(revocation_pubkey: bytes, local_htlcpubkey: bytes, remote_htlcpubkey: bytes,
                        payment_hash: bytes, anchors: bool) -> bytes:
    """An HTLC offered by the commitment's owner (timeout through HTLC-timeout; remote claims with preimage)."""
    return _offered(revocation_pubkey, local_htlcpubkey, remote_htlcpubkey, ripemd160(payment_hash), anchors)


def received_htlc_script(revocation_pubkey: bytes, local_htlcpubkey: bytes, remote_htlcpubkey: bytes,
                         payment_hash: bytes, cltv_expiry: int, anchors: bool) -> bytes:
    """An HTLC received by the commitment's owner (claimed through HTLC-success; remote times it out)."""
    return _received(revocation_pubkey, local_htlcpubkey, remote_htlcpubkey, ripemd160(payment_hash), cltv_expiry,
                     anchors)


def _offered(revocation_pubkey: bytes, local_htlcpubkey: bytes, remote_htlcpubkey: bytes, payment_ripemd: bytes,
             anchors: bool) -> bytes:
    csv = bytes([OP_1, OP_CSV, OP_DROP]) if anchors else b""
    return (_htlc_head(revocation_pubkey, remote_htlcpubkey)
            + bytes([OP_NOTIF, OP_DROP, OP_2, OP_SWAP]) + push(local_htlcpubkey)
            + bytes([OP_2, OP_CHECKMULTISIG, OP_ELSE, OP_HASH160]) + push(payment_ripemd)
            + bytes([OP_EQUALVERIFY, OP_CHECKSIG, OP_ENDIF]) + csv + bytes([OP_ENDIF]))


def _received(revocation_pubkey: bytes, local_htlcpubkey: bytes, remote_htlcpubkey: bytes, payment_ripemd: bytes,
              cltv_expiry: int, anchors: bool) -> bytes:
    csv = bytes([OP_1, OP_CSV, OP_DROP]) if anchors else b""
    return (_htlc_head(revocation_pubkey, remote_htlcpubkey)
            + bytes([OP_IF, OP_HASH160]) + push(payment_ripemd)
            + bytes([OP_EQUALVERIFY, OP_2, OP_SWAP]) + push(local_htlcpubkey)
            + bytes([OP_2, OP_CHECKMULTISIG, OP_ELSE, OP_DROP]) + push_int(cltv_expiry)
            + bytes([OP_CLTV, OP_DROP, OP_CHECKSIG, OP_ENDIF]) + csv + bytes([OP_ENDIF]))


class HtlcScripts:
    """BOLT-3's offered and received HTLC scripts of one commitment's keys (its revocation key, its
    owner's HTLC key, the other side's), for any payment hash and expiry: what a signer checks of the
    scripts it did not build. Built once per commitment, then `kind` tells a script with byte comparisons."""

    def __init__(self, revocation_pubkey: bytes, local_htlcpubkey: bytes, remote_htlcpubkey: bytes,
                 anchors: bool) -> None:
        keys, any_hash = (revocation_pubkey, local_htlcpubkey, remote_htlcpubkey), bytes(20)
        head = len(_htlc_head(revocation_pubkey, remote_htlcpubkey))
        # offered: head NOTIF DROP 2 SWAP <local> 2 CHECKMULTISIG ELSE HASH160, the hash's push, then the rest
        offered, at = _offered(*keys, any_hash, anchors), head + 4 + 34 + 4 + 1
        self._offered = offered[:at], offered[at + 20:], len(offered)
        # received: head IF HASH160, the hash's push, EQUALVERIFY 2 SWAP <local> 2 CHECKMULTISIG ELSE DROP,
        # then the expiry's push and the rest
        received, at = _received(*keys, any_hash, 0, anchors), head + 3
        self._received = received[:at], received[at + 20:at + 20 + 3 + 34 + 4], received[at + 20 + 3 + 34 + 4 + 1:]

    def kind(self, script: bytes) -> tuple[str, int] | None:
        """("offered", 0) or ("received", cltv_expiry) when `script` is exactly that HTLC script of these
        keys (for some 20-byte payment hash), else None."""
        before, after, size = self._offered
        if len(script) == size and script.startswith(before) and script.endswith(after):
            return "offered", 0
        before, middle, after = self._received
        at = len(before) + 20 + len(middle)  # the expiry's push
        if not script.startswith(before) or script[len(before) + 20:at] != middle:
            return None
        op = script[at] if at < len(script) else OP_0
        if OP_1 <= op <= OP_16:
            cltv = op - OP_1 + 1
        else:  # a push of 1 to 5 bytes (a wrong opcode gives 0, and the rebuilt push differs)
            cltv = int.from_bytes(script[at + 1:at + 1 + op], "little") if op <= 5 else 0
        if script[at:] == push_int(cltv) + after:
            return "received", cltv
        return None


def is_htlc_script(script: bytes, revocation_pubkey: bytes, local_htlcpubkey: bytes, remote_htlcpubkey: bytes,
                   anchors: bool) -> bool:
    """Whether `script` is exactly an offered or a received HTLC script of these keys, for any payment hash and
    expiry (`HtlcScripts`; build one to check several scripts of the same keys)."""
    return htlc_script_kind(script, revocation_pubkey, local_htlcpubkey, remote_htlcpubkey, anchors) is not None


def htlc_script_kind(script: bytes, revocation_pubkey: bytes, local_htlcpubkey: bytes, remote_htlcpubkey: bytes,
                     anchors: bool) -> tuple[str, int] | None:
    """("offered", 0) or ("received", cltv_expiry) when `script` is exactly that HTLC script of these keys
    (as `is_htlc_script`), else None."""
    return HtlcScripts(revocation_pubkey, local_htlcpubkey, remote_htlcpubkey, anchors).kind(script)


def commitment_locktime_sequence(obscured: int) -> tuple[int, int]:
    """A commitment's locktime and its input's sequence: 0x20 over the obscured number's lower 24 bits,
    0x80 over its upper 24 bits."""
    return 0x20 << 24 | obscured & 0xFFFFFF, 0x80 << 24 | obscured >> 24 & 0xFFFFFF


def obscuring_factor(opener_payment_basepoint: bytes, accepter_payment_basepoint: bytes) -> int:
    """The lower 48 bits of SHA256(opener's payment_basepoint || accepter's), XORed into commitment numbers."""
    return int.from_bytes(_sha(opener_payment_basepoint, accepter_payment_basepoint)[-6:], "big")
