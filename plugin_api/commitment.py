"""Building a commitment through the extension pipeline, with its HTLC transactions and sighashes; and the
closing transaction.

`build_commitment(params, spec, owner, number, per_commitment_point, extensions)` returns a `BuiltCommitment`:
the unsigned transaction, its outputs with their BOLT-5 descriptors, the second-stage (HTLC-success/timeout)
transactions in output order (the order of `htlc_signatures` in commitment_signed), and the BIP143 sighashes
to sign. Signing happens in signd; `signed_commitment`/`signed_second_stage` put signatures into witnesses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from . import bolt3
from .channel import (ChannelExtension, ChannelParams, CommitmentSpec, OutputDescriptor, SecondStage, Side,
                      SpendPath, TxDraft)
from .channel_fees import fee_for_weight
from .tx import SIGHASH_ALL, Tx, TxIn, TxOut, der_with_sighash, p2wsh, verify


@dataclass(frozen=True)
class CommitmentKeys:
    """The keys of `owner`'s commitment at one per-commitment point (BOLT-3 "Key Derivation")."""

    owner: Side
    per_commitment_point: bytes
    revocation_pubkey: bytes      # the other side can spend with it once this commitment is revoked
    owner_delayed_pubkey: bytes
    owner_htlc_pubkey: bytes
    other_htlc_pubkey: bytes
    other_payment_pubkey: bytes   # static_remotekey: the other side's payment_basepoint itself
    owner_funding_pubkey: bytes
    other_funding_pubkey: bytes

    @classmethod
    def derive(cls, params: ChannelParams, owner: Side, per_commitment_point: bytes) -> "CommitmentKeys":
        """Derive every key from the basepoints and the owner's per-commitment point."""
        mine, theirs = params.side(owner), params.side(owner.other)
        pcp = per_commitment_point
        return cls(owner, pcp,
                   bolt3.derive_revocation_pubkey(theirs.basepoints.revocation, pcp),
                   bolt3.derive_pubkey(mine.basepoints.delayed_payment, pcp),
                   bolt3.derive_pubkey(mine.basepoints.htlc, pcp),
                   bolt3.derive_pubkey(theirs.basepoints.htlc, pcp),
                   theirs.basepoints.payment,
                   mine.funding_pubkey, theirs.funding_pubkey)


def funding_script(params: ChannelParams) -> bytes:
    """The funding output's witness script."""
    return bolt3.funding_script(params.local.funding_pubkey, params.remote.funding_pubkey)


def obscured_number(params: ChannelParams, number: int) -> int:
    """The commitment number XOR the channel's obscuring factor (opener's payment basepoint first)."""
    opener, accepter = params.side(params.opener), params.side(params.opener.other)
    return number ^ bolt3.obscuring_factor(opener.basepoints.payment, accepter.basepoints.payment)


@dataclass(frozen=True)
class BuiltOutput:
    """An output of a built commitment, at its final index."""

    index: int
    amount_sat: int
    script_pubkey: bytes
    owner: str
    descriptor: OutputDescriptor | None


@dataclass(frozen=True)
class BuiltSecondStage:
    """A second-stage transaction (HTLC-success/timeout) spending output `output_index` of the commitment."""

    output_index: int
    stage: SecondStage
    tx: Tx
    input_script: bytes           # the commitment output's witness script
    input_amount_sat: int

    def sighash(self, sighash_type: int) -> bytes:
        """BIP143 digest of this transaction's input for `sighash_type`."""
        return self.tx.sighash(0, self.input_script, self.input_amount_sat, sighash_type)

    @property
    def remote_sighash(self) -> bytes:
        """What the commitment's non-owner signs (its entry in `htlc_signatures`)."""
        return self.sighash(self.stage.remote_sighash)

    @property
    def owner_sighash(self) -> bytes:
        """What the owner signs when it goes to chain (SIGHASH_ALL)."""
        return self.sighash(SIGHASH_ALL)


