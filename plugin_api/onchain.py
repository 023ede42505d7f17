"""BOLT-5 decisions: which transaction spent the funding output, and what to do about each of its outputs
at each block height. Pure code over chain facts; the transactions come from `lnp_plugin_api.onchain_tx`.

channeld's on-chain module calls:
- `must_force_close(spec, height, preimages)` at each block while the channel is open: an HTLC near its
  deadline makes the channel go to chain (BOLT-2 "cltv_expiry_delta Selection").
- `classify(tx, known)` when a transaction spending the funding output is seen (mempool or block):
  mutual close, our commitment, their current/next commitment, their REVOKED commitment (with its number
  and secret), a future commitment of theirs (we lost data), or unknown (warn the user).
- `plan(closing, facts)` at each block and each spend of an output: the list of `Action`s to take now or
  later (sweep this output by that path from that height, HTLC transaction, penalty, extract a preimage,
  fail or fulfill the incoming HTLC, done). It keeps no state: `facts` (confirmation height, current
  height, known preimages, which outputs were spent and how) is all it reads, so a restart or a reorg is
  handled by calling it again with the facts as they now are.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import bolt3
from .bolt3 import MAX_INDEX, Shachain
from .channel import ChannelExtension, ChannelParams, CommitmentSpec, Htlc, Side
from .commitment import BuiltCommitment, BuiltOutput, build_commitment, obscured_number
from .tx import Tx

OFFERED_GRACE = 1          # blocks after cltv_expiry before an offered HTLC forces a close (BOLT-2's G)
FULFILL_MARGIN = 18        # blocks before cltv_expiry by which a fulfilled HTLC must be on chain (2R+G+S)


# --- when to go to chain ---

def must_force_close(spec: CommitmentSpec, height: int, preimages: Mapping[bytes, bytes],
                     offered_grace: int = OFFERED_GRACE, fulfill_margin: int = FULFILL_MARGIN) -> Htlc | None:
    """The HTLC that forces the channel to chain at block `height`, if any: one we offered `offered_grace`
    blocks past its expiry (the peer neither failed nor fulfilled it), or one offered to us whose preimage we
    know (`preimages` by payment hash) within `fulfill_margin` blocks of its expiry. Check it on both
    commitments' specs."""
    for h in spec.htlcs:
        if h.offerer is Side.LOCAL and height >= h.cltv_expiry + offered_grace:
            return h
        if h.offerer is Side.REMOTE and h.payment_hash in preimages and height >= h.cltv_expiry - fulfill_margin:
            return h
    return None


# --- which transaction spent the funding output ---

@dataclass(frozen=True)
class Known:
    """What channeld knows to recognize a spend of the funding output.

    `local`: our latest commitment (the one we could broadcast). `remote`: their unrevoked commitments by
    number (the current one, and the next one while its revoke_and_ack is awaited). `revoked_specs`: the
    spec of each of their revoked commitments (what the HTLC outputs are; without it only to_local and
    to_remote are found). `secrets`: their revealed per-commitment secrets. `closing_txids`: the closing
    transactions we signed (when given, any other spend that is not a commitment is `unknown`).
    """

    params: ChannelParams
    extensions: Sequence[ChannelExtension]
    local: BuiltCommitment | None
    remote: Mapping[int, BuiltCommitment]
    revoked_specs: Mapping[int, CommitmentSpec] = field(default_factory=dict)
    secrets: Shachain = field(default_factory=Shachain)
    closing_txids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Closing:
    """A classified spend of the funding output.

    `kind`: mutual, local, remote, revoked, future (a commitment of theirs newer than any we know: we lost
    data; only to_remote is ours to take), unknown. `outputs` are the transaction's outputs we can describe
    (from `built`, matched by script to their real index and amount).
    """

    kind: str
    txid: str
    number: int | None = None
    built: BuiltCommitment | None = None
    outputs: tuple[BuiltOutput, ...] = ()
    revocation_secret: bytes | None = field(default=None, repr=False)


