"""The channel contract (Bifrost's foundation): what a channel is made of and how extensions shape it.

A channel's commitment is not hard-coded. channeld holds `ChannelParams` (agreed at open), an update log
(`lnp_plugin_api.channel_updates`) whose result for each commitment is a `CommitmentSpec`, and an ordered list
of `ChannelExtension`s. `lnp_plugin_api.commitment.build_commitment` hands a `TxDraft` to each extension in turn:
the built-in BOLT channel is nothing but the built-in extensions of `lnp_plugin_api.bolt_extensions`, chosen
by the channel type, and a Bifrost extension adds outputs, update kinds and TLVs the same way, without any
change to channeld. See docs/channels.md, "How extensions compose a commitment".

Perspective: balances and HTLCs in a `CommitmentSpec` are always seen from OUR node (`local_msat` is ours,
`Htlc.offerer` says who offered it), whichever side's commitment it describes; the builder maps them to
BOLT-3's to_local/to_remote for the commitment's `owner`.
"""
from __future__ import annotations

import bisect
import json
import operator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

from .tx import TxIn

if TYPE_CHECKING:
    from .commitment import CommitmentKeys


class Side(str, Enum):
    """Our node (LOCAL) or the peer (REMOTE)."""

    LOCAL = "local"
    REMOTE = "remote"

    @property
    def other(self) -> "Side":
        """The opposite side."""
        return Side.REMOTE if self is Side.LOCAL else Side.LOCAL


COMPACT = (",", ":")   # json.dumps separators of the documents written with every change (no spaces)

# --- channel type (BOLT-2 "Defined Channel Types") ---

STATIC_REMOTEKEY_BIT, ANCHORS_BIT, SCID_ALIAS_BIT, ZEROCONF_BIT = 12, 22, 46, 50
_BASIC_TYPES = (frozenset({STATIC_REMOTEKEY_BIT}), frozenset({STATIC_REMOTEKEY_BIT, ANCHORS_BIT}))
_VARIATIONS = frozenset({SCID_ALIAS_BIT, ZEROCONF_BIT})


@dataclass(frozen=True)
class ChannelType:
    """A channel type: one of BOLT-2's basic types plus allowed variations, as even feature bits."""

    bits: frozenset[int]

    def __post_init__(self) -> None:
        if frozenset(self.bits) - _VARIATIONS not in _BASIC_TYPES:
            raise ValueError(f"unsupported channel type {sorted(self.bits)}")

    @property
    def anchors(self) -> bool:
        """option_anchors (zero-fee HTLC transactions)."""
        return ANCHORS_BIT in self.bits

    @property
    def name(self) -> str:
        """`anchors` or `static_remotekey`, plus variations."""
        base = "anchors" if self.anchors else "static_remotekey"
        extra = [n for b, n in ((SCID_ALIAS_BIT, "scid_alias"), (ZEROCONF_BIT, "zeroconf")) if b in self.bits]
        return "+".join([base] + extra)

    def to_bytes(self) -> bytes:
        """The `channel_type` TLV value (a feature bit vector)."""
        value = sum(1 << b for b in self.bits)
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> "ChannelType":
        """Parse a `channel_type` TLV value; ValueError when it is not a supported type."""
        value = int.from_bytes(data, "big")
        return cls(frozenset(b for b in range(value.bit_length()) if value >> b & 1))


STATIC_REMOTEKEY = ChannelType(frozenset({STATIC_REMOTEKEY_BIT}))
ANCHORS = ChannelType(frozenset({STATIC_REMOTEKEY_BIT, ANCHORS_BIT}))


# --- parameters agreed at open ---

@dataclass(frozen=True)
class Basepoints:
    """One side's BOLT-3 basepoints (33-byte compressed points)."""

    revocation: bytes
    payment: bytes
    delayed_payment: bytes
    htlc: bytes


@dataclass(frozen=True)
class SideConfig:
    """What one side announced in open_channel/accept_channel, with the wire's meaning.

    `to_self_delay` and `channel_reserve_sat` are what this side IMPOSES ON THE OTHER; use the
    `ChannelParams` helpers (`delay_of`, `reserve_of`) rather than reading them directly.
    """

    funding_pubkey: bytes
    basepoints: Basepoints
    dust_limit_sat: int
    to_self_delay: int
    channel_reserve_sat: int
    htlc_minimum_msat: int = 1
    max_htlc_value_in_flight_msat: int = 2**64 - 1
    max_accepted_htlcs: int = 483


