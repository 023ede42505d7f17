"""BOLT-1 conformance of a real lnp-host node, written with lnprototest's events and run by LnpRunner.

lnprototest plays the peer (pyln-proto's BOLT-8, not ours); the node runs as `lnp-host run` on a regtest
chain shared by the tests of this module. Each test is one lnprototest run on a fresh node.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterator

import pytest

if os.environ.get("LNP_REQUIRE_LNPROTOTEST"):
    import lnprototest  # noqa: F401  (CI installs it: a missing one must fail, not skip)
lnprototest = pytest.importorskip("lnprototest")

import pyln.spec.bolt1  # noqa: E402
from lnprototest import (Block, Conn, Connect, ExpectDisconnect, ExpectMsg, Msg, RawMsg,  # noqa: E402
                         bitfield, has_bit)
from pyln.proto.message import Message  # noqa: E402

from lnp_plugin_api.chains import chain_hash  # noqa: E402
from lnp_plugin_api import RpcError  # noqa: E402
from lnp_runner import BLOCK_1, TIMEOUT, LnpRunner, RegtestChain, chain  # noqa: E402,F401 (chain: a fixture)

UNKNOWN_ODD, UNKNOWN_EVEN = 99, 98  # feature bits no BOLT assigns


@pytest.fixture
def runner(pytestconfig: Any, chain: RegtestChain) -> Iterator[LnpRunner]:
    """An LnpRunner on the module's chain, with the BOLT-1 messages only (as lnprototest's BOLT-1 tests)."""
    r = LnpRunner(pytestconfig, chain=chain)
    lnprototest.assign_namespace(lnprototest.make_namespace(pyln.spec.bolt1.csv))
    try:
        yield r
    finally:
        lnprototest.assign_namespace(lnprototest.peer_message_namespace())
        if r.is_running():
            r.stop()
        r.teardown()


def init_checks(event: Any, msg: Message, runner: Any) -> None:
    """What BOLT-1 and BOLT-9 ask of the node's `init`."""
    # BOLT-1: SHOULD NOT set features greater than 13 in `globalfeatures`
    for bit in range(14, 8 * len(msg.fields["globalfeatures"])):
        assert not has_bit(msg.fields["globalfeatures"], bit), f"globalfeatures bit {bit}"
    # a node on regtest says so (networks TLV), so a mainnet peer hangs up at once
    chains = msg.fields["tlvs"]["networks"]["chains"]
    assert chain_hash("regtest") in chains, chains
    # BOLT-9: option_anchors depends on option_static_remotekey
    if runner.has_option("option_anchors"):
        assert runner.has_option("option_static_remotekey")


def ping(num_pong_bytes: int, ignored: int = 0) -> Msg:
    return Msg("ping", num_pong_bytes=num_pong_bytes, ignored="00" * ignored)


def pong(num_bytes: int) -> ExpectMsg:
    return ExpectMsg("pong", ignored="00" * num_bytes)


def opened() -> list:
    """Connect as lnprototest's peer 02 and exchange a minimal init."""
    return [Connect(connprivkey="02"),
            ExpectMsg("init", if_match=init_checks),
            Msg("init", globalfeatures="", features="")]


def test_chain_is_lnprototest_s(runner: LnpRunner, chain: RegtestChain) -> None:
    # bcoin accepted lnprototest's block 1 (segwit active from genesis) and matured its coinbase
    assert runner.getblockheight() == 101
    header = bytes.fromhex(BLOCK_1)[:80]
    assert chain.call("getblockhash", 1) == hashlib.sha256(hashlib.sha256(header).digest()).digest()[::-1].hex()


def test_init_exchange_and_ping(runner: LnpRunner) -> None:
    runner.run([*opened(), ping(10, ignored=5), pong(10)])


def test_node_accepts_its_own_features_echoed(runner: LnpRunner) -> None:
    from lnprototest.stash import rcvd
    runner.run([Connect(connprivkey="03"), ExpectMsg("init"),
                Msg("init", globalfeatures=rcvd(), features=rcvd()), ping(1), pong(1)])


@pytest.mark.parametrize("where", ["features", "globalfeatures"])
def test_unknown_odd_feature_is_ignored(runner: LnpRunner, where: str) -> None:
    bits = {"globalfeatures": "", "features": "", where: bitfield(UNKNOWN_ODD)}
    runner.run([Connect(connprivkey="02"), ExpectMsg("init"), Msg("init", **bits), ping(3), pong(3)])