@dataclass(frozen=True)
class BuiltCommitment:
    """A commitment ready to sign: unsigned tx, outputs with descriptors, second stages, sighashes, fee."""

    owner: Side
    number: int
    spec: CommitmentSpec
    keys: CommitmentKeys
    tx: Tx
    outputs: tuple[BuiltOutput, ...]
    second_stages: tuple[BuiltSecondStage, ...]
    funding_script: bytes
    funding_sat: int
    fee_sat: int

    @property
    def txid(self) -> str:
        """The commitment's txid (display order)."""
        return self.tx.txid()

    @property
    def funding_sighash(self) -> bytes:
        """The digest both sides sign for the funding input (SIGHASH_ALL)."""
        return self.tx.sighash(0, self.funding_script, self.funding_sat, SIGHASH_ALL)


def _pipeline(params: ChannelParams, spec: CommitmentSpec, owner: Side, number: int,
              extensions: Sequence[ChannelExtension], keys: CommitmentKeys | None) -> TxDraft:
    draft = TxDraft("commitment", owner, number, params, spec, keys)
    for ext in extensions:
        ext.prepare(draft)
    draft.fee_sat = fee_for_weight(spec.feerate_per_kw, draft.weight)
    amounts = {Side.LOCAL: spec.local_msat, Side.REMOTE: spec.remote_msat}
    # The opener pays the fee and the charges; what it cannot pay goes unpaid (its output is simply absent).
    amounts[params.opener] = max(0, amounts[params.opener] - (draft.fee_sat + draft.charges_sat) * 1000)
    draft.amounts_msat = amounts
    return draft


def weigh(params: ChannelParams, spec: CommitmentSpec, owner: Side,
          extensions: Sequence[ChannelExtension]) -> TxDraft:
    """Run only the `prepare` phase: weight, fee and charges of `owner`'s commitment for `spec`."""
    return _pipeline(params, spec, owner, 0, extensions, None)


def build_commitment(params: ChannelParams, spec: CommitmentSpec, owner: Side, number: int,
                     per_commitment_point: bytes, extensions: Sequence[ChannelExtension]) -> BuiltCommitment:
    """Build `owner`'s commitment number `number` for `spec` through `extensions` (in order)."""
    keys = CommitmentKeys.derive(params, owner, per_commitment_point)
    draft = _pipeline(params, spec, owner, number, extensions, keys)
    for ext in extensions:
        ext.build(draft)
    if not draft.inputs:
        raise ValueError("no extension added the funding input")
    total = sum(o.amount_sat for o in draft.outputs)
    if total > params.funding_sat:
        raise ValueError(f"outputs ({total} sat) exceed the funding ({params.funding_sat} sat)")
    tx = Tx(tuple(draft.inputs), tuple(TxOut(o.amount_sat, o.script_pubkey) for o in draft.outputs),
            draft.locktime, draft.version)
    outputs = tuple(BuiltOutput(i, o.amount_sat, o.script_pubkey, o.owner, o.descriptor)
                    for i, o in enumerate(draft.outputs))
    txid = tx.txid()
    pays_to: dict[bytes, bytes] = {}   # witness script -> P2WSH: every HTLC's second stage pays to the same one
    stages = tuple(_second_stage(txid, out, pays_to) for out in outputs
                   if out.descriptor is not None and out.descriptor.second_stage is not None)
    return BuiltCommitment(owner, number, spec, keys, tx, outputs, stages, funding_script(params),
                           params.funding_sat, params.funding_sat - total)


def _second_stage(commitment_txid: str, out: BuiltOutput, pays_to: dict[bytes, bytes]) -> BuiltSecondStage:
    desc = out.descriptor
    assert desc is not None and desc.second_stage is not None and desc.witness_script is not None
    st = desc.second_stage
    script_pubkey = pays_to.get(st.witness_script)
    if script_pubkey is None:
        script_pubkey = pays_to[st.witness_script] = p2wsh(st.witness_script)
    tx = Tx((TxIn(commitment_txid, out.index, st.sequence),), (TxOut(st.amount_sat, script_pubkey),), st.locktime)
    return BuiltSecondStage(out.index, st, tx, desc.witness_script, out.amount_sat)


