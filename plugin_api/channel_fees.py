"""BOLT-3 fee and dust arithmetic, and the BOLT-2 budget checks channeld calls before accepting an update.

The budget functions run the extensions' `prepare` phase (`commitment.weigh`), so an extension that adds
weight or takes an amount from the opener is counted exactly as in the transaction that will be signed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .channel import ChannelExtension, ChannelParams, CommitmentSpec, Htlc, Side

BASE_WEIGHT = 724              # commitment without anchors, both balance outputs, no HTLC
ANCHORS_EXTRA_WEIGHT = 400     # 1124 - 724: two anchors and the P2WSH to_remote
HTLC_OUTPUT_WEIGHT = 172
HTLC_TIMEOUT_WEIGHT = 663
HTLC_SUCCESS_WEIGHT = 703
ANCHOR_SAT = 330
FEE_SPIKE_MULTIPLE = 2         # BOLT-2's recommended "fee spike buffer": twice the current feerate


def fee_for_weight(feerate_per_kw: int, weight: int) -> int:
    """feerate_per_kw * weight / 1000, rounded down."""
    return feerate_per_kw * weight // 1000


def htlc_timeout_fee(feerate_per_kw: int, anchors: bool) -> int:
    """Fee of an HTLC-timeout transaction (0 with option_anchors)."""
    return 0 if anchors else fee_for_weight(feerate_per_kw, HTLC_TIMEOUT_WEIGHT)


def htlc_success_fee(feerate_per_kw: int, anchors: bool) -> int:
    """Fee of an HTLC-success transaction (0 with option_anchors)."""
    return 0 if anchors else fee_for_weight(feerate_per_kw, HTLC_SUCCESS_WEIGHT)


def is_trimmed(htlc: Htlc, owner: Side, dust_limit_sat: int, feerate_per_kw: int, anchors: bool) -> bool:
    """Whether `htlc` has no output in `owner`'s commitment (its amount less its second-stage fee is dust)."""
    offered = htlc.offerer is owner
    fee = htlc_timeout_fee(feerate_per_kw, anchors) if offered else htlc_success_fee(feerate_per_kw, anchors)
    return htlc.amount_msat // 1000 < dust_limit_sat + fee


def _trim_limits(owner: Side, dust_limit_sat: int, feerate_per_kw: int, anchors: bool) -> tuple[int, int]:
    """The smallest untrimmed amount (sat) of an HTLC `owner` offered, and of one it received (`is_trimmed`)."""
    return (dust_limit_sat + htlc_timeout_fee(feerate_per_kw, anchors),
            dust_limit_sat + htlc_success_fee(feerate_per_kw, anchors))


