"""BOLT-2's two-phase updates as an explicit log: which update is in which commitment, and when.

Every update (an HTLC add/fulfill/fail, update_fee, or an extension's own kind) is one `LogEntry` that
records the first LOCAL and the first REMOTE commitment number that include it. The rules (BOLT-2 "Normal
Operation"), for an update proposed by side P to side R:

1. proposed: in no commitment (`in_local` and `in_remote` both None);
2. signed: P sends commitment_signed, R's next commitment includes it (`in_<R>` set);
3. acked: R revokes its previous commitment (revoke_and_ack); it is now due in P's commitment;
4. in P's commitment: R sends commitment_signed (`in_<P>` set);
5. irrevocably committed: P revokes its previous commitment. The entry is then dropped: both latest specs
   contain its effect.

So a commitment we SIGN for the peer (`sign_remote`) includes our proposals not yet in it and the peer's
proposals that are in our latest commitment once we revoked the previous one; a commitment the peer signs for
us (`receive_commitment_signed`) includes the peer's proposals not yet in it and ours that the peer acked. At
most one commitment per side is unrevoked besides the latest (we need the peer's next per-commitment point,
which comes with its revoke_and_ack, before signing again).

All methods are pure: they return a new `UpdateLog`. channeld persists `to_json()` with every change, in the
same transaction as the message that depends on it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .channel import (COMPACT, ChannelExtension, ChannelParams, CommitmentSpec, ExtensionState, Side, Update,
                      UpdateContext, UpdateRefused)
from .channel_fees import can_afford

LOG_VERSION = 2   # 2: the specs' HTLCs as rows (`CommitmentSpec.compact_json`); version 1 still loads


class ProtocolViolation(ValueError):
    """A message out of order for the log's state (e.g. revoke_and_ack that nobody awaits)."""


@dataclass(frozen=True)
class LogEntry:
    """One update and the first LOCAL/REMOTE commitment numbers that include it (None: not yet)."""

    seq: int
    update: Update
    in_local: int | None = None
    in_remote: int | None = None

    def in_commitment(self, owner: Side) -> int | None:
        """The first commitment of `owner` that includes it."""
        return self.in_local if owner is Side.LOCAL else self.in_remote

    def to_json(self) -> dict[str, Any]:
        """JSON form (the update's part shared: read only)."""
        return {"seq": self.seq, "update": self.update.shared_json(), "in_local": self.in_local,
                "in_remote": self.in_remote}

    def text(self) -> str:
        """`to_json` as compact JSON text (the update's own text encoded once: an entry is made again each time
        a commitment includes it, its update never changes)."""
        return (f'{{"seq":{self.seq},"update":{self.update.shared_text()},"in_local":{_number(self.in_local)},'
                f'"in_remote":{_number(self.in_remote)}}}')


