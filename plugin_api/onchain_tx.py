"""BOLT-5 transaction builders: sweeps, HTLC claims, penalties, second-stage HTLC and anchor transactions.

Pure code. channeld builds an unsigned `Sweep` from a `BuiltCommitment`'s output descriptors, asks the
signer (signd) for one signature per input (`Sweep.sign_requests()`: the BIP143 digest, the sighash type,
and the `KeyRef` naming which basepoint and which tweak derive the key), then `Sweep.finalize(signatures)`
assembles the witnesses. Nothing here holds a private key.

Fees: every builder takes a feerate (sat per 1000 weight units) and computes the weight exactly from the
witness each input will carry (signatures counted at their maximum, 73 bytes with the sighash byte, as
BOLT-5's Appendix A does), so the fee is never short of the feerate.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from embit.ec import PublicKey
from embit.psbt import PSBT, DerivationPath
from embit.script import Script
from embit.transaction import Transaction, TransactionOutput

from .channel import KeyRef, OutputDescriptor, SecondStage, Side, SpendPath
from .commitment import BuiltCommitment, BuiltOutput, BuiltSecondStage
from .tx import (SIGHASH_ALL, Tx, TxIn, TxOut, compact_to_der, der_with_sighash, hash160_of_sha256, p2wpkh, p2wsh)

MAX_SIG = 73            # DER signature with its sighash byte, at its largest
RBF = 0xFFFFFFFD        # not final (lets nLockTime apply) and replaceable
ANCHOR_CSV = 16


class Uneconomical(ValueError):
    """The fee at the requested feerate leaves an output below the dust limit: spend it later or batched."""


@dataclass(frozen=True)
class SweepInput:
    """One input of a sweep: the output it spends, by which path, and what the signer needs.

    `per_commitment_point` is the point of the commitment the output belongs to (for `per_commitment`
    tweaks); `revocation_secret` is the revoked commitment's per-commitment secret (for the `revocation`
    tweak; the peer revealed it, it is not ours). A second-stage HTLC input carries the peer's
    `remote_sig` (64 bytes) and `remote_sighash_type`. `wallet_pubkey` marks a wallet (P2WPKH) input
    adding fees, signed by the wallet rather than signd (its `path.key` is None).
    """

    txid: str
    vout: int
    amount_sat: int
    descriptor: OutputDescriptor
    path: SpendPath
    sequence: int
    per_commitment_point: bytes | None = None
    revocation_secret: bytes | None = field(default=None, repr=False)
    remote_sig: bytes | None = None
    remote_sighash_type: int = SIGHASH_ALL
    preimage: bytes | None = field(default=None, repr=False)
    wallet_pubkey: bytes | None = None
    commitment_number: int | None = None          # of the commitment the output belongs to (signd checks it)
    wallet_path: tuple[int, int] | None = None     # a wallet input's (branch, index), for the wallet's PSBT

    @property
    def script_code(self) -> bytes:
        """What BIP143 commits to: the witness script, or P2PKH's script for a P2WPKH output."""
        if self.descriptor.witness_script is not None:
            return self.descriptor.witness_script
        pub = self.wallet_pubkey if self.wallet_pubkey is not None else self.path.key.pubkey  # type: ignore
        return b"\x76\xa9\x14" + hash160_of_sha256(pub) + b"\x88\xac"

    def witness_size(self) -> int:
        """Expected serialized witness size of this input (item count, lengths, items)."""
        if self.remote_sig is not None:           # 0 <remotesig> <localsig> <preimage or empty> script
            items = [0, MAX_SIG, MAX_SIG, 32 if self.path.name == "htlc_success" else 0]
        else:
            items = [_item_size(i) for i in self.path.witness]
        if self.descriptor.witness_script is not None:
            items.append(len(self.descriptor.witness_script))
        return _varint_len(len(items)) + sum(_varint_len(n) + n for n in items)


def _item_size(item: bytes | str) -> int:
    if isinstance(item, bytes):
        return len(item)
    return {"sig": MAX_SIG, "preimage": 32, "revocation_pubkey": 33, "pubkey": 33}[item]


def _varint_len(n: int) -> int:
    return 1 if n < 0xFD else 3


