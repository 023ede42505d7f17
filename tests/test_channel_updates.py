"""The update log (BOLT-2's two-phase updates) and the fee/dust/reserve budget.

Two simulated nodes exchange updates, commitment_signed and revoke_and_ack in order; hypothesis drives them
with random interleavings and checks that both views converge to the same commitments (the very same
transactions), that money is conserved at every step, and that persistence round-trips.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lnp_plugin_api.bolt3 import point
from lnp_plugin_api.bolt_extensions import HtlcIds, extensions_for
from lnp_plugin_api.channel import (ANCHORS, STATIC_REMOTEKEY, Basepoints, ChannelParams, ChannelType,
                                    CommitmentSpec, Htlc, Side, SideConfig, Update, UpdateRefused)
from lnp_plugin_api.channel_fees import (budget, can_afford, check_initial, dust_exposure_msat, fee_for_weight,
                                         initial_spec, is_trimmed, reserve_shortfall_msat)
from lnp_plugin_api.channel_updates import ProtocolViolation, UpdateLog, update_owner
from lnp_plugin_api.commitment import build_commitment

FUNDING_SAT = 1_000_000
L, R = Side.LOCAL, Side.REMOTE


def side_config(seed: int, dust: int = 546, reserve: int = 10_000) -> SideConfig:
    pts = [point(bytes([seed, i]) * 16) for i in range(5)]
    return SideConfig(pts[0], Basepoints(*pts[1:]), dust_limit_sat=dust, to_self_delay=144,
                      channel_reserve_sat=reserve, max_accepted_htlcs=30)


def make_params(channel_type: ChannelType = STATIC_REMOTEKEY, **kw: int) -> ChannelParams:
    return ChannelParams(side_config(1, **kw), side_config(2, **kw), "11" * 32, 0, FUNDING_SAT, L, channel_type)


def pcp(owner_seed: int, n: int) -> bytes:
    return point(hashlib.sha256(bytes([owner_seed]) + n.to_bytes(8, "big")).digest())


def preimage(offerer_seed: int, htlc_id: int) -> bytes:
    return hashlib.sha256(bytes([offerer_seed]) + htlc_id.to_bytes(8, "big")).digest()


@dataclass
class Node:
    seed: int
    params: ChannelParams
    log: UpdateLog
    exts: list = field(default_factory=list)
    outbox: list = field(default_factory=list)

    def propose(self, update: Update) -> bool:
        try:
            self.log.check(update, self.exts)
        except UpdateRefused:
            return False
        if update.kind == "add_htlc" and self.log.budget_check(update, L, self.exts, fee_spike=False):
            return False
        self.log = self.log.add(update, self.exts)
        self.outbox.append(("update", update))
        return True

    def add_htlc(self, amount_msat: int, cltv: int = 600) -> bool:
        ids = self.log.states["htlcs"]
        assert isinstance(ids, HtlcIds)
        hid = ids.next(L)
        payment_hash = hashlib.sha256(preimage(self.seed, hid)).hexdigest()
        body = {"id": hid, "amount_msat": amount_msat, "payment_hash": payment_hash, "cltv_expiry": cltv}
        return self.propose(Update("add_htlc", "htlcs", L, body))

    def remove(self, index: int, fulfill: bool) -> bool:
        theirs = [h for h in self.log.local.htlcs if h.offerer is R and self.log.irrevocably_committed(R, h.id)]
        if not theirs:
            return False
        h = theirs[index % len(theirs)]
        other_seed = 3 - self.seed
        if fulfill:
            body = {"id": h.id, "payment_preimage": preimage(other_seed, h.id).hex()}
            return self.propose(Update("fulfill_htlc", "htlcs", L, body))
        return self.propose(Update("fail_htlc", "htlcs", L, {"id": h.id, "reason": "00"}))

    def sign(self) -> bool:
        if not self.log.can_sign_remote():
            return False
        self.log, spec = self.log.sign_remote(self.exts)
        self.outbox.append(("commit", self.log.remote_number))
        return True

    def receive(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "update":
            self.log = self.log.add(replace(msg[1], proposer=R), self.exts)
        elif kind == "commit":
            self.log, _ = self.log.receive_commitment_signed(self.exts)
            assert self.log.local_number == msg[1]
            self.log = self.log.send_revoke()
            self.outbox.append(("revoke",))
        else:
            self.log = self.log.receive_revoke()


def pair(channel_type: ChannelType = STATIC_REMOTEKEY, local_msat: int = 600_000_000,
         feerate: int = 2500) -> tuple[Node, Node]:
    p = make_params(channel_type)
    exts = extensions_for(channel_type)
    spec = CommitmentSpec(feerate, local_msat, FUNDING_SAT * 1000 - local_msat)
    a = Node(1, p, UpdateLog.start(p, spec, exts), exts)
    b = Node(2, p.mirrored(), UpdateLog.start(p.mirrored(), spec.mirrored(), exts), exts)
    return a, b


def deliver(src: Node, dst: Node) -> bool:
    if not src.outbox:
        return False
    dst.receive(src.outbox.pop(0))
    return True


def settle(a: Node, b: Node) -> None:
    """Deliver everything and sign while anything is due, until both are quiet."""
    for _ in range(1000):
        moved = deliver(a, b) or deliver(b, a)
        if not moved and not (a.sign() or b.sign()):
            return
    raise AssertionError("did not settle")


def conserved(spec: CommitmentSpec) -> bool:
    return spec.local_msat + spec.remote_msat + sum(h.amount_msat for h in spec.htlcs) == FUNDING_SAT * 1000


def assert_converged(a: Node, b: Node) -> None:
    assert a.log.local == b.log.remote.mirrored() and a.log.remote == b.log.local.mirrored()
    assert a.log.local == a.log.remote
    assert (a.log.local_number, a.log.remote_number) == (b.log.remote_number, b.log.local_number)
    assert a.log.entries == () and b.log.entries == ()
    # The very same transactions on both sides.
    n = a.log.local_number
    mine = build_commitment(a.params, a.log.local, L, n, pcp(1, n), a.exts)
    theirs = build_commitment(b.params, b.log.remote, R, n, pcp(1, n), b.exts)
    assert mine.tx == theirs.tx and [s.tx for s in mine.second_stages] == [s.tx for s in theirs.second_stages]


def test_an_update_walks_through_both_commitments_in_order() -> None:
    a, b = pair()
    assert a.add_htlc(5_000_000)
    entry = a.log.entries[0]
    assert (entry.in_local, entry.in_remote) == (None, None)
    assert (a.log.next_commitment_number, a.log.next_revocation_number) == (1, 0)
    assert a.sign()
    assert (a.log.next_commitment_number, a.log.next_revocation_number) == (1, 0)
    assert a.log.entries[0].in_remote == 1 and a.log.included(R, 1)[0].kind == "add_htlc"
    assert a.log.remote.htlc(L, 0) and not a.log.local.htlc(L, 0)
    deliver(a, b)                                    # update_add_htlc
    assert b.log.entries[0].update.proposer is R and not b.log.has_changes(R)  # not acked by B yet
    deliver(a, b)                                    # commitment_signed -> B's local 1 has it; B revokes
    assert b.log.local.htlc(R, 0) and b.log.entries[0].in_local == 1
    assert b.log.has_changes(R)                      # now due in A's commitment
    assert not a.log.has_changes(L)
    deliver(b, a)                                    # revoke_and_ack: acked, due in A's commitment
    assert a.log.next_revocation_number == 1
    assert a.log.has_changes(L) and not a.log.local.htlc(L, 0)
    assert b.sign()
    assert b.log.entries[0].in_remote == 1
    deliver(b, a)                                    # commitment_signed -> A's local 1 has it; A revokes
    assert a.log.local.htlc(L, 0) and a.log.entries == ()   # irrevocably committed: dropped
    assert a.log.irrevocably_committed(L, 0)
    assert not b.log.irrevocably_committed(R, 0)     # B has not seen A's revoke_and_ack yet
    deliver(a, b)
    assert b.log.irrevocably_committed(R, 0)
    assert_converged(a, b)
    # B may now fulfill it; A gets paid back nothing, B gains the amount once both commit.
    assert b.remove(0, fulfill=True)
    settle(a, b)
    assert_converged(a, b)
    assert a.log.local.local_msat == 600_000_000 - 5_000_000 and a.log.local.htlcs == ()


def test_removal_refused_before_the_add_is_irrevocable() -> None:
    a, b = pair()
    a.add_htlc(5_000_000)
    a.sign()
    deliver(a, b), deliver(a, b)
    fulfill = Update("fulfill_htlc", "htlcs", L, {"id": 0, "payment_preimage": preimage(1, 0).hex()})
    with pytest.raises(UpdateRefused):
        b.log.check(fulfill, b.exts)
    wrong = Update("fulfill_htlc", "htlcs", L, {"id": 0, "payment_preimage": "00" * 32})
    settle(a, b)
    with pytest.raises(UpdateRefused, match="preimage"):
        b.log.check(wrong, b.exts)


def test_protocol_order_is_enforced() -> None:
    a, b = pair()
    with pytest.raises(ProtocolViolation):
        a.log.sign_remote(a.exts)                    # nothing to sign
    with pytest.raises(ProtocolViolation):
        a.log.receive_revoke()
    a.add_htlc(1_000_000)
    a.sign()
    a.add_htlc(1_000_000)
    assert not a.sign()                              # awaiting revoke_and_ack
    with pytest.raises(ProtocolViolation):
        a.log.sign_remote(a.exts)
    with pytest.raises(UpdateRefused, match="id"):
        bad = Update("add_htlc", "htlcs", R, {"id": 5, "amount_msat": 1000, "payment_hash": "00" * 32,
                                              "cltv_expiry": 10})
        b.log.check(bad, b.exts)
    with pytest.raises(UpdateRefused, match="did not open"):
        b.log.check(Update("update_fee", "funding", L, {"feerate_per_kw": 300}), b.exts)


def test_malformed_updates_are_refused_not_raised() -> None:
    a, _ = pair()
    assert update_owner("add_htlc", a.exts) == "htlcs" and update_owner("update_fee", a.exts) == "funding"
    with pytest.raises(UpdateRefused, match="no extension"):
        update_owner("add_ptlc", a.exts)
    for body in ({}, {"id": 0, "amount_msat": 1000, "payment_hash": "zz", "cltv_expiry": 5},
                 {"id": "x", "amount_msat": 1000, "payment_hash": "00" * 32, "cltv_expiry": 5}):
        with pytest.raises(UpdateRefused, match="malformed"):
            a.log.check(Update("add_htlc", "htlcs", R, body), a.exts)
    with pytest.raises(UpdateRefused, match="32 bytes"):
        a.log.check(Update("add_htlc", "htlcs", R, {"id": 0, "amount_msat": 1000, "payment_hash": "00",
                                                    "cltv_expiry": 5}), a.exts)
    with pytest.raises(UpdateRefused, match="malformed"):
        a.log.check(Update("update_fee", "funding", L, {"feerate_per_kw": None}), a.exts)


def test_disconnection_forgets_unsigned_updates_and_their_ids() -> None:
    a, b = pair()
    a.add_htlc(1_000_000)
    a.sign()
    a.add_htlc(2_000_000)                            # never signed
    deliver(a, b), deliver(a, b), deliver(a, b)
    a.log, dropped = a.log.disconnected(a.exts)
    b.log, dropped_b = b.log.disconnected(b.exts)
    assert [u.body["id"] for u in dropped] == [1] and [u.body["id"] for u in dropped_b] == [1]
    assert a.log.states["htlcs"].next(L) == 1 and b.log.states["htlcs"].next(R) == 1
    a.outbox.clear()
    b.outbox = [m for m in b.outbox if m[0] == "revoke"]
    settle(a, b)
    assert_converged(a, b)
    assert [h.id for h in a.log.local.htlcs] == [0]


def test_log_round_trips_through_json() -> None:
    a, b = pair(ANCHORS)
    a.add_htlc(3_000_000)
    a.sign()
    deliver(a, b), deliver(a, b)
    for node in (a, b):
        data = json.loads(json.dumps(node.log.to_json()))
        assert UpdateLog.from_json(data, node.params, node.exts) == node.log
    with pytest.raises(ValueError, match="version"):
        UpdateLog.from_json({**a.log.to_json(), "version": 99}, a.params, a.exts)
    blinded = Update("add_htlc", "htlcs", L, {"id": 1}, {0: b"\x02" * 33})
    assert Update.from_json(json.loads(json.dumps(blinded.to_json()))) == blinded


def test_htlc_order_does_not_matter() -> None:
    """Both nodes apply the same updates in different orders: their specs must still compare equal."""
    h1, h2 = Htlc(L, 0, 1000, b"\x01" * 32, 5), Htlc(R, 0, 2000, b"\x02" * 32, 6)
    assert CommitmentSpec(253, 1, 2, (h1, h2)) == CommitmentSpec(253, 1, 2, (h2, h1))


ACTIONS = st.lists(st.tuples(st.sampled_from(["add", "fulfill", "fail", "fee", "sign", "deliver", "disconnect"]),
                             st.booleans(), st.integers(0, 60_000_000)), max_size=100)


def act(a: Node, b: Node, action: str, first: bool, value: int) -> None:
    """One step of a generated interleaving: A or B adds, removes, proposes a fee, signs, disconnects or
    delivers what it sent."""
    me, peer = (a, b) if first else (b, a)
    if action == "add":
        me.add_htlc(max(1, value))
    elif action in ("fulfill", "fail"):
        me.remove(value, action == "fulfill")
    elif action == "fee" and me is a:
        me.propose(Update("update_fee", "funding", L, {"feerate_per_kw": 253 + value % 5000}))
    elif action == "sign":
        me.sign()
    elif action == "disconnect":
        # Only unsigned updates are lost (channel_reestablish retransmits signatures and revocations).
        if all(m[0] == "update" for m in a.outbox + b.outbox):
            a.outbox.clear(), b.outbox.clear()
            a.log, _ = a.log.disconnected(a.exts)
            b.log, _ = b.log.disconnected(b.exts)
    else:
        deliver(me, peer)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS, anchors=st.booleans())
def test_both_views_converge(actions: list, anchors: bool) -> None:
    a, b = pair(ANCHORS if anchors else STATIC_REMOTEKEY)
    for action, first, value in actions:
        act(a, b, action, first, value)
        for node in (a, b):
            assert conserved(node.log.local) and conserved(node.log.remote)
            for e in node.log.entries:   # an update reaches its proposer's commitment only after the receiver's
                p = e.update.proposer
                assert e.in_commitment(p) is None or e.in_commitment(p.other) is not None
        # Whenever both nodes hold the same commitment number, they agree on its contents.
        if a.log.remote_number == b.log.local_number:
            assert a.log.remote == b.log.local.mirrored()
        if a.log.local_number == b.log.remote_number:
            assert a.log.local == b.log.remote.mirrored()
    settle(a, b)
    assert_converged(a, b)


def straight_pending(log: UpdateLog, owner: Side, exts: list) -> CommitmentSpec:
    """`pending` computed the plain way, from the entries, without any cache."""
    spec = log.latest(owner)
    for e in log.entries:
        if e.in_commitment(owner) is None:
            spec = next(x for x in exts if x.name == e.update.owner).apply_update(e.update, spec)
    return spec


def straight_irrevocable(log: UpdateLog, offerer: Side, htlc_id: int) -> bool:
    """`irrevocably_committed` computed the plain way, by scanning the entries."""
    adding = any(e.update.kind == "add_htlc" and e.update.proposer is offerer and int(e.update.body["id"]) == htlc_id
                 for e in log.entries)
    removing = any(e.update.kind != "add_htlc" and e.update.proposer is offerer.other
                   and int(e.update.body.get("id", -1)) == htlc_id for e in log.entries)
    return (not adding and not removing and log.local.htlc(offerer, htlc_id) is not None
            and log.remote.htlc(offerer, htlc_id) is not None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS, anchors=st.booleans())
def test_cached_pending_matches_the_straight_computation(actions: list, anchors: bool) -> None:
    """The log derives each successor's pending specs from its own; after any interleaving of adds,
    removals, fees, signatures, revocations and disconnections they equal a computation from scratch."""
    a, b = pair(ANCHORS if anchors else STATIC_REMOTEKEY)
    for action, first, value in actions:
        for _ in range(3 if action == "add" else 1):   # more HTLCs in flight than the other actions remove
            act(a, b, action, first, value)
        for node in (a, b):
            for owner in (L, R):
                assert node.log.pending(owner, node.exts) == straight_pending(node.log, owner, node.exts)
            for h in node.log.local.htlcs + node.log.remote.htlcs:
                assert node.log.irrevocably_committed(h.offerer, h.id) == straight_irrevocable(node.log, h.offerer,
                                                                                              h.id)
            assert json.loads(node.log.to_text()) == json.loads(json.dumps(node.log.to_json()))
    settle(a, b)
    for node in (a, b):
        for owner in (L, R):
            assert node.log.pending(owner, node.exts) == straight_pending(node.log, owner, node.exts)


def test_pending_is_computed_once_per_log() -> None:
    """With many HTLCs in flight, asking `pending` again (and adding one more) replays no update."""
    a, _ = pair()
    for _ in range(25):   # max_accepted_htlcs is 30
        assert a.add_htlc(1_000_000)
    calls = []
    ext = next(x for x in a.exts if x.name == "htlcs")
    original = type(ext).apply_update
    type(ext).apply_update = lambda self, u, spec: (calls.append(u), original(self, u, spec))[1]
    try:
        a.log.pending(L, a.exts), a.log.pending(R, a.exts)
        assert len(calls) <= 50        # first time on this log (at most): 25 each side
        calls.clear()
        a.log.pending(L, a.exts), a.log.pending(R, a.exts)
        assert a.add_htlc(1_000_000)
        a.log.pending(L, a.exts), a.log.pending(R, a.exts)
        assert len(calls) <= 6         # the new HTLC applied to each side's cached spec (and the checks)
        calls.clear()
        assert a.sign()                # every pending update is due: the commitment is the pending spec
        assert not calls and a.log.remote == a.log.pending(R, a.exts)
    finally:
        type(ext).apply_update = original


# --- fees, dust and the budget (BOLT-3 "Fees", BOLT-2 update_add_htlc requirements) ---

def test_bolt3_fee_example() -> None:
    """BOLT-3's worked example: feerate 5000, dust 546; weight 1068, base fee 5340, actual fee 7140."""
    p = make_params(dust=546, reserve=0)
    h = (Htlc(L, 0, 5_000_000, b"\x01" * 32, 500), Htlc(L, 1, 1_000_000, b"\x02" * 32, 500),
         Htlc(R, 0, 7_000_000, b"\x03" * 32, 500), Htlc(R, 1, 800_000, b"\x04" * 32, 500))
    spec = CommitmentSpec(5000, 500_000_000, FUNDING_SAT * 1000 - 500_000_000 - 13_800_000, h)
    b = budget(p, spec, L, extensions_for(STATIC_REMOTEKEY))
    assert (b.weight, b.fee_sat) == (1068, 5340)
    built = build_commitment(p, spec, L, 0, pcp(1, 0), extensions_for(STATIC_REMOTEKEY))
    assert built.fee_sat == 7140 and len(built.second_stages) == 2
    assert [s.stage.amount_sat for s in built.second_stages] == [5000 - 3315, 7000 - 3515]
    assert dust_exposure_msat(p, spec, L) == 1_800_000
    # On the remote's commitment the same HTLCs are received/offered the other way round.
    assert is_trimmed(h[0], R, 546, 5000, False) == (5000 < 546 + 3515)


