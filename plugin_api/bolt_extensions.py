"""The BOLT channel as built-in extensions: funding, balances, HTLCs, anchors and BIP69+CLTV ordering.

They live in the plugin API, next to the contract, because they are its reference: channeld drives them,
signd and watchers can rebuild exactly what they sign or watch, and a Bifrost extension is written by
copying one of them. `extensions_for(channel_type)` is the whole BOLT-3 commitment; a channel with more
extensions inserts them before the ordering, which must stay last (`with_extensions`).
"""
from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Sequence

from . import bolt3
from .channel import (BaseExtension, ChannelExtension, ChannelParams, ChannelType, CommitmentSpec, ExtensionState,
                      Htlc, KeyRef, OutputDescriptor, SecondStage, Side, SpendPath, TxDraft, TxOutDraft, Update,
                      UpdateContext, UpdateRefused)
from .channel_fees import (ANCHOR_SAT, ANCHORS_EXTRA_WEIGHT, BASE_WEIGHT, HTLC_OUTPUT_WEIGHT, htlc_success_fee,
                           htlc_timeout_fee, untrimmed)
from .commitment import obscured_number
from .tx import SIGHASH_ALL, SIGHASH_SINGLE_ANYONECANPAY, TxIn, p2wpkh, p2wsh

MAX_CLTV = 500_000_000
_AMOUNT = operator.attrgetter("amount_msat")
BADONION = 0x8000


def _revocation_path(draft: TxDraft, witness_tail: bytes | str) -> SpendPath:
    keys = draft.keys
    return SpendPath("revocation", draft.owner.other,
                     KeyRef(draft.owner.other, "revocation", "revocation", keys.revocation_pubkey),
                     ("sig", witness_tail))


class Funding(BaseExtension):
    """The funding input, version/locktime/sequence with the obscured number, base weight, and update_fee."""

    name = "funding"
    update_kinds = ("update_fee",)

    def check_update(self, update: Update, ctx: UpdateContext) -> ExtensionState | None:
        """Only the opener sends update_fee, with a positive feerate (bounds vs our estimate: channeld)."""
        if update.proposer is not ctx.params.opener:
            raise UpdateRefused("update_fee from the side that did not open the channel")
        if int(update.body["feerate_per_kw"]) < 1:
            raise UpdateRefused("update_fee with a zero feerate")
        return ctx.state

    def apply_update(self, update: Update, spec: CommitmentSpec) -> CommitmentSpec:
        """The new feerate replaces the old."""
        return spec.with_feerate(int(update.body["feerate_per_kw"]))

    def prepare(self, draft: TxDraft) -> None:
        """BOLT-3's base weight (it assumes both balance outputs)."""
        draft.weight += BASE_WEIGHT

    def build(self, draft: TxDraft) -> None:
        """The single input and the obscured commitment number in locktime and sequence."""
        draft.version = 2
        draft.locktime, sequence = bolt3.commitment_locktime_sequence(obscured_number(draft.params, draft.number))
        draft.inputs = [TxIn(draft.params.funding_txid, draft.params.funding_output_index, sequence)]


class Balances(BaseExtension):
    """to_local (delayed, revocable) and to_remote (P2WPKH, or 1-block CSV with anchors), dust-trimmed."""

    name = "balances"

    def build(self, draft: TxDraft) -> None:
        """Add each balance output that is not below the owner's dust limit."""
        keys, owner, dust = draft.keys, draft.owner, draft.params.dust_limit(draft.owner)
        own_sat, other_sat = draft.amounts_msat[owner] // 1000, draft.amounts_msat[owner.other] // 1000
        draft.notes["to_local"] = own_sat >= dust
        draft.notes["to_remote"] = other_sat >= dust
        if own_sat >= dust:
            delay = draft.params.delay_of(owner)
            script = bolt3.to_local_script(keys.revocation_pubkey, delay, keys.owner_delayed_pubkey)
            paths = (SpendPath("delayed", owner, KeyRef(owner, "delayed_payment", "per_commitment",
                                                        keys.owner_delayed_pubkey), ("sig", b""), csv=delay),
                     _revocation_path(draft, b"\x01"))
            draft.outputs.append(TxOutDraft(own_sat, p2wsh(script), self.name,
                                            OutputDescriptor("to_local", self.name, script, paths)))
        if other_sat >= dust:
            pub = keys.other_payment_pubkey
            key = KeyRef(owner.other, "payment", "none", pub)
            if draft.anchors:
                script = bolt3.to_remote_anchor_script(pub)
                desc = OutputDescriptor("to_remote", self.name, script, (SpendPath("payment", owner.other, key,
                                                                                   ("sig",), csv=1),))
                draft.outputs.append(TxOutDraft(other_sat, p2wsh(script), self.name, desc))
            else:
                desc = OutputDescriptor("to_remote", self.name, None, (SpendPath("payment", owner.other, key,
                                                                                 ("sig", pub)),))
                draft.outputs.append(TxOutDraft(other_sat, p2wpkh(pub), self.name, desc))


