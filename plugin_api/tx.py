"""Bitcoin transactions for channel code: the one place that serializes them and computes BIP143 sighashes.

A thin typed layer over embit (which the wallet uses too), so channel code never spells byte layouts.
Txids are hex strings in display order (as block explorers and `ChainClient` show them).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import coincurve
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact

from embit.hashes import ripemd160
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

SIGHASH_ALL = 0x01
SIGHASH_SINGLE_ANYONECANPAY = 0x83


@dataclass(frozen=True)
class TxIn:
    """An input: the outpoint it spends, its nSequence, its witness (empty while unsigned) and scriptSig
    (empty for the segwit spends channels make)."""

    txid: str
    vout: int
    sequence: int = 0xFFFFFFFF
    witness: tuple[bytes, ...] = ()
    script_sig: bytes = b""


@dataclass(frozen=True)
class TxOut:
    """An output: amount in satoshis and scriptPubKey."""

    amount_sat: int
    script_pubkey: bytes


@dataclass(frozen=True)
class Tx:
    """A transaction; `serialize()` omits witnesses while none is set (the unsigned form)."""

    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0
    version: int = 2

    def _embit(self) -> Transaction:
        vin = [TransactionInput(bytes.fromhex(i.txid), i.vout, Script(i.script_sig), i.sequence)
               for i in self.inputs]
        for e, i in zip(vin, self.inputs):
            if i.witness:
                e.witness = Witness(list(i.witness))
        vout = [TransactionOutput(o.amount_sat, Script(o.script_pubkey)) for o in self.outputs]
        return Transaction(version=self.version, vin=vin, vout=vout, locktime=self.locktime)

    def serialize(self) -> bytes:
        """The transaction's bytes (segwit form when any input has a witness)."""
        return self._embit().serialize()

    def txid(self) -> str:
        """The txid (display order)."""
        return self._embit().txid().hex()

    def sighash(self, index: int, witness_script: bytes, amount_sat: int, sighash_type: int = SIGHASH_ALL) -> bytes:
        """BIP143 digest to sign for input `index`, spending a P2WSH of `witness_script` worth `amount_sat`."""
        return self._embit().sighash_segwit(index, Script(witness_script), amount_sat, sighash_type)

    def with_witness(self, index: int, witness: list[bytes]) -> "Tx":
        """A copy with input `index`'s witness set."""
        inputs = list(self.inputs)
        old = inputs[index]
        inputs[index] = TxIn(old.txid, old.vout, old.sequence, tuple(witness), old.script_sig)
        return Tx(tuple(inputs), self.outputs, self.locktime, self.version)

    @classmethod
    def parse(cls, raw: bytes) -> "Tx":
        """Inverse of `serialize`."""
        t = Transaction.parse(raw)
        inputs = tuple(TxIn(i.txid.hex(), i.vout, i.sequence, tuple(i.witness.items) if i.witness else (),
                            i.script_sig.data) for i in t.vin)
        return cls(inputs, tuple(TxOut(o.value, o.script_pubkey.data) for o in t.vout), t.locktime, t.version)


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


def verify(pubkey: bytes, sig64: bytes, digest: bytes) -> bool:
    """Whether a 64-byte signature is valid for `digest` and low-S (BOLT-2 refuses high-S signatures)."""
    if len(sig64) != 64 or int.from_bytes(sig64[32:], "big") > SECP256K1_ORDER // 2:
        return False
    try:
        return coincurve.PublicKey(pubkey).verify(compact_to_der(sig64), digest, hasher=None)
    except ValueError:
        return False