def test_anchors_trim_without_second_stage_fees_and_charge_the_opener() -> None:
    p = make_params(ANCHORS, dust=546, reserve=0)
    h = (Htlc(L, 0, 600_000, b"\x01" * 32, 500),)
    spec = CommitmentSpec(5000, 500_000_000, FUNDING_SAT * 1000 - 500_600_000, h)
    assert not is_trimmed(h[0], L, 546, 5000, True)
    b = budget(p, spec, L, extensions_for(ANCHORS))
    assert (b.weight, b.charges_sat) == (1124 + 172, 660)
    assert b.left(L) == 500_000_000 - (fee_for_weight(5000, 1296) + 660) * 1000


def test_opener_cannot_dip_into_its_reserve_and_fee_spike_buffer() -> None:
    exts = extensions_for(STATIC_REMOTEKEY)
    p = make_params(reserve=10_000)
    fee = fee_for_weight(2500, 724 + 172)
    room = 10_000 + fee      # what the opener needs to keep after adding one HTLC
    before = CommitmentSpec(2500, 20_000_000, FUNDING_SAT * 1000 - 20_000_000)

    def add(msat: int) -> CommitmentSpec:
        return CommitmentSpec(2500, before.local_msat - msat, before.remote_msat, (Htlc(L, 0, msat, b"\x00" * 32, 9),))

    fits = 20_000_000 - room * 1000
    assert can_afford(p, {L: (before, add(fits)), R: (before, add(fits))}, L, exts) is None
    assert "short of the reserve" in can_afford(p, {L: (before, add(fits + 1))}, L, exts)
    # The fee spike buffer: twice the feerate and one more HTLC output.
    assert "fee spike" in can_afford(p, {L: (before, add(fits))}, L, exts, fee_spike=True)
    spike = fee_for_weight(5000, 724 + 2 * 172)
    assert reserve_shortfall_msat(p, add(20_000_000 - (10_000 + spike) * 1000), L, L, exts, fee_spike=True) == 0