@dataclass(frozen=True)
class SignRequest:
    """What the signer signs for one input: `digest` with the key `key` names (None: a wallet input, or
    an anchor anyone may spend), for the spend path `path` of the output `txid:vout` worth `amount_sat`.

    The rest is what signd takes (`Signer.sign_input`) to check the spend on its own and recompute the
    digest itself (it never signs the caller's digest): the unsigned `tx`, the output's `witness_script`,
    the `commitment_number` it belongs to, and per output of `tx` the wallet key (branch, index) it pays
    (None: not a wallet output, e.g. an HTLC transaction's own output)."""

    index: int
    digest: bytes
    sighash_type: int
    key: KeyRef | None
    per_commitment_point: bytes | None
    revocation_secret: bytes | None = field(default=None, repr=False)
    path: str = ""
    txid: str = ""
    vout: int = 0
    amount_sat: int = 0
    tx: bytes = b""
    witness_script: bytes | None = None
    commitment_number: int | None = None
    wallet_outputs: tuple[tuple[int, int] | None, ...] = ()
    preimage: bytes | None = field(default=None, repr=False)   # a claim by preimage: signd checks it is known


@dataclass(frozen=True)
class Sweep:
    """An unsigned resolving transaction: `kind` (to_local, htlc_timeout, htlc_success, penalty, ...),
    its inputs as `SweepInput`s in order, weight and fee."""

    kind: str
    tx: Tx
    inputs: tuple[SweepInput, ...]
    weight: int
    fee_sat: int
    output_paths: tuple[tuple[int, int] | None, ...] = ()  # per output: the wallet key (branch, index) it pays

    @property
    def txid(self) -> str:
        """The txid (segwit: known before signing)."""
        return self.tx.txid()

    def sign_requests(self) -> list[SignRequest]:
        """One request per input, in order. Our signature on a second-stage input is SIGHASH_ALL."""
        raw = self.tx.serialize()
        paths = self.output_paths or (None,) * len(self.tx.outputs)
        return [SignRequest(i, self.tx.sighash(i, inp.script_code, inp.amount_sat, SIGHASH_ALL), SIGHASH_ALL,
                            inp.path.key, inp.per_commitment_point, inp.revocation_secret, inp.path.name,
                            inp.txid, inp.vout, inp.amount_sat, raw, inp.descriptor.witness_script,
                            inp.commitment_number, paths, inp.preimage)
                for i, inp in enumerate(self.inputs)]

    def wallet_psbt(self, fingerprint: bytes, account: Sequence[int]) -> str:
        """The sweep as a base64 PSBT for the wallet's signer (`signd.sign_wallet_psbt`): every input's
        UTXO, the derivation (`account` + [branch, index]) of each wallet input and wallet output, so the
        wallet path signs its own fee inputs and signs nothing else."""
        psbt = PSBT(Transaction.parse(self.tx.serialize()))
        for inp, txin in zip(self.inputs, psbt.inputs):
            script = p2wpkh(inp.wallet_pubkey) if inp.wallet_pubkey is not None else \
                p2wsh(inp.descriptor.witness_script or b"")
            txin.witness_utxo = TransactionOutput(inp.amount_sat, Script(script))
            if inp.wallet_pubkey is not None and inp.wallet_path is not None:
                txin.bip32_derivations[PublicKey.parse(inp.wallet_pubkey)] = DerivationPath(
                    fingerprint, [*account, *inp.wallet_path])
        return psbt.to_string()

    def wallet_signatures(self, signed_psbt: str) -> dict[int, bytes]:
        """Input index -> DER signature (no sighash byte) of each wallet input in a PSBT the wallet signed."""
        psbt = PSBT.from_string(signed_psbt)
        if psbt.tx.txid().hex() != self.txid:
            raise ValueError("the signed PSBT is not this sweep")
        found = {}
        for i, inp in enumerate(self.inputs):
            if inp.wallet_pubkey is None:
                continue
            for pub, sig in psbt.inputs[i].partial_sigs.items():
                if pub.sec() == inp.wallet_pubkey:
                    if sig[-1] != SIGHASH_ALL:
                        raise ValueError(f"input {i}: the wallet signed with another sighash type")
                    found[i] = sig[:-1]
        return found

    def finalize(self, signatures: Sequence[bytes], preimages: Mapping[int, bytes] | None = None,
                 compact: bool = False) -> Tx:
        """The signed transaction from one signature per input, in input order: DER without the sighash
        byte, or with `compact` BOLT's 64-byte form (b"" for an input that needs none). `preimages` gives
        per input index the preimage when the input does not carry it."""
        if len(signatures) != len(self.inputs):
            raise ValueError(f"{len(signatures)} signatures for {len(self.inputs)} inputs")
        if compact:
            signatures = [compact_to_der(s) if s else s for s in signatures]
        tx = self.tx
        for i, (inp, sig) in enumerate(zip(self.inputs, signatures)):
            tx = tx.with_witness(i, input_witness(inp, sig, (preimages or {}).get(i, inp.preimage)))
        return tx


