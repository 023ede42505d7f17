"""channeld on chain, between two real nodes on the real regtest chain: a force close (close --force) whose
outputs are swept to both wallets, balances to the satoshi with the fees read from the chain."""
from __future__ import annotations

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import channel_of, fund, mine, two_nodes
from conftest import wait_for

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
@pytest.mark.parametrize("mode", ["threads"])
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