def untrimmed(htlcs: Sequence[Htlc], owner: Side, dust_limit_sat: int, feerate_per_kw: int,
              anchors: bool) -> list[Htlc]:
    """The HTLCs of `htlcs` that have an output in `owner`'s commitment (`is_trimmed` of each, in one pass)."""
    offered, received = _trim_limits(owner, dust_limit_sat, feerate_per_kw, anchors)
    return [h for h in htlcs if h.amount_msat // 1000 >= (offered if h.offerer is owner else received)]


def dust_exposure_msat(params: ChannelParams, spec: CommitmentSpec, owner: Side) -> int:
    """Total of the HTLCs trimmed from `owner`'s commitment (BOLT-2's dust balance of that transaction)."""
    offered, received = _trim_limits(owner, params.dust_limit(owner), spec.feerate_per_kw,
                                     params.channel_type.anchors)
    return sum(h.amount_msat for h in spec.htlcs
               if h.amount_msat // 1000 < (offered if h.offerer is owner else received))


@dataclass(frozen=True)
class Budget:
    """What `owner`'s commitment costs the opener and leaves each side (msat, after fee and charges)."""

    owner: Side
    weight: int
    fee_sat: int
    charges_sat: int
    opener: Side
    local_msat: int           # may be negative: the opener cannot pay
    remote_msat: int

    def left(self, side: Side) -> int:
        """What `side` keeps after the opener paid fee and charges (negative when it cannot pay)."""
        return self.local_msat if side is Side.LOCAL else self.remote_msat


def budget(params: ChannelParams, spec: CommitmentSpec, owner: Side, extensions: Sequence[ChannelExtension],
           extra_weight: int = 0) -> Budget:
    """Fee and charges of `owner`'s commitment for `spec`, and both sides' remaining balances."""
    from .commitment import weigh  # here: commitment imports this module for the fee formula
    draft = weigh(params, spec, owner, extensions)
    weight = draft.weight + extra_weight
    fee = fee_for_weight(spec.feerate_per_kw, weight)
    left = {Side.LOCAL: spec.local_msat, Side.REMOTE: spec.remote_msat}
    left[params.opener] -= (fee + draft.charges_sat) * 1000
    return Budget(owner, weight, fee, draft.charges_sat, params.opener, left[Side.LOCAL], left[Side.REMOTE])


def reserve_shortfall_msat(params: ChannelParams, spec: CommitmentSpec, owner: Side, side: Side,
                           extensions: Sequence[ChannelExtension], fee_spike: bool = False) -> int:
    """How far `side` falls below its reserve on `owner`'s commitment once the opener paid fee and charges.

    0 means it can afford it. With `fee_spike`, the opener must also afford twice the feerate and one more
    non-dust HTLC output (BOLT-2's fee spike buffer); that only matters when `side` is the opener.
    """
    if fee_spike and side is params.opener:
        spec = spec.with_feerate(spec.feerate_per_kw * FEE_SPIKE_MULTIPLE)
        b = budget(params, spec, owner, extensions, extra_weight=HTLC_OUTPUT_WEIGHT)
    else:
        b = budget(params, spec, owner, extensions)
    need = params.reserve_of(side) * 1000
    return max(0, need - b.left(side))


def can_afford(params: ChannelParams, changes: Mapping[Side, tuple[CommitmentSpec, CommitmentSpec]], side: Side,
               extensions: Sequence[ChannelExtension], fee_spike: bool = False) -> str | None:
    """BOLT-2's "can `side` afford this update": None if yes, else why not (safe to tell the peer).

    `changes` maps each commitment owner to its spec without and with the update (`UpdateLog.budget_check`
    builds it). The update is refused when it leaves `side` further below its reserve on either commitment
    (after the opener paid fee and charges) than before, so a side already below it (right after open, or
    after push_msat) may still receive funds or remove HTLCs. channeld checks the proposer, and the opener
    when the proposer is not the opener (the added weight is the opener's to pay). With `fee_spike`, the
    opener must also keep BOLT-2's fee spike buffer.
    """
    for owner, (before, after) in changes.items():
        after_short = reserve_shortfall_msat(params, after, owner, side, extensions, fee_spike)
        if after_short == 0:
            continue
        before_short = reserve_shortfall_msat(params, before, owner, side, extensions, fee_spike)
        if after_short > before_short:
            who = "we" if side is Side.LOCAL else "the peer"
            return (f"{who} cannot afford it on the {owner.value} commitment: {after_short} msat short of the "
                    f"reserve{' with the fee spike buffer' if fee_spike else ''}")
    return None


def initial_spec(params: ChannelParams, push_msat: int, feerate_per_kw: int) -> CommitmentSpec:
    """Commitment 0: the opener has the funding less `push_msat`, the other side `push_msat`."""
    if not 0 <= push_msat <= params.funding_sat * 1000:
        raise ValueError("push_msat must be between 0 and the funding amount")
    opener_msat = params.funding_sat * 1000 - push_msat
    if params.opener is Side.LOCAL:
        return CommitmentSpec(feerate_per_kw, opener_msat, push_msat)
    return CommitmentSpec(feerate_per_kw, push_msat, opener_msat)


def check_initial(params: ChannelParams, spec: CommitmentSpec,
                  extensions: Sequence[ChannelExtension]) -> str | None:
    """BOLT-2's checks of the first commitments: None if fine, else why the channel must fail.

    The opener must pay the full fee (and the anchors) on both commitments, and at least one side must
    hold more than its reserve.
    """
    for owner in (Side.LOCAL, Side.REMOTE):
        b = budget(params, spec, owner, extensions)
        if b.left(params.opener) < 0:
            return (f"the opener's amount cannot pay the fee of the {owner.value} commitment "
                    f"({b.fee_sat} sat, charges {b.charges_sat} sat)")
        if all(b.left(side) <= params.reserve_of(side) * 1000 for side in (Side.LOCAL, Side.REMOTE)):
            return "neither side's amount in the first commitment is above its channel reserve"
    return None