def commitment_number(params: ChannelParams, tx: Tx) -> int | None:
    """The commitment number hidden in a commitment's locktime and sequence, or None if `tx` does not have
    a commitment's form (upper bytes 0x20 and 0x80)."""
    if len(tx.inputs) != 1 or tx.locktime >> 24 != 0x20 or tx.inputs[0].sequence >> 24 != 0x80:
        return None
    obscured = (tx.inputs[0].sequence & 0xFFFFFF) << 24 | tx.locktime & 0xFFFFFF
    return obscured_number(params, 0) ^ obscured


def spends_funding(params: ChannelParams, tx: Tx) -> bool:
    """Whether `tx` spends the channel's funding output."""
    return any(i.txid == params.funding_txid and i.vout == params.funding_output_index for i in tx.inputs)


def classify(tx: Tx, known: Known) -> Closing:
    """Recognize a transaction spending the funding output (see `Closing`)."""
    params, txid = known.params, tx.txid()
    if not spends_funding(params, tx):
        raise ValueError("the transaction does not spend the funding output")
    if txid in known.closing_txids:
        return Closing("mutual", txid)
    number = commitment_number(params, tx)
    if number is None:
        # Not a commitment's form: a closing transaction, unless we keep the closing txids we signed and
        # it is none of them (then our funding key leaked: warn the user).
        return Closing("unknown" if known.closing_txids else "mutual", txid)
    if known.local is not None and known.local.txid == txid:
        return Closing("local", txid, number, known.local, known.local.outputs)
    remote = known.remote.get(number)
    if remote is not None and remote.txid == txid:
        return Closing("remote", txid, number, remote, remote.outputs)
    secret = known.secrets.get(MAX_INDEX - number)
    if secret is not None:
        built = _rebuild_revoked(known, number, secret, txid)
        outputs = match_outputs(tx, built)
        # Anchors look alike in every commitment; anything else proves it is theirs (not an old one of ours).
        if any(o.descriptor is not None and o.descriptor.kind != "anchor" for o in outputs):
            return Closing("revoked", txid, number, built, outputs, secret)
        return Closing("unknown", txid, number)
    if number > max(known.remote, default=-1):
        # Any keys of ours in it that need no per-commitment point: to_remote (static_remotekey).
        built = _balance_template(known, Side.REMOTE, number, bolt3.point(b"\x01" * 32))
        outs = tuple(o for o in match_outputs(tx, built) if o.descriptor and o.descriptor.kind == "to_remote")
        return Closing("future", txid, number, None, outs)
    return Closing("unknown", txid, number)


def _rebuild_revoked(known: Known, number: int, secret: bytes, txid: str) -> BuiltCommitment:
    pcp = bolt3.point(secret)
    spec = known.revoked_specs.get(number)
    if spec is not None:
        try:
            built = build_commitment(known.params, spec, Side.REMOTE, number, pcp, known.extensions)
        except ValueError:      # balances not kept (only HTLCs and feerate): the template below
            built = None
        if built is not None and built.txid == txid:
            return built
        try:
            # The HTLC outputs' scripts do not depend on the balances: found by script, at their real amounts.
            return _balance_template(known, Side.REMOTE, number, pcp, spec)
        except ValueError:
            pass
    # Without the HTLCs, the balance outputs are still found by their scripts.
    return _balance_template(known, Side.REMOTE, number, pcp)