def input_witness(inp: SweepInput, der_sig: bytes, preimage: bytes | None = None) -> list[bytes]:
    """The witness of one sweep input from our DER signature (SIGHASH_ALL)."""
    sig = der_with_sighash(der_sig, SIGHASH_ALL)
    if inp.remote_sig is not None:
        theirs = der_with_sighash(compact_to_der(inp.remote_sig), inp.remote_sighash_type)
        if inp.path.name == "htlc_success" and preimage is None:
            raise ValueError("HTLC-success needs the preimage")
        return [b"", theirs, sig, preimage if inp.path.name == "htlc_success" else b"",
                inp.descriptor.witness_script or b""]
    if inp.wallet_pubkey is not None:
        return [sig, inp.wallet_pubkey]
    values: dict[str, bytes] = {"sig": sig}
    if "preimage" in inp.path.witness:
        if preimage is None:
            raise ValueError("this path needs the payment preimage")
        values["preimage"] = preimage
    if "revocation_pubkey" in inp.path.witness:
        values["revocation_pubkey"] = inp.path.key.pubkey  # type: ignore[union-attr]
    items = [values[i] if isinstance(i, str) else i for i in inp.path.witness]
    return items + ([inp.descriptor.witness_script] if inp.descriptor.witness_script is not None else [])


def tx_weight(tx: Tx, inputs: Sequence[SweepInput]) -> int:
    """Weight of `tx` once signed: 4 x its size without witnesses, plus marker, flag and the witnesses."""
    return 4 * len(tx.serialize()) + 2 + sum(i.witness_size() for i in inputs)


def sequence_for(path: SpendPath) -> int:
    """nSequence for a path: its CSV delay, else not final (so a CLTV locktime applies; RBF allowed)."""
    return path.csv if path.csv else RBF


def path_named(desc: OutputDescriptor, name: str) -> SpendPath:
    """The descriptor's spend path called `name`."""
    for p in desc.paths:
        if p.name == name:
            return p
    raise ValueError(f"{desc.kind} output has no {name!r} path")


def output_input(commitment_txid: str, out: BuiltOutput, path_name: str, per_commitment_point: bytes,
                 revocation_secret: bytes | None = None, preimage: bytes | None = None,
                 commitment_number: int | None = None) -> SweepInput:
    """A `SweepInput` spending a commitment output by the path `path_name` (delayed, revocation,
    payment, preimage, timeout, anchor, anyone). signd needs `commitment_number` for `delayed` (our
    commitment) and `revocation` (their revoked one): `commitment_input` fills it in."""
    if out.descriptor is None:
        raise ValueError(f"output {out.index} has no descriptor")
    path = path_named(out.descriptor, path_name)
    return SweepInput(commitment_txid, out.index, out.amount_sat, out.descriptor, path, sequence_for(path),
                      per_commitment_point, revocation_secret, preimage=preimage, commitment_number=commitment_number)


def commitment_input(built: BuiltCommitment, output_index: int, path_name: str,
                     revocation_secret: bytes | None = None, preimage: bytes | None = None) -> SweepInput:
    """`output_input` for output `output_index` of `built`, with its txid, point and number."""
    return output_input(built.txid, built.outputs[output_index], path_name, built.keys.per_commitment_point,
                        revocation_secret, preimage, built.number)


def stage_output_input(stage_txid: str, stage: BuiltSecondStage, path_name: str, per_commitment_point: bytes,
                       revocation_secret: bytes | None = None, vout: int = 0,
                       commitment_number: int | None = None) -> SweepInput:
    """A `SweepInput` spending the output of an HTLC-success/timeout transaction (delayed or revocation):
    output 0 of ours, output `vout` of a peer's that batched several (the index of its input).
    `commitment_number`: of the commitment the HTLC transaction spent (signd needs it)."""
    return second_stage_input(stage_txid, vout, stage.stage.amount_sat, stage.stage, path_name, per_commitment_point,
                              revocation_secret, commitment_number)