@dataclass(frozen=True)
class HtlcIds:
    """The HTLC extension's channel state: the next id each side must use (ids never restart)."""

    VERSION: ClassVar[int] = 1
    next_local: int = 0
    next_remote: int = 0

    def next(self, side: Side) -> int:
        """The id `side`'s next update_add_htlc must carry."""
        return self.next_local if side is Side.LOCAL else self.next_remote

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"next_local": self.next_local, "next_remote": self.next_remote}


class Htlcs(BaseExtension):
    """Offered and received HTLC outputs and their HTLC-timeout/HTLC-success transactions; the HTLC updates."""

    name = "htlcs"
    update_kinds = ("add_htlc", "fulfill_htlc", "fail_htlc", "fail_malformed_htlc")

    def negotiate(self, ours: Mapping[int, bytes], theirs: Mapping[int, bytes]) -> ExtensionState | None:
        """Both id counters start at 0."""
        return HtlcIds()

    def load_state(self, version: int, data: Mapping[str, Any]) -> ExtensionState:
        """Version 1 is the only one so far."""
        if version != 1:
            raise ValueError(f"unknown htlcs state version {version}")
        return HtlcIds(int(data["next_local"]), int(data["next_remote"]))

    def check_update(self, update: Update, ctx: UpdateContext) -> ExtensionState | None:
        """BOLT-2's per-HTLC rules (budget, reserve and dust exposure are `channel_fees`' job)."""
        ids = ctx.state if isinstance(ctx.state, HtlcIds) else HtlcIds()
        body, sender = update.body, update.proposer
        if update.kind == "add_htlc":
            receiver = ctx.params.side(sender.other)
            amount = int(body["amount_msat"])
            if int(body["id"]) != ids.next(sender):
                raise UpdateRefused(f"update_add_htlc id {body['id']}, expected {ids.next(sender)}")
            if amount <= 0 or amount < receiver.htlc_minimum_msat:
                raise UpdateRefused(f"HTLC of {amount} msat is below htlc_minimum_msat {receiver.htlc_minimum_msat}")
            if not 0 <= int(body["cltv_expiry"]) < MAX_CLTV:
                raise UpdateRefused("cltv_expiry must be a block height below 500000000")
            if len(bytes.fromhex(body["payment_hash"])) != 32:
                raise UpdateRefused("payment_hash must be 32 bytes")
            offered = ctx.pending.offered(sender)
            if len(offered) + 1 > receiver.max_accepted_htlcs:
                raise UpdateRefused(f"more than max_accepted_htlcs ({receiver.max_accepted_htlcs}) HTLCs")
            if sum(map(_AMOUNT, offered)) + amount > receiver.max_htlc_value_in_flight_msat:
                raise UpdateRefused("offered HTLCs would exceed max_htlc_value_in_flight_msat")
            if ctx.pending.balance(sender) < amount:
                raise UpdateRefused("HTLC larger than the sender's balance")
            return HtlcIds(ids.next_local + 1, ids.next_remote) if sender is Side.LOCAL else \
                HtlcIds(ids.next_local, ids.next_remote + 1)
        if update.kind not in self.update_kinds:
            raise UpdateRefused(f"unknown HTLC update {update.kind!r}")
        # A removal names an HTLC the other side offered, irrevocably committed in both commitments.
        htlc_id = int(body["id"])
        if ctx.local.htlc(sender.other, htlc_id) is None or ctx.remote.htlc(sender.other, htlc_id) is None:
            raise UpdateRefused(f"no committed HTLC {htlc_id} to remove")
        if ctx.adding(sender.other, htlc_id):
            raise UpdateRefused(f"HTLC {htlc_id} is not irrevocably committed yet")
        htlc = ctx.pending.htlc(sender.other, htlc_id)
        if htlc is None:
            raise UpdateRefused(f"HTLC {htlc_id} is already being removed")
        if update.kind == "fulfill_htlc":
            if hashlib.sha256(bytes.fromhex(body["payment_preimage"])).digest() != htlc.payment_hash:
                raise UpdateRefused(f"preimage does not match HTLC {htlc_id}'s payment_hash")
        if update.kind == "fail_malformed_htlc" and not int(body["failure_code"]) & BADONION:
            raise UpdateRefused("update_fail_malformed_htlc without the BADONION bit")
        return ids

    def rollback(self, state: ExtensionState | None, dropped: Sequence[Update]) -> ExtensionState | None:
        """Forgotten adds give their ids back (the peer will send them again, or we will)."""
        ids = state if isinstance(state, HtlcIds) else HtlcIds()
        for side in (Side.LOCAL, Side.REMOTE):
            gone = [int(u.body["id"]) for u in dropped if u.kind == "add_htlc" and u.proposer is side]
            if gone:
                ids = replace(ids, next_local=min(gone)) if side is Side.LOCAL else replace(ids, next_remote=min(gone))
        return ids

    def apply_update(self, update: Update, spec: CommitmentSpec) -> CommitmentSpec:
        """Add moves the amount from the offerer's balance into the HTLC; fulfill pays the other side;
        fails return it to the offerer."""
        body = update.body
        if update.kind == "add_htlc":
            htlc = Htlc(update.proposer, int(body["id"]), int(body["amount_msat"]),
                        bytes.fromhex(body["payment_hash"]), int(body["cltv_expiry"]))
            spec = spec.with_balance(htlc.offerer, spec.balance(htlc.offerer) - htlc.amount_msat)
            return spec.with_htlc(htlc)   # O(log n) to find its place: no re-sort, no new validation
        found = spec.htlc(update.proposer.other, int(body["id"]))
        if found is None:
            raise UpdateRefused(f"no HTLC {body['id']} to remove")
        paid = found.offerer.other if update.kind == "fulfill_htlc" else found.offerer
        spec = spec.with_balance(paid, spec.balance(paid) + found.amount_msat)
        return spec.without_htlc(found)

    def prepare(self, draft: TxDraft) -> None:
        """Decide which HTLCs are trimmed on this commitment; 172 weight per output kept."""
        kept = untrimmed(draft.spec.htlcs, draft.owner, draft.params.dust_limit(draft.owner), draft.feerate_per_kw,
                         draft.anchors)
        draft.notes["htlcs"] = kept
        draft.weight += HTLC_OUTPUT_WEIGHT * len(kept)

    def build(self, draft: TxDraft) -> None:
        """Add each untrimmed HTLC output with its descriptor and second stage."""
        common = _HtlcCommon.of(draft)
        for htlc in draft.notes["htlcs"]:
            draft.outputs.append(self._output(draft, common, htlc))

    def _output(self, draft: TxDraft, common: "_HtlcCommon", htlc: Htlc) -> TxOutDraft:
        keys, anchors = draft.keys, draft.anchors
        amount = htlc.amount_msat // 1000
        if htlc.offerer is draft.owner:
            script = bolt3.offered_htlc_script(keys.revocation_pubkey, keys.owner_htlc_pubkey, keys.other_htlc_pubkey,
                                               htlc.payment_hash, anchors)
            stage = SecondStage("htlc_timeout", htlc.cltv_expiry, common.csv, amount - common.timeout_fee,
                                common.stage_script, common.remote_sighash, common.stage_paths)
            path = common.preimage_path
            kind = "offered_htlc"
        else:
            script = bolt3.received_htlc_script(keys.revocation_pubkey, keys.owner_htlc_pubkey,
                                                keys.other_htlc_pubkey, htlc.payment_hash, htlc.cltv_expiry, anchors)
            stage = SecondStage("htlc_success", 0, common.csv, amount - common.success_fee,
                                common.stage_script, common.remote_sighash, common.stage_paths)
            path = SpendPath("timeout", draft.owner.other, common.other_key, ("sig", b""), csv=common.csv,
                             cltv=htlc.cltv_expiry)
            kind = "received_htlc"
        desc = OutputDescriptor(kind, self.name, script, (common.revocation_path, path), stage, htlc)
        return TxOutDraft(amount, p2wsh(script), self.name, desc, cltv=htlc.cltv_expiry)


