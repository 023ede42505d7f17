"""Bitcoin transactions for channel code: the one place that serializes them and computes BIP143 sighashes.

Channel code never spells byte layouts: it builds a typed `Tx` and asks it for its bytes, txid and
digests, written here directly (every commitment round serializes and hashes transactions of hundreds
of outputs). Reading a transaction takes its canonical form here, and leaves any other (a non-minimal
length, a segwit marker with no witness, ...) to embit, as all of it was before.
Txids are hex strings in display order (as block explorers and `ChainClient` show them).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import coincurve
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact

from embit.hashes import ripemd160
from embit.transaction import Transaction

SIGHASH_ALL = 0x01
SIGHASH_NONE, SIGHASH_SINGLE, SIGHASH_ANYONECANPAY = 0x02, 0x03, 0x80
SIGHASH_SINGLE_ANYONECANPAY = 0x83
_ZERO = bytes(32)


@dataclass(frozen=True)
class TxIn:
    """An input: the outpoint it spends, its nSequence, its witness (empty while unsigned) and scriptSig
    (empty for the segwit spends channels make)."""

    txid: str
    vout: int
    sequence: int = 0xFFFFFFFF
    witness: tuple[bytes, ...] = ()
    script_sig: bytes = b""

    def outpoint(self) -> bytes:
        """The outpoint as transactions carry it: the txid in internal byte order, then vout."""
        return bytes.fromhex(self.txid)[::-1] + self.vout.to_bytes(4, "little")


@dataclass(frozen=True)
class TxOut:
    """An output: amount in satoshis and scriptPubKey."""

    amount_sat: int
    script_pubkey: bytes

    def serialize(self) -> bytes:
        """The output as transactions carry it."""
        return self.amount_sat.to_bytes(8, "little") + varint(len(self.script_pubkey)) + self.script_pubkey


@dataclass(frozen=True)
class Tx:
    """A transaction; `serialize()` omits witnesses while none is set (the unsigned form)."""

    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0
    version: int = 2

    def _unsigned(self) -> bytes:
        """Inputs and outputs without witnesses, between version and locktime (what the txid hashes)."""
        ins = b"".join(i.outpoint() + varint(len(i.script_sig)) + i.script_sig + i.sequence.to_bytes(4, "little")
                       for i in self.inputs)
        outs = b"".join(o.serialize() for o in self.outputs)
        return varint(len(self.inputs)) + ins + varint(len(self.outputs)) + outs

    def serialize(self) -> bytes:
        """The transaction's bytes (segwit form when any input has a witness)."""
        version, locktime = self.version.to_bytes(4, "little"), self.locktime.to_bytes(4, "little")
        if not any(i.witness for i in self.inputs):
            return version + self._unsigned() + locktime
        witnesses = b"".join(varint(len(i.witness)) + b"".join(varint(len(item)) + item for item in i.witness)
                             for i in self.inputs)
        return version + b"\x00\x01" + self._unsigned() + witnesses + locktime

    def txid(self) -> str:
        """The txid (display order)."""
        unsigned = self.version.to_bytes(4, "little") + self._unsigned() + self.locktime.to_bytes(4, "little")
        return sha256d(unsigned)[::-1].hex()

    def sighash(self, index: int, witness_script: bytes, amount_sat: int, sighash_type: int = SIGHASH_ALL) -> bytes:
        """BIP143 digest to sign for input `index`, spending a P2WSH of `witness_script` worth `amount_sat`."""
        if not 0 <= index < len(self.inputs):
            raise ValueError(f"no input {index}")
        base, anyone = sighash_type & ~SIGHASH_ANYONECANPAY, sighash_type & SIGHASH_ANYONECANPAY
        if base not in (0, SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE):
            raise ValueError(f"sighash type {sighash_type:#x} is not one")
        prevouts = _ZERO if anyone else sha256d(b"".join(i.outpoint() for i in self.inputs))
        some_outputs = base in (SIGHASH_NONE, SIGHASH_SINGLE)
        sequences = _ZERO if anyone or some_outputs else sha256d(
            b"".join(i.sequence.to_bytes(4, "little") for i in self.inputs))
        if not some_outputs:
            outputs = sha256d(b"".join(o.serialize() for o in self.outputs))
        elif base == SIGHASH_SINGLE and index < len(self.outputs):
            outputs = sha256d(self.outputs[index].serialize())
        else:
            outputs = _ZERO
        vin = self.inputs[index]
        return sha256d(self.version.to_bytes(4, "little") + prevouts + sequences + vin.outpoint()
                       + varint(len(witness_script)) + witness_script + amount_sat.to_bytes(8, "little")
                       + vin.sequence.to_bytes(4, "little") + outputs + self.locktime.to_bytes(4, "little")
                       + sighash_type.to_bytes(4, "little"))

    def with_witness(self, index: int, witness: list[bytes]) -> "Tx":
        """A copy with input `index`'s witness set."""
        inputs = list(self.inputs)
        old = inputs[index]
        inputs[index] = TxIn(old.txid, old.vout, old.sequence, tuple(witness), old.script_sig)
        return Tx(tuple(inputs), self.outputs, self.locktime, self.version)

    @classmethod
    def parse(cls, raw: bytes) -> "Tx":
        """Inverse of `serialize`."""
        try:
            return _canonical(bytes(raw))
        except ValueError:  # not the canonical form: embit's reading, as before
            pass
        t = Transaction.parse(raw)
        inputs = tuple(TxIn(i.txid.hex(), i.vout, i.sequence, tuple(i.witness.items) if i.witness else (),
                            i.script_sig.data) for i in t.vin)
        return cls(inputs, tuple(TxOut(o.value, o.script_pubkey.data) for o in t.vout), t.locktime, t.version)


