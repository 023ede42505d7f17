"""HTLCs over a channel between two real nodes on the real regtest chain: channeld.add_htlc with a real onion,
the htlc_accepted decision (a test plugin resolves, fails or continues), htlc_resolved, balances to the msat."""
from __future__ import annotations

import hashlib
import os

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import channel_of, fund, mine, two_nodes
from conftest import wait_for
from lnp_plugin_api import RpcError
from lnp_plugin_api.onion import HopPayload, build_onion
from lnp_plugin_api.onion_errors import (BADONION, INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, TEMPORARY_CHANNEL_FAILURE,
                                         decode_error_packet)

FUNDING, PUSH = 1_000_000, 100_000_000


def add(alice, bob, amount: int, payment_hash: bytes, height: int, onion: bytes | None = None) -> tuple[dict, list]:
    """Alice offers an HTLC to Bob; the add's answer and the onion's shared secrets."""
    secrets: list[bytes] = []
    if onion is None:
        payload = HopPayload.final(amount, height + 40, b"\x07" * 32)
        onion, secrets = build_onion(os.urandom(32), [bytes.fromhex(bob.node_id)], [payload], payment_hash)
    body = {"peer_id": bob.node_id, "amount_msat": amount, "payment_hash": payment_hash.hex(),
            "cltv_expiry": height + 40, "onion": onion.hex()}
    return alice.call("tk_signer_request", "channeld.add_htlc", body)["reply"], secrets


def resolved(party, htlc_id: int) -> dict:
    """PARTY's htlc_resolved event for one HTLC (waits for it)."""
    found: list[dict] = []
    wait_for(lambda: bool(found.extend(e for e in party.call("tk_htlc_events", "htlc_resolved")
                                       if e["htlc_id"] == htlc_id) or found), timeout=30)
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_htlcs_fulfilled_failed_and_malformed_with_balances_to_the_msat(nodes, external_chain, mode: str) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, mode, plugins=("tk_htlcs", "tk_signer"))
    fund(alice, btc)
    cid = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    height = alice.call("chaininfo")["watchd"]["height"]

    # Bob knows the preimage: fulfilled; Alice's htlc_resolved carries it
    preimage = os.urandom(32)
    h1 = bytes.fromhex(bob.call("tk_htlc_preimage", preimage.hex())["payment_hash"])
    added, _ = add(alice, bob, 12_345_678, h1, height)
    assert added == {"channel_id": cid, "htlc_id": 0}
    ev = resolved(alice, 0)
    assert ev["preimage"] == preimage.hex() and ev["payment_hash"] == h1.hex() and ev["amount_msat"] == 12_345_678
    asked = bob.call("tk_htlc_events", "htlc_accepted")
    assert len(asked) == 1 and asked[0]["is_final"] and asked[0]["payload"]["payment_secret"] == "07" * 32
    assert asked[0]["payload"]["amt_to_forward"] == 12_345_678 and asked[0]["next_onion"] is None

    # Bob's plugin fails the second with its own failure; the third nobody knows: Continue -> unknown details
    h2, h3 = hashlib.sha256(b"two").digest(), hashlib.sha256(b"three").digest()
    bob.call("tk_htlc_fail", h2.hex())
    _, secrets2 = add(alice, bob, 1_000_000, h2, height)
    _, secrets3 = add(alice, bob, 2_000_000, h3, height)
    assert decode_error_packet(secrets2, bytes.fromhex(resolved(alice, 1)["failure_onion"])).failure.code == \
        TEMPORARY_CHANNEL_FAILURE
    assert decode_error_packet(secrets3, bytes.fromhex(resolved(alice, 2)["failure_onion"])).failure.code == \
        INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS
    # an onion Bob cannot read comes back as update_fail_malformed_htlc, without asking the decision
    add(alice, bob, 3_000_000, hashlib.sha256(b"four").digest(), height, onion=bytes(1366))
    bad = resolved(alice, 3)
    assert bad["failure_code"] & BADONION and bad["failure_onion"] is None and bad["preimage"] is None
    assert len(bob.call("tk_htlc_events", "htlc_accepted")) == 3

    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["htlcs_in_flight"] == 0, timeout=30)
    a, b = channel_of(alice, cid), channel_of(bob, cid)
    paid = 12_345_678
    assert (a["local_msat"], a["remote_msat"]) == (FUNDING * 1000 - PUSH - paid, PUSH + paid)
    assert (b["local_msat"], b["remote_msat"]) == (PUSH + paid, FUNDING * 1000 - PUSH - paid)

    # refusals: nothing stored, nothing sent
    with pytest.raises(RpcError, match="balance|afford"):
        add(alice, bob, FUNDING * 1000, hashlib.sha256(b"big").digest(), height)
    with pytest.raises(RpcError, match="no usable channel"):
        alice.call("tk_signer_request", "channeld.add_htlc",
                   {"peer_id": alice.node_id, "amount_msat": 1000, "payment_hash": "00" * 32, "cltv_expiry": 500,
                    "onion": "00" * 1366})
    assert channel_of(alice, cid)["htlcs_in_flight"] == 0
    # several in one request: each gets its own answer, in order; a bad one does not stop the others
    good = {"peer_id": bob.node_id, "amount_msat": 5_000, "payment_hash": hashlib.sha256(b"batch").hexdigest(),
            "cltv_expiry": height + 40, "onion": "00" * 1366}
    got = alice.call("tk_signer_request", "channeld.add_htlcs", {"htlcs": [
        {**good, "onion": "00" * 10}, {**good, "amount_msat": True}, good,
        {**good, "peer_id": alice.node_id}]})["reply"]["results"]
    assert [r.get("error", {}).get("code") for r in got] == [RpcError.INVALID_PARAMS] * 2 + [None,
                                                                                         RpcError.INVALID_PARAMS]
    assert "1366 bytes" in got[0]["error"]["message"] and "no usable channel" in got[3]["error"]["message"]
    assert got[2]["channel_id"] == cid
    assert resolved(alice, got[2]["htlc_id"])["failure_code"] & BADONION   # its onion is zeros: malformed
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["htlcs_in_flight"] == 0, timeout=30)


