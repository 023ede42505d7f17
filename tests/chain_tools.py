"""Helpers for the tests on a real regtest chain (bcoin): the node under test with its own regtest
node, and a regtest node a test runs itself (as a user's own bitcoind would be)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from conftest import wait_for
from lnp_plugins.bitcoind import Bitcoind
from peer_tools import free_port

BTC = 100_000_000
PROFILE = """
[node]
network = "regtest"
data_dir = "DATA_DIR"
[plugins]
enabled = ["core", "signd", "regtest", "bitcoind", "watchd", "wallet", "tk_chain", "tk_limit"]
[plugins.regtest]
rpc_port = {port}
[plugins.bitcoind]
url = "http://127.0.0.1:{port}"
cookie_file = "regtest/.cookie"
mempool_poll_interval = 0.2
[plugins.watchd]
poll_interval = 0.1
[plugins.tk_limit]
max_sat = 100000000000
"""


class ChainNode:
    """The node under test and the regtest node it manages."""

    def __init__(self, node, port: int) -> None:
        self.node, self.port = node, port
        self.info = node.wait_ready(timeout=90)
        self.btc = Bitcoind(f"http://127.0.0.1:{port}", cookie_file=str(node.data_dir / "regtest" / ".cookie"),
                            timeout=30)

    def call(self, method: str, *args, **kwargs):
        with self.node.client(timeout=60) as c:
            return c.call(method, *args, **kwargs)

    def height(self) -> int:
        return self.call("chaininfo")["watchd"]["height"]

    def mine(self, blocks: int = 1, address: str | None = None) -> dict:
        """Mine and wait until watchd and the wallet have seen the blocks."""
        out = self.call("mine", blocks, address) if address else self.call("mine", blocks)
        wait_for(lambda: self.height() == out["height"])
        wait_for(lambda: self.funds()["height"] == out["height"])  # the wallet has had every event
        return out

    def funds(self) -> dict:
        return self.call("funds")

    def btc_address(self) -> str:
        return self.btc.call("getnewaddress", "default")

    def tx(self, txid: str) -> dict:
        """The wallet's entry for one transaction."""
        return next(t for t in self.call("transactions") if t["txid"] == txid)

    def regtest_pid(self) -> int:
        """The process id of the regtest node this node started."""
        return regtest_pid(self.node.data_dir)

    def close(self) -> None:
        """Close the test's own connections to the regtest node."""
        self.btc.close()


def regtest_pid(data_dir: Path) -> int:
    """The bcoin process keeping its chain in DATA_DIR/regtest (found through /proc)."""
    marker = str(data_dir / "regtest" / "chain").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError(f"no regtest node running for {data_dir}")


def external_profile(port: int, plugins: list[str], bus: str = "", bitcoind: str = "",
                     watchd: str = "poll_interval = 0.1\nstart_height = 0", password: str = "testkey") -> str:
    """A profile on the external regtest node: core, signd, bitcoind, watchd and PLUGINS."""
    enabled = json.dumps(["core", "signd", "bitcoind", "watchd", *plugins])
    return (f'[node]\nnetwork = "regtest"\ndata_dir = "DATA_DIR"\n[bus]\n{bus}\n[plugins]\nenabled = {enabled}\n'
            f'[plugins.bitcoind]\nurl = "http://127.0.0.1:{port}"\nuser = "x"\npassword = "{password}"\n{bitcoind}\n'
            f'[plugins.watchd]\n{watchd}\n')


def start_regtest(port: int, wallet_port: int, key: str = "testkey",
                  prefix: Path | None = None) -> subprocess.Popen[bytes]:
    """A regtest node of the test's own on PORT (RPC password KEY), ready when this returns; its
    chain in memory, or kept in PREFIX (its mempool never is)."""
    from lnp_plugins.regtest import KEY_ENV, NODE_DIR, install
    install(logging.getLogger("test"))
    keep = ["--prefix", str(prefix)] if prefix is not None else []
    proc = subprocess.Popen(["node", str(NODE_DIR / "launcher.js"), "--rpc-port", str(port), "--wallet-port",
                             str(wallet_port), "--exit-with-parent", *keep], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=NODE_DIR, env={**os.environ, KEY_ENV: key})
    assert proc.stdout is not None and proc.stdout.readline().startswith(b'{"ready"')
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a process the test started (killing it if it lingers), and close its pipes."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def external_chain():
    """A regtest node the test runs itself (as a user's own bitcoind would be), not the node:
    (its RPC port, a client)."""
    port = free_port()
    proc = start_regtest(port, free_port())
    rpc = Bitcoind(f"http://127.0.0.1:{port}", "x", "testkey", timeout=30)
    yield port, rpc
    rpc.close()
    stop_process(proc)