@dataclass(frozen=True)
class _HtlcCommon:
    """What every HTLC output of one commitment shares (its keys, delay, feerate): computed once per build,
    not once per HTLC."""

    csv: int
    timeout_fee: int
    success_fee: int
    remote_sighash: int
    stage_script: bytes
    stage_paths: tuple[SpendPath, ...]
    other_key: KeyRef
    preimage_path: SpendPath
    revocation_path: SpendPath

    @classmethod
    def of(cls, draft: TxDraft) -> "_HtlcCommon":
        """The shared pieces of `draft`'s HTLC outputs."""
        keys, owner, anchors, rate = draft.keys, draft.owner, draft.anchors, draft.feerate_per_kw
        csv = 1 if anchors else 0
        delay = draft.params.delay_of(owner)
        stage_script = bolt3.to_local_script(keys.revocation_pubkey, delay, keys.owner_delayed_pubkey)
        stage_paths = (SpendPath("delayed", owner, KeyRef(owner, "delayed_payment", "per_commitment",
                                                          keys.owner_delayed_pubkey), ("sig", b""), csv=delay),
                       _revocation_path(draft, b"\x01"))
        other_key = KeyRef(owner.other, "htlc", "per_commitment", keys.other_htlc_pubkey)
        return cls(csv, htlc_timeout_fee(rate, anchors), htlc_success_fee(rate, anchors),
                   SIGHASH_SINGLE_ANYONECANPAY if anchors else SIGHASH_ALL, stage_script, stage_paths, other_key,
                   SpendPath("preimage", owner.other, other_key, ("sig", "preimage"), csv=csv),
                   _revocation_path(draft, "revocation_pubkey"))