def test_side_below_reserve_may_still_receive_and_pay_nothing_more() -> None:
    exts = extensions_for(STATIC_REMOTEKEY)
    p = make_params(reserve=10_000)
    poor = CommitmentSpec(2500, FUNDING_SAT * 1000 - 5_000_000, 5_000_000)   # the peer got 5000 sat pushed
    richer = CommitmentSpec(2500, poor.local_msat - 1_000_000, 6_000_000)
    assert can_afford(p, {L: (poor, richer), R: (poor, richer)}, R, exts) is None
    assert reserve_shortfall_msat(p, poor, L, R, exts) == 5_000_000
    offer = CommitmentSpec(2500, poor.local_msat, 4_000_000, (Htlc(R, 0, 1_000_000, b"\x00" * 32, 9),))
    assert can_afford(p, {L: (poor, offer)}, R, exts) is not None


def test_preview_gives_the_dust_exposure_an_update_would_add() -> None:
    a, b = pair()
    dust = Update("add_htlc", "htlcs", L, {"id": 0, "amount_msat": 2_000_000, "payment_hash": "11" * 32,
                                           "cltv_expiry": 500})
    for owner, (before, after) in a.log.preview(dust, a.exts).items():
        assert dust_exposure_msat(a.params, before, owner) == 0
        assert dust_exposure_msat(a.params, after, owner) == 2_000_000   # 2000 sat < 546 + HTLC tx fee at 2500
    big = replace(dust, body={**dust.body, "amount_msat": 20_000_000})
    assert all(dust_exposure_msat(a.params, after, o) == 0 for o, (_, after) in a.log.preview(big, a.exts).items())


