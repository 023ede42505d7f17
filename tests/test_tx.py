"""lnp_plugin_api.tx writes transactions, txids and BIP143 digests itself: they must be embit's, byte for
byte, on every shape channel code builds (varint boundaries, witnesses, every sighash type); and reading
gives what embit's reading gave, for canonical bytes and for anything else."""
from __future__ import annotations

import random

import pytest
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from lnp_plugin_api.tx import Tx, TxIn, TxOut, varint

SIGHASH_TYPES = (0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83)


def embit_of(tx: Tx) -> Transaction:
    """The same transaction as embit's object (the reference)."""
    vin = [TransactionInput(bytes.fromhex(i.txid), i.vout, Script(i.script_sig), i.sequence) for i in tx.inputs]
    for e, i in zip(vin, tx.inputs):
        if i.witness:
            e.witness = Witness(list(i.witness))
    vout = [TransactionOutput(o.amount_sat, Script(o.script_pubkey)) for o in tx.outputs]
    return Transaction(version=tx.version, vin=vin, vout=vout, locktime=tx.locktime)


def embit_parse(raw: bytes) -> Tx:
    """What `Tx.parse` gave when embit read every transaction."""
    t = Transaction.parse(raw)
    inputs = tuple(TxIn(i.txid.hex(), i.vout, i.sequence, tuple(i.witness.items) if i.witness else (),
                        i.script_sig.data) for i in t.vin)
    return Tx(inputs, tuple(TxOut(o.value, o.script_pubkey.data) for o in t.vout), t.locktime, t.version)


def outcome(read, raw: bytes) -> object:
    try:
        return read(raw)
    except Exception as e:  # the same failure, of the same type
        return type(e)


def random_tx(rng: random.Random, outputs: int, witnesses: bool) -> Tx:
    sizes = (0, 1, 22, 34, 75, 252, 253, 254, 300, 0x10000)
    inputs = tuple(TxIn(rng.randbytes(32).hex(), rng.choice((0, 1, 255, 0xFFFFFFFF)), rng.getrandbits(32),
                        tuple(rng.randbytes(rng.choice(sizes[:-1])) for _ in range(rng.randrange(5))) if witnesses
                        else (), rng.randbytes(rng.choice((0, 0, 1, 107)))) for _ in range(rng.randint(1, 3)))
    outs = tuple(TxOut(rng.choice((0, 330, 2**63 - 1, rng.getrandbits(40))), rng.randbytes(rng.choice(sizes)))
                 for _ in range(outputs))
    return Tx(inputs, outs, rng.getrandbits(32), rng.choice((1, 2, 0xFFFFFFFF)))


@pytest.mark.parametrize("outputs", [0, 1, 3, 252, 253, 300])
@pytest.mark.parametrize("witnesses", [False, True])
def test_bytes_txid_and_digests_are_embits(outputs: int, witnesses: bool) -> None:
    rng = random.Random(outputs * 2 + witnesses)
    for _ in range(3):
        tx = random_tx(rng, outputs, witnesses)
        reference = embit_of(tx)
        raw = tx.serialize()
        assert raw == reference.serialize()
        assert tx.txid() == reference.txid().hex()
        script = rng.randbytes(rng.choice((71, 140, 253)))
        for index in range(len(tx.inputs)):
            for flag in SIGHASH_TYPES:
                assert tx.sighash(index, script, 12_345, flag) == \
                    reference.sighash_segwit(index, Script(script), 12_345, flag), (index, flag)
        assert Tx.parse(raw) == tx == embit_parse(raw)


def test_reading_anything_gives_what_embit_gave() -> None:
    """Bytes changed, dropped or added anywhere; non-minimal lengths; a segwit marker without witnesses."""
    rng = random.Random(7)
    tx = random_tx(rng, 3, True)
    unsigned = Tx(tuple(TxIn(i.txid, i.vout, i.sequence, (), i.script_sig) for i in tx.inputs), tx.outputs,
                  tx.locktime, tx.version)
    cases = []
    for raw in (tx.serialize(), unsigned.serialize()):
        cases += [raw[:i] + bytes([v]) + raw[i + 1:] for i in range(len(raw)) for v in (0, 1, 0xFD, 0xFF)]
        cases += [raw[:i] for i in range(len(raw))] + [raw + b"\x00", raw[:-4] + b"\x00" + raw[-4:]]
    raw = unsigned.serialize()
    at = raw.index(varint(len(tx.outputs)) + tx.outputs[0].amount_sat.to_bytes(8, "little"))
    cases.append(raw[:at] + b"\xfd" + len(tx.outputs).to_bytes(2, "little") + raw[at + 1:])  # non-minimal count
    empty = b"".join(b"\x00" for _ in tx.inputs)  # the marker, and no witness for any input
    cases.append(raw[:4] + b"\x00\x01" + raw[4:-4] + empty + raw[-4:])
    read = 0
    for case in cases:
        got = outcome(Tx.parse, case)
        assert got == outcome(embit_parse, case), case.hex()
        read += isinstance(got, Tx)
    assert 0 < read < len(cases)
    assert isinstance(outcome(Tx.parse, cases[-1]), Tx) and isinstance(outcome(Tx.parse, cases[-2]), Tx)


def test_varint_boundaries() -> None:
    for n, encoded in ((0, "00"), (252, "fc"), (253, "fdfd00"), (0xFFFF, "fdffff"), (0x10000, "fe00000100"),
                       (0xFFFFFFFF, "feffffffff"), (0x100000000, "ff0000000001000000")):
        assert varint(n).hex() == encoded


def test_verify_takes_a_key_parsed_once() -> None:
    """The same answers with the key as bytes or parsed: valid, another digest, high S."""
    import coincurve

    from lnp_plugin_api.tx import SECP256K1_ORDER, der_to_compact, verify
    key = coincurve.PrivateKey(b"\x07" * 32)
    digest = bytes(range(32))
    sig = der_to_compact(key.sign(digest, hasher=None))
    high = sig[:32] + (SECP256K1_ORDER - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    pub = key.public_key.format()
    for case, good in (((sig, digest), True), ((sig, bytes(32)), False), ((high, digest), False)):
        assert verify(pub, *case) is good and verify(coincurve.PublicKey(pub), *case) is good