def second_stage_input(txid: str, vout: int, amount_sat: int, st: SecondStage, path_name: str,
                       per_commitment_point: bytes, revocation_secret: bytes | None = None,
                       commitment_number: int | None = None) -> SweepInput:
    """A `SweepInput` spending output `vout` (worth `amount_sat`, as seen on chain) of an HTLC transaction
    described by `st` (an HTLC output descriptor's `second_stage`): e.g. a cheater's HTLC-success/timeout
    taken by `revocation`."""
    desc = OutputDescriptor(f"{st.kind}_output", "htlcs", st.witness_script, st.paths)
    path = path_named(desc, path_name)
    return SweepInput(txid, vout, amount_sat, desc, path, sequence_for(path), per_commitment_point,
                      revocation_secret, commitment_number=commitment_number)


def wallet_input(txid: str, vout: int, amount_sat: int, pubkey: bytes,
                 path: tuple[int, int] | None = None) -> SweepInput:
    """A P2WPKH wallet coin adding fees (HTLC transactions with anchors, anchor CPFP); the wallet signs it
    (`Sweep.wallet_psbt`, which needs its `path`, (branch, index) of the wallet account)."""
    desc = OutputDescriptor("wallet", "wallet", None, ())
    spend = SpendPath("wallet", Side.LOCAL, None, ("sig", "pubkey"))
    return SweepInput(txid, vout, amount_sat, desc, spend, RBF, wallet_pubkey=pubkey, wallet_path=path)


def input_weight(inp: SweepInput) -> int:
    """The weight one more input adds to a transaction: outpoint, empty scriptSig, nSequence, witness."""
    return 4 * (36 + 1 + 4) + inp.witness_size()