def test_a_plugin_refuses_a_channel_and_dust_htlcs_over_the_limit_fail(nodes, external_chain) -> None:
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"),
                           bob_extra="max_dust_htlc_exposure_msat = 400000\n")
    fund(alice, btc)
    with pytest.raises(RpcError, match="no channels of 77777 sat here"):
        alice.call("open", bob.node_id, 77_777)
    assert alice.channels() == [] and bob.channels() == []
    cid = alice.call("open", bob.node_id, FUNDING)["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    # 500 sat is below the dust limit: Bob would lose it on a force close, more than he accepts; his
    # plugin knows the preimage, yet the HTLC fails (temporary_channel_failure) and the channel stays
    preimage = os.urandom(32)
    h = bytes.fromhex(bob.call("tk_htlc_preimage", preimage.hex())["payment_hash"])
    _, secrets = add(alice, bob, 500_000, h, alice.call("chaininfo")["watchd"]["height"])
    ev = resolved(alice, 0)
    assert ev["preimage"] is None
    assert decode_error_packet(secrets, bytes.fromhex(ev["failure_onion"])).failure.code == TEMPORARY_CHANNEL_FAILURE
    assert channel_of(bob, cid)["state"] == "normal" and bob.call("tk_htlc_events", "htlc_accepted") == []


@pytest.mark.slow
def test_many_htlcs_both_ways_at_once(nodes, external_chain) -> None:
    """Payments crossing in both directions, many in flight: commitments cross and batch, nothing is lost."""
    from concurrent.futures import ThreadPoolExecutor
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("tk_htlcs", "tk_signer"))
    fund(alice, btc)
    cid = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    height = alice.call("chaininfo")["watchd"]["height"]

    def pay(payer, payee, i: int) -> int:
        preimage = hashlib.sha256(f"{payer.node_id}{i}".encode()).digest()
        h = bytes.fromhex(payee.call("tk_htlc_preimage", preimage.hex())["payment_hash"])
        return add(payer, payee, 1_000_000 + i, h, height)[0]["htlc_id"]

    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(pay, alice, bob, i) for i in range(12)] + [pool.submit(pay, bob, alice, i) for i in range(12)]
        ids = [j.result() for j in jobs]
    assert sorted(ids[:12]) == sorted(ids[12:]) == list(range(12))
    for payer in (alice, bob):
        wait_for(lambda: len([e for e in payer.call("tk_htlc_events", "htlc_resolved") if e["preimage"]]) == 12,
                 timeout=60)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["htlcs_in_flight"] == 0, timeout=30)
    a, b = channel_of(alice, cid), channel_of(bob, cid)
    assert (a["local_msat"], a["remote_msat"]) == (FUNDING * 1000 - PUSH, PUSH)   # the same sums both ways
    assert (b["local_msat"], b["remote_msat"]) == (PUSH, FUNDING * 1000 - PUSH)