def test_fee_greater_than_opener_balance_leaves_no_opener_output() -> None:
    p = make_params(reserve=0)
    spec = CommitmentSpec(100_000, 1_000_000, FUNDING_SAT * 1000 - 1_000_000)
    built = build_commitment(p, spec, L, 0, pcp(1, 0), extensions_for(STATIC_REMOTEKEY))
    assert [o.descriptor.kind for o in built.outputs] == ["to_remote"]
    assert built.fee_sat == 1_000
    assert budget(p, spec, L, extensions_for(STATIC_REMOTEKEY)).left(L) < 0


@pytest.mark.parametrize("channel_type", [STATIC_REMOTEKEY, ANCHORS], ids=lambda t: t.name)
def test_first_commitment_checks(channel_type: ChannelType) -> None:
    """BOLT-2 open_channel: the opener pays the whole fee (and the anchors); someone is above the reserve."""
    exts = extensions_for(channel_type)
    small = replace(make_params(channel_type, reserve=1000), funding_sat=20_000)
    fee = fee_for_weight(5000, 1124 if channel_type.anchors else 724) + (660 if channel_type.anchors else 0)
    exact = initial_spec(small, (20_000 - fee) * 1000, 5000)
    assert (exact.local_msat, exact.remote_msat) == (fee * 1000, (20_000 - fee) * 1000)
    assert check_initial(small, exact, exts) is None
    over = initial_spec(small, (20_000 - fee) * 1000 + 1, 5000)
    assert "cannot pay the fee" in check_initial(small, over, exts)
    mirrored = small.mirrored()
    assert initial_spec(mirrored, 5, 253) == CommitmentSpec(253, 5, 20_000_000 - 5)
    tiny = replace(make_params(channel_type, reserve=10_000), funding_sat=15_000)
    assert "reserve" in check_initial(tiny, initial_spec(tiny, 7_000_000, 253), exts)
    with pytest.raises(ValueError):
        initial_spec(small, 20_000_001, 253)