def check_signatures(built: BuiltCommitment, signature: bytes, htlc_signatures: Sequence[bytes]) -> str | None:
    """BOLT-2's checks of a received commitment_signed against our commitment `built` (64-byte signatures):
    None if valid, else why not (for the warning or error to the peer)."""
    if len(htlc_signatures) != len(built.second_stages):
        return f"{len(htlc_signatures)} htlc_signatures for {len(built.second_stages)} HTLC outputs"
    if not verify(built.keys.other_funding_pubkey, signature, built.funding_sighash):
        return f"invalid commitment signature for commitment {built.number}"
    for i, (sig, stage) in enumerate(zip(htlc_signatures, built.second_stages)):
        if not verify(built.keys.other_htlc_pubkey, sig, stage.remote_sighash):
            return f"invalid htlc_signature {i} (output {stage.output_index}) for commitment {built.number}"
    return None


def funding_witness(params: ChannelParams, local_sig: bytes, remote_sig: bytes) -> list[bytes]:
    """The witness spending the funding output, from both DER signatures (SIGHASH_ALL), lesser key first."""
    return bolt3.funding_witness_of([(params.local.funding_pubkey, local_sig),
                                     (params.remote.funding_pubkey, remote_sig)])


def signed_commitment(built: BuiltCommitment, local_sig: bytes, remote_sig: bytes, params: ChannelParams) -> Tx:
    """The commitment with its funding witness."""
    return built.tx.with_witness(0, funding_witness(params, local_sig, remote_sig))


def spend_witness(descriptor: OutputDescriptor, path: SpendPath, values: Mapping[str, bytes]) -> list[bytes]:
    """The witness spending an output by `path`: its items with placeholders taken from `values` (`sig`,
    `preimage`, `revocation_pubkey`), then the witness script (none for P2WPKH)."""
    items = [values[i] if isinstance(i, str) else i for i in path.witness]
    return items + ([descriptor.witness_script] if descriptor.witness_script is not None else [])


@dataclass(frozen=True)
class BuiltClosing:
    """A closing transaction ready to sign; `output_sides` says whose each output is, in order."""

    tx: Tx
    output_sides: tuple[Side, ...]
    funding_script: bytes
    funding_sat: int

    @property
    def sighash(self) -> bytes:
        """The digest both sides sign (SIGHASH_ALL)."""
        return self.tx.sighash(0, self.funding_script, self.funding_sat, SIGHASH_ALL)


def build_closing(params: ChannelParams, local_msat: int, remote_msat: int, local_script: bytes,
                  remote_script: bytes, fee_sat: int, payer: Side, dust_limit_sat: int, locktime: int = 0,
                  sequence: int = 0xFFFFFFFF, omit: Side | None = None) -> BuiltClosing:
    """A closing transaction (BOLT-3): each balance rounded down to satoshis, the fee taken from `payer`
    (the opener for closing_signed, the closer for closing_complete), outputs below `dust_limit_sat` (the
    signer's own) removed, an OP_RETURN output worth 0, BIP69 order. `omit` drops that side's output."""
    amounts = {Side.LOCAL: local_msat // 1000, Side.REMOTE: remote_msat // 1000}
    amounts[payer] -= fee_sat
    if amounts[payer] < 0:
        raise ValueError("the payer's balance does not cover the closing fee")
    outs: list[tuple[TxOut, Side]] = []
    for side, script in ((Side.LOCAL, local_script), (Side.REMOTE, remote_script)):
        if side is omit:
            continue
        if script[:1] == b"\x6a":
            outs.append((TxOut(0, script), side))
        elif amounts[side] >= dust_limit_sat:
            outs.append((TxOut(amounts[side], script), side))
    outs.sort(key=lambda o: (o[0].amount_sat, o[0].script_pubkey))
    tx = Tx((TxIn(params.funding_txid, params.funding_output_index, sequence),), tuple(o for o, _ in outs), locktime)
    return BuiltClosing(tx, tuple(s for _, s in outs), funding_script(params), params.funding_sat)


def signed_second_stage(stage: BuiltSecondStage, remote_sig: bytes, owner_sig: bytes,
                        preimage: bytes | None = None) -> Tx:
    """An HTLC-success (with `preimage`) or HTLC-timeout transaction with its witness."""
    if (stage.stage.kind == "htlc_success") != (preimage is not None):
        raise ValueError("HTLC-success needs the preimage; HTLC-timeout takes none")
    witness = [b"", der_with_sighash(remote_sig, stage.stage.remote_sighash),
               der_with_sighash(owner_sig, SIGHASH_ALL), preimage or b"", stage.input_script]
    return stage.tx.with_witness(0, witness)