@dataclass(frozen=True)
class ChannelParams:
    """Everything fixed at open: both sides' keys and limits, the funding outpoint, opener, type, extensions.

    `funding_txid` is hex in display order. `extensions` names the negotiated extensions in build order
    (what `bolt_extensions.extensions_for` returns for the type, plus any Bifrost extension agreed on).
    """

    local: SideConfig
    remote: SideConfig
    funding_txid: str
    funding_output_index: int
    funding_sat: int
    opener: Side
    channel_type: ChannelType
    extensions: tuple[str, ...] = ()

    def mirrored(self) -> "ChannelParams":
        """The same channel as the peer sees it (local and remote swapped)."""
        return replace(self, local=self.remote, remote=self.local, opener=self.opener.other)

    def side(self, side: Side) -> SideConfig:
        """That side's announced configuration."""
        return self.local if side is Side.LOCAL else self.remote

    def delay_of(self, owner: Side) -> int:
        """The CSV delay on `owner`'s own outputs in `owner`'s commitment (set by the other side)."""
        return self.side(owner.other).to_self_delay

    def reserve_of(self, side: Side) -> int:
        """The reserve in satoshis `side` must keep (set by the other side)."""
        return self.side(side.other).channel_reserve_sat

    def dust_limit(self, owner: Side) -> int:
        """The dust limit of `owner`'s commitment (its own)."""
        return self.side(owner).dust_limit_sat


# --- the state of one commitment ---

@dataclass(frozen=True)
class Htlc:
    """An HTLC in a commitment; `offerer` is the side that sent update_add_htlc (ids count per offerer)."""

    offerer: Side
    id: int
    amount_msat: int
    payment_hash: bytes
    cltv_expiry: int

    def __post_init__(self) -> None:
        # the canonical order's key (`_htlc_order`), computed once: specs bisect their HTLCs by it at every update
        object.__setattr__(self, "_order", _htlc_order(self))

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return dict(self._json())

    def _json(self) -> dict[str, Any]:
        # an HTLC stays in every commitment document until it is removed: encoded once (it is immutable)
        found = self.__dict__.get("_cached_json")
        if found is None:
            found = {"offerer": self.offerer.value, "id": self.id, "amount_msat": self.amount_msat,
                     "payment_hash": self.payment_hash.hex(), "cltv_expiry": self.cltv_expiry}
            object.__setattr__(self, "_cached_json", found)
        return found

    def row(self) -> list[Any]:
        """The compact JSON form: [offerer, id, amount_msat, payment_hash, cltv_expiry] (computed once, shared:
        read only)."""
        found = self.__dict__.get("_cached_row")
        if found is None:
            found = [self.offerer.value, self.id, self.amount_msat, self.payment_hash.hex(), self.cltv_expiry]
            object.__setattr__(self, "_cached_row", found)
        return found

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Htlc":
        """Inverse of `to_json`."""
        return cls(Side(d["offerer"]), int(d["id"]), int(d["amount_msat"]), bytes.fromhex(d["payment_hash"]),
                   int(d["cltv_expiry"]))

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> "Htlc":
        """Inverse of `row`."""
        return cls(Side(r[0]), int(r[1]), int(r[2]), bytes.fromhex(r[3]), int(r[4]))


@runtime_checkable
class ExtensionState(Protocol):
    """An extension's typed state (per channel, or per commitment in `CommitmentSpec.ext`).

    `VERSION` is written with the data; the extension's `load_state` reads every version it ever wrote.
    A state that names a `Side` also has `mirrored()` (the same state seen from the peer's node).
    """

    VERSION: ClassVar[int]

    def to_json(self) -> dict[str, Any]:
        """JSON form, without the version (the caller adds it)."""


