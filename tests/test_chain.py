"""signd, the wallet and watchd on a real regtest chain (bcoin, started by the node's regtest plugin)."""
from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal
from typing import Iterator

import pytest
from embit.transaction import Transaction

from chain_tools import BTC, PROFILE, ChainNode, external_chain, external_profile  # noqa: F401 (a fixture)
from conftest import wait_for
from peer_tools import free_port
from lnp_plugin_api import RpcError
from lnp_plugin_api.chain import parse_block
from lnp_plugin_api.onchain_tx import sweep, wallet_input
from lnp_plugins.wallet.builder import script_for


@pytest.fixture(scope="module")
def chain(nodes_module) -> Iterator[ChainNode]:
    port = free_port()
    node = nodes_module(PROFILE.format(port=port), name="chain").start(wait=False)
    chain = ChainNode(node, port)
    yield chain
    chain.close()


def events(chain: ChainNode, name: str) -> list[dict]:
    return chain.call("tk_chain_events", name)


def test_receive_to_newaddr(chain: ChainNode) -> None:
    address = chain.call("newaddr")["address"]
    assert address.startswith("bcrt1q")
    assert chain.call("newaddr")["address"] != address  # never handed out twice
    chain.mine(101, address)
    wait_for(lambda: chain.funds()["confirmed_sat"] == 100 * BTC)  # blocks 1 and 2 are mature
    funds = chain.funds()
    assert funds["immature_sat"] == 99 * 50 * BTC and funds["unconfirmed_sat"] == 0
    assert len(chain.call("transactions")) == 101


