"""channeld killed (SIGKILL) at each crash point of a channel's life, in both bus modes, then restarted:
no channel lost, both sides agree on the balances to the msat, each payment in flight gets a definite
outcome, each close completes with the agreed transaction or the latest commitment, and no commitment
(revoked or not) reaches the chain otherwise. One pair of nodes per bus mode walks every point, one
after the other (kill, restart, check, next point): openings, then payments on one channel, then a close
of each channel. Real nodes, the real regtest chain. The points and what a restart does at each:
docs/channels.md, "Crash points"."""
from __future__ import annotations

import hashlib
import os

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import UNSPENDABLE, channel_of, mine
from conftest import wait_for
from crash_tools import agreed, crash_pair, funding_unspent, in_background, offer, outcome, show_logs
from lnp_plugin_api.onion_errors import BADONION, TEMPORARY_CHANNEL_FAILURE
from test_channeld_reestablish import connected

FUNDING, PUSH, AMOUNT = 1_000_000, 300_000_000, 5_000_000

# (point where Bob's channeld dies, who pays, what the payee does): every step of a payment, Bob as the
# payee, then as the payer
PAYMENT_POINTS = [
    ("add_htlc_received", "alice", "fulfill"),
    ("commitment_signed_checked", "alice", "fulfill"),
    ("revoke_and_ack_stored", "alice", "fulfill"),
    ("commitment_signed_stored", "alice", "fulfill"),
    ("revoke_and_ack_checked", "alice", "fulfill"),
    ("revocation_received", "alice", "fulfill"),
    ("fulfill_htlc_stored", "alice", "fulfill"),
    ("fail_htlc_stored", "alice", "fail"),
    ("fail_malformed_htlc_stored", "alice", "malformed"),
    ("add_htlc_stored", "bob", "forgotten"),       # never signed: forgotten on restart, the payment fails
    ("commitment_signed_stored", "bob", "fulfill"),
    ("revocation_received", "bob", "fulfill"),
    ("fulfill_htlc_received", "bob", "fulfill"),
    ("fail_htlc_received", "bob", "fail"),
    ("fail_malformed_htlc_received", "bob", "malformed"),
]
# processes mode walks the points where a message of ours was just queued, or the peer's last step was just
# taken (what the outbox replays to a peerd that stayed up); the others run the same code as in threads mode
NOT_IN_PROCESSES = {("add_htlc_received", "alice"), ("commitment_signed_checked", "alice"),
                    ("revoke_and_ack_checked", "alice"), ("revocation_received", "alice"),
                    ("fail_htlc_received", "bob"), ("fail_malformed_htlc_received", "bob")}


# (Alice's point, Bob's point) for each opening: Alice opens, each dies at its point on the way
OPEN_POINTS = [
    ("funding_signed_received", "funding_deep"),   # Alice: the channel stored, the funding not broadcast yet
    ("funding_broadcast", "channel_ready_stored"),
    (None, "channel_ready_received"),
]

# (point where Bob's channeld dies, how the channel closes): each on a channel of its own
CLOSE_POINTS = [
    ("shutdown_received", "mutual"),
    ("shutdown_stored", "mutual"),
    ("negotiating_stored", "mutual"),
    ("closing_signed_received", "mutual"),
    ("mutual_close_stored", "mutual"),
    ("force_closing_stored", "force"),
    ("commitment_tx_stored", "force"),
]


def open_through(alice, bob, btc, a_point: str | None, b_point: str | None) -> str:
    """One opening while Alice dies at A_POINT, Bob at B_POINT: the channel normal on both sides, its
    channel_id."""
    known = {c["channel_id"] for c in alice.channels()}
    if a_point:
        alice.arm(a_point)
    if b_point:
        bob.arm(b_point)
    in_background(lambda: alice.call("open", bob.node_id, FUNDING, push_msat=PUSH))
    if a_point:
        alice.killed(a_point)
    wait_for(lambda: len(alice.channels()) > len(known), timeout=60)
    ch = next(c for c in alice.channels() if c["channel_id"] not in known)
    txid = ch["funding_outpoint"].split(":")[0]
    wait_for(lambda: txid in btc.call("getrawmempool"), timeout=60)   # sent, again after a restart
    btc.call("generatetoaddress", 3, UNSPENDABLE)
    if b_point:
        bob.killed(b_point)
    agreed(alice, bob, ch["channel_id"], FUNDING * 1000 - PUSH, FUNDING * 1000)
    funding_unspent(btc, ch)
    return ch["channel_id"]


def open_plain(alice, bob, btc, count: int) -> list[str]:
    """COUNT channels Alice opens, no one dying, mined together: normal on both sides."""
    cids = [alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)["channel_id"] for _ in range(count)]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: all(channel_of(p, c)["state"] == "normal" for c in cids), timeout=60)
    return cids


