"""The wallet and the chain backend when things go wrong, on a real regtest chain (bcoin): a mempool
lost in a restart, a double-spend, abandoned transactions, a stalled or misconfigured backend,
racing broadcasts, and the regtest node's own settings."""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from embit.transaction import Transaction

from chain_tools import (BTC, PROFILE, ChainNode, external_chain, external_profile, regtest_pid,  # noqa: F401
                         start_regtest, stop_process)
from conftest import lnp_host, wait_for
from peer_tools import free_port
from lnp_plugin_api import RpcError
from lnp_plugins.bitcoind import Bitcoind, BitcoindBackend

THREADS = 8


@pytest.fixture(scope="module")
def chain(nodes_module) -> Iterator[ChainNode]:
    port = free_port()
    node = nodes_module(PROFILE.format(port=port), name="recovery").start(wait=False)
    chain = ChainNode(node, port)
    chain.mine(110)  # ten mature coinbases
    yield chain
    chain.close()


def inputs(raw: str) -> set[tuple[str, int]]:
    return {(vin.txid.hex(), vin.vout) for vin in Transaction.parse(bytes.fromhex(raw)).vin}


def outputs(chain: ChainNode) -> set[tuple[str, int]]:
    return {(o["txid"], o["vout"]) for o in chain.funds()["outputs"]}


def assert_funds_match_the_chain(chain: ChainNode) -> None:
    """Every output the wallet counts exists, unspent, on the chain or in the mempool."""
    for txid, vout in outputs(chain):
        assert chain.btc.call("gettxout", txid, vout, True) is not None, (txid, vout)


def test_racing_broadcasts_of_one_transaction_all_succeed(chain: ChainNode) -> None:
    """Both ends of a cooperative close broadcast it, a sweep is sent twice: the same transaction
    sent from several threads at once is accepted by every send, as bitcoind does."""
    cookie = str(chain.node.data_dir / "regtest" / ".cookie")
    clients = [Bitcoind(f"http://127.0.0.1:{chain.port}", cookie_file=cookie, timeout=30) for _ in range(THREADS)]

    def race(send) -> list:
        start, answers = threading.Barrier(THREADS), []

        def one(i: int) -> None:
            start.wait()
            try:
                answers.append(send(i))
            except RpcError as e:
                answers.append(e)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return answers

    target = chain.btc_address()
    first = chain.call("tk_fund", target, BTC)  # signed by the wallet, not sent
    answers = race(lambda i: clients[i].call("sendrawtransaction", first["tx"]))  # the regtest node's answers
    assert answers == [first["txid"]] * THREADS, answers
    second = chain.call("tk_fund", target, BTC)
    backends = [BitcoindBackend(c) for c in clients]
    answers = race(lambda i: backends[i].broadcast(bytes.fromhex(second["tx"])))  # the node's own broadcast
    assert answers == [second["txid"]] * THREADS, answers
    for held in (first, second):  # the wallet sending what is in the mempool already: sent
        assert chain.call("tk_fund_finish", held["reservation"], True)["txid"] == held["txid"]
    chain.mine(1)
    assert race(lambda i: backends[i].broadcast(bytes.fromhex(first["tx"]))) == [first["txid"]] * THREADS
    for c in clients:
        c.close()


def test_an_unconfirmed_transaction_is_sent_again_after_a_restart(chain: ChainNode) -> None:
    """The regtest node keeps no mempool across a restart: the wallet sends its transaction again."""
    sent = chain.call("withdraw", chain.btc_address(), str(2 * BTC))
    assert sent["txid"] in chain.btc.call("getrawmempool")
    chain.node.stop()  # the node stops its regtest node, whose mempool is lost
    chain.node.start(wait=False)
    chain.node.wait_ready(timeout=90)
    wait_for(lambda: sent["txid"] in chain.btc.call("getrawmempool"), timeout=20)
    wait_for(lambda: chain.tx(sent["txid"])["mempool"] == "sent again")
    chain.mine(1)
    assert chain.tx(sent["txid"])["confirmations"] == 1
    funds = chain.funds()
    assert funds["unconfirmed_sat"] == 0 and funds["reserved_sat"] == 0  # the change confirmed with it
    assert_funds_match_the_chain(chain)


def test_abandon_a_transaction_the_network_still_has(chain: ChainNode) -> None:
    target = chain.btc_address()
    before = chain.funds()
    sent = chain.call("withdraw", target, str(4 * BTC))
    done = chain.call("abandon", sent["txid"])
    assert done == {"txid": sent["txid"], "state": "abandoned", "abandoned": [sent["txid"]]}
    funds = chain.funds()
    assert funds["confirmed_sat"] == before["confirmed_sat"] and funds["unconfirmed_sat"] == 0  # inputs back
    assert chain.tx(sent["txid"])["state"] == "abandoned"
    with pytest.raises(RpcError) as e:  # the regtest node's mempool holds it: spending its inputs is refused
        chain.call("withdraw", target, "all")
    assert "rejected" in e.value.message
    assert chain.funds() == funds  # and nothing is lost
    chain.mine(1)  # the network mines it anyway: the wallet counts it again
    wait_for(lambda: chain.tx(sent["txid"])["state"] == "broadcast")
    assert chain.tx(sent["txid"])["confirmations"] == 1 and (sent["txid"], 1) in outputs(chain)  # its change
    assert chain.funds()["unconfirmed_sat"] == 0
    assert_funds_match_the_chain(chain)
    for txid, words in ((sent["txid"], "in block"), ("ab" * 32, "no transaction"),
                        (chain.call("transactions")[-1]["txid"], "no transaction")):  # a coinbase: not sent by us
        with pytest.raises(RpcError) as e:
            chain.call("abandon", txid)
        assert words in e.value.message, e.value.message


