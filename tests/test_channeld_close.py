"""Cooperative close between two real nodes on the real regtest chain: shutdown, closing_signed with fee
ranges, signd signs, the mutual close is mined and both wallets get their balances to the satoshi."""
from __future__ import annotations

import os

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import Party, channel_of, mine, two_nodes
from conftest import wait_for
from lnp_plugin_api import RpcError
from test_channeld_htlc import add, resolved
from test_channeld_reestablish import FUNDING, connected, open_normal, pay

PAID = 12_345_678


def funds(p: Party) -> int:
    return p.call("funds")["confirmed_sat"]


def states(p: Party, cid: str) -> list[str]:
    """The channel_state_changed transitions PARTY emitted for the channel."""
    return [e["new_state"] for e in p.call("tk_htlc_events", "channel_state_changed") if e["channel_id"] == cid]


def closed_to_the_satoshi(btc, alice: Party, bob: Party, cid: str, result: dict, before: tuple[int, int],
                          restarted: tuple[Party, ...] = ()) -> None:
    """Mine the closing transaction; each wallet gained its balance, the opener (Alice) paid the fee."""
    a = channel_of(alice, cid)
    assert a["state"] == "closing" and a["closing_txid"] == result["txid"] and result["fee_sat"] > 0
    wait_for(lambda: channel_of(bob, cid)["state"] == "closing", timeout=30)
    assert channel_of(bob, cid)["closing_txid"] == result["txid"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "closed", timeout=30)
    alice_gets = a["local_msat"] // 1000 - result["fee_sat"]
    wait_for(lambda: funds(alice) == before[0] + alice_gets, timeout=30)
    wait_for(lambda: funds(bob) == before[1] + a["remote_msat"] // 1000, timeout=30)
    # each balance is rounded down to the satoshi (BOLT-3): the msat left over go to the miners
    dropped = (a["local_msat"] % 1000 + a["remote_msat"] % 1000) // 1000
    assert alice_gets + a["remote_msat"] // 1000 + result["fee_sat"] == FUNDING - dropped
    for p in (alice, bob):
        if p in restarted:   # its events of before the restart are gone with the test plugin's memory
            continue
        assert states(p, cid)[-4:] == ["shutdown", "negotiating", "closing", "closed"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_close_after_a_payment_by_the_opener(nodes, external_chain, mode: str) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, mode, plugins=("tk_htlcs", "tk_signer"))
    cid = open_normal(alice, bob, btc)
    pay(alice, bob, 0, PAID)
    wait_for(lambda: channel_of(alice, cid)["htlcs_in_flight"] == 0 == channel_of(bob, cid)["htlcs_in_flight"])
    before = (funds(alice), funds(bob))
    result = alice.call("close", bob.node_id)          # the peer's node id: its only channel
    assert result["channel_id"] == cid and result["state"] == "closing" and len(result["txid"]) == 64
    assert channel_of(alice, cid)["local_msat"] == FUNDING * 1000 - PAID
    closed_to_the_satoshi(btc, alice, bob, cid, result, before)
    with pytest.raises(RpcError, match="no channel"):
        alice.call("close", "00" * 32)


@pytest.mark.slow
def test_close_by_the_peer_waits_for_a_pending_htlc(nodes, external_chain) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"))
    cid = open_normal(alice, bob, btc)
    preimage = os.urandom(32)
    import hashlib
    h = hashlib.sha256(preimage).digest()
    bob.call("tk_htlc_hold", h.hex())
    add(alice, bob, PAID, h, alice.call("chaininfo")["watchd"]["height"])
    wait_for(lambda: len(bob.call("tk_htlc_events", "htlc_accepted")) == 1, timeout=30)
    before = (funds(alice), funds(bob))
    scid = channel_of(bob, cid)["short_channel_id"]
    pending = bob.call("close", scid, timeout=3)       # the HTLC is still there: no agreement yet
    assert pending["txid"] is None and pending["state"] == "shutdown"
    wait_for(lambda: channel_of(alice, cid)["state"] == "shutdown", timeout=30)
    with pytest.raises(RpcError, match="no usable channel"):   # no new HTLC after shutdown
        add(alice, bob, 1_000_000, os.urandom(32), alice.call("chaininfo")["watchd"]["height"])
    bob.call("tk_htlc_preimage", preimage.hex())       # Bob settles it; then the close completes
    assert resolved(alice, 0)["preimage"] == preimage.hex()
    wait_for(lambda: channel_of(alice, cid)["state"] == "closing", timeout=30)
    result = bob.call("close", cid)                    # asked again: the agreed transaction
    assert result["txid"] == channel_of(alice, cid)["closing_txid"]
    assert channel_of(alice, cid)["remote_msat"] == PAID
    closed_to_the_satoshi(btc, alice, bob, cid, result, before)


@pytest.mark.slow
def test_close_to_a_destination_and_bad_destinations_refused(nodes, external_chain) -> None:
    port, btc = external_chain
    # Alice commits to no upfront script (0x0000), so she may name a destination at close
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"),
                           extra="upfront_shutdown_script = false\n")
    cid = open_normal(alice, bob, btc)
    pay(alice, bob, 0, PAID)
    for bad in ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "not-an-address", "mvm74FACaagz94rjWbNmW2EmhJdmEGcxpa"):
        with pytest.raises(RpcError, match="address"):
            alice.call("close", cid, destination=bad)
    assert channel_of(alice, cid)["state"] == channel_of(bob, cid)["state"] == "normal"
    dest = bob.call("newaddr")["address"]                  # Alice's funds go to Bob's wallet
    before = (funds(alice), funds(bob))
    wait_for(lambda: channel_of(alice, cid)["htlcs_in_flight"] == 0)
    result = alice.call("close", cid, destination=dest)
    a = channel_of(alice, cid)
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "closed", timeout=30)
    wait_for(lambda: funds(bob) == before[1] + a["local_msat"] // 1000 - result["fee_sat"] + a["remote_msat"] // 1000,
             timeout=30)
    assert funds(alice) == before[0]