@dataclass(frozen=True)
class UpdateLog:
    """Both sides' latest commitment specs and numbers, revocations due, and the updates in flight.

    `local_revoke_owed`: we accepted commitment_signed for `local_number` and have not yet revoked the
    previous one. `remote_revoke_awaited`: we signed `remote_number` and await the peer's revoke_and_ack.
    `states` are the extensions' channel-level states (e.g. the next HTLC ids).
    """

    params: ChannelParams
    local: CommitmentSpec
    remote: CommitmentSpec
    local_number: int = 0
    remote_number: int = 0
    local_revoke_owed: bool = False
    remote_revoke_awaited: bool = False
    entries: tuple[LogEntry, ...] = ()
    next_seq: int = 0
    states: Mapping[str, ExtensionState] = field(default_factory=dict)
    # `pending` by side, computed once per log: a log is immutable, and `add` derives its successor's
    # from this one's (one update applied) instead of replaying every update in flight each time
    _pending: dict[Side, CommitmentSpec] = field(default_factory=dict, init=False, repr=False, compare=False)
    # what `_in_flight` computes from `entries` (the updates, the HTLC adds and removals among them): a
    # successor with the same updates, or one more, takes it over instead of scanning every entry again
    _flight: tuple[tuple[Update, ...], frozenset[tuple[Side, int]], frozenset[tuple[Side, int | None]]] | None = \
        field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def start(cls, params: ChannelParams, spec: CommitmentSpec, extensions: Sequence[ChannelExtension],
              states: Mapping[str, ExtensionState] | None = None) -> "UpdateLog":
        """A channel's log after funding: commitment 0 on both sides with `spec`.

        `states` are what each extension's `negotiate` returned (missing ones are asked with no TLVs).
        """
        found = dict(states or {})
        for ext in extensions:
            if ext.name not in found:
                state = ext.negotiate({}, {})
                if state is not None:
                    found[ext.name] = state
        return cls(params, spec, spec, states=found)

    def _evolve(self, **changes: Any) -> "UpdateLog":
        """`dataclasses.replace` without its per-call field introspection (a log is replaced at every
        message); the copy starts with no cached `pending` or `_flight`."""
        copy = object.__new__(UpdateLog)
        object.__setattr__(copy, "__dict__", {**self.__dict__, **changes, "_pending": {}, "_flight": None})
        return copy

    def _in_flight(self) -> tuple[tuple[Update, ...], frozenset[tuple[Side, int]], frozenset[tuple[Side, int | None]]]:
        """The updates in the log (oldest first), the (offerer, id) of each HTLC being added, and the
        (offerer, id) each other update names by its body's `id` (an HTLC being removed)."""
        if self._flight is None:
            updates = tuple(e.update for e in self.entries)
            adds = frozenset((u.proposer, int(u.body["id"])) for u in updates if u.kind == "add_htlc")
            removals = frozenset(_removal(u) for u in updates if u.kind != "add_htlc")
            object.__setattr__(self, "_flight", (updates, adds, removals))
        return self._flight  # type: ignore[return-value]

    # --- reading ---

    def latest(self, owner: Side) -> CommitmentSpec:
        """The spec of `owner`'s latest commitment."""
        return self.local if owner is Side.LOCAL else self.remote

    def number(self, owner: Side) -> int:
        """`owner`'s latest commitment number."""
        return self.local_number if owner is Side.LOCAL else self.remote_number

    def pending(self, owner: Side, extensions: Sequence[ChannelExtension]) -> CommitmentSpec:
        """`owner`'s next commitment if every update proposed so far were in it (cached: `extensions` are
        always the channel's own)."""
        found = self._pending.get(owner)
        if found is None:
            todo = [e.update for e in self.entries if e.in_commitment(owner) is None]
            found = self._pending[owner] = _apply(self.latest(owner), todo, extensions)
        return found

    def included(self, owner: Side, number: int) -> list[Update]:
        """The updates `owner`'s commitment `number` added (among those still in the log)."""
        return [e.update for e in self.entries if e.in_commitment(owner) == number]

    def _due(self, owner: Side) -> list[LogEntry]:
        """Entries `owner`'s next commitment must include (see the module docstring)."""
        return [e for e in self.entries if e.in_commitment(owner) is None and self._is_due(e, owner)]

    def _is_due(self, e: LogEntry, owner: Side) -> bool:
        """Whether `e`, in no commitment of `owner` yet, is due in its next one: a proposal of the signer, or
        one of the owner's that the signer acked."""
        return e.update.proposer is owner.other or self._acked(e, owner.other)

    def _acked(self, e: LogEntry, holder: Side) -> bool:
        """Whether a commitment of `holder` includes `e` and the commitment before that one is revoked."""
        n = e.in_commitment(holder)
        if n is None:
            return False
        owed = self.local_revoke_owed if holder is Side.LOCAL else self.remote_revoke_awaited
        return n < self.number(holder) or not owed

    @property
    def next_commitment_number(self) -> int:
        """channel_reestablish's `next_commitment_number`: the commitment_signed we expect next."""
        return self.local_number + 1

    @property
    def next_revocation_number(self) -> int:
        """channel_reestablish's `next_revocation_number`: the commitment the next revoke_and_ack we expect
        revokes."""
        return self.remote_number - 1 if self.remote_revoke_awaited else self.remote_number

    def has_changes(self, owner: Side) -> bool:
        """Whether `owner`'s next commitment would include any update (a commitment_signed is due)."""
        return any(e.in_commitment(owner) is None and self._is_due(e, owner) for e in self.entries)

    def can_sign_remote(self) -> bool:
        """Whether we may send commitment_signed now: changes due, no revocation awaited or owed."""
        return not self.remote_revoke_awaited and not self.local_revoke_owed and self.has_changes(Side.REMOTE)

    def irrevocably_committed(self, offerer: Side, htlc_id: int) -> bool:
        """Whether that HTLC's addition is irrevocably committed by both sides and it is not being removed
        (BOLT-2: only then may it be fulfilled or failed)."""
        _, adds, removals = self._in_flight()
        key = (offerer, htlc_id)
        return (key not in adds and self.local.htlc(offerer, htlc_id) is not None
                and self.remote.htlc(offerer, htlc_id) is not None and key not in removals)

    # --- proposing ---

    def _context(self, update: Update, extensions: Sequence[ChannelExtension]) -> tuple[ChannelExtension,
                                                                                       UpdateContext]:
        ext = _owner(update, extensions)
        receiver = update.proposer.other
        updates, adds, _ = self._in_flight()
        ctx = UpdateContext(self.params, self.pending(receiver, extensions), self.local, self.remote, updates,
                            self.states.get(ext.name), adds)
        return ext, ctx

    def check(self, update: Update, extensions: Sequence[ChannelExtension]) -> ExtensionState | None:
        """The owning extension's checks; raises `UpdateRefused`, else returns its next channel state.

        A malformed body (a missing field, bad hex) is refused too, never raised as another error.
        """
        ext, ctx = self._context(update, extensions)
        if update.kind not in ext.update_kinds:
            raise UpdateRefused(f"extension {ext.name!r} does not own update {update.kind!r}")
        try:
            return ext.check_update(update, ctx)
        except UpdateRefused:
            raise
        except (KeyError, ValueError, TypeError) as e:
            raise UpdateRefused(f"malformed {update.kind}: {e!r}") from None

    def preview(self, update: Update, extensions: Sequence[ChannelExtension]) -> dict[Side, tuple[CommitmentSpec,
                                                                                            CommitmentSpec]]:
        """Each side's pending commitment without and with `update` (for budget and dust-exposure checks)."""
        changes = {}
        for owner in (Side.LOCAL, Side.REMOTE):
            before = self.pending(owner, extensions)
            changes[owner] = (before, _apply(before, [update], extensions))
        return changes

    def budget_check(self, update: Update, side: Side, extensions: Sequence[ChannelExtension],
                     fee_spike: bool = False) -> str | None:
        """`channel_fees.can_afford` for `update` on both sides' pending commitments."""
        return can_afford(self.params, self.preview(update, extensions), side, extensions, fee_spike)

    def budget_after(self, before: "UpdateLog", side: Side, extensions: Sequence[ChannelExtension],
                     fee_spike: bool = False) -> str | None:
        """`budget_check` of the update that made this log from `before` (`before.add(update)`): the same
        answer, from both logs' pending specs (already computed) instead of applying the update again."""
        changes = {owner: (before.pending(owner, extensions), self.pending(owner, extensions))
                   for owner in (Side.LOCAL, Side.REMOTE)}
        return can_afford(self.params, changes, side, extensions, fee_spike)

    def add(self, update: Update, extensions: Sequence[ChannelExtension]) -> "UpdateLog":
        """Record an update we propose (LOCAL) or receive (REMOTE), after the owning extension's checks."""
        state = self.check(update, extensions)
        states = dict(self.states)
        if state is not None:
            states[_owner(update, extensions).name] = state
        entry = LogEntry(self.next_seq, update)
        log = self._evolve(entries=self.entries + (entry,), next_seq=self.next_seq + 1, states=states)
        for owner, spec in self._pending.items():   # the new entry is in no commitment: pending on both sides
            log._pending[owner] = _apply(spec, [update], extensions)
        if self._flight is not None:
            updates, adds, removals = self._flight
            if update.kind == "add_htlc":
                adds = adds | {(update.proposer, int(update.body["id"]))}
            else:
                removals = removals | {_removal(update)}
            object.__setattr__(log, "_flight", (updates + (update,), adds, removals))
        return log

    # --- commitment_signed and revoke_and_ack ---

    def sign_remote(self, extensions: Sequence[ChannelExtension]) -> tuple["UpdateLog", CommitmentSpec]:
        """We send commitment_signed: the peer's next commitment and its spec (to build and sign)."""
        if self.remote_revoke_awaited:
            raise ProtocolViolation("cannot sign: the peer has not revoked its previous commitment")
        if self.local_revoke_owed:
            raise ProtocolViolation("cannot sign: we owe a revoke_and_ack first")
        return self._commit(Side.REMOTE, extensions, require_changes=True)

    def receive_commitment_signed(self, extensions: Sequence[ChannelExtension]) -> tuple["UpdateLog",
                                                                                          CommitmentSpec]:
        """The peer sent commitment_signed: our next commitment and its spec (to build and verify).

        A commitment_signed without updates is accepted (the spec allows one that only bumps the number).
        """
        if self.local_revoke_owed:
            raise ProtocolViolation("commitment_signed before we revoked the previous one")
        return self._commit(Side.LOCAL, extensions, require_changes=False)

    def _commit(self, owner: Side, extensions: Sequence[ChannelExtension],
                require_changes: bool) -> tuple["UpdateLog", CommitmentSpec]:
        todo = [e for e in self.entries if e.in_commitment(owner) is None]
        due = [e for e in todo if self._is_due(e, owner)]
        if require_changes and not due:
            raise ProtocolViolation("no update to commit")
        n = self.number(owner) + 1
        # when every pending update is due (the usual case), the new commitment is the pending spec already
        # computed (the same updates applied in the same order): no update is applied again
        complete = len(due) == len(todo) and owner in self._pending
        spec = self._pending[owner] if complete else _apply(self.latest(owner), [e.update for e in due], extensions)
        marked = {e.seq for e in due}
        local = owner is Side.LOCAL
        entries = tuple((LogEntry(e.seq, e.update, n, e.in_remote) if local else LogEntry(e.seq, e.update, e.in_local, n))
                        if e.seq in marked else e for e in self.entries)
        if owner is Side.LOCAL:
            log = self._evolve(local=spec, local_number=n, local_revoke_owed=True, entries=entries)
        else:
            log = self._evolve(remote=spec, remote_number=n, remote_revoke_awaited=True, entries=entries)
        if owner.other in self._pending:   # the other side's latest commitment and pending updates are unchanged
            log._pending[owner.other] = self._pending[owner.other]
        if complete:
            log._pending[owner] = spec     # nothing left pending beyond the new commitment
        object.__setattr__(log, "_flight", self._flight)   # the same updates
        return log, spec

    def send_revoke(self) -> "UpdateLog":
        """We send revoke_and_ack for our previous commitment."""
        if not self.local_revoke_owed:
            raise ProtocolViolation("no commitment of ours to revoke")
        log = self._evolve(local_revoke_owed=False)
        log._pending.update(self._pending)
        return log._collect(self._flight)

    def receive_revoke(self) -> "UpdateLog":
        """The peer revoked its previous commitment."""
        if not self.remote_revoke_awaited:
            raise ProtocolViolation("revoke_and_ack without a commitment_signed of ours")
        log = self._evolve(remote_revoke_awaited=False)
        log._pending.update(self._pending)
        return log._collect(self._flight)

    def _collect(self, flight: Any) -> "UpdateLog":
        """Drop entries that both sides have irrevocably committed (`flight`: `_in_flight` of these entries, or
        None)."""
        keep = tuple(e for e in self.entries
                     if not (self._acked(e, Side.LOCAL) and self._acked(e, Side.REMOTE)))
        log = self._evolve(entries=keep)
        log._pending.update(self._pending)   # the dropped entries are in both latest commitments already
        if len(keep) == len(self.entries):
            object.__setattr__(log, "_flight", flight)
        return log

    def disconnected(self, extensions: Sequence[ChannelExtension]) -> tuple["UpdateLog", list[Update]]:
        """Forget the updates never signed into the receiver's commitment (BOLT-2: a disconnection reverses
        them); returns the log and the forgotten updates (ours may be proposed again after reestablish)."""
        dropped = [e for e in self.entries if e.in_commitment(e.update.proposer.other) is None]
        if not dropped:
            return self, []
        gone = {e.seq for e in dropped}
        states = dict(self.states)
        for ext in extensions:
            mine = [e.update for e in dropped if e.update.owner == ext.name]
            if mine:
                state = ext.rollback(states.get(ext.name), mine)
                if state is not None:
                    states[ext.name] = state
        entries = tuple(e for e in self.entries if e.seq not in gone)
        return self._evolve(entries=entries, states=states), [e.update for e in dropped]

    # --- persistence ---

    def to_json(self) -> dict[str, Any]:
        """JSON form, with `version` for migrations (parts of it shared with the specs and updates: read only)."""
        # written with every change of the channel: the specs' HTLCs and the updates are encoded once each
        # (shared, read only: the document goes straight to json.dumps)
        return {"version": LOG_VERSION, "local": self.local.compact_json(), "remote": self.remote.compact_json(),
                "local_number": self.local_number, "remote_number": self.remote_number,
                "local_revoke_owed": self.local_revoke_owed, "remote_revoke_awaited": self.remote_revoke_awaited,
                "next_seq": self.next_seq,
                "entries": [e.to_json() for e in self.entries],
                "states": {n: {"version": s.VERSION, "data": s.to_json()} for n, s in self.states.items()}}

    def to_text(self) -> str:
        """`to_json` as compact JSON text (the same data; the keys in another order): the specs and entries,
        unchanged between most writes, are encoded once each and spliced in."""
        rest = json.dumps({"version": LOG_VERSION, "local_number": self.local_number,
                           "remote_number": self.remote_number, "local_revoke_owed": self.local_revoke_owed,
                           "remote_revoke_awaited": self.remote_revoke_awaited, "next_seq": self.next_seq,
                           "states": {n: {"version": s.VERSION, "data": s.to_json()} for n, s in self.states.items()}},
                          separators=COMPACT)
        return "".join((rest[:-1], ',"local":', self.local.compact_text(), ',"remote":', self.remote.compact_text(),
                        ',"entries":[', ",".join(e.text() for e in self.entries), "]}"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], params: ChannelParams,
                  extensions: Sequence[ChannelExtension]) -> "UpdateLog":
        """Inverse of `to_json`; each extension loads (and migrates) its own states."""
        if int(data["version"]) not in (1, LOG_VERSION):   # 1: specs with `htlcs` (CommitmentSpec.from_json)
            raise ValueError(f"unknown update log version {data['version']}")
        by_name = {e.name: e for e in extensions}
        states = {n: by_name[n].load_state(int(v["version"]), v["data"]) for n, v in data["states"].items()}
        entries = tuple(LogEntry(int(e["seq"]), Update.from_json(e["update"]), e["in_local"], e["in_remote"])
                        for e in data["entries"])
        return cls(params, CommitmentSpec.from_json(data["local"], by_name),
                   CommitmentSpec.from_json(data["remote"], by_name), int(data["local_number"]),
                   int(data["remote_number"]), bool(data["local_revoke_owed"]), bool(data["remote_revoke_awaited"]),
                   entries, int(data["next_seq"]), states)