def test_transactions_limit_and_since(chain: ChainNode) -> None:
    everything = chain.call("transactions")
    assert chain.call("transactions", limit=3) == everything[:3]
    height = chain.height()
    pending = chain.call("withdraw", chain.btc_address(), str(BTC))["txid"]
    recent = chain.call("transactions", since=height)
    assert pending in {t["txid"] for t in recent}
    assert all(t["height"] is None or t["height"] >= height for t in recent)
    assert len(recent) < len(everything)
    for bad in ({"limit": 0}, {"since": -1}):
        with pytest.raises(RpcError):
            chain.call("transactions", **bad)
    chain.mine(1)


def test_a_stalled_backend_is_reported_within_seconds(chain: ChainNode) -> None:
    before = chain.funds()
    target = chain.btc_address()
    pid = chain.regtest_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        with chain.node.client(timeout=15) as c:
            def fails_soon(*args) -> str:
                started = time.monotonic()
                with pytest.raises(RpcError) as e:
                    c.call(*args)
                assert "chain backend not answering" in e.value.message, (args, e.value.message)
                assert time.monotonic() - started < 5, args
                return e.value.message

            started = time.monotonic()
            assert "chain backend not answering" in c.call("chaininfo")["backend"]["error"]
            assert time.monotonic() - started < 5
            fails_soon("mine", 1)
            fails_soon("withdraw", target, "100000")  # no fee estimate: nothing is sent
            assert c.call("funds") == before
            # the backend may have received it: kept as sent, and sent again once it answers
            kept = re.search("transaction ([0-9a-f]{64}) is kept", fails_soon("withdraw", target, "100000", 2.0))
            wait_for(lambda: "not answering" in chain.node.service("watchd")["problems"].get("watchd", ""), timeout=10)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: chain.node.service("watchd")["problems"] == {}, timeout=10)
    assert kept is not None and chain.tx(kept.group(1))["state"] == "broadcast"
    chain.mine(1)  # the next block has the wallet check (and send again) what the mempool lacks
    wait_for(lambda: kept.group(1) in chain.btc.call("getrawmempool") or chain.tx(kept.group(1))["height"])
    chain.mine(1)
    assert chain.tx(kept.group(1))["height"] is not None
    assert_funds_match_the_chain(chain)


def test_the_api_key_is_not_on_the_command_line(chain: ChainNode) -> None:
    key = (chain.node.data_dir / "regtest" / ".cookie").read_text().strip().split(":")[1]
    cmdline = Path(f"/proc/{chain.regtest_pid()}/cmdline").read_bytes()
    assert key.encode() not in cmdline and b"launcher.js" in cmdline
    assert (chain.node.data_dir / "regtest" / ".cookie").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("credentials,mode", [("password", "threads"), ("cookie", "processes")])
def test_a_backend_refusing_us_shows_in_info_and_is_logged_once(nodes, external_chain, credentials, mode) -> None:
    """In processes mode watchd's process tells lnpd over the control bus."""
    port, _ = external_chain
    bus = f'mode = "{mode}"'
    if credentials == "password":
        profile, words = external_profile(port, [], bus=bus, password="wrong"), "refused the RPC credentials"
    else:
        profile = external_profile(port, [], bus=bus, bitcoind='cookie_file = "no/such/.cookie"').replace(
            'user = "x"\npassword = "testkey"\n', "")
        words = "cannot read cookie file"
    node = nodes(profile, name=credentials).start()
    wait_for(lambda: words in node.service("watchd")["problems"].get("watchd", ""))
    time.sleep(1.5)  # fifteen polls
    assert (node.data_dir / "lnp-host.log").read_text().count(words) == 1


def test_a_taken_regtest_port_is_a_one_line_error(nodes) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = nodes(PROFILE.format(port=port), name="taken").start(wait=False)
        assert node.proc is not None and node.proc.wait(60) != 0
    stderr = node.log.read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in stderr and "plugins.regtest.rpc_port" in stderr, stderr
    assert "node:net" not in stderr and "node:net" not in (node.data_dir / "regtest" / "node.log").read_text()
    assert regtest_pid_gone(node.data_dir)


def regtest_pid_gone(data_dir) -> bool:
    try:
        regtest_pid(data_dir)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize("port", ["-1", "0", "70000"])
