"""channeld opens channels between two real nodes on the real regtest chain, in both bus modes."""
from __future__ import annotations

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import channel_of, fund, mine, two_nodes
from conftest import wait_for
from lnp_plugin_api import RpcError


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_open_mine_normal_with_balances_to_the_msat(nodes, external_chain, mode: str) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, mode)
    before = fund(alice, btc)
    opened = alice.call("open", bob.node_id, 1_000_000, push_msat=123_456_789)
    assert opened["channel_type"] == "anchors"            # both support it: the default
    cid = opened["channel_id"]
    for p in (alice, bob):
        ch = channel_of(p, cid)
        assert ch["state"] == "awaiting_lock" and ch["short_channel_id"] is None
        assert ch["funding_outpoint"] == f"{opened['funding_txid']}:{opened['funding_vout']}"
    # the funding transaction is in the mempool; the wallet has spent its inputs
    assert opened["funding_txid"] in btc.call("getrawmempool")
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        try:
            wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
        except AssertionError:
            print((p.node.data_dir / "lnp-host.log").read_text()[-6000:], p.node.log.read_text()[-3000:])
            raise
    a, b = channel_of(alice, cid), channel_of(bob, cid)
    assert a["short_channel_id"] == b["short_channel_id"] is not None
    assert (a["local_msat"], a["remote_msat"]) == (1_000_000_000 - 123_456_789, 123_456_789)
    assert (b["local_msat"], b["remote_msat"]) == (123_456_789, 1_000_000_000 - 123_456_789)
    assert a["capacity_sat"] == b["capacity_sat"] == 1_000_000
    assert a["opener"] == "local" and b["opener"] == "remote"
    assert a["our_reserve_sat"] == b["their_reserve_sat"] == 10_000   # 1% of the capacity, asked by Bob
    funds = alice.call("funds")
    assert funds["confirmed_sat"] + funds.get("unconfirmed_sat", 0) < before - 1_000_000
    # the channel survives a restart of both nodes
    for p in (alice, bob):
        assert p.node.stop() == 0
        p.node.start()
        assert channel_of(p, cid)["state"] == "normal"


def test_open_refusals_send_nothing_and_release_the_inputs(nodes, external_chain) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", extra="max_funding_sat = 500000\n")
    fund(alice, btc)
    with pytest.raises(RpcError, match="not connected"):
        alice.call("open", "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798", 100_000)
    with pytest.raises(RpcError, match="push_msat"):
        alice.call("open", bob.node_id, 100_000, push_msat=100_000_001)
    # Bob's limit: his refusal comes back to Alice's caller, and her inputs are free again
    with pytest.raises(RpcError, match="funding_satoshis 600000 is outside"):
        alice.call("open", bob.node_id, 600_000)
    assert alice.call("funds").get("reserved_sat", 0) == 0
    assert alice.channels() == [] and bob.channels() == []


@pytest.mark.slow
def test_the_opener_follows_its_fee_estimate_with_update_fee(nodes, external_chain) -> None:
    from channel_tools import two_nodes as pair
    port, btc = external_chain
    alice, bob = pair(nodes, port, "threads")
    fund(alice, btc)
    cid = alice.call("open", bob.node_id, 1_000_000, feerate=10_000)["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    assert channel_of(bob, cid)["feerate_per_kw"] == 10_000
    mine(btc, [alice, bob], 1)   # a block: Alice's estimate (regtest has none: 2500) is far from 10000
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["feerate_per_kw"] == 2500, timeout=30)
    a = channel_of(alice, cid)
    assert (a["local_msat"], a["remote_msat"]) == (1_000_000_000, 0) and a["htlcs_in_flight"] == 0