@dataclass(frozen=True)
class CommitmentSpec:
    """What one commitment contains: feerate, both balances (ours first), HTLCs, and extensions' state.

    Balances exclude in-flight HTLCs and any amount an extension holds in its own state.
    """

    feerate_per_kw: int
    local_msat: int
    remote_msat: int
    htlcs: tuple[Htlc, ...] = ()
    ext: Mapping[str, ExtensionState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # HTLCs are a set: keep one canonical order so both nodes' specs compare equal.
        object.__setattr__(self, "htlcs", tuple(sorted(self.htlcs, key=_ORDER)))

    def _copy(self, **changes: Any) -> "CommitmentSpec":
        """A copy with `changes`, whose `htlcs` (if changed) the caller keeps in canonical order: no new sort
        (__post_init__) and no cached JSON carried over."""
        copy = object.__new__(CommitmentSpec)
        fields = {**self.__dict__, **changes}
        fields.pop("_cached_json", None)
        fields.pop("_cached_rows", None)
        fields.pop("_cached_text", None)
        object.__setattr__(copy, "__dict__", fields)
        return copy

    def balance(self, side: Side) -> int:
        """That side's balance in msat."""
        return self.local_msat if side is Side.LOCAL else self.remote_msat

    def with_balance(self, side: Side, msat: int) -> "CommitmentSpec":
        """A copy with `side`'s balance set."""
        if msat < 0:
            raise ValueError(f"{side.value} balance would go negative")
        return self._copy(**{"local_msat" if side is Side.LOCAL else "remote_msat": msat})

    def with_feerate(self, feerate_per_kw: int) -> "CommitmentSpec":
        """A copy with another feerate."""
        return self._copy(feerate_per_kw=feerate_per_kw)

    def with_htlc(self, htlc: Htlc) -> "CommitmentSpec":
        """A copy with `htlc` added at its place in the canonical order (no re-sort of the others)."""
        i = bisect.bisect_right(self.htlcs, htlc._order, key=_ORDER)  # type: ignore[attr-defined]
        return self._copy(htlcs=self.htlcs[:i] + (htlc,) + self.htlcs[i:])

    def without_htlc(self, htlc: Htlc) -> "CommitmentSpec":
        """A copy without `htlc` (an HTLC of this spec, as `htlc()` returns it)."""
        i = self._index(htlc.offerer, htlc.id)
        if i is None:
            raise ValueError(f"no HTLC {htlc.id} offered by {htlc.offerer.value} in this commitment")
        return self._copy(htlcs=self.htlcs[:i] + self.htlcs[i + 1:])

    def offered(self, offerer: Side) -> tuple[Htlc, ...]:
        """The HTLCs `offerer` offered (a slice: the canonical order groups them, LOCAL's first)."""
        split = bisect.bisect_left(self.htlcs, (Side.REMOTE.value,), key=_ORDER)
        return self.htlcs[:split] if offerer is Side.LOCAL else self.htlcs[split:]

    def htlc(self, offerer: Side, htlc_id: int) -> Htlc | None:
        """The HTLC with that offerer and id, if present."""
        i = self._index(offerer, htlc_id)
        return None if i is None else self.htlcs[i]

    def _index(self, offerer: Side, htlc_id: int) -> int | None:
        """The position of the first HTLC with that offerer and id (the HTLCs are in canonical order)."""
        key = (offerer.value, htlc_id)
        i = bisect.bisect_left(self.htlcs, key, key=_ORDER)
        return i if i < len(self.htlcs) and self.htlcs[i]._order == key else None  # type: ignore[attr-defined]

    def mirrored(self) -> "CommitmentSpec":
        """The same commitment seen from the peer's node (balances swapped, offerers flipped)."""
        ext = {n: s.mirrored() if hasattr(s, "mirrored") else s for n, s in self.ext.items()}
        return replace(self, local_msat=self.remote_msat, remote_msat=self.local_msat,
                       htlcs=tuple(replace(h, offerer=h.offerer.other) for h in self.htlcs), ext=ext)

    def to_json(self) -> dict[str, Any]:
        """JSON form (extension states tagged with their version)."""
        return {"feerate_per_kw": self.feerate_per_kw, "local_msat": self.local_msat, "remote_msat": self.remote_msat,
                "htlcs": [dict(h) for h in self._htlcs_json()],
                "ext": {name: {"version": s.VERSION, "data": s.to_json()} for name, s in self.ext.items()}}

    def _htlcs_json(self) -> list[dict[str, Any]]:
        """The HTLCs' JSON, computed once per spec (it is immutable) and shared: read only (the channel
        document is written with every change, and a spec's HTLCs rarely change between two writes)."""
        found = self.__dict__.get("_cached_json")
        if found is None:
            found = [h._json() for h in self.htlcs]
            object.__setattr__(self, "_cached_json", found)
        return found

    def shared_json(self) -> dict[str, Any]:
        """`to_json` without copying the (cached) HTLC entries: for serializing at once, never to modify."""
        return {"feerate_per_kw": self.feerate_per_kw, "local_msat": self.local_msat, "remote_msat": self.remote_msat,
                "htlcs": self._htlcs_json(),
                "ext": {name: {"version": s.VERSION, "data": s.to_json()} for name, s in self.ext.items()}}

    def compact_json(self) -> dict[str, Any]:
        """The JSON form with `htlc_rows` (`Htlc.row`) instead of `htlcs`: half the encoding work for a
        document written with every change (the update log's). Shared: for serializing at once, never to
        modify. `from_json` reads both forms."""
        rows = self.__dict__.get("_cached_rows")
        if rows is None:
            rows = [h.row() for h in self.htlcs]
            object.__setattr__(self, "_cached_rows", rows)
        return {"feerate_per_kw": self.feerate_per_kw, "local_msat": self.local_msat, "remote_msat": self.remote_msat,
                "htlc_rows": rows,
                "ext": {name: {"version": s.VERSION, "data": s.to_json()} for name, s in self.ext.items()}}

    def compact_text(self) -> str:
        """`compact_json` as compact JSON text (`COMPACT` separators), encoded once per spec (it is immutable,
        and a commitment's spec is written with every change of the channel until the next commitment)."""
        found = self.__dict__.get("_cached_text")
        if found is None:
            found = json.dumps(self.compact_json(), separators=COMPACT)
            object.__setattr__(self, "_cached_text", found)
        return found

    @classmethod
    def from_json(cls, d: Mapping[str, Any], extensions: Mapping[str, "ChannelExtension"]) -> "CommitmentSpec":
        """Inverse of `to_json` and `compact_json`; each extension loads (and migrates) its own state."""
        ext = {name: extensions[name].load_state(int(v["version"]), v["data"]) for name, v in d.get("ext", {}).items()}
        htlcs = (tuple(Htlc.from_row(r) for r in d["htlc_rows"]) if "htlc_rows" in d
                 else tuple(Htlc.from_json(h) for h in d["htlcs"]))
        return cls(int(d["feerate_per_kw"]), int(d["local_msat"]), int(d["remote_msat"]), htlcs, ext)


# --- updates ---

@dataclass(frozen=True)
class Update:
    """One BOLT-2 update (or an extension's own kind), owned by the extension that validates and applies it.

    Built-in kinds: `add_htlc` {id, amount_msat, payment_hash, cltv_expiry}, `fulfill_htlc` {id, payment_preimage},
    `fail_htlc` {id, reason}, `fail_malformed_htlc` {id, sha256_of_onion, failure_code}, `update_fee`
    {feerate_per_kw}. `body` is JSON-able (bytes as hex). For removals, `id` names an HTLC the OTHER side offered.
    `tlvs` are extra TLV records of the update message (type -> value): those channeld does not decode itself
    on receipt, and on sending those every extension's `update_tlvs` returned.
    """

    kind: str
    owner: str
    proposer: Side
    body: Mapping[str, Any]
    tlvs: Mapping[int, bytes] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind, "owner": self.owner, "proposer": self.proposer.value, "body": dict(self.body),
                "tlvs": {str(t): v.hex() for t, v in self.tlvs.items()}}

    def shared_json(self) -> dict[str, Any]:
        """`to_json`, computed once (an update never changes while it waits in the log) and shared: for
        serializing at once, never to modify."""
        found = self.__dict__.get("_cached_json")
        if found is None:
            found = self.to_json()
            object.__setattr__(self, "_cached_json", found)
        return found

    def shared_text(self) -> str:
        """`to_json` as compact JSON text (`COMPACT`), encoded once."""
        found = self.__dict__.get("_cached_text")
        if found is None:
            found = json.dumps(self.shared_json(), separators=COMPACT)
            object.__setattr__(self, "_cached_text", found)
        return found

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Update":
        """Inverse of `to_json`."""
        return cls(d["kind"], d["owner"], Side(d["proposer"]), dict(d["body"]),
                   {int(t): bytes.fromhex(v) for t, v in d.get("tlvs", {}).items()})