def test_an_out_of_range_regtest_port_is_refused_by_check(tmp_path, plugin_site, port: str) -> None:
    profile = tmp_path / "bad.toml"
    profile.write_text(PROFILE.replace("DATA_DIR", str(tmp_path / "data")).replace("{port}", port))
    result = lnp_host("check", "--profile", str(profile), site=plugin_site)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and str(profile) in line and "[plugins.regtest] rpc_port" in line, line


def test_debug_logs_show_the_chain_polls(nodes, external_chain) -> None:
    port, btc = external_chain
    node = nodes(external_profile(port, []), name="verbose").start("-v")
    btc.call("generatetoaddress", 2, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
    with node.client() as c:
        wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 2)
    log = (node.data_dir / "lnp-host.log").read_text()
    assert "bitcoind getblockchaininfo: " in log and " ms" in log
    assert "block 2 (" in log and "chain poll: 1 block(s) processed" in log


class Restartable:
    """A regtest node the test stops and starts again (its chain kept, its mempool lost) under a
    running node, as a user's bitcoind might restart."""

    def __init__(self, root, nodes) -> None:
        self.port, self.wallet_port, self.prefix = free_port(), free_port(), root / "outside-chain"
        self.proc = start_regtest(self.port, self.wallet_port, prefix=self.prefix)
        self.btc = Bitcoind(f"http://127.0.0.1:{self.port}", "x", "testkey", timeout=30)
        profile = external_profile(self.port, ["wallet", "tk_chain"], bitcoind="mempool_poll_interval = 0.2")
        self.node = nodes(profile, name="outside").start()

    def call(self, method: str, *args, **kwargs):
        with self.node.client(timeout=60) as c:
            return c.call(method, *args, **kwargs)

    def tx(self, txid: str) -> dict:
        return next(t for t in self.call("transactions") if t["txid"] == txid)

    def mine(self, blocks: int, address: str) -> None:
        self.btc.call("generatetoaddress", blocks, address)
        height = self.btc.call("getblockcount")
        wait_for(lambda: self.call("funds")["height"] == height)

    def restart(self) -> None:
        stop_process(self.proc)
        self.proc = start_regtest(self.port, self.wallet_port, prefix=self.prefix)

    def close(self) -> None:
        self.btc.close()
        stop_process(self.proc)


@pytest.fixture(scope="module")
def outside(nodes_module, tmp_path_factory):
    chain = Restartable(tmp_path_factory.mktemp("outside"), nodes_module)
    chain.mine(103, chain.call("newaddr")["address"])  # three mature coins
    yield chain
    chain.close()


def test_a_double_spend_releases_what_our_transaction_held(outside: Restartable) -> None:
    """While our transaction is out of the mempool, another one spending its input is mined: ours
    can never confirm, and what it held (its change, its other inputs) is given back."""
    target = outside.btc.call("getnewaddress", "default")
    rival = outside.call("tk_fund", target, 3 * BTC)  # signed, not sent: as by another copy of the wallet
    outside.call("tk_fund_finish", rival["reservation"], False)
    ours = outside.call("withdraw", target, str(3 * BTC))
    assert inputs(ours["tx"]) == inputs(rival["tx"])
    assert outside.call("funds")["unconfirmed_sat"] > 0  # our change
    outside.restart()  # our transaction is lost with the mempool ...
    outside.btc.call("sendrawtransaction", rival["tx"])  # ... and the rival is mined before we send it again
    outside.mine(1, target)
    wait_for(lambda: outside.tx(ours["txid"])["state"] == "conflicted")
    assert outside.tx(ours["txid"])["conflict"] == rival["txid"]
    funds = outside.call("funds")
    assert funds["reserved_sat"] == 0 and funds["unconfirmed_sat"] == 0  # our change went with our transaction
    for o in funds["outputs"]:
        assert outside.btc.call("gettxout", o["txid"], o["vout"], True) is not None, o
    outside.mine(1, target)
    assert outside.tx(ours["txid"])["state"] == "conflicted"  # and it is not sent again
    assert ours["txid"] not in outside.btc.call("getrawmempool")


def test_abandon_a_lost_transaction_and_spend_its_inputs_again(outside: Restartable) -> None:
    target = outside.btc.call("getnewaddress", "default")
    stuck = outside.call("withdraw", target, str(BTC))
    outside.restart()  # the mempool lost it; the wallet would send it again at the next block
    assert outside.call("abandon", stuck["txid"])["state"] == "abandoned"
    again = outside.call("withdraw", target, "all")  # every coin, the abandoned one's inputs included
    assert inputs(again["tx"]) >= inputs(stuck["tx"])
    outside.mine(1, target)
    assert outside.tx(again["txid"])["confirmations"] == 1 and outside.tx(stuck["txid"])["state"] == "abandoned"
    funds = outside.call("funds")
    assert funds["unconfirmed_sat"] == funds["reserved_sat"] == 0 and all(o["coinbase"] for o in funds["outputs"])
    assert stuck["txid"] not in outside.btc.call("getrawmempool")
