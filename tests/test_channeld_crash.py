"""A node killed (SIGKILL) at each step of a payment, restarted: no channel lost, the payment completes,
both sides agree on the balances to the msat. Real nodes, the real regtest chain."""
from __future__ import annotations

import os

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import channel_of, two_nodes
from conftest import wait_for
from test_channeld_htlc import resolved
from test_channeld_reestablish import FUNDING, add_once_usable, connected, open_normal, settled


@pytest.mark.slow
@pytest.mark.parametrize("point", ["revoke_and_ack_stored", "fulfill_htlc_stored", "commitment_signed_stored",
                                   "revocation_received"])
def test_the_payee_killed_at_each_step(nodes, external_chain, point: str) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"))
    cid = open_normal(alice, bob, btc)
    assert bob.node.stop() == 0
    os.environ["LNP_DEV_CRASH_AT"] = f"channeld:{point}"
    try:
        bob.node.start()
    finally:
        del os.environ["LNP_DEV_CRASH_AT"]
    wait_for(lambda: connected(alice, bob), timeout=30)
    wait_for(lambda: channel_of(alice, cid)["state"] == "normal" and alice.call("peers")["peers"])
    preimage = os.urandom(32)
    h = bytes.fromhex(bob.call("tk_htlc_preimage", preimage.hex())["payment_hash"])
    add_once_usable(alice, bob, 5_000_000, h, alice.call("chaininfo")["watchd"]["height"])
    assert bob.node.proc.wait(30) == -9                    # killed at the crash point
    bob.node.start()                                       # the test plugin kept the preimage on disk
    assert resolved(alice, 0)["preimage"] == preimage.hex()
    settled((alice, bob), cid, FUNDING * 1000 - 5_000_000)
    assert channel_of(alice, cid)["state"] == channel_of(bob, cid)["state"] == "normal"


@pytest.mark.slow
def test_killed_once_the_funding_is_deep_still_sends_channel_ready(nodes, external_chain) -> None:
    """watchd's tx_depth is acknowledged before channel_ready goes: a kill between the two loses nothing."""
    from channel_tools import fund, mine
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads")
    fund(alice, btc)
    assert bob.node.stop() == 0
    os.environ["LNP_DEV_CRASH_AT"] = "channeld:funding_deep"
    try:
        bob.node.start()
    finally:
        del os.environ["LNP_DEV_CRASH_AT"]
    alice.call("connect", f"{bob.node_id}@127.0.0.1:{bob.port}")   # no channel yet: not redialled
    cid = alice.call("open", bob.node_id, FUNDING)["channel_id"]
    mine(btc, [alice], 3)                                  # Bob dies as he sees the depth
    assert bob.node.proc.wait(30) == -9
    bob.node.start()
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
