"""The whole commitment dance with real keys, as channeld and signd will do it: both nodes build the other's
commitment, sign it (here a fake signer: signd's signing helper with keys derived from basepoint secrets),
check what they receive, revoke with per-commitment secrets kept in a shachain, and can take a revoked
commitment's outputs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from lnp_plugin_api.bolt3 import (MAX_INDEX, Shachain, derive_privkey, derive_revocation_privkey,
                                  per_commitment_secret, point)
from lnp_plugin_api.bolt_extensions import HtlcIds, extensions_for
from lnp_plugin_api.channel import ANCHORS, Basepoints, ChannelParams, CommitmentSpec, Side, SideConfig, Update
from lnp_plugin_api.channel_fees import check_initial, initial_spec
from lnp_plugin_api.channel_updates import UpdateLog, update_owner
from lnp_plugin_api.commitment import BuiltCommitment, build_commitment, check_signatures
from lnp_plugins.signd.sigs import sign

L, R = Side.LOCAL, Side.REMOTE
EXTS = extensions_for(ANCHORS)


@dataclass
class Secrets:
    """What signd would hold for one side of the channel."""

    seed: int

    def secret(self, name: str) -> bytes:
        return hashlib.sha256(f"{self.seed}/{name}".encode()).digest()

    def config(self) -> SideConfig:
        bp = Basepoints(*(point(self.secret(n)) for n in ("revocation", "payment", "delayed", "htlc")))
        return SideConfig(point(self.secret("funding")), bp, dust_limit_sat=546, to_self_delay=144,
                          channel_reserve_sat=10_000)

    def pcs(self, n: int) -> bytes:
        return per_commitment_secret(self.secret("shachain"), MAX_INDEX - n)

    def pcp(self, n: int) -> bytes:
        return point(self.pcs(n))

    def sign_remote(self, built: BuiltCommitment) -> tuple[bytes, list[bytes]]:
        """signd: the funding signature and the HTLC signatures for the peer's commitment."""
        htlc_key = derive_privkey(self.secret("htlc"), built.keys.per_commitment_point)
        return sign(self.secret("funding"), built.funding_sighash), [sign(htlc_key, s.remote_sighash)
                                                                     for s in built.second_stages]


@dataclass
class Peer:
    me: Secrets
    params: ChannelParams
    log: UpdateLog
    their_points: dict[int, bytes]          # remote per-commitment points we know
    their_secrets: Shachain = field(default_factory=Shachain)
    inbox: list = field(default_factory=list)
    revoked: dict[int, CommitmentSpec] = field(default_factory=dict)   # their revoked commitments
    current_remote: CommitmentSpec | None = None                      # their latest commitment we signed
    awaiting: tuple[int, CommitmentSpec] | None = None                # the one their next revoke_and_ack revokes

    def send_commit(self, other: "Peer") -> None:
        self.log, spec = self.log.sign_remote(EXTS)
        n = self.log.remote_number
        built = build_commitment(self.params, spec, R, n, self.their_points[n], EXTS)
        other.inbox.append(("commitment_signed", *self.me.sign_remote(built)))
        self.awaiting = (n - 1, self.current_remote)
        self.current_remote = spec

    def receive(self, msg: tuple, other: "Peer") -> None:
        if msg[0] == "update":
            self.log = self.log.add(replace(msg[1], proposer=R), EXTS)
        elif msg[0] == "commitment_signed":
            self.log, spec = self.log.receive_commitment_signed(EXTS)
            n = self.log.local_number
            built = build_commitment(self.params, spec, L, n, self.me.pcp(n), EXTS)
            assert check_signatures(built, msg[1], msg[2]) is None
            self.log = self.log.send_revoke()
            other.inbox.append(("revoke_and_ack", self.me.pcs(n - 1), self.me.pcp(n + 1)))
        else:
            _, secret, next_point = msg
            assert self.awaiting is not None
            old, spec = self.awaiting
            assert point(secret) == self.their_points[old]
            self.their_secrets.insert(secret, MAX_INDEX - old)
            self.their_points[old + 2] = next_point
            self.revoked[old] = spec
            self.log = self.log.receive_revoke()


def open_channel() -> tuple[Peer, Peer]:
    a, b = Secrets(1), Secrets(2)
    p = ChannelParams(a.config(), b.config(), "22" * 32, 1, 2_000_000, L, ANCHORS)
    spec = initial_spec(p, 100_000_000, 2500)
    assert check_initial(p, spec, EXTS) is None
    pa = Peer(a, p, UpdateLog.start(p, spec, EXTS), {0: b.pcp(0), 1: b.pcp(1)})
    pb = Peer(b, p.mirrored(), UpdateLog.start(p.mirrored(), spec.mirrored(), EXTS), {0: a.pcp(0), 1: a.pcp(1)})
    for peer in (pa, pb):
        peer.current_remote = peer.log.remote
    return pa, pb


def propose(peer: Peer, other: Peer, kind: str, body: dict) -> None:
    u = Update(kind, update_owner(kind, EXTS), L, body)
    peer.log.check(u, EXTS)
    assert peer.log.budget_check(u, L, EXTS, fee_spike=True) is None
    peer.log = peer.log.add(u, EXTS)
    other.inbox.append(("update", u))


def run(a: Peer, b: Peer) -> None:
    """Deliver and sign until both are quiet."""
    for _ in range(100):
        moved = False
        for me, other in ((a, b), (b, a)):
            while me.inbox:
                me.receive(me.inbox.pop(0), other)
                moved = True
        for me, other in ((a, b), (b, a)):
            if me.log.can_sign_remote():
                me.send_commit(other)
                moved = True
        if not moved:
            return


def test_payments_back_and_forth_with_real_signatures_and_revocations() -> None:
    a, b = open_channel()
    for i, amount in enumerate((5_000_000, 7_000_000, 20_000_000)):
        ids = a.log.states["htlcs"]
        assert isinstance(ids, HtlcIds) and ids.next(L) == i
        preimage = bytes([i]) * 32
        propose(a, b, "add_htlc", {"id": i, "amount_msat": amount,
                                   "payment_hash": hashlib.sha256(preimage).hexdigest(), "cltv_expiry": 700 + i})
        run(a, b)
        assert b.log.irrevocably_committed(R, i)
        propose(b, a, "fulfill_htlc", {"id": i, "payment_preimage": preimage.hex()})
        run(a, b)
    propose(a, b, "update_fee", {"feerate_per_kw": 5000})
    run(a, b)
    paid = 32_000_000
    assert (a.log.local.local_msat, a.log.local.remote_msat) == (1_900_000_000 - paid, 100_000_000 + paid)
    assert a.log.local == b.log.local.mirrored() and a.log.local.feerate_per_kw == 5000
    assert a.log.local_number == b.log.remote_number > 6

    # A revoked commitment of B's on chain: A derives the revocation key for every revocable output.
    n = min(k for k in a.revoked if k > 0)
    spec = a.revoked[n]
    secret = a.their_secrets.get(MAX_INDEX - n)
    assert secret is not None
    cheat = build_commitment(a.params, spec, R, n, point(secret), EXTS)
    revocation_key = derive_revocation_privkey(a.me.secret("revocation"), secret)
    revocable = [o for o in cheat.outputs if any(p.name == "revocation" for p in o.descriptor.paths)]
    assert revocable
    for out in revocable:
        path = next(p for p in out.descriptor.paths if p.name == "revocation")
        assert path.spender is L and point(revocation_key) == path.key.pubkey
