"""channel_reestablish between two real nodes on the real regtest chain: after a disconnection and after a
restart the channel is used again; a node restored from an old backup learns it is behind, never
broadcasts, and asks its peer to close."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import channel_of, fund, mine, two_nodes
from conftest import wait_for
from lnp_plugin_api import RpcError
from test_channeld_htlc import add, resolved

FUNDING = 1_000_000


def open_normal(alice, bob, btc) -> str:
    fund(alice, btc)
    cid = alice.call("open", bob.node_id, FUNDING)["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    return cid


def add_once_usable(alice, bob, amount: int, payment_hash: bytes, height: int) -> dict:
    """`add`, tried again while refused for want of a usable channel: right after a (re)connection or a
    restart the channel is usable once channel_reestablish is done."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return add(alice, bob, amount, payment_hash, height)[0]
        except RpcError as e:
            if "no usable channel" not in e.message or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def pay(alice, bob, htlc_id: int, amount: int) -> None:
    """Alice pays Bob AMOUNT over the channel (Bob's test plugin knows the preimage)."""
    preimage = os.urandom(32)
    h = bytes.fromhex(bob.call("tk_htlc_preimage", preimage.hex())["payment_hash"])
    height = alice.call("chaininfo")["watchd"]["height"]
    assert add_once_usable(alice, bob, amount, h, height)["htlc_id"] == htlc_id
    assert resolved(alice, htlc_id)["preimage"] == preimage.hex()


def connected(alice, bob) -> bool:
    return any(p["id"] == bob.node_id for p in alice.call("peers")["peers"])


def settled(parties, cid: str, alice_msat: int) -> None:
    for p in parties:
        wait_for(lambda: channel_of(p, cid)["htlcs_in_flight"] == 0, timeout=30)
    a, b = (channel_of(p, cid) for p in parties)
    assert (a["local_msat"], b["remote_msat"]) == (alice_msat, alice_msat)
    assert a["local_msat"] + a["remote_msat"] == FUNDING * 1000


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_payments_after_a_disconnection_and_a_restart(nodes, external_chain, mode: str) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, mode, plugins=("tk_htlcs", "tk_signer"))
    cid = open_normal(alice, bob, btc)
    pay(alice, bob, 0, 1_000_000)
    alice.call("disconnect", bob.node_id)
    wait_for(lambda: not connected(alice, bob))
    alice.call("connect", f"{bob.node_id}@127.0.0.1:{bob.port}")
    pay(alice, bob, 1, 2_000_000)
    assert bob.node.stop() == 0
    bob.node.start()
    wait_for(lambda: connected(alice, bob), timeout=30)   # Alice redials: a peer with a channel is persistent
    pay(alice, bob, 2, 3_000_000)
    settled((alice, bob), cid, FUNDING * 1000 - 6_000_000)


@pytest.mark.slow
def test_a_node_restored_from_an_old_backup_stops_and_asks_to_close(nodes, external_chain) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"))
    cid = open_normal(alice, bob, btc)
    assert bob.node.stop() == 0
    backup = bob.node.data_dir.parent / "bob-backup"
    backup.mkdir()
    for f in bob.node.data_dir.glob("lnp.sqlite3*"):
        shutil.copy2(f, backup / f.name)
    bob.node.start()
    wait_for(lambda: connected(alice, bob), timeout=30)
    pay(alice, bob, 0, 1_000_000)
    settled((alice, bob), cid, FUNDING * 1000 - 1_000_000)
    assert bob.node.stop() == 0
    for f in bob.node.data_dir.glob("lnp.sqlite3*"):
        f.unlink()
    for f in backup.iterdir():
        shutil.copy2(f, bob.node.data_dir / f.name)
    mempool = set(btc.call("getrawmempool"))
    bob.node.start()
    wait_for(lambda: channel_of(bob, cid)["state"] == "failed", timeout=30)
    assert "data loss" in channel_of(bob, cid)["failure"]
    with pytest.raises(RpcError, match="lost data"):   # our commitment is revoked: never on chain
        bob.call("close", cid, force=True)
    # Bob's error reached Alice: she closes by her commitment (what Bob asks); Bob broadcast nothing
    wait_for(lambda: channel_of(alice, cid)["state"] == "force_closing", timeout=30)
    wait_for(lambda: set(btc.call("getrawmempool")) == mempool | {channel_of(alice, cid)["onchain"]["commitment"]})
