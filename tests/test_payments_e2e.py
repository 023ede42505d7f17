"""Invoices and payments end to end: two real nodes (signd, wallet, peerd, real channeld, invoices, pay) on the
real regtest chain, in both bus modes. Alice opens a channel to Bob, each pays the other's invoices; balances,
listings, events and refusals are checked on both sides."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import Party, channel_of, fund, mine, profile
from conftest import wait_for
from lnp_plugin_api import RpcError, bolt11
from lnp_plugin_api.onion_errors import INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS
from peer_tools import free_port

FUNDING, PUSH = 1_000_000, 200_000_000
BOB_KEY = bytes.fromhex("66" * 32)       # Bob's node key, forced so the test can sign invoices as Bob would
PLUGINS = ("invoices", "pay", "tk_payevents")


def start(nodes: Any, chain_port: int, name: str, mode: str, *extra: str) -> Party:
    port = free_port()
    node = nodes(profile(chain_port, port, mode, plugins=PLUGINS), name=f"{name}{mode[0]}").start(*extra)
    party = Party(node, port)
    party.node_id = party.call("info")["node_id"]
    return party


def balances(party: Party, cid: str) -> tuple[int, int]:
    """(local, remote) msat once no HTLC is in flight."""
    wait_for(lambda: channel_of(party, cid)["htlcs_in_flight"] == 0, timeout=30)
    ch = channel_of(party, cid)
    return ch["local_msat"], ch["remote_msat"]


def events(party: Party, name: str, **match: Any) -> list[dict]:
    return [e for e in party.call("tk_pay_events", name) if all(e.get(k) == v for k, v in match.items())]


def forged(text: str, **changes: Any) -> str:
    """Bob's invoice with CHANGES, signed with Bob's key: what a tampered invoice would look like."""
    inv = dataclasses.replace(bolt11.decode(text), wire=None, signature=None, **changes)
    return bolt11.encode(inv, bolt11.sign_with_key(BOB_KEY))


def waiting(party: Party, label: str, into: list) -> None:
    try:
        with party.node.client(timeout=60) as c:
            into.append(c.waitinvoice(label))
    except RpcError as e:
        into.append(e)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_invoices_paid_both_ways_over_a_real_channel(nodes: Any, external_chain: Any, tmp_path: Path,
                                                     mode: str) -> None:
    port, btc = external_chain
    keyfile = tmp_path / "bob.key"
    keyfile.write_text(BOB_KEY.hex())
    alice = start(nodes, port, "alice", mode)
    bob = start(nodes, port, "bob", mode, "--dev-force-privkey-file", str(keyfile))
    alice.call("connect", f"{bob.node_id}@127.0.0.1:{bob.port}")
    wait_for(lambda: bool(bob.call("peers")["peers"]))
    fund(alice, btc)
    cid = alice.call("open", bob.node_id, FUNDING, push_msat=PUSH)["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
        wait_for(lambda: any(e["channel_id"] == cid and e["new_state"] == "normal"
                             for e in p.call("tk_pay_events", "channel_state_changed")), timeout=30)
    a0, b0 = balances(alice, cid), balances(bob, cid)
    assert a0 == (FUNDING * 1000 - PUSH, PUSH) and b0 == (PUSH, FUNDING * 1000 - PUSH)

    # Alice pays Bob's invoice; Bob's waitinvoice answers
    amount = 12_345_678
    made = bob.call("invoice", amount, "coffee", description="one coffee")
    waited: list = []
    waiter = threading.Thread(target=waiting, args=(bob, "coffee", waited))
    waiter.start()
    paid = alice.call("pay", made["bolt11"])
    assert paid["status"] == "complete" and paid["amount_msat"] == amount and paid["destination"] == bob.node_id
    assert hashlib.sha256(bytes.fromhex(paid["preimage"])).hexdigest() == made["payment_hash"]
    waiter.join(30)
    assert waited[0]["status"] == "paid" and waited[0]["amount_received_msat"] == amount
    assert bob.call("waitinvoice", "coffee")["status"] == "paid"
    assert bob.call("listinvoices", "coffee")[0]["status"] == "paid"
    listed = alice.call("listpayments", made["bolt11"])
    assert [(p["status"], p["attempts"]) for p in listed] == [("complete", 1)] and "preimage" not in listed[0]
    assert balances(alice, cid) == (a0[0] - amount, a0[1] + amount)
    assert balances(bob, cid) == (b0[0] + amount, b0[1] - amount)

    # paying the same invoice again sends nothing: the same result, balances unchanged
    assert alice.call("pay", made["bolt11"]) == paid
    assert alice.call("listpayments", made["bolt11"])[0]["attempts"] == 1
    assert balances(alice, cid) == (a0[0] - amount, a0[1] + amount)

    # Bob pays Alice back
    back = alice.call("invoice", 2_000_000, "change")
    assert bob.call("pay", back["bolt11"])["status"] == "complete"
    assert alice.call("listinvoices", "change")[0]["status"] == "paid"
    a1, b1 = balances(alice, cid), balances(bob, cid)
    assert a1 == (a0[0] - amount + 2_000_000, a0[1] + amount - 2_000_000)
    assert b1 == (b0[0] + amount - 2_000_000, b0[1] - amount + 2_000_000)

    # refused by the payer, nothing sent: expired, an amount other than the invoice's
    brief = bob.call("invoice", 1_000_000, "brief", expiry=1)
    other = bob.call("invoice", 1_000_000, "other")
    time.sleep(2.1)
    with pytest.raises(RpcError, match="expired"):
        alice.call("pay", brief["bolt11"])
    with pytest.raises(RpcError, match="differs from the invoice"):
        alice.call("pay", other["bolt11"], amount_msat=999_000)
    # refused by the payee: Bob's hash with another payment_secret, a lower amount, or a longer expiry (signed by
    # Bob's key, as a tampered invoice would be): incorrect_or_unknown_payment_details, decoded by the payer
    for text, why in [(forged(other["bolt11"], payment_secret=os.urandom(32)), "wrong payment_secret"),
                      (forged(other["bolt11"], amount_msat=500_000), "amount below the invoice"),
                      (forged(brief["bolt11"], expiry=3600), "expired at the payee")]:
        with pytest.raises(RpcError, match="incorrect_or_unknown_payment_details from the payee") as e:
            alice.call("pay", text)
        assert e.value.data["status"] == "failed", why
        failed = alice.call("listpayments", text)[0]
        assert failed["status"] == "failed" and failed["failure_code"] == INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, why
    assert bob.call("listinvoices", "other")[0]["status"] == "unpaid"
    assert balances(alice, cid) == a1 and balances(bob, cid) == b1
    # and the genuine invoice still pays (a failed payment of the same hash does not stand in the way)
    assert alice.call("pay", other["bolt11"])["status"] == "complete"
    assert balances(alice, cid) == (a1[0] - 1_000_000, a1[1] + 1_000_000)

    # 20 payments at once: every one completes, and commitments are shared (commit_interval_ms batches the
    # updates): each payment alone takes 10 messages (add, fulfill, and two commitment_signed/revoke_and_ack
    # rounds)
    texts = [bob.call("invoice", 100_000 + i, f"many{i}")["bolt11"] for i in range(20)]
    sent = sum(p.call("peers")["peers"][0]["msgs_out"] for p in (alice, bob))
    a2, b2 = balances(alice, cid), balances(bob, cid)
    with ThreadPoolExecutor(20) as pool:
        done = list(pool.map(lambda t: alice.call("pay", t)["status"], texts))
    assert done == ["complete"] * 20
    total = sum(100_000 + i for i in range(20))
    assert balances(alice, cid) == (a2[0] - total, a2[1] + total) and balances(bob, cid) == (b2[0] + total,
                                                                                            b2[1] - total)
    messages = sum(p.call("peers")["peers"][0]["msgs_out"] for p in (alice, bob)) - sent
    assert messages < 20 * 10 * 3 // 4, messages

    # the durable events, on each side
    wait_for(lambda: len(events(alice, "payment_failed")) == 3 and len(events(bob, "invoice_paid")) == 22)
    assert events(bob, "invoice_paid", label="coffee") == [
        {"label": "coffee", "payment_hash": made["payment_hash"], "amount_msat": amount, "received_msat": amount,
         "pay_index": 1}]
    assert events(alice, "invoice_paid", label="change")[0]["received_msat"] == 2_000_000
    succeeded = events(alice, "payment_succeeded", payment_hash=made["payment_hash"])
    assert succeeded == [{"payment_hash": made["payment_hash"], "preimage": paid["preimage"], "amount_msat": amount,
                          "fee_msat": 0, "destination": bob.node_id}]
    assert len(events(alice, "payment_succeeded")) == 22 and len(events(bob, "payment_succeeded")) == 1
    assert {e["failure_code"] for e in events(alice, "payment_failed")} == {INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS}
    assert [e["new_state"] for e in events(bob, "channel_state_changed", channel_id=cid)][-1] == "normal"
    for p in (alice, bob):
        logs = (p.node.data_dir / "lnp-host.log").read_text()
        assert paid["preimage"] not in logs