@dataclass(frozen=True)
class UpdateContext:
    """What an extension sees when checking an update.

    `pending` is the next commitment of the side RECEIVING the update, with every update proposed so far
    (the one checked excluded); `local`/`remote` are both sides' latest signed commitments; `in_flight` are
    the updates not yet irrevocably committed by both sides (oldest first); `state` is this extension's
    channel-level state (from `negotiate`, then from its previous `check_update`). `adds_in_flight`, when
    given, is the (offerer, id) of each `add_htlc` in `in_flight` (see `adding`).
    """

    params: ChannelParams
    pending: CommitmentSpec
    local: CommitmentSpec
    remote: CommitmentSpec
    in_flight: tuple[Update, ...]
    state: ExtensionState | None
    adds_in_flight: frozenset[tuple[Side, int]] | None = None

    def adding(self, offerer: Side, htlc_id: int) -> bool:
        """Whether `in_flight` has the `add_htlc` of that HTLC (O(1) with `adds_in_flight`)."""
        if self.adds_in_flight is not None:
            return (offerer, htlc_id) in self.adds_in_flight
        return any(u.kind == "add_htlc" and u.proposer is offerer and int(u.body["id"]) == htlc_id
                   for u in self.in_flight)


def _htlc_order(h: Htlc) -> tuple[str, int]:
    """The canonical order of a spec's HTLCs: by offerer, then id."""
    return (h.offerer.value, h.id)