def pay_through(alice, bob, btc, cid: str, point: str, payer_name: str, how: str, alice_msat: int) -> int:
    """One payment on CID while Bob's channeld dies at POINT: its definite outcome, both sides agreeing,
    the funding output unspent. Alice's balance after it."""
    payer, payee = (alice, bob) if payer_name == "alice" else (bob, alice)
    preimage = os.urandom(32)
    h = hashlib.sha256(preimage).digest()
    onion = bytes(1366) if how == "malformed" else None   # an onion the payee cannot read
    if how in ("fulfill", "forgotten"):
        payee.call("tk_htlc_preimage", preimage.hex())
    elif how == "fail":
        payee.call("tk_htlc_fail", h.hex())
    bob.arm(point)
    offer(payer, payee, AMOUNT, h, onion, channel_id=cid)
    bob.killed(point)
    wait_for(lambda: connected(alice, bob), timeout=60)
    ev = outcome(payer, h)
    if how == "fulfill":
        assert ev["preimage"] == preimage.hex(), (point, ev)
        alice_msat += -AMOUNT if payer is alice else AMOUNT
    else:
        assert ev["preimage"] is None and (ev["failure_onion"] or ev["failure_code"]), (point, ev)
        if how == "malformed":
            assert ev["failure_code"] & BADONION, (point, ev)
        if how == "forgotten":
            assert ev["failure_code"] == TEMPORARY_CHANNEL_FAILURE, (point, ev)
    agreed(alice, bob, cid, alice_msat, FUNDING * 1000)
    funding_unspent(btc, channel_of(alice, cid))
    return alice_msat


def spender(btc, outpoint: str) -> str | None:
    """The txid of the mempool transaction spending OUTPOINT, if any."""
    txid, vout = outpoint.split(":")
    for t in btc.call("getrawmempool"):
        raw = btc.call("getrawtransaction", t, True)
        if any(i.get("txid") == txid and i.get("vout") == int(vout) for i in raw["vin"]):
            return t
    return None


def close_through(alice, bob, btc, cid: str, point: str, how: str) -> str:
    """Alice closes CID cooperatively, or Bob by force, while Bob's channeld dies at POINT: the funding
    output is spent by the closing transaction both agreed, or by Bob's latest commitment. Its txid."""
    outpoint = channel_of(alice, cid)["funding_outpoint"]
    bob.arm(point)
    if how == "mutual":
        in_background(lambda: alice.call("close", cid, timeout=30))
    else:
        in_background(lambda: bob.call("close", cid, force=True))
    bob.killed(point)
    if how == "mutual":
        for p in (alice, bob):
            wait_for(lambda: channel_of(p, cid)["closing_txid"] is not None, timeout=60)
        txid = channel_of(alice, cid)["closing_txid"]
        assert channel_of(bob, cid)["closing_txid"] == txid, point
    else:
        wait_for(lambda: "commitment" in channel_of(bob, cid)["onchain"], timeout=60)
        txid = channel_of(bob, cid)["onchain"]["commitment"]
    wait_for(lambda: spender(btc, outpoint) is not None, timeout=30)
    assert spender(btc, outpoint) == txid, point
    return txid


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_killed_at_each_step_of_a_channels_life(nodes, external_chain, short_tmp, mode: str) -> None:
    port, btc = external_chain
    alice, bob = crash_pair(nodes, port, mode, short_tmp)
    more = len(CLOSE_POINTS) - len(OPEN_POINTS)       # channels opened without a kill, to close
    btc.call("generatetoaddress", len(OPEN_POINTS) + more, alice.call("newaddr")["address"])
    mine(btc, [alice, bob], 100)
    try:
        cids = [open_through(alice, bob, btc, a, b) for a, b in OPEN_POINTS]
        alice_msat = FUNDING * 1000 - PUSH
        payments = [p for p in PAYMENT_POINTS if mode == "threads" or p[:2] not in NOT_IN_PROCESSES]
        for point, payer_name, how in payments:
            alice_msat = pay_through(alice, bob, btc, cids[-1], point, payer_name, how, alice_msat)
        cids += open_plain(alice, bob, btc, more)
        closed = {cid: (how, close_through(alice, bob, btc, cid, point, how))
                  for cid, (point, how) in zip(cids, CLOSE_POINTS)}
        mine(btc, [alice, bob], 3)
        for cid, (how, txid) in closed.items():
            if how == "mutual":
                for p in (alice, bob):
                    wait_for(lambda: channel_of(p, cid)["state"] == "closed", timeout=30)
            else:   # Alice sees Bob's latest commitment: never a revoked one
                wait_for(lambda: channel_of(alice, cid)["onchain"].get("spend") == txid, timeout=30)
                assert channel_of(alice, cid)["onchain"]["kind"] == "remote", cid
    except AssertionError:
        show_logs(alice, bob)
        raise
    assert alice.kills == [a for a, _ in OPEN_POINTS if a]
    assert bob.kills == ([b for _, b in OPEN_POINTS] + [p for p, _, _ in payments]
                         + [p for p, _ in CLOSE_POINTS])
