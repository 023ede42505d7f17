"""channeld on chain, between two real nodes on the real regtest chain: a force close (close --force) whose
outputs are swept to both wallets; a revoked commitment taken by a penalty. Balances to the satoshi with
the fees read from the chain."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import channel_of, fund, mine, two_nodes
from conftest import wait_for
from test_channeld_htlc import add, resolved
from lnp_plugin_api.tx import Tx
from lnp_plugins.channeld.onchain import weight_of
from test_channeld_reestablish import add_once_usable

FUNDING, PUSH = 1_000_000, 300_000_000
DELAY = 10          # each side's to_self_delay (what the other must wait)
ANCHOR = 330


def fee_of(btc, txid: str) -> int:
    """A mined transaction's fee, from its inputs' and outputs' amounts on the chain."""
    tx = btc.call("getrawtransaction", txid, True)
    spent = sum(round(btc.call("getrawtransaction", i["txid"], True)["vout"][i["vout"]]["value"] * 100_000_000)
                for i in tx["vin"])
    return spent - sum(round(o["value"] * 100_000_000) for o in tx["vout"])


def outputs_of(btc, txid: str) -> list[int]:
    tx = btc.call("getrawtransaction", txid, True)
    assert tx.get("blockhash"), f"{txid} is not mined"
    return [round(o["value"] * 100_000_000) for o in tx["vout"]]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_force_close_swept_to_both_wallets_to_the_satoshi(nodes, external_chain, mode: str) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, mode, extra=f"to_self_delay = {DELAY}\n")
    before = fund(alice, btc)
    opened = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)
    cid = opened["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)

    closed = alice.call("close", cid, force=True)
    assert closed["state"] == "force_closing"
    commitment = closed["txid"]
    assert channel_of(alice, cid)["state"] == "force_closing"
    mine(btc, [alice, bob], 1)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "onchain", timeout=30)
    assert channel_of(alice, cid)["onchain"]["kind"] == "local"
    assert channel_of(bob, cid)["onchain"]["kind"] == "remote"
    # Bob's to_remote (CSV 1 with anchors) is swept at once; Alice's to_local waits for her delay
    wait_for(lambda: bool(channel_of(bob, cid)["onchain"]["sent"]), timeout=30)
    mine(btc, [alice, bob], DELAY - 2)
    assert channel_of(alice, cid)["onchain"]["sent"] == {}
    mine(btc, [alice, bob], 1)
    wait_for(lambda: bool(channel_of(alice, cid)["onchain"]["sent"]), timeout=30)
    mine(btc, [alice, bob], 6)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "closed", timeout=30)

    (a_sweep,) = channel_of(alice, cid)["onchain"]["sent"].values()
    (b_sweep,) = channel_of(bob, cid)["onchain"]["sent"].values()
    funding_fee, commit_fee = fee_of(btc, opened["funding_txid"]), fee_of(btc, commitment)
    assert sorted(outputs_of(btc, commitment)) == sorted(
        [ANCHOR, ANCHOR, PUSH // 1000, FUNDING - PUSH // 1000 - commit_fee - 2 * ANCHOR])
    a_expected = before - funding_fee - PUSH // 1000 - commit_fee - 2 * ANCHOR - fee_of(btc, a_sweep)
    b_expected = PUSH // 1000 - fee_of(btc, b_sweep)
    wait_for(lambda: alice.call("funds")["confirmed_sat"] == a_expected, timeout=30)
    wait_for(lambda: bob.call("funds")["confirmed_sat"] == b_expected, timeout=30)


def regular_files(directory: str, names: list[str]) -> list[str]:
    """copytree's ignore: sockets and other special files (a stopped node may leave some)."""
    return [n for n in names if not (os.path.isfile(os.path.join(directory, n))
                                     or os.path.isdir(os.path.join(directory, n)))]


@pytest.mark.slow
def test_revoked_commitment_taken_by_a_penalty(nodes, external_chain, tmp_path) -> None:
    """Bob broadcasts a commitment he revoked: restarted from a copy of his data directory taken before a
    payment (his old signd still holds that commitment as its latest, so it signs it). Alice, offline at
    the time, comes back, sees it and takes both outputs (hers, and Bob's by the revocation key) before
    Bob's delay; Bob gets nothing."""
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", extra=f"to_self_delay = {DELAY}\n",
                           plugins=("tk_htlcs", "tk_signer"))
    before = fund(alice, btc)
    opened = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)
    cid = opened["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)

    bob.node.stop()
    old = tmp_path / "bob-old"
    shutil.copytree(bob.node.data_dir, old, ignore=regular_files)
    bob.node.start()
    wait_for(lambda: channel_of(alice, cid)["state"] == "normal" and bool(alice.call("peers")["peers"]), timeout=60)
    preimage = os.urandom(32)
    payment_hash = bytes.fromhex(bob.call("tk_htlc_preimage", preimage.hex())["payment_hash"])
    height = alice.call("chaininfo")["watchd"]["height"]
    wait_for(lambda: channel_of(bob, cid)["state"] == "normal", timeout=30)
    add_once_usable(alice, bob, 50_000_000, payment_hash, height)   # after the restart: once reestablished
    assert resolved(alice, 0)["preimage"] == preimage.hex()
    wait_for(lambda: channel_of(alice, cid)["remote_msat"] == PUSH + 50_000_000
             and channel_of(alice, cid)["htlcs_in_flight"] == 0, timeout=30)

    # Bob cheats while Alice is away: his old state's commitment (revoked since) goes on chain
    alice.node.stop()
    bob.node.stop()
    shutil.rmtree(bob.node.data_dir)
    shutil.copytree(old, bob.node.data_dir)
    bob.node.start()
    revoked = bob.call("close", cid, force=True)["txid"]
    mine(btc, [bob], 1)
    alice.node.start()
    wait_for(lambda: channel_of(alice, cid)["state"] == "onchain", timeout=60)
    assert channel_of(alice, cid)["onchain"]["kind"] == "revoked"
    wait_for(lambda: len(channel_of(alice, cid)["onchain"]["sent"]) == 2, timeout=30)
    mine(btc, [alice], 1)   # the penalty is mined one block after the cheat, long before Bob's delay
    assert int(btc.call("getrawtransaction", revoked, True)["confirmations"]) == 2 < DELAY
    for txid in channel_of(alice, cid)["onchain"]["sent"].values():
        assert outputs_of(btc, txid)
    mine(btc, [alice], 6)
    wait_for(lambda: channel_of(alice, cid)["state"] == "closed", timeout=30)

    sent = channel_of(alice, cid)["onchain"]["sent"]
    assert any(k.startswith("penalty:") for k in sent)
    commit_fee = fee_of(btc, revoked)
    taken = sum(outputs_of(btc, t)[0] for t in sent.values())
    assert taken == FUNDING - commit_fee - 2 * ANCHOR - sum(fee_of(btc, t) for t in sent.values())
    expected = before - fee_of(btc, opened["funding_txid"]) - commit_fee - 2 * ANCHOR - sum(
        fee_of(btc, t) for t in sent.values())
    wait_for(lambda: alice.call("funds")["confirmed_sat"] == expected, timeout=30)
    assert bob.call("funds")["confirmed_sat"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("ctype", ["static_remotekey", "anchors"])
def test_htlc_near_expiry_forces_a_close_timed_out_then_swept(nodes, external_chain, ctype: str) -> None:
    """Bob holds an HTLC of Alice's and goes away. One block past its expiry Alice goes to chain on her own
    (must_force_close), her HTLC-timeout transaction takes it back (with anchors it carries no fee: a coin
    of her wallet pays it, with change to her wallet), its output and her to_local are swept after her
    delay, and the HTLC is failed (htlc_resolved). Bob, back later, sweeps his to_remote."""
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", extra=f"to_self_delay = {DELAY}\n",
                           plugins=("tk_htlcs", "tk_signer"))
    before = fund(alice, btc)
    anchors = 2 * ANCHOR if ctype == "anchors" else 0
    opened = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH, channel_type=ctype)
    cid = opened["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    payment_hash = os.urandom(32)
    bob.call("tk_htlc_hold", payment_hash.hex())
    height = alice.call("chaininfo")["watchd"]["height"]
    add(alice, bob, 60_000_000, payment_hash, height)
    wait_for(lambda: len(bob.call("tk_htlc_events", "htlc_accepted")) == 1, timeout=30)  # irrevocably committed
    bob.node.stop()

    expiry = height + 40
    mine(btc, [alice], expiry - btc.call("getblockcount"))
    assert channel_of(alice, cid)["state"] == "normal"
    mine(btc, [alice], 1)          # one block past the expiry: to chain
    wait_for(lambda: channel_of(alice, cid)["state"] == "force_closing", timeout=30)
    assert "near its expiry" in channel_of(alice, cid)["onchain"]["reason"]
    mine(btc, [alice], 1)
    wait_for(lambda: any(k.startswith("htlc_tx:") for k in channel_of(alice, cid)["onchain"]["sent"]), timeout=60)  # the parallel suite loads the machine
    mine(btc, [alice], 1)
    failed = [e for e in alice.call("tk_htlc_events", "htlc_resolved") if e["htlc_id"] == 0]
    wait_for(lambda: bool(failed.extend(e for e in alice.call("tk_htlc_events", "htlc_resolved")
                                        if e["htlc_id"] == 0) or failed), timeout=30)
    assert failed[0]["preimage"] is None and failed[0]["failure_code"] is not None
    mine(btc, [alice], DELAY)
    wait_for(lambda: len(channel_of(alice, cid)["onchain"]["sent"]) == 3, timeout=30)
    mine(btc, [alice], 6)
    wait_for(lambda: channel_of(alice, cid)["state"] == "closed", timeout=30)
    sent = channel_of(alice, cid)["onchain"]["sent"]
    assert sorted(k.split(":")[0] for k in sent) == ["htlc_tx", "sweep", "sweep_stage"]
    commitment = channel_of(alice, cid)["onchain"]["commitment"]
    commit_fee = fee_of(btc, commitment)
    if anchors:   # the HTLC-timeout's fee from a wallet coin, the change back to the wallet
        htlc_tx = btc.call("getrawtransaction", sent[next(k for k in sent if k.startswith("htlc_tx:"))], True)
        assert len(htlc_tx["vin"]) == 2 and len(htlc_tx["vout"]) == 2
    expected = before - fee_of(btc, opened["funding_txid"]) - PUSH // 1000 - commit_fee - anchors - sum(
        fee_of(btc, t) for t in sent.values())
    wait_for(lambda: alice.call("funds")["confirmed_sat"] == expected, timeout=30)

    bob.node.start()
    wait_for(lambda: channel_of(bob, cid)["state"] == "onchain" and bool(channel_of(bob, cid)["onchain"]["sent"]),
             timeout=60)
    assert channel_of(bob, cid)["onchain"]["kind"] == "remote"
    mine(btc, [alice, bob], 6)
    wait_for(lambda: channel_of(bob, cid)["state"] == "closed", timeout=30)
    (swept,) = channel_of(bob, cid)["onchain"]["sent"].values()
    wait_for(lambda: bob.call("funds")["confirmed_sat"] == PUSH // 1000 - fee_of(btc, swept), timeout=30)


@pytest.mark.slow
def test_revoked_commitment_with_an_htlc_taken_whole_by_the_penalty(nodes, external_chain, tmp_path) -> None:
    """Bob's revoked commitment holds an HTLC Alice offered (failed off chain since): Alice's penalty takes
    Bob's to_local AND the HTLC output by the revocation key, her to_remote is swept; Bob gets nothing, and
    the HTLC (resolved long ago) is not resolved a second time."""
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", extra=f"to_self_delay = {DELAY}\n",
                           plugins=("tk_htlcs", "tk_signer"))
    before = fund(alice, btc)
    opened = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)
    cid = opened["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    held = os.urandom(32)
    bob.call("tk_htlc_hold", held.hex())
    height = alice.call("chaininfo")["watchd"]["height"]
    add(alice, bob, 60_000_000, held, height)
    wait_for(lambda: len(bob.call("tk_htlc_events", "htlc_accepted")) == 1, timeout=30)  # in both commitments

    bob.node.stop()
    old = tmp_path / "bob-old"
    shutil.copytree(bob.node.data_dir, old, ignore=regular_files)
    bob.node.start()
    bob.call("tk_htlc_fail", held.hex())       # asked again after the reestablish: failed this time
    assert resolved(alice, 0)["preimage"] is None
    other = os.urandom(32)                     # one more update: Bob's commitment with the HTLC is revoked
    bob.call("tk_htlc_fail", other.hex())
    add(alice, bob, 10_000_000, other, alice.call("chaininfo")["watchd"]["height"])
    assert resolved(alice, 1)["preimage"] is None
    wait_for(lambda: channel_of(alice, cid)["htlcs_in_flight"] == 0, timeout=30)

    first = [e for e in alice.call("tk_htlc_events", "htlc_resolved") if e["htlc_id"] == 0]
    alice.node.stop()
    bob.node.stop()
    shutil.rmtree(bob.node.data_dir)
    shutil.copytree(old, bob.node.data_dir)
    bob.node.start()
    revoked = bob.call("close", cid, force=True)["txid"]
    mine(btc, [bob], 1)
    assert sorted(outputs_of(btc, revoked))[-3] == 60_000    # anchors, the HTLC, to_remote, to_local
    alice.node.start()
    wait_for(lambda: channel_of(alice, cid)["state"] == "onchain", timeout=60)
    assert channel_of(alice, cid)["onchain"]["kind"] == "revoked"
    wait_for(lambda: len(channel_of(alice, cid)["onchain"]["sent"]) == 2, timeout=30)
    mine(btc, [alice], 1)
    sent = channel_of(alice, cid)["onchain"]["sent"]
    (penalty,) = [t for k, t in sent.items() if k.startswith("penalty:")]
    assert len(btc.call("getrawtransaction", penalty, True)["vin"]) == 2     # to_local and the HTLC output
    assert int(btc.call("getrawtransaction", revoked, True)["confirmations"]) == 2 < DELAY
    mine(btc, [alice], 6)
    wait_for(lambda: channel_of(alice, cid)["state"] == "closed", timeout=30)

    commit_fee = fee_of(btc, revoked)
    expected = before - fee_of(btc, opened["funding_txid"]) - commit_fee - 2 * ANCHOR - sum(
        fee_of(btc, t) for t in sent.values())
    wait_for(lambda: alice.call("funds")["confirmed_sat"] == expected, timeout=30)
    assert bob.call("funds")["confirmed_sat"] == 0
    # HTLC 0 was failed off chain: the penalty taking its output must not resolve it a second time
    assert [e for e in alice.call("tk_htlc_events", "htlc_resolved") if e["htlc_id"] == 0] == first


@pytest.mark.slow
def test_their_commitment_with_htlcs_claimed_from_it_directly(nodes, external_chain) -> None:
    """Bob puts his commitment on chain with two HTLCs: one Alice offered (Bob holds it and never settles)
    and one Bob offered (Alice holds it, then learns its preimage, the channel being on chain already).
    From Bob's commitment, with no second stage, Alice claims the second by its preimage at once, times the
    first out after its expiry, and sweeps her to_remote; Bob learns the preimage from her claim and sweeps
    his to_local after his delay. Both wallets to the satoshi."""
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", extra=f"to_self_delay = {DELAY}\n",
                           plugins=("tk_htlcs", "tk_signer"))
    before = fund(alice, btc)
    opened = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)
    cid = opened["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    out_hash, preimage = os.urandom(32), os.urandom(32)
    in_hash = hashlib.sha256(preimage).digest()
    bob.call("tk_htlc_hold", out_hash.hex())
    alice.call("tk_htlc_hold", in_hash.hex())
    height = alice.call("chaininfo")["watchd"]["height"]
    add(alice, bob, 60_000_000, out_hash, height)
    add(bob, alice, 40_000_000, in_hash, height)
    for p in (alice, bob):
        wait_for(lambda: len(p.call("tk_htlc_events", "htlc_accepted")) == 1, timeout=30)

    commitment = bob.call("close", cid, force=True)["txid"]
    mine(btc, [alice, bob], 1)
    wait_for(lambda: channel_of(alice, cid)["state"] == "onchain", timeout=30)
    assert channel_of(alice, cid)["onchain"]["kind"] == "remote"
    assert channel_of(alice, cid)["onchain"]["sent"].keys() == {"sweep:" + str(
        outputs_of(btc, commitment).index(FUNDING - PUSH // 1000 - 60_000 - fee_of(btc, commitment) - 2 * ANCHOR))}
    alice.call("tk_htlc_preimage", preimage.hex())       # the held decision: now claimed on chain
    wait_for(lambda: len(channel_of(alice, cid)["onchain"]["sent"]) == 2, timeout=30)
    mine(btc, [alice, bob], 1)
    learnt = resolved(bob, 0)
    assert learnt["preimage"] == preimage.hex()          # from Alice's claim's witness

    expiry = height + 40
    mine(btc, [alice, bob], expiry - btc.call("getblockcount") - 1)
    assert len(channel_of(alice, cid)["onchain"]["sent"]) == 2
    mine(btc, [alice, bob], 1)                           # the tip is at the expiry: the timeout can go in the next
    wait_for(lambda: len(channel_of(alice, cid)["onchain"]["sent"]) == 3, timeout=30)
    mine(btc, [alice, bob], 1)
    failed = resolved(alice, 0)
    assert failed["preimage"] is None and failed["failure_code"] is not None
    mine(btc, [alice, bob], 6)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "closed", timeout=30)

    a_sent = channel_of(alice, cid)["onchain"]["sent"]
    bob_local = PUSH // 1000 - 40_000
    assert sorted(a_sent) == sorted(f"sweep:{i}" for i, v in enumerate(outputs_of(btc, commitment))
                                    if v not in (ANCHOR, bob_local))
    (b_sweep,) = channel_of(bob, cid)["onchain"]["sent"].values()
    commit_fee = fee_of(btc, commitment)
    a_expected = (before - fee_of(btc, opened["funding_txid"]) - bob_local - commit_fee - 2 * ANCHOR
                  - sum(fee_of(btc, t) for t in a_sent.values()))
    wait_for(lambda: alice.call("funds")["confirmed_sat"] == a_expected, timeout=30)
    wait_for(lambda: bob.call("funds")["confirmed_sat"] == bob_local - fee_of(btc, b_sweep), timeout=30)


@pytest.mark.slow
def test_fulfilled_htlc_near_expiry_forces_a_close_claimed_by_htlc_success(nodes, external_chain) -> None:
    """Bob holds an HTLC of Alice's; Alice goes away; Bob learns its preimage (kept though he cannot send
    the fulfill). FULFILL_MARGIN blocks before its expiry Bob goes to chain on his own (must_force_close),
    claims it with his HTLC-success transaction, sweeps its output and his to_local after his delay. Alice,
    back meanwhile, learns the preimage from his claim (htlc_resolved) and sweeps her to_remote. Both to the
    satoshi."""
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", extra=f"to_self_delay = {DELAY}\n",
                           plugins=("tk_htlcs", "tk_signer"))
    before = fund(alice, btc)
    opened = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH, channel_type="static_remotekey")
    cid = opened["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    bob.call("tk_htlc_hold", payment_hash.hex())
    height = alice.call("chaininfo")["watchd"]["height"]
    add(alice, bob, 60_000_000, payment_hash, height)
    wait_for(lambda: len(bob.call("tk_htlc_events", "htlc_accepted")) == 1, timeout=30)
    alice.node.stop()
    wait_for(lambda: not bob.call("peers")["peers"], timeout=30)
    bob.call("tk_htlc_preimage", preimage.hex())         # the held decision, the peer gone: kept

    expiry = height + 40
    mine(btc, [bob], expiry - 18 - btc.call("getblockcount") - 1)
    assert channel_of(bob, cid)["state"] == "normal"
    mine(btc, [bob], 1)                                  # FULFILL_MARGIN blocks before the expiry: to chain
    wait_for(lambda: channel_of(bob, cid)["state"] == "force_closing", timeout=30)
    assert "near its expiry" in channel_of(bob, cid)["onchain"]["reason"]
    wait_for(lambda: "commitment" in channel_of(bob, cid)["onchain"], timeout=30)
    commitment = channel_of(bob, cid)["onchain"]["commitment"]
    mine(btc, [bob], 1)
    wait_for(lambda: any(k.startswith("htlc_tx:") for k in channel_of(bob, cid)["onchain"]["sent"]), timeout=30)
    # Alice back before the HTLC-success is mined (watchd tells of spends in the blocks it scans after a watch)
    alice.node.start()
    wait_for(lambda: channel_of(alice, cid)["state"] == "onchain" and bool(channel_of(alice, cid)["onchain"]["sent"]),
             timeout=60)
    assert channel_of(alice, cid)["onchain"]["kind"] == "remote"
    mine(btc, [alice, bob], 1)
    assert resolved(alice, 0)["preimage"] == preimage.hex()     # from Bob's HTLC-success on chain
    mine(btc, [alice, bob], DELAY)
    wait_for(lambda: len(channel_of(bob, cid)["onchain"]["sent"]) == 3, timeout=30)
    mine(btc, [alice, bob], 6)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "closed", timeout=30)
    sent = channel_of(bob, cid)["onchain"]["sent"]
    assert sorted(k.split(":")[0] for k in sent) == ["htlc_tx", "sweep", "sweep_stage"]
    b_expected = PUSH // 1000 + 60_000 - sum(fee_of(btc, t) for t in sent.values())
    wait_for(lambda: bob.call("funds")["confirmed_sat"] == b_expected, timeout=30)
    (swept,) = channel_of(alice, cid)["onchain"]["sent"].values()
    a_expected = (before - fee_of(btc, opened["funding_txid"]) - PUSH // 1000 - 60_000 - fee_of(btc, commitment)
                  - fee_of(btc, swept))
    wait_for(lambda: alice.call("funds")["confirmed_sat"] == a_expected, timeout=30)


@pytest.mark.slow
def test_anchor_bumps_a_commitment_below_the_wanted_feerate(nodes, external_chain) -> None:
    """Alice wants her commitment mined at 4x the feerate it pays (onchain_feerate_per_kw): once it is in
    the mempool, a child spending her anchor and a coin of her wallet pays for both (CPFP); the two are
    mined together at that feerate; her to_local is swept after her delay. Both wallets to the satoshi."""
    port, btc = external_chain
    target = 10_000
    alice, bob = two_nodes(nodes, port, "threads",
                           extra=f"to_self_delay = {DELAY}\nonchain_feerate_per_kw = {target}\n")
    before = fund(alice, btc)
    opened = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)
    cid = opened["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)

    commitment = alice.call("close", cid, force=True)["txid"]
    wait_for(lambda: "cpfp:anchor" in channel_of(alice, cid)["onchain"]["sent"], timeout=30)
    child = channel_of(alice, cid)["onchain"]["sent"]["cpfp:anchor"]
    assert {commitment, child} <= set(btc.call("getrawmempool"))
    mine(btc, [alice, bob], 1)
    assert btc.call("getrawtransaction", child, True)["blockhash"] == btc.call("getrawtransaction", commitment,
                                                                                  True)["blockhash"]
    weight = sum(weight_of(Tx.parse(bytes.fromhex(btc.call("getrawtransaction", t)))) for t in (commitment, child))
    paid = fee_of(btc, commitment) + fee_of(btc, child)
    assert fee_of(btc, commitment) * 1000 < target * weight // 4      # alone, far below
    # together, at the target (the child's weight is estimated with its signatures at their largest)
    assert target * weight // 1000 <= paid <= target * (weight + 8) // 1000
    mine(btc, [alice, bob], DELAY)
    wait_for(lambda: len(channel_of(alice, cid)["onchain"]["sent"]) == 2, timeout=30)
    mine(btc, [alice, bob], 6)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "closed", timeout=30)
    sent = channel_of(alice, cid)["onchain"]["sent"]
    # her anchor comes back through the child; Bob's is left
    a_expected = (before - fee_of(btc, opened["funding_txid"]) - PUSH // 1000 - fee_of(btc, commitment) - ANCHOR
                  - sum(fee_of(btc, t) for t in sent.values()))
    wait_for(lambda: alice.call("funds")["confirmed_sat"] == a_expected, timeout=30)
    (b_sweep,) = channel_of(bob, cid)["onchain"]["sent"].values()
    wait_for(lambda: bob.call("funds")["confirmed_sat"] == PUSH // 1000 - fee_of(btc, b_sweep), timeout=30)