def _balance_template(known: Known, owner: Side, number: int, pcp: bytes,
                      like: CommitmentSpec | None = None) -> BuiltCommitment:
    """A commitment with `like`'s HTLCs and feerate (none, 0: only the balance outputs) and the rest of
    the funding split in two: every output's script as in the real one (amounts aside)."""
    htlcs, feerate = (like.htlcs, like.feerate_per_kw) if like is not None else ((), 0)
    rest = known.params.funding_sat * 1000 - sum(h.amount_msat for h in htlcs)
    spec = CommitmentSpec(feerate, rest // 2, rest - rest // 2, htlcs)
    return build_commitment(known.params, spec, owner, number, pcp, known.extensions)


def match_outputs(tx: Tx, built: BuiltCommitment) -> tuple[BuiltOutput, ...]:
    """`built`'s described outputs found in `tx` by script (and amount when scripts repeat), at their real
    index and amount."""
    if tx.txid() == built.txid:
        return built.outputs
    found, used = [], set()
    for o in built.outputs:
        for i, out in enumerate(tx.outputs):
            if i not in used and out.script_pubkey == o.script_pubkey:
                used.add(i)
                found.append(BuiltOutput(i, out.amount_sat, out.script_pubkey, o.owner, o.descriptor))
                break
    return tuple(found)


# --- what to do about each output ---

@dataclass(frozen=True)
class Spent:
    """An output of the commitment (or of our/their HTLC transaction) seen spent: by which tx and which of
    its inputs (`vin`), at which height (None: in the mempool), `ours` when the spending tx is one we made,
    and that input's witness. An HTLC transaction's output for input `vin` is output `vin` (SIGHASH_SINGLE
    pairs them, so a cheater may batch several in one transaction)."""

    txid: str
    height: int | None
    ours: bool
    witness: tuple[bytes, ...] = ()
    vin: int = 0


@dataclass(frozen=True)
class Facts:
    """What the chain says now: the commitment's confirmation height (None: unconfirmed), the tip height,
    the preimages we know (by payment hash), and spends of the commitment's outputs (by output index) and
    of second-stage transactions' outputs (by that transaction's (txid, vout)))."""

    height: int
    confirmed: int | None
    preimages: Mapping[bytes, bytes] = field(default_factory=dict)
    spent: Mapping[int, Spent] = field(default_factory=dict)
    stage_spent: Mapping[tuple[str, int], Spent] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """One thing to do. `kind`:
    - `sweep`: spend commitment output `output` by `path` (`onchain_tx.output_input` + `sweep`) from block
      `not_before` (broadcast once the tip is `not_before - 1`);
    - `htlc_tx`: our HTLC-timeout/success for output `output` (`onchain_tx.htlc_transaction`);
    - `sweep_stage`: spend output `vout` of our second-stage transaction `txid` by `path`;
    - `penalty`: one transaction spending every output in `outputs` by `revocation` (and `stages`: the
      (txid, vout) of outputs of their second-stage transactions, by `revocation`);
    - `cpfp`: the commitment is unconfirmed; spend our anchor (`onchain_tx.anchor_cpfp`) if it lingers;
    - `preimage`: `preimage` was revealed on chain for `htlc`: fulfill the incoming HTLC upstream;
    - `fail_htlc`: `htlc` is timed out on chain for good: fail the incoming HTLC upstream;
    - `wait`: nothing to do on `output` until something happens (the peer's move, or expiry);
    - `done`: no transaction is left to make or wait for (it comes last, after any `preimage` or
      `fail_htlc`). `preimage` and `fail_htlc` are repeated while the facts show them: apply them
      idempotently. Forget the channel once done and every resolving transaction is 100 blocks deep.
    """

    kind: str
    output: int | None = None
    path: str | None = None
    not_before: int = 0
    htlc: Htlc | None = None
    txid: str | None = None
    outputs: tuple[int, ...] = ()
    stages: tuple[tuple[str, int], ...] = ()
    vout: int = 0
    preimage: bytes | None = field(default=None, repr=False)

    def due(self, height: int) -> bool:
        """Whether the transaction can go in the next block (the tip is `height`)."""
        return height + 1 >= self.not_before


def extract_preimage(witness: Sequence[bytes], payment_hash: bytes) -> bytes | None:
    """The preimage of `payment_hash` in a spending input's witness, if there."""
    for item in witness:
        if len(item) == 32 and hashlib.sha256(item).digest() == payment_hash:
            return item
    return None


def plan(closing: Closing, facts: Facts) -> list[Action]:
    """What to do now and next about `closing` given `facts` (see `Action`). Call it again on every block
    and every spend seen; it keeps no state of its own."""
    if closing.kind in ("mutual", "unknown"):
        return [Action("done")] if closing.kind == "mutual" else [Action("wait", path="unknown spend: warn the user")]
    if facts.confirmed is None:
        anchors = any(o.descriptor and o.descriptor.kind == "anchor" for o in closing.outputs)
        return [Action("cpfp")] if anchors and closing.kind == "local" else [Action("wait")]
    h0 = facts.confirmed
    actions: list[Action] = []
    penalty: list[int] = []
    stages: list[tuple[str, int]] = []
    built = closing.built
    for out in closing.outputs:
        desc = out.descriptor
        if desc is None:
            continue
        spent = facts.spent.get(out.index)
        kind, htlc = desc.kind, desc.htlc
        if kind not in BOLT_KINDS:
            actions += _extension_output(out, spent, closing.kind, h0, penalty)
            continue
        if closing.kind == "revoked":
            if kind == "to_remote":
                actions += _sweep_once(out, spent, "payment", h0 + _csv(desc, "payment"))
            elif kind in ("to_local", "offered_htlc", "received_htlc"):
                actions += _revoked_output(out, spent, facts, htlc, penalty, stages)
            continue
        if closing.kind in ("remote", "future"):
            if kind == "to_remote":
                actions += _sweep_once(out, spent, "payment", h0 + _csv(desc, "payment"))
            elif kind == "received_htlc" and htlc is not None:     # we offered it: time it out
                actions += _their_htlc_we_offered(out, spent, htlc, h0, facts)
            elif kind == "offered_htlc" and htlc is not None:      # they offered it: claim if we know
                actions += _their_htlc_they_offered(out, spent, htlc, h0, facts)
            continue
        # Our own commitment.
        assert built is not None
        if kind == "to_local":
            actions += _sweep_once(out, spent, "delayed", h0 + _csv(desc, "delayed"))
        elif kind in ("offered_htlc", "received_htlc") and htlc is not None:
            actions += _our_htlc(out, spent, htlc, h0, facts, built)
    if penalty or stages:
        actions.append(Action("penalty", outputs=tuple(penalty), stages=tuple(stages)))
    if not any(a.kind in PENDING for a in actions):
        actions.append(Action("done"))
    return actions


PENDING = frozenset({"sweep", "htlc_tx", "sweep_stage", "penalty", "cpfp", "wait"})


BOLT_KINDS = frozenset({"to_local", "to_remote", "offered_htlc", "received_htlc", "anchor"})


def _extension_output(out: BuiltOutput, spent: Spent | None, kind: str, h0: int, penalty: list[int]) -> list[Action]:
    """A Bifrost extension's output: ours to take by any path whose spender is us and whose witness needs
    only our signature (by `revocation` into the penalty, on a revoked commitment)."""
    if spent is not None or out.descriptor is None:
        return []
    ours = [p for p in out.descriptor.paths if p.spender is Side.LOCAL and p.key is not None
            and all(not isinstance(i, str) or i == "sig" for i in p.witness)]
    if kind == "revoked" and any(p.name == "revocation" for p in ours):
        penalty.append(out.index)
        return []
    for p in ours:
        if p.name != "revocation":
            return [Action("sweep", out.index, p.name, max(h0 + p.csv, p.cltv + 1 if p.cltv else 0))]
    return []


def _csv(desc, path_name: str) -> int:
    return next(p.csv for p in desc.paths if p.name == path_name)


def _sweep_once(out: BuiltOutput, spent: Spent | None, path: str, not_before: int) -> list[Action]:
    if spent is not None:
        return []
    return [Action("sweep", out.index, path, not_before)]


def _revoked_output(out: BuiltOutput, spent: Spent | None, facts: Facts, htlc: Htlc | None,
                    penalty: list[int], stages: list[tuple[str, int]]) -> list[Action]:
    if spent is None:
        penalty.append(out.index)
        return []
    if spent.ours:
        # our penalty took an HTLC we offered: it will never be fulfilled, fail it upstream
        ours_offered = htlc is not None and htlc.offerer is Side.LOCAL and spent.height is not None
        return [Action("fail_htlc", out.index, htlc=htlc)] if ours_offered else []
    if htlc is None:
        return []       # to_local swept by its owner after the delay: too late
    actions = []
    pre = extract_preimage(spent.witness, htlc.payment_hash)
    if pre is not None and htlc.payment_hash not in facts.preimages:
        actions.append(Action("preimage", out.index, htlc=htlc, preimage=pre))
    # Their second-stage (HTLC-success/timeout) transaction: its output is revocable too.
    key = (spent.txid, spent.vin)
    if key not in facts.stage_spent and key not in stages:
        stages.append(key)
    return actions


def _their_htlc_we_offered(out: BuiltOutput, spent: Spent | None, htlc: Htlc, h0: int, facts: Facts) -> list[Action]:
    if spent is None:
        csv = _csv(out.descriptor, "timeout")
        return [Action("sweep", out.index, "timeout", max(htlc.cltv_expiry + 1, h0 + csv), htlc)]
    if spent.ours:
        return [Action("fail_htlc", out.index, htlc=htlc)] if spent.height is not None else []
    pre = extract_preimage(spent.witness, htlc.payment_hash)
    return [Action("preimage", out.index, htlc=htlc, preimage=pre)] if pre is not None else []


def _their_htlc_they_offered(out: BuiltOutput, spent: Spent | None, htlc: Htlc, h0: int,
                             facts: Facts) -> list[Action]:
    if spent is not None:
        return []
    if htlc.payment_hash in facts.preimages:
        return [Action("sweep", out.index, "preimage", h0 + _csv(out.descriptor, "preimage"), htlc,
                       preimage=facts.preimages[htlc.payment_hash])]
    return _until_expiry(out, htlc, facts)


def _until_expiry(out: BuiltOutput, htlc: Htlc, facts: Facts) -> list[Action]:
    # Without the preimage it is theirs to time out; expired, it counts as resolved (BOLT-5).
    return [Action("wait", out.index, htlc=htlc, not_before=htlc.cltv_expiry)] \
        if facts.height < htlc.cltv_expiry else []


def _our_htlc(out: BuiltOutput, spent: Spent | None, htlc: Htlc, h0: int, facts: Facts,
              built: BuiltCommitment) -> list[Action]:
    desc = out.descriptor
    assert desc is not None and desc.second_stage is not None
    st = desc.second_stage
    offered = desc.kind == "offered_htlc"
    if spent is None:
        if offered:
            return [Action("htlc_tx", out.index, st.kind, max(htlc.cltv_expiry + 1, h0 + st.sequence), htlc)]
        if htlc.payment_hash in facts.preimages:
            return [Action("htlc_tx", out.index, st.kind, h0 + st.sequence, htlc,
                           preimage=facts.preimages[htlc.payment_hash])]
        return _until_expiry(out, htlc, facts)
    if not spent.ours:
        pre = extract_preimage(spent.witness, htlc.payment_hash)
        return [Action("preimage", out.index, htlc=htlc, preimage=pre)] if offered and pre is not None else []
    # Our HTLC transaction: once confirmed, its output is ours after the delay.
    actions: list[Action] = []
    if spent.height is None:
        return actions
    if offered:
        actions.append(Action("fail_htlc", out.index, htlc=htlc))
    if (spent.txid, spent.vin) not in facts.stage_spent:
        delay = next(p.csv for p in st.paths if p.name == "delayed")
        actions.append(Action("sweep_stage", out.index, "delayed", spent.height + delay, htlc, txid=spent.txid,
                              vout=spent.vin))
    return actions


def revocation_secret_for(secrets: Shachain, number: int) -> bytes | None:
    """Their per-commitment secret for commitment `number`, if revealed."""
    return secrets.get(MAX_INDEX - number)


def funding_spend(txs: Sequence[Tx], params: ChannelParams) -> Tx | None:
    """The first of `txs` spending the funding output."""
    return next((t for t in txs if spends_funding(params, t)), None)


__all__ = ["Action", "Closing", "Facts", "Known", "Spent", "classify", "commitment_number",
           "extract_preimage", "funding_spend", "match_outputs", "must_force_close", "plan",
           "revocation_secret_for", "spends_funding"]