def update_owner(kind: str, extensions: Sequence[ChannelExtension]) -> str:
    """The name of the extension owning update `kind` (e.g. `add_htlc` -> `htlcs`), to build an `Update`
    from a received message; `UpdateRefused` if none of the channel's extensions owns it."""
    for ext in extensions:
        if kind in ext.update_kinds:
            return ext.name
    raise UpdateRefused(f"this channel has no extension for update {kind!r}")


def _owner(update: Update, extensions: Sequence[ChannelExtension]) -> ChannelExtension:
    for ext in extensions:
        if ext.name == update.owner:
            return ext
    raise UpdateRefused(f"update {update.kind!r} for extension {update.owner!r}, which this channel has not")


def _number(n: int | None) -> str:
    """An optional integer as JSON text."""
    return "null" if n is None else str(int(n))


def _removal(update: Update) -> tuple[Side, int | None]:
    """The (offerer, id) of the HTLC an update other than an add names by its body's `id` (None: no integer id)."""
    try:
        return update.proposer.other, int(update.body.get("id", -1))
    except (TypeError, ValueError):
        return update.proposer.other, None


def _apply(spec: CommitmentSpec, updates: Sequence[Update], extensions: Sequence[ChannelExtension]) -> CommitmentSpec:
    for u in updates:
        spec = _owner(u, extensions).apply_update(u, spec)
    return spec