class Anchors(BaseExtension):
    """option_anchors: two 330-sat anchors paid by the opener, each present when its side has an output."""

    name = "anchors"
    feature_bits = (22, 23)

    def prepare(self, draft: TxDraft) -> None:
        """The anchors' weight, and their 660 sat taken from the opener whether or not both appear."""
        draft.weight += ANCHORS_EXTRA_WEIGHT
        draft.charges_sat += 2 * ANCHOR_SAT

    def build(self, draft: TxDraft) -> None:
        """After the balances and HTLCs: an anchor for each side with an output, both if any HTLC."""
        keys, owner = draft.keys, draft.owner
        htlcs = any(o.descriptor is not None and o.descriptor.htlc is not None for o in draft.outputs)
        for side, present, pub in ((owner, draft.notes.get("to_local"), keys.owner_funding_pubkey),
                                   (owner.other, draft.notes.get("to_remote"), keys.other_funding_pubkey)):
            if not (present or htlcs):
                continue
            script = bolt3.anchor_script(pub)
            paths = (SpendPath("anchor", side, KeyRef(side, "funding", "none", pub), ("sig",)),
                     SpendPath("anyone", None, None, (b"",), csv=16))
            desc = OutputDescriptor("anchor", self.name, script, paths, data={"side": side.value})
            draft.outputs.append(TxOutDraft(ANCHOR_SAT, p2wsh(script), self.name, desc))


class Bip69CltvOrdering(BaseExtension):
    """BOLT-3 output order: amount, then scriptPubKey (memcmp, shorter first), then cltv_expiry. Runs last."""

    name = "bip69_cltv"

    def build(self, draft: TxDraft) -> None:
        """Sort the outputs in place (stable: identical outputs keep their relative order)."""
        draft.outputs.sort(key=lambda o: (o.amount_sat, o.script_pubkey, o.cltv))


def extensions_for(channel_type: ChannelType) -> list[ChannelExtension]:
    """The built-in extensions making up a BOLT channel of that type, in build order."""
    exts: list[ChannelExtension] = [Funding(), Balances(), Htlcs()]
    if channel_type.anchors:
        exts.append(Anchors())
    exts.append(Bip69CltvOrdering())
    return exts


def for_params(params: ChannelParams, available: Mapping[str, ChannelExtension]) -> list[ChannelExtension]:
    """A stored channel's extensions: the built-in ones for its type plus the Bifrost ones its
    `params.extensions` names (from `available`, e.g. the plugins' `lnp_channel_extensions`); a missing one
    is an error, since the channel's transactions cannot be built without it."""
    builtin = {e.name for e in extensions_for(params.channel_type)}
    missing = [n for n in params.extensions if n not in builtin and n not in available]
    if missing:
        raise ValueError(f"channel needs extensions no enabled plugin provides: {', '.join(missing)}")
    return with_extensions(params.channel_type, [available[n] for n in params.extensions if n not in builtin])


def with_extensions(channel_type: ChannelType, extra: Sequence[ChannelExtension]) -> list[ChannelExtension]:
    """The BOLT channel plus `extra` (Bifrost) extensions, inserted before the ordering so it sorts theirs too."""
    base = extensions_for(channel_type)
    names = {e.name for e in base}
    for e in extra:
        if e.name in names:
            raise ValueError(f"extension name {e.name!r} used twice")
        names.add(e.name)
    return base[:-1] + list(extra) + base[-1:]
