"""A Bifrost-style test extension: an extra commitment output, funded by either side, with its own update kind.

It shows everything a third-party extension does, and nothing channeld-specific: an open_channel TLV
(the most the peer lets us lock in it), a versioned channel state, its own update (`set_extra`), per-commitment
state in `CommitmentSpec.ext`, weight in `prepare`, and an output with a descriptor in `build`. The ordering
extension then sorts it among the BOLT outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping

from lnp_plugin_api.channel import (BaseExtension, CommitmentSpec, ExtensionState, KeyRef, OutputDescriptor, Side,
                                    SpendPath, TxDraft, TxOutDraft, Update, UpdateContext, UpdateRefused)
from lnp_plugin_api.tx import p2wsh
from lnp_plugin_api.wire import FIELD_TYPES, Reader

NAME = "extra_output"
TLV_MAX = 65537                     # odd: a peer without the extension ignores it
READ_U64, WRITE_U64 = FIELD_TYPES["u64"]
OUTPUT_WEIGHT = 4 * 43              # a P2WSH output


@dataclass(frozen=True)
class ExtraTerms:
    """Channel state: the most either side may lock in the extra output (the lower of both offers)."""

    VERSION: ClassVar[int] = 2
    max_sat: int

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"max_sat": self.max_sat}


@dataclass(frozen=True)
class ExtraOutput:
    """Per-commitment state: who funded the extra output, how much, and its witness script."""

    VERSION: ClassVar[int] = 1
    funder: Side
    amount_sat: int
    script: bytes

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"funder": self.funder.value, "amount_sat": self.amount_sat, "script": self.script.hex()}

    def mirrored(self) -> "ExtraOutput":
        """As the peer's node sees it."""
        return replace(self, funder=self.funder.other)


class ExtraOutputExtension(BaseExtension):
    """Adds one output locked by `script`; `set_extra` creates it from the proposer's balance."""

    name = NAME
    feature_bits = (201,)
    update_kinds = ("set_extra",)

    def __init__(self, max_sat: int = 50_000) -> None:
        self.max_sat = max_sat

    def open_tlvs(self, message: str, fields: Mapping[str, Any]) -> dict[int, bytes]:
        """Offer our maximum in open_channel/accept_channel."""
        return {TLV_MAX: WRITE_U64(self.max_sat)}

    def negotiate(self, ours: Mapping[int, bytes], theirs: Mapping[int, bytes]) -> ExtensionState | None:
        """The lower of both maxima; a peer that sent none does not use the extension."""
        if TLV_MAX not in theirs:
            raise ValueError("the peer did not offer the extra output")
        return ExtraTerms(min(READ_U64(Reader(ours[TLV_MAX])), READ_U64(Reader(theirs[TLV_MAX]))))

    def load_state(self, version: int, data: Mapping[str, Any]) -> ExtensionState:
        """Version 1 stored `max_msat`; version 2 stores `max_sat`."""
        if "funder" in data:
            return ExtraOutput(Side(data["funder"]), int(data["amount_sat"]), bytes.fromhex(data["script"]))
        if version == 1:
            return ExtraTerms(int(data["max_msat"]) // 1000)
        return ExtraTerms(int(data["max_sat"]))

    def check_update(self, update: Update, ctx: UpdateContext) -> ExtensionState | None:
        """One extra output at a time, within the agreed maximum and the proposer's balance."""
        terms = ctx.state
        amount = int(update.body["amount_sat"])
        if not isinstance(terms, ExtraTerms) or amount > terms.max_sat:
            raise UpdateRefused("extra output above the agreed maximum")
        if NAME in ctx.pending.ext:
            raise UpdateRefused("there is an extra output already")
        if ctx.pending.balance(update.proposer) < amount * 1000:
            raise UpdateRefused("extra output larger than the proposer's balance")
        return terms

    def apply_update(self, update: Update, spec: CommitmentSpec) -> CommitmentSpec:
        """Move the amount from the proposer's balance into the extension's state."""
        amount = int(update.body["amount_sat"])
        spec = spec.with_balance(update.proposer, spec.balance(update.proposer) - amount * 1000)
        state = ExtraOutput(update.proposer, amount, bytes.fromhex(update.body["script"]))
        return replace(spec, ext={**spec.ext, NAME: state})

    def prepare(self, draft: TxDraft) -> None:
        """Its output's weight, paid like the rest by the opener."""
        if NAME in draft.spec.ext:
            draft.weight += OUTPUT_WEIGHT

    def build(self, draft: TxDraft) -> None:
        """The output, with a descriptor saying the funder spends it with its payment key."""
        state = draft.spec.ext.get(NAME)
        if not isinstance(state, ExtraOutput):
            return
        funder = draft.params.side(state.funder)
        key = KeyRef(state.funder, "payment", "none", funder.basepoints.payment)
        desc = OutputDescriptor("extra", NAME, state.script, (SpendPath("funder", state.funder, key, ("sig",)),))
        draft.outputs.append(TxOutDraft(state.amount_sat, p2wsh(state.script), NAME, desc))