@pytest.mark.slow
def test_negotiation_interrupted_by_a_crash_completes_after_reconnection(nodes, external_chain) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"))
    cid = open_normal(alice, bob, btc)
    pay(alice, bob, 0, PAID)
    wait_for(lambda: channel_of(bob, cid)["htlcs_in_flight"] == 0)
    before = (funds(alice), funds(bob))
    assert bob.node.stop() == 0
    os.environ["LNP_DEV_CRASH_AT"] = "channeld:closing_signed_received"
    try:
        bob.node.start()
    finally:
        del os.environ["LNP_DEV_CRASH_AT"]
    wait_for(lambda: connected(alice, bob), timeout=30)
    wait_for(lambda: channel_of(alice, cid)["state"] == "normal")
    pending = alice.call("close", cid, timeout=5)
    assert pending["txid"] is None
    assert bob.node.proc.wait(30) == -9                # Bob dies on Alice's first closing_signed
    assert channel_of(alice, cid)["state"] == "negotiating"
    bob.node.start()                                   # reconnects: shutdown again, negotiation restarts
    wait_for(lambda: channel_of(alice, cid)["state"] == "closing", timeout=60)
    result = alice.call("close", cid)
    closed_to_the_satoshi(btc, alice, bob, cid, result, before, restarted=(bob,))


@pytest.mark.slow
def test_close_while_the_peer_is_away_completes_when_it_returns(nodes, external_chain) -> None:
    """Our shutdown waits in the channel for channel_reestablish; the peer's answer follows."""
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"))
    cid = open_normal(alice, bob, btc)
    pay(alice, bob, 0, PAID)
    wait_for(lambda: channel_of(bob, cid)["htlcs_in_flight"] == 0)
    before = (funds(alice), funds(bob))
    assert bob.node.stop() == 0
    wait_for(lambda: not connected(alice, bob))
    pending = alice.call("close", cid, timeout=2)
    assert pending["txid"] is None and channel_of(alice, cid)["state"] == "shutdown"
    bob.node.start()                                   # Alice redials: reestablish, shutdown, negotiation
    wait_for(lambda: channel_of(alice, cid)["state"] == "closing", timeout=60)
    closed_to_the_satoshi(btc, alice, bob, cid, alice.call("close", cid), before, restarted=(bob,))


@pytest.mark.slow
def test_close_pays_the_upfront_shutdown_script(nodes, external_chain) -> None:
    """option_upfront_shutdown_script: each side's open message commits to a wallet address; `close
    --destination` is then refused, and the mutual close pays the committed scripts (signd checks ours as
    its holder_shutdown_script)."""
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"))
    cid = open_normal(alice, bob, btc)
    pay(alice, bob, 0, PAID)
    a, b = channel_of(alice, cid)["upfront_shutdown_script"], channel_of(bob, cid)["upfront_shutdown_script"]
    assert len(a["local"]) == 44 and a["local"].startswith("0014") and a["remote"] == b["local"] != a["local"]
    assert b["remote"] == a["local"]
    with pytest.raises(RpcError, match="committed to an upfront_shutdown_script"):
        alice.call("close", cid, destination=bob.call("newaddr")["address"])
    assert channel_of(alice, cid)["state"] == "normal"
    wait_for(lambda: channel_of(alice, cid)["htlcs_in_flight"] == 0 == channel_of(bob, cid)["htlcs_in_flight"])
    before = (funds(alice), funds(bob))
    result = alice.call("close", cid)
    raw = btc.call("getrawtransaction", result["txid"], True)
    scripts = {o["scriptPubKey"]["hex"] for o in raw["vout"]}
    assert scripts == {a["local"], b["local"]}
    closed_to_the_satoshi(btc, alice, bob, cid, result, before)