_ORDER = operator.attrgetter("_order")   # `_htlc_order`, as each Htlc keeps it (no Python call per comparison)


class UpdateRefused(ValueError):
    """An update that breaks a rule; the message is safe to send to the peer in a warning or error."""


# --- the transaction being composed ---

@dataclass(frozen=True)
class KeyRef:
    """Which key signs a spending path, so signd can derive its secret.

    `basepoint` is one of funding, revocation, payment, delayed_payment, htlc, of `side`; `tweak` is `none`,
    `per_commitment` (BOLT-3 pubkey derivation with the commitment's per-commitment point) or `revocation`
    (needs the commitment owner's per-commitment secret, known once that commitment is revoked).
    """

    side: Side
    basepoint: str
    tweak: str
    pubkey: bytes


@dataclass(frozen=True)
class SpendPath:
    """One way to spend an output: who, with which key, after which delays, with what witness.

    `witness` lists the stack items before the witness script: bytes literals, or the placeholders `sig`
    (DER plus sighash byte, by `key`), `preimage` and `revocation_pubkey`, filled in by
    `commitment.spend_witness`.
    """

    name: str
    spender: Side | None            # None: anyone (an anchor after 16 blocks)
    key: KeyRef | None
    witness: tuple[bytes | str, ...]
    csv: int = 0
    cltv: int = 0


@dataclass(frozen=True)
class SecondStage:
    """The pre-signed transaction spending an output (HTLC-success/timeout): one input, one output.

    The non-owner's signature (in commitment_signed's `htlc_signatures`) uses `remote_sighash`.
    """

    kind: str
    locktime: int
    sequence: int
    amount_sat: int
    witness_script: bytes
    remote_sighash: int
    paths: tuple[SpendPath, ...]


@dataclass(frozen=True)
class OutputDescriptor:
    """What BOLT-5 needs to resolve an output: its kind, script, spending paths, and second stage."""

    kind: str
    owner: str
    witness_script: bytes | None
    paths: tuple[SpendPath, ...]
    second_stage: SecondStage | None = None
    htlc: Htlc | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TxOutDraft:
    """An output being composed: amount, script, which extension owns it, and how to sort and spend it.

    `cltv` is BOLT-3's last tie-breaker (HTLC outputs only; 0 otherwise).
    """

    amount_sat: int
    script_pubkey: bytes
    owner: str
    descriptor: OutputDescriptor | None = None
    cltv: int = 0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TxDraft:
    """A commitment being composed by the extensions in turn (see `commitment.build_commitment`).

    Phase `prepare`: extensions add to `weight` and `charges_sat` (amounts taken from the opener, like
    the anchors) and decide what they will trim. Then the pipeline computes `fee_sat` and sets
    `amounts_msat` (each side's balance after the opener pays fee and charges). Phase `build`: extensions
    append `outputs` (and may read or reorder them; the ordering extension runs last).
    """

    kind: str                      # "commitment"
    owner: Side                    # whose commitment
    number: int                    # commitment number
    params: ChannelParams
    spec: CommitmentSpec
    keys: CommitmentKeys | None = None   # None while only weighing (the prepare phase needs no keys)
    inputs: list[TxIn] = field(default_factory=list)
    outputs: list[TxOutDraft] = field(default_factory=list)
    locktime: int = 0
    version: int = 2
    weight: int = 0
    charges_sat: int = 0
    fee_sat: int = 0
    amounts_msat: dict[Side, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)   # scratch space shared between an extension's phases

    @property
    def anchors(self) -> bool:
        """Whether option_anchors applies."""
        return self.params.channel_type.anchors

    @property
    def feerate_per_kw(self) -> int:
        """The commitment's feerate."""
        return self.spec.feerate_per_kw


