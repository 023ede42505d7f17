"""BOLT-3 key material: key derivation, the per-commitment secret generator, and compact storage of
the counterparty's revealed secrets (the "shachain").

Public derivations (pubkeys, revocation pubkeys) are used by channeld; the private ones only by signd.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import coincurve

MAX_INDEX = (1 << 48) - 1  # commitment numbers count down from here


def _sha(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _scalar(data: bytes) -> int:
    return int.from_bytes(data, "big")


ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


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