HTLC_SETS = st.lists(st.tuples(st.booleans(), st.integers(1, 30_000_000), st.integers(400, 900)), max_size=12)


@settings(max_examples=80, deadline=None)
@given(htlcs=HTLC_SETS, feerate=st.integers(253, 60_000), opener_msat=st.integers(0, 800_000_000),
       anchors=st.booleans(), owner=st.sampled_from([L, R]), dust=st.integers(354, 5000))
def test_budget_matches_the_built_transaction(htlcs: list, feerate: int, opener_msat: int, anchors: bool,
                                              owner: Side, dust: int) -> None:
    """What `budget` says the opener keeps is exactly its output in the transaction, trimmed HTLCs go to fees,
    and nothing is created: outputs + fee = funding."""
    channel_type = ANCHORS if anchors else STATIC_REMOTEKEY
    p, exts = make_params(channel_type, dust=dust), extensions_for(channel_type)
    hs = tuple(Htlc(L if mine else R, i, amount, hashlib.sha256(bytes([i])).digest(), cltv)
               for i, (mine, amount, cltv) in enumerate(htlcs))
    in_flight = sum(h.amount_msat for h in hs)
    rest = FUNDING_SAT * 1000 - in_flight - opener_msat
    if rest < 0:
        return
    spec = CommitmentSpec(feerate, opener_msat, rest, hs)
    b = budget(p, spec, owner, exts)
    if anchors and opener_msat < 660_000:
        # An opener that cannot even pay the anchors (BOLT-2's budget never lets this happen): the builder
        # refuses rather than create money.
        try:
            built = build_commitment(p, spec, owner, 7, pcp(1, 7), exts)
        except ValueError as e:
            assert "exceed the funding" in str(e)
            return
    built = build_commitment(p, spec, owner, 7, pcp(1, 7), exts)
    assert sum(o.amount_sat for o in built.outputs) + built.fee_sat == FUNDING_SAT
    kinds = {o.descriptor.kind: o.amount_sat for o in built.outputs if o.descriptor.kind in ("to_local", "to_remote")}
    opener_output = kinds.get("to_local" if owner is L else "to_remote")
    expected = max(0, b.left(L)) // 1000
    assert opener_output == (expected if expected >= dust else None)
    kept = [o for o in built.outputs if o.descriptor.htlc is not None]
    assert b.weight == (1124 if anchors else 724) + 172 * len(kept) and len(built.second_stages) == len(kept)
    trimmed = sum(h.amount_msat for h in hs) - sum(o.descriptor.htlc.amount_msat for o in kept)
    assert dust_exposure_msat(p, spec, owner) == trimmed