def economical(inputs: Sequence[SweepInput], feerate_per_kw: int) -> tuple[list[SweepInput], list[SweepInput]]:
    """Split `inputs` into those worth more than the fee their own weight costs at `feerate_per_kw`, and
    the others (leave them for a lower feerate, or for ever: a penalty that includes them loses money)."""
    keep = [i for i in inputs if i.amount_sat > feerate_per_kw * input_weight(i) // 1000]
    return keep, [i for i in inputs if i not in keep]


def sweep(kind: str, inputs: Sequence[SweepInput], destination: bytes, feerate_per_kw: int,
          dust_limit_sat: int = 330, locktime: int = 0, destination_path: tuple[int, int] | None = None) -> Sweep:
    """Spend `inputs` to one output paying `destination` (the wallet's script of key `destination_path`,
    (branch, index), which signd checks), less the fee at `feerate_per_kw`. The locktime is at least every
    input's CLTV. Raises `Uneconomical` if what is left would be below `dust_limit_sat`."""
    if not inputs:
        raise ValueError("nothing to sweep")
    locktime = max([locktime] + [i.path.cltv for i in inputs])
    txins = tuple(TxIn(i.txid, i.vout, i.sequence) for i in inputs)
    total = sum(i.amount_sat for i in inputs)
    draft = Tx(txins, (TxOut(total, destination),), locktime)
    weight = tx_weight(draft, inputs)
    fee = feerate_per_kw * weight // 1000
    if total - fee < dust_limit_sat:
        raise Uneconomical(f"{kind}: {total} sat less a {fee} sat fee is below the dust limit {dust_limit_sat}")
    return Sweep(kind, replace(draft, outputs=(TxOut(total - fee, destination),)), tuple(inputs), weight, fee,
                 (destination_path,))


def htlc_transaction(built: BuiltCommitment, stage: BuiltSecondStage, remote_sig: bytes,
                     preimage: bytes | None = None, fee_inputs: Sequence[SweepInput] = (),
                     change: bytes | None = None, feerate_per_kw: int = 0,
                     dust_limit_sat: int = 330, change_path: tuple[int, int] | None = None) -> Sweep:
    """Our HTLC-timeout or HTLC-success transaction (our commitment on chain), with the peer's
    `remote_sig` from its commitment_signed. Without anchors it is complete as pre-signed (the fee was
    taken from the HTLC amount). With anchors it carries no fee: give wallet `fee_inputs` and a `change`
    script (the wallet key `change_path`); the HTLC input and its output stay first (the peer's
    SIGHASH_SINGLE|ANYONECANPAY signature covers only them) and the change gets the wallet amount less
    the fee at `feerate_per_kw`."""
    st = stage.stage
    out = built.outputs[stage.output_index]
    assert out.descriptor is not None
    owner = built.owner
    key = KeyRef(owner, "htlc", "per_commitment", built.keys.owner_htlc_pubkey)
    path = SpendPath(st.kind, owner, key, (), csv=st.sequence, cltv=st.locktime)
    first = SweepInput(built.txid, stage.output_index, out.amount_sat, out.descriptor, path, st.sequence,
                       built.keys.per_commitment_point, remote_sig=remote_sig,
                       remote_sighash_type=st.remote_sighash, preimage=preimage, commitment_number=built.number)
    if st.kind == "htlc_success" and preimage is None:
        raise ValueError("HTLC-success needs the preimage")
    inputs = (first, *fee_inputs)
    if not fee_inputs:
        return Sweep(st.kind, stage.tx, inputs, tx_weight(stage.tx, inputs), out.amount_sat - st.amount_sat)
    if st.remote_sighash == SIGHASH_ALL:
        raise ValueError("without anchors the peer's signature covers the whole transaction: no fee inputs")
    if change is None:
        raise ValueError("fee inputs need a change script")
    txins = stage.tx.inputs + tuple(TxIn(i.txid, i.vout, i.sequence) for i in fee_inputs)
    extra = sum(i.amount_sat for i in fee_inputs)
    draft = Tx(txins, stage.tx.outputs + (TxOut(extra, change),), stage.tx.locktime)
    weight = tx_weight(draft, inputs)
    fee = feerate_per_kw * weight // 1000 + (out.amount_sat - st.amount_sat)
    left = extra - (fee - (out.amount_sat - st.amount_sat))
    if left < dust_limit_sat:
        raise Uneconomical(f"{st.kind}: fee inputs of {extra} sat do not cover a {fee} sat fee")
    return Sweep(st.kind, replace(draft, outputs=stage.tx.outputs + (TxOut(left, change),)), inputs, weight, fee,
                 (None, change_path))


def anchor_cpfp(built: BuiltCommitment, side: Side, fee_inputs: Sequence[SweepInput], destination: bytes,
                feerate_per_kw: int, parent_weight: int = 0, parent_fee_sat: int = 0,
                dust_limit_sat: int = 330, destination_path: tuple[int, int] | None = None) -> Sweep:
    """Spend `side`'s anchor of a commitment with wallet `fee_inputs` (a CPFP child): the child pays for
    itself at `feerate_per_kw` plus what the parent (`parent_weight`, paying `parent_fee_sat`) lacks."""
    out = next((o for o in built.outputs if o.descriptor is not None and o.descriptor.kind == "anchor"
                and o.descriptor.data.get("side") == side.value), None)
    if out is None:
        raise ValueError(f"the commitment has no {side.value} anchor (that side has no output)")
    anchor = output_input(built.txid, out, "anchor", built.keys.per_commitment_point, commitment_number=built.number)
    inputs = (anchor, *fee_inputs)
    txins = tuple(TxIn(i.txid, i.vout, i.sequence) for i in inputs)
    total = sum(i.amount_sat for i in inputs)
    draft = Tx(txins, (TxOut(total, destination),))
    weight = tx_weight(draft, inputs)
    fee = max(0, feerate_per_kw * (weight + parent_weight) // 1000 - parent_fee_sat)
    if total - fee < dust_limit_sat:
        raise Uneconomical(f"anchor CPFP: {total} sat do not cover a {fee} sat fee")
    return Sweep("anchor", replace(draft, outputs=(TxOut(total - fee, destination),)), inputs, weight, fee,
                 (destination_path,))


def anyone_anchor_input(commitment_txid: str, out: BuiltOutput) -> SweepInput:
    """An anchor anyone may spend 16 blocks after its commitment confirmed (no key: its signature in
    `finalize` is ignored, pass b""). 330 sat pay for little: add it to a sweep that has other inputs."""
    assert out.descriptor is not None
    path = path_named(out.descriptor, "anyone")
    return SweepInput(commitment_txid, out.index, out.amount_sat, out.descriptor, path, ANCHOR_CSV)