def test_withdraw_is_confirmed_at_the_regtest_wallet(chain: ChainNode) -> None:
    target = chain.btc_address()
    sent = chain.call("withdraw", target, str(3 * BTC // 2))
    assert sent["txid"] in chain.btc.call("getrawmempool")  # only reported once really in the mempool
    tx = Transaction.parse(bytes.fromhex(sent["tx"]))
    assert all(vin.sequence == 0xFFFFFFFD for vin in tx.vin)  # RBF
    assert sent["fee_sat"] >= tx_vsize_floor(tx)
    wait_for(lambda: chain.funds()["unconfirmed_sat"] > 0)  # the change, ours while unconfirmed
    chain.mine(1)
    wait_for(lambda: Decimal(str(chain.btc.call("getbalance", "*", 1))) == Decimal("1.5"), timeout=20)
    mine = next(t for t in chain.call("transactions") if t["txid"] == sent["txid"])
    assert mine["confirmations"] == 1 and mine["fee_sat"] == sent["fee_sat"]
    assert mine["net_sat"] == -(3 * BTC // 2) - sent["fee_sat"]


def tx_vsize_floor(tx: Transaction) -> int:
    return len(tx.vin) * 68 + 11 + sum(9 + len(o.script_pubkey.data) for o in tx.vout)  # 1 sat/vB floor


def test_change_is_spent_again(chain: ChainNode) -> None:
    change = [o for o in chain.funds()["outputs"] if not o["coinbase"]]
    assert len(change) == 1
    spendable = chain.funds()["confirmed_sat"]
    assert spendable < 200 * BTC
    sent = chain.call("withdraw", chain.btc_address(), "all")  # every mature output, the change included
    tx = Transaction.parse(bytes.fromhex(sent["tx"]))
    assert (change[0]["txid"], change[0]["vout"]) in {(vin.txid.hex(), vin.vout) for vin in tx.vin}
    assert len(tx.vout) == 1 and tx.vout[0].value == spendable - sent["fee_sat"]  # "all": no change
    chain.mine(1)
    wait_for(lambda: not [o for o in chain.funds()["outputs"] if not o["coinbase"]])


def test_bad_withdrawals_spend_nothing(chain: ChainNode) -> None:
    chain.mine(2)  # two more coinbases become mature
    before = chain.funds()
    assert before["confirmed_sat"] > 0
    target = chain.btc_address()
    cases = [
        (("not-an-address", "1000"), "not an address"),
        (("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "1000"), "not an address of regtest"),
        ((target, str(10**15)), "insufficient funds"),
        ((target, "100"), "dust"),
        ((target, "-5"), "positive"),
        ((target, "lots"), "number of sat"),
        ((target, "ALL"), "number of sat or 'all'"),  # only the documented `all` sweeps the wallet
        ((target, " all"), "number of sat or 'all'"),
        ((target, "1_000"), "number of sat"),
    ]
    for args, words in cases:
        with pytest.raises(RpcError) as e:
            chain.call("withdraw", *args)
        assert words in e.value.message, (args, e.value.message)
    with pytest.raises(RpcError) as e:
        chain.call("withdraw", target, "1000", feerate=0.1)
    assert "feerate" in e.value.message
    with pytest.raises(RpcError) as e:
        chain.call("withdraw", target, 1000, feerate="fast")
    assert e.value.code == -32602
    assert chain.funds() == before


def test_funding_api_reserves_until_sent_or_released(chain: ChainNode) -> None:
    target = chain.btc_address()
    held = chain.call("tk_fund", target, BTC)
    funds = chain.funds()
    assert funds["reserved_sat"] > 0 and any(o["reserved"] for o in funds["outputs"])
    assert held["txid"] not in chain.btc.call("getrawmempool")  # funded, not sent
    chain.call("tk_fund_finish", held["reservation"], False)
    assert chain.funds()["reserved_sat"] == 0
    held = chain.call("tk_fund", target, BTC)
    assert chain.call("tk_fund_finish", held["reservation"], True)["txid"] == held["txid"]
    assert held["txid"] in chain.btc.call("getrawmempool")
    with pytest.raises(RpcError):
        chain.call("tk_fund_finish", held["reservation"], False)  # gone once sent
    chain.mine(1)


def test_a_sweep_destination_is_a_wallet_key_the_wallet_watches(chain: ChainNode) -> None:
    """What channeld sweeps to (`Funding.new_destination`): a fresh receive key with its (branch, index),
    which signd derives to check the sweep; what it receives is the wallet's."""
    got = chain.call("tk_destination")
    assert script_for(got["address"], "regtest").data.hex() == got["script"] and got["key"][0] == 0
    following = chain.call("newaddr")
    assert following["path"].endswith(f"/0/{got['key'][1] + 1}")  # handed out once, in order
    txid = chain.call("withdraw", got["address"], "1230000")["txid"]  # after test_receive_to_newaddr
    wait_for(lambda: any(o["txid"] == txid and o["address"] == got["address"] and o["value_sat"] == 1_230_000
                         for o in chain.funds()["outputs"]))
    chain.mine(1)


def test_a_fee_coin_is_reserved_then_signed_alone(chain: ChainNode) -> None:
    """What channeld pays an anchors channel's zero-fee HTLC transaction with (`Funding.fee_coin`): a
    confirmed coin, reserved (no funding takes it), signed by the wallet in a PSBT that spends it, and no
    other wallet coin with it; once its spend is seen it is gone from the wallet."""
    coin = chain.call("tk_fee_coin", 100_000)
    assert coin["value_sat"] >= 100_000
    assert [o for o in chain.funds()["outputs"] if (o["txid"], o["vout"]) == (coin["txid"], coin["vout"])
            and o["reserved"]]
    with pytest.raises(RpcError, match="no confirmed coin"):
        chain.call("tk_fee_coin", 10**16)
    pay = wallet_input(coin["txid"], coin["vout"], coin["value_sat"], bytes.fromhex(coin["pubkey"]), tuple(coin["key"]))
    fingerprint, account = bytes.fromhex(coin["fingerprint"]), coin["account"]
    to = script_for(chain.btc_address(), "regtest").data
    sw = sweep("fee", [pay], to, 1000)
    with pytest.raises(RpcError, match="no reservation"):
        chain.call("tk_sign_fee_coin", "00" * 16, sw.wallet_psbt(fingerprint, account))
    elsewhere = sweep("fee", [replace(pay, txid="11" * 32)], to, 1000)
    with pytest.raises(RpcError, match="does not spend the reserved coin"):
        chain.call("tk_sign_fee_coin", coin["reservation"], elsewhere.wallet_psbt(fingerprint, account))
    two = sweep("fee", [pay, replace(pay, vout=coin["vout"] + 7)], to, 1000)
    with pytest.raises(RpcError, match="only the reserved coin"):
        chain.call("tk_sign_fee_coin", coin["reservation"], two.wallet_psbt(fingerprint, account))
    signed = chain.call("tk_sign_fee_coin", coin["reservation"], sw.wallet_psbt(fingerprint, account))["psbt"]
    tx = sw.finalize([sw.wallet_signatures(signed)[0]])
    txid = chain.btc.call("sendrawtransaction", tx.serialize().hex())
    assert txid == sw.txid and txid in chain.btc.call("getrawmempool")
    chain.mine(1)
    wait_for(lambda: not [o for o in chain.funds()["outputs"] if (o["txid"], o["vout"]) == (coin["txid"], coin["vout"])])


def test_watches_depths_spends_payments_and_a_reorg(chain: ChainNode) -> None:
    target = chain.btc_address()
    script = script_for(target, "regtest").data.hex()
    chain.call("tk_chain_watch", "script", script)
    sent = chain.call("withdraw", target, str(BTC))
    change_vout = next(i for i, o in enumerate(Transaction.parse(bytes.fromhex(sent["tx"])).vout)
                       if o.script_pubkey.data.hex() != script)
    chain.call("tk_chain_watch", "txid", sent["txid"], [1, 3])
    chain.call("tk_chain_watch", "outpoint", f"{sent['txid']}:{change_vout}")
    first = chain.mine(1)["height"]
    wait_for(lambda: events(chain, "tx_depth"))
    assert [e["depth"] for e in events(chain, "tx_depth")] == [1]
    paid = events(chain, "script_paid")
    assert paid and paid[-1]["txid"] == sent["txid"] and paid[-1]["value_sat"] == BTC
    chain.mine(2)
    wait_for(lambda: [e["depth"] for e in events(chain, "tx_depth")] == [1, 3])
    # a reorg: take the three blocks back, one tip at a time
    for _ in range(3):
        tip = chain.btc.call("getbestblockhash")
        chain.btc.call("invalidateblock", tip)
    wait_for(lambda: chain.height() == first - 1)
    wait_for(lambda: len(events(chain, "block_disconnected")) == 3)
    wait_for(lambda: events(chain, "tx_unconfirmed") and events(chain, "script_unpaid"))
    assert events(chain, "tx_unconfirmed")[0]["txid"] == sent["txid"]
    wait_for(lambda: next(t for t in chain.call("transactions") if t["txid"] == sent["txid"])["height"] is None)
    chain.mine(1)  # the transaction is mined again on the new branch
    wait_for(lambda: len(events(chain, "tx_depth")) == 3)
    assert next(t for t in chain.call("transactions") if t["txid"] == sent["txid"])["confirmations"] == 1
    chain.call("withdraw", chain.btc_address(), "all")  # spends the watched change output
    chain.mine(1)
    wait_for(lambda: events(chain, "outpoint_spent"))
    assert events(chain, "outpoint_spent")[0]["outpoint"] == f"{sent['txid']}:{change_vout}"


def test_restart_resumes_where_it_stopped(chain: ChainNode) -> None:
    height, funds = chain.height(), chain.funds()
    chain.node.stop()
    chain.node.start(wait=False)
    chain.node.wait_ready(timeout=90)
    assert chain.height() == height
    time.sleep(0.5)
    assert chain.call("tk_chain_events", "block_connected") == []  # nothing replayed
    assert chain.funds() == funds
    chain.mine(1)
    assert [e["height"] for e in events(chain, "block_connected")] == [height + 1]


def test_a_policy_plugin_can_refuse_signing(chain: ChainNode) -> None:
    chain.mine(25)
    before = chain.funds()
    assert before["confirmed_sat"] > 1010 * BTC
    with pytest.raises(RpcError) as e:
        chain.call("withdraw", chain.btc_address(), str(1010 * BTC))
    assert "tk_limit" in e.value.message and "over the limit of 100000000000 sat" in e.value.message
    assert chain.funds() == before  # nothing reserved, nothing spent


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_blocks_mined_while_stopped_are_processed_on_restart(nodes, external_chain, mode: str) -> None:
    port, btc = external_chain
    profile = external_profile(port, ["tk_chain", "wallet"], bus=f'mode = "{mode}"')
    node = nodes(profile, name="ext").start()
    address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    with node.client() as c:
        wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 0)
        btc.call("generatetoaddress", 3, address)
        wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 3)
        # durable events go out after the block's commit: they may arrive a moment after the tip moved
        wait_for(lambda: [e["height"] for e in c.call("tk_chain_events", "block_connected")] == [0, 1, 2, 3])
        ours = c.call("newaddr")["address"]
    node.stop()
    btc.call("generatetoaddress", 2, address)  # while the node is down, and one block pays the wallet
    btc.call("generatetoaddress", 1, ours)
    node.start()
    with node.client() as c:
        wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 6)
        wait_for(lambda: [e["height"] for e in c.call("tk_chain_events", "block_connected")] == [4, 5, 6])
        wait_for(lambda: c.call("funds")["immature_sat"] == 50 * BTC)  # no event was lost at startup


def test_zmq_rawblock_announces_blocks_without_waiting_for_the_poll(nodes, external_chain) -> None:
    import zmq
    port, btc = external_chain
    pub = zmq.Context.instance().socket(zmq.PUB)  # stands in for bitcoind's zmqpubrawblock
    zmq_port = pub.bind_to_random_port("tcp://127.0.0.1")
    profile = external_profile(port, ["tk_chain"], watchd="poll_interval = 60",
                               bitcoind=f'zmq_rawblock = "tcp://127.0.0.1:{zmq_port}"\n'
                                        f'zmq_rawtx = "tcp://127.0.0.1:{zmq_port}"')
    node = nodes(profile, name="zmq").start()
    try:
        with node.client() as c:
            wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 0)
            address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
            c.call("tk_chain_watch", "script", script_for(address, "regtest").data.hex())
            time.sleep(0.5)  # the subscription is connected
            btc.call("generatetoaddress", 1, address)
            raw = bytes.fromhex(btc.call("getblock", btc.call("getbestblockhash"), False))
            coinbase = parse_block(raw)[2][0]
            pub.send_multipart([b"rawtx", coinbase.serialize(), (0).to_bytes(4, "little")])
            wait_for(lambda: c.call("tk_chain_events", "script_paid"), timeout=10)
            assert c.call("tk_chain_events", "script_paid")[0]["height"] is None  # seen before the block
            pub.send_multipart([b"rawblock", raw, (1).to_bytes(4, "little")])
            wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 1, timeout=10)  # not after 60 s
            assert [e["height"] for e in c.call("tk_chain_events", "script_paid")] == [None, 1]
    finally:
        pub.close(0)