@pytest.mark.parametrize("where", ["features", "globalfeatures"])
def test_unknown_even_feature_fails_the_connection(runner: LnpRunner, where: str) -> None:
    bits = {"globalfeatures": "", "features": "", where: bitfield(UNKNOWN_EVEN)}
    # the node tells why in a warning (BOLT-1 allows a warning or an error), then hangs up
    runner.run([Connect(connprivkey="02"), ExpectMsg("init"), Msg("init", **bits),
                ExpectMsg("warning"), ExpectDisconnect()])


def test_ping_asking_65532_bytes_or_more_is_ignored(runner: LnpRunner) -> None:
    # were the big pings answered, the first pong would not be this 2-byte one
    runner.run([*opened(), ping(65532), ping(65535, ignored=3), ping(2), pong(2)])


def test_pong_of_the_size_asked(runner: LnpRunner) -> None:
    runner.run([*opened(), ping(0), pong(0), ping(65531), pong(65531)])


def test_unknown_odd_message_is_ignored(runner: LnpRunner) -> None:
    runner.run([*opened(), RawMsg(bytes.fromhex("270F")), RawMsg(bytes.fromhex("8001beef")), ping(4), pong(4)])


def test_unknown_even_message_fails_the_connection(runner: LnpRunner) -> None:
    runner.run([*opened(), RawMsg(bytes.fromhex("2710")), ExpectMsg("warning"), ExpectDisconnect()])


def test_blocks_added_and_trimmed_reach_the_node(runner: LnpRunner) -> None:
    # lnprototest's Block: mine at a height, replacing what is above it; the runner waits for the node
    runner.run([Block(blockheight=102, number=3), Block(blockheight=103, number=1), *opened(), ping(1), pong(1)])
    assert runner.getblockheight() == 103


def test_suite_s_spendable_tx_is_mined(runner: LnpRunner, chain: RegtestChain) -> None:
    # lnprototest's BOLT-2 tests fund channels from tx_spendable (it spends block 1's coinbase, P2WPKH)
    from bitcoin.core import CTransaction, b2lx
    from lnprototest.utils import tx_spendable
    runner.run([Block(blockheight=102, txs=[tx_spendable]), *opened(), ping(1), pong(1)])
    block = chain.call("getblock", chain.call("getblockhash", 102), True, False)
    assert block["tx"][1:] == [b2lx(CTransaction.deserialize(bytes.fromhex(tx_spendable)).GetTxid())]


def test_expect_tx_sees_the_node_broadcast(runner: LnpRunner, chain: RegtestChain) -> None:
    runner.start()
    address = runner.rpc("newaddr")["address"]
    chain.call("generatetoaddress", 1, address)
    runner.add_blocks(None, [], 100)
    txid = runner.rpc("withdraw", chain.address, 100_000)["txid"]
    runner.expect_tx(None, bytes.fromhex(txid)[::-1].hex())  # lnprototest's txids are in internal order


def test_node_rpc_failures_reach_the_suite(runner: LnpRunner) -> None:
    # what the runner asks of the node's RPC fails as the node says, never silently
    runner.start()
    with pytest.raises(RpcError):
        runner.close_channel("00" * 32)  # no such channel
    stranger = Conn("05")  # a peer that never connected
    runner.fundchannel(None, stranger, 100_000)
    runner.fundchannel_future.exception(TIMEOUT)  # it ran beside the suite...
    with pytest.raises(RpcError):
        runner.stop()  # ...and its failure is raised when the run stops


def test_invoice_has_the_suite_s_preimage(runner: LnpRunner) -> None:
    # lnprototest's Invoice(amount, preimage): the node's invoice is for that preimage's hash
    from lnprototest import Invoice
    from lnp_plugin_api import bolt11
    preimage = "42" * 32
    runner.start()
    event = Invoice(50_000, preimage)
    event.action(runner)
    made = [i for i in runner.rpc("listinvoices") if i["label"] == str(event)]
    assert len(made) == 1 and made[0]["amount_msat"] == 50_000
    assert made[0]["payment_hash"] == hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    assert bolt11.decode(made[0]["bolt11"]).payment_hash.hex() == made[0]["payment_hash"]