def test_log_of_version_1_still_loads() -> None:
    """Version 2 writes the specs' HTLCs as rows; a log written by version 1 (HTLCs as objects) loads the same."""
    a, b = pair(ANCHORS)
    a.add_htlc(3_000_000)
    a.add_htlc(4_000_000)
    settle(a, b)
    a.add_htlc(5_000_000)   # and one in flight
    a.sign()
    deliver(a, b)
    data = json.loads(json.dumps(b.log.to_json()))
    assert data["version"] == 2 and "htlc_rows" in data["local"] and "htlcs" not in data["local"]
    old = {**data, "version": 1, "local": b.log.local.to_json(), "remote": b.log.remote.to_json()}
    assert old["local"]["htlcs"] and old["local"]["htlcs"][0]["offerer"] == "remote"
    assert UpdateLog.from_json(json.loads(json.dumps(old)), b.params, b.exts) == b.log


def test_spec_htlc_changes_keep_the_canonical_order() -> None:
    """with_htlc/without_htlc place and find HTLCs without re-sorting: the result equals a sorted spec."""
    def h(side: Side, i: int) -> Htlc:
        return Htlc(side, i, 1_000_000 + i, bytes([i]) * 32, 500 + i)

    spec = CommitmentSpec(2500, 10_000_000, 20_000_000, (h(R, 3), h(L, 7), h(R, 1)))
    assert spec.htlcs == (h(L, 7), h(R, 1), h(R, 3))
    grown = spec.with_htlc(h(L, 2)).with_htlc(h(R, 2)).with_htlc(h(L, 9))
    expected = (h(L, 2), h(L, 7), h(L, 9), h(R, 1), h(R, 2), h(R, 3))
    assert grown.htlcs == expected == CommitmentSpec(2500, 10_000_000, 20_000_000, expected[::-1]).htlcs
    assert grown.htlc(R, 2) == h(R, 2) and grown.htlc(L, 3) is None and grown.htlc(R, 4) is None
    grown.to_json(), grown.compact_json()   # cached on `grown`: its copies must not inherit them
    shrunk = grown.without_htlc(grown.htlc(L, 7)).without_htlc(grown.htlc(R, 3))
    assert shrunk.htlcs == (h(L, 2), h(L, 9), h(R, 1), h(R, 2))
    fresh = replace(shrunk, feerate_per_kw=2500)
    assert shrunk.to_json() == fresh.to_json() and shrunk.compact_json() == fresh.compact_json()
    with pytest.raises(ValueError):
        shrunk.without_htlc(h(L, 7))