def test_an_incoming_payment_is_unconfirmed_until_mined(chain: ChainNode) -> None:
    import os
    from embit import ec
    from embit.finalizer import finalize_psbt
    from embit.networks import NETWORKS
    from embit.psbt import PSBT
    from embit.script import Script, p2wpkh
    from embit.transaction import Transaction as Tx, TransactionInput, TransactionOutput
    payer = ec.PrivateKey(os.urandom(32))  # someone else: a key only this test holds
    payer_script = p2wpkh(payer.get_public_key())
    mined = chain.mine(1, payer_script.address(NETWORKS["regtest"]))["height"]
    chain.mine(100, chain.btc_address())
    block = bytes.fromhex(chain.btc.call("getblock", chain.btc.call("getblockhash", mined), False))
    coinbase = parse_block(block)[2][0]
    before = chain.funds()
    ours = script_for(chain.call("newaddr")["address"], "regtest")
    value = coinbase.vout[0].value
    psbt = PSBT(Tx(version=2, vin=[TransactionInput(coinbase.txid(), 0)],
                   vout=[TransactionOutput(250_000_000, ours), TransactionOutput(value - 250_010_000, payer_script)]))
    psbt.inputs[0].witness_utxo = TransactionOutput(value, Script(payer_script.data))
    assert psbt.sign_with(payer) == 1
    txid = chain.btc.call("sendrawtransaction", finalize_psbt(psbt).serialize().hex())
    wait_for(lambda: chain.funds()["unconfirmed_sat"] == before["unconfirmed_sat"] + 250_000_000)
    assert next(t for t in chain.call("transactions") if t["txid"] == txid)["confirmations"] == 0
    chain.mine(1, chain.btc_address())
    wait_for(lambda: next(t for t in chain.call("transactions") if t["txid"] == txid)["confirmations"] == 1)
    assert chain.funds()["unconfirmed_sat"] == before["unconfirmed_sat"]