class ChannelExtension(Protocol):
    """One composable piece of a channel: outputs, update kinds, open/accept TLVs, state.

    `name` is unique; `feature_bits` are the BOLT-9 bits the peer must support for it; `update_kinds` are the
    `Update.kind`s it owns. Every method is called by channeld (or the commitment pipeline); none may keep
    hidden state: what must survive a restart is returned as an `ExtensionState`.
    """

    name: str
    feature_bits: tuple[int, ...]
    update_kinds: tuple[str, ...]

    def open_tlvs(self, message: str, fields: Mapping[str, Any]) -> dict[int, bytes]:
        """TLV records (type -> value, values encoded with `lnp_plugin_api.wire`'s field codecs) to add to the
        `open_channel` or `accept_channel` (`message`) we send; `fields` are that message's fields."""

    def negotiate(self, ours: Mapping[int, bytes], theirs: Mapping[int, bytes]) -> ExtensionState | None:
        """Agree this extension's channel state from the TLV records of the open/accept_channel we sent and
        the one we received; raise ValueError to leave the extension out (or refuse the channel, if it is
        required)."""

    def update_tlvs(self, update: Update) -> dict[int, bytes]:
        """TLV records this extension adds to the message carrying `update` (any kind, not only its own)."""

    def load_state(self, version: int, data: Mapping[str, Any]) -> ExtensionState:
        """Rebuild (and migrate) a state written by `to_json` with that version."""

    def check_update(self, update: Update, ctx: UpdateContext) -> ExtensionState | None:
        """Raise `UpdateRefused` if `update` may not be proposed now; else return this extension's channel
        state after it (`ctx.state` unchanged when it keeps none). Budget checks are `channel_fees.can_afford`."""

    def apply_update(self, update: Update, spec: CommitmentSpec) -> CommitmentSpec:
        """The spec after `update` (pure: returns a new spec)."""

    def rollback(self, state: ExtensionState | None, dropped: Sequence[Update]) -> ExtensionState | None:
        """The channel state once `dropped` (this extension's updates never signed, forgotten on a
        disconnection, newest last) are undone."""

    def prepare(self, draft: TxDraft) -> None:
        """Phase 1: add weight and opener charges; decide trimming (no keys needed)."""

    def build(self, draft: TxDraft) -> None:
        """Phase 2: add this extension's outputs (with descriptors) to the draft."""


class BaseExtension:
    """Defaults for `ChannelExtension`: no TLVs, no state, no updates, no outputs. Subclass and override."""

    name: str = ""
    feature_bits: tuple[int, ...] = ()
    update_kinds: tuple[str, ...] = ()

    def open_tlvs(self, message: str, fields: Mapping[str, Any]) -> dict[int, bytes]:
        """No TLVs."""
        return {}

    def negotiate(self, ours: Mapping[int, bytes], theirs: Mapping[int, bytes]) -> ExtensionState | None:
        """No state."""
        return None

    def update_tlvs(self, update: Update) -> dict[int, bytes]:
        """No TLVs."""
        return {}

    def load_state(self, version: int, data: Mapping[str, Any]) -> ExtensionState:
        """No state to load."""
        raise ValueError(f"extension {self.name!r} keeps no state")

    def check_update(self, update: Update, ctx: UpdateContext) -> ExtensionState | None:
        """Owns no updates."""
        raise UpdateRefused(f"extension {self.name!r} has no update {update.kind!r}")

    def apply_update(self, update: Update, spec: CommitmentSpec) -> CommitmentSpec:
        """Owns no updates."""
        raise UpdateRefused(f"extension {self.name!r} has no update {update.kind!r}")

    def rollback(self, state: ExtensionState | None, dropped: Sequence[Update]) -> ExtensionState | None:
        """Nothing to undo."""
        return state

    def prepare(self, draft: TxDraft) -> None:
        """Nothing to weigh."""

    def build(self, draft: TxDraft) -> None:
        """No outputs."""