def _canonical(raw: bytes) -> Tx:
    """The transaction in `raw` in the canonical form, the one `Tx.serialize` writes back byte for byte:
    minimal lengths, a segwit marker only with some witness, nothing left over; ValueError otherwise.
    (Reads past the end give short slices or IndexError; the position then ends past the end.)"""
    try:
        version, (count, at) = int.from_bytes(raw[:4], "little"), _varint_at(raw, 4)
        segwit = count == 0
        if segwit:
            if raw[at] != 1:
                raise ValueError("bad segwit flag")
            count, at = _varint_at(raw, at + 1)
        if count > len(raw):  # an input takes 41 bytes at least: do not loop over a bogus count
            raise ValueError("too many inputs")
        spends = []
        for _ in range(count):
            txid, vout = raw[at:at + 32][::-1].hex(), int.from_bytes(raw[at + 32:at + 36], "little")
            size, at = _varint_at(raw, at + 36)
            script_sig, at = raw[at:at + size], at + size
            spends.append((txid, vout, script_sig, int.from_bytes(raw[at:at + 4], "little")))
            at += 4
        count, at = _varint_at(raw, at)
        if count > len(raw):
            raise ValueError("too many outputs")
        outputs = []
        for _ in range(count):
            amount = int.from_bytes(raw[at:at + 8], "little")
            size, at = _varint_at(raw, at + 8)
            outputs.append(TxOut(amount, raw[at:at + size]))
            at += size
        witnesses: list[tuple[bytes, ...]] = [()] * len(spends)
        if segwit:
            for j in range(len(spends)):
                items, at = _varint_at(raw, at)
                if items > len(raw):
                    raise ValueError("too many witness items")
                witness = []
                for _ in range(items):
                    size, at = _varint_at(raw, at)
                    witness.append(raw[at:at + size])
                    at += size
                witnesses[j] = tuple(witness)
            if not any(witnesses):
                raise ValueError("a segwit marker without witnesses")
        locktime, at = int.from_bytes(raw[at:at + 4], "little"), at + 4
    except IndexError:
        raise ValueError("truncated") from None
    if at != len(raw):
        raise ValueError("truncated or extra bytes")
    inputs = tuple(TxIn(txid, vout, sequence, witness, script_sig)
                   for (txid, vout, script_sig, sequence), witness in zip(spends, witnesses))
    return Tx(inputs, tuple(outputs), locktime, version)


def _varint_at(raw: bytes, at: int) -> tuple[int, int]:
    """The minimal CompactSize at `at`, and the position after it."""
    first = raw[at]
    if first < 0xFD:
        return first, at + 1
    size = 1 << (first - 0xFC)
    n = int.from_bytes(raw[at + 1:at + 1 + size], "little")
    if n < (0xFD, 0x10000, 0x100000000)[first - 0xFD]:
        raise ValueError("non-minimal length")
    return n, at + 1 + size


def varint(n: int) -> bytes:
    """Bitcoin's CompactSize: a length or count as transactions carry it."""
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def sha256d(data: bytes) -> bytes:
    """SHA256(SHA256(data)): txids and BIP143 digests."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def sha256(data: bytes) -> bytes:
    """SHA256."""
    return hashlib.sha256(data).digest()


def hash160_of_sha256(data: bytes) -> bytes:
    """RIPEMD160(SHA256(data)), as HTLC scripts commit to keys."""
    return ripemd160(sha256(data))


def p2wsh(witness_script: bytes) -> bytes:
    """The scriptPubKey paying to a witness script."""
    return b"\x00\x20" + sha256(witness_script)


def p2wpkh(pubkey: bytes) -> bytes:
    """The scriptPubKey paying to a compressed public key."""
    return b"\x00\x14" + hash160_of_sha256(pubkey)


def der_with_sighash(der_sig: bytes, sighash_type: int) -> bytes:
    """A witness signature: DER followed by its sighash byte."""
    return der_sig + bytes([sighash_type])


SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def der_to_compact(der_sig: bytes) -> bytes:
    """A DER signature as BOLT's 64-byte `signature` (r || s)."""
    return serialize_compact(der_to_cdata(der_sig))


def compact_to_der(sig64: bytes) -> bytes:
    """BOLT's 64-byte `signature` as DER (without a sighash byte)."""
    if len(sig64) != 64:
        raise ValueError("a signature is 64 bytes")
    return cdata_to_der(deserialize_compact(sig64))


def verify(pubkey: bytes | coincurve.PublicKey, sig64: bytes, digest: bytes) -> bool:
    """Whether a 64-byte signature is valid for `digest` and low-S (BOLT-2 refuses high-S signatures);
    `pubkey` compressed, or parsed once (coincurve) to check the signatures of many HTLCs."""
    if len(sig64) != 64 or int.from_bytes(sig64[32:], "big") > SECP256K1_ORDER // 2:
        return False
    try:
        key = pubkey if isinstance(pubkey, coincurve.PublicKey) else coincurve.PublicKey(pubkey)
        return key.verify(compact_to_der(sig64), digest, hasher=None)
    except ValueError:
        return False