def test_a_wallet_that_was_down_reads_what_it_missed(nodes, external_chain) -> None:
    import os
    import signal
    port, btc = external_chain
    profile = external_profile(port, ["wallet"],
                               bus='mode = "processes"\nheartbeat_interval = 0.5\nheartbeat_misses = 3')
    node = nodes(profile, name="down").start()
    with node.client() as c:
        ours = c.call("newaddr")["address"]
        wallet = next(s for s in c.info()["services"] if s["name"] == "wallet")
        os.kill(wallet["pid"], signal.SIGSTOP)  # the wallet hangs ...
        btc.call("generatetoaddress", 3, ours)  # ... while three blocks pay it
        wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 3)  # their events go to a hung process
        wait_for(lambda: next(s for s in c.info()["services"] if s["name"] == "wallet")["restarts"] == 1)
        wait_for(lambda: next(s for s in c.info()["services"] if s["name"] == "wallet")["state"] == "running")
        wait_for(lambda: c.call("funds")["immature_sat"] == 150 * BTC)  # the restarted wallet caught up
        assert len(c.call("transactions")) == 3



def test_a_watch_made_late_is_told_what_the_blocks_since_its_height_did(chain: ChainNode) -> None:
    """A watch asked for in answer to a block's event can arrive after watchd processed that block and
    the next ones: with `since` it is told of the spend, confirmation and payment they hold."""
    target = chain.btc_address()
    script = script_for(target, "regtest").data.hex()
    sent = chain.call("withdraw", target, str(BTC // 10))
    spent_in = Transaction.parse(bytes.fromhex(sent["tx"])).vin[0]
    outpoint = f"{spent_in.txid.hex()}:{spent_in.vout}"   # a wallet coin the withdrawal spends
    mined_at = chain.mine(1)["height"]
    chain.mine(2)
    # only now the watches, as an owner reacting late to block `mined_at` would make them
    chain.call("tk_chain_watch", "outpoint", outpoint, since=mined_at)
    chain.call("tk_chain_watch", "txid", sent["txid"], [1, 2, 5], since=mined_at)
    chain.call("tk_chain_watch", "script", script, since=mined_at)
    chain.call("tk_chain_watch", "outpoint", f"{sent['txid']}:0", since=mined_at)  # unspent: nothing to tell
    mine = lambda name, key, value: [e for e in events(chain, name) if e[key] == value]  # noqa: E731
    wait_for(lambda: mine("outpoint_spent", "outpoint", outpoint))
    assert [(e["spending_txid"], e["height"]) for e in mine("outpoint_spent", "outpoint", outpoint)] == [
        (sent["txid"], mined_at)]
    assert not mine("outpoint_spent", "outpoint", f"{sent['txid']}:0")
    wait_for(lambda: len(mine("tx_depth", "txid", sent["txid"])) == 2)
    assert [(e["depth"], e["height"]) for e in mine("tx_depth", "txid", sent["txid"])] == [(1, mined_at), (2, mined_at)]
    assert [(p["txid"], p["height"]) for p in mine("script_paid", "script", script)] == [(sent["txid"], mined_at)]
    chain.mine(2)  # depth 5 comes as for any watch
    wait_for(lambda: [e["depth"] for e in mine("tx_depth", "txid", sent["txid"])] == [1, 2, 5])
