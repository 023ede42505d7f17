"""watchd's block processing with 10,000 watches, and the wallet's sync time for 1,000 transactions.

Run: python bench/chain.py [--payments 1000] [--watches 10000]
Needs Node.js and the regtest node (`npm ci` in plugins/regtest/node). One run:
  1. a regtest node is started and funded; a node (signd, bitcoind, watchd, wallet) hands out
     addresses and is stopped; the regtest wallet then pays those addresses PAYMENTS times;
  2. blocks/s: watchd's scanner, fed by the bitcoind backend over JSON-RPC, processes the whole chain
     with WATCHES watched scripts and outpoints (half each) — and again from blocks already fetched,
     which is the processing alone;
  3. wallet sync: the node is started again and timed until its wallet lists every payment.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lnp_host.client import Client  # noqa: E402
from lnp_host.storage import Database  # noqa: E402
from lnp_plugin_api import RpcError  # noqa: E402
from lnp_plugin_api.chain import ChainInfo  # noqa: E402
from lnp_plugins.bitcoind import Bitcoind, BitcoindBackend  # noqa: E402
from lnp_plugins.regtest import KEY_ENV, NODE_DIR, install  # noqa: E402
from lnp_plugins.watchd import storage as watchd_storage  # noqa: E402
from lnp_plugins.watchd.scanner import Scanner  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(data_dir: Path) -> Client:
    """A client, once the node's RPC socket exists."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return Client(data_dir=data_dir, timeout=30)
        except RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait(predicate, timeout: float = 120.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except RpcError:
            pass
        time.sleep(interval)
    raise SystemExit("timed out")


class Cached:
    """A backend that serves blocks fetched before, to time processing without the RPC."""

    def __init__(self, blocks: list[tuple[str, bytes]]) -> None:
        self.blocks = blocks

    def info(self) -> ChainInfo:
        return ChainInfo("regtest", len(self.blocks) - 1, self.blocks[-1][0])

    def block(self, height: int) -> tuple[str, bytes] | None:
        return self.blocks[height] if height < len(self.blocks) else None


def scan(backend, watches: int, tmp: Path, name: str) -> float:  # type: ignore[no-untyped-def]
    """Blocks per second for a fresh scanner with `watches` watches, from block 0 to the tip."""
    db = Database(f"sqlite:///{tmp / name}.sqlite3", tmp)
    db.migrate({"watchd": watchd_storage.MODELS})
    with db.begin() as conn:  # bulk insert: adding them one by one is not what is measured
        rows = [{"kind": "script", "key": os.urandom(22).hex(), "owner": "bench", "depths": "[1]", "notified_depth": 0}
                for _ in range(watches // 2)]
        rows += [{"kind": "outpoint", "key": f"{os.urandom(32).hex()}:0", "owner": "bench", "depths": "[1]",
                  "notified_depth": 0} for _ in range(watches - watches // 2)]
        conn.execute(watchd_storage.watches.insert(), rows)
    scanner = Scanner(db, backend, lambda name, body: None, start_height=0)
    assert len(scanner.watches) == watches
    start = time.perf_counter()
    blocks = scanner.poll()
    elapsed = time.perf_counter() - start
    db.close()
    return blocks / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--payments", type=int, default=1000)
    p.add_argument("--watches", type=int, default=10000)
    args = p.parse_args()
    install(logging.getLogger("bench"))
    tmp = Path(tempfile.mkdtemp(prefix="lnp-bench-", dir="/tmp"))
    port = free_port()
    chain_proc = subprocess.Popen(["node", str(NODE_DIR / "launcher.js"), "--rpc-port", str(port), "--wallet-port",
                                   str(free_port()), "--exit-with-parent"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, cwd=NODE_DIR, env={**os.environ, KEY_ENV: "bench"})
    node_proc = None
    try:
        assert chain_proc.stdout is not None and chain_proc.stdout.readline().startswith(b"{")
        btc = Bitcoind(f"http://127.0.0.1:{port}", "x", "bench")
        funder = btc.call("getnewaddress", "default")
        btc.call("generatetoaddress", 150, funder)
        start_height = btc.call("getblockcount")
        profile = tmp / "node.toml"
        profile.write_text(f'[node]\nnetwork = "regtest"\ndata_dir = "{tmp / "node"}"\nlog_level = "warning"\n'
                           f'[plugins]\nenabled = ["core", "signd", "bitcoind", "watchd", "wallet"]\n'
                           f'[plugins.bitcoind]\nurl = "http://127.0.0.1:{port}"\nuser = "x"\npassword = "bench"\n'
                           f'[plugins.watchd]\npoll_interval = 0.05\nstart_height = {start_height}\n'
                           f'[plugins.wallet]\ngap_limit = 20\n')

        def start_node() -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "lnp_host", "run", "--profile", str(profile), "-q"],
                                    stderr=subprocess.DEVNULL)

        node_proc = start_node()
        client = connect(tmp / "node")
        wait(lambda: client.call("chaininfo")["watchd"]["height"] == start_height)
        addresses = [client.call("newaddr")["address"] for _ in range(10)]
        node_proc.terminate()
        node_proc.wait(30)
        client.close()
        print(f"sending {args.payments} payments to the wallet (regtest wallet, a block every 20)...", flush=True)
        for i in range(args.payments):
            btc.call("sendtoaddress", addresses[i % len(addresses)], 0.001)
            if i % 20 == 19:
                btc.call("generatetoaddress", 1, funder)
        btc.call("generatetoaddress", 1, funder)
        tip = btc.call("getblockcount")
        backend = BitcoindBackend(btc)
        fetched = [backend.block(h) for h in range(tip + 1)]
        over_rpc = scan(backend, args.watches, tmp, "rpc")
        cached = scan(Cached(fetched), args.watches, tmp, "cached")

        node_proc = start_node()
        started = time.perf_counter()
        client = connect(tmp / "node")
        # asked every 0.25 s: the wallet answers in the thread that applies the events being timed
        wait(lambda: sum(1 for t in client.call("transactions") if t["net_sat"] > 0) >= args.payments, timeout=600,
             interval=0.25)
        synced = time.perf_counter() - started
        funds = client.call("funds")
        client.close()
        print(f"chain: {tip + 1} blocks, {args.payments} payments to the wallet in the last {tip - start_height}")
        print(f"watchd, {args.watches:,} watches (scripts and outpoints), blocks fetched over JSON-RPC: "
              f"{over_rpc:,.0f} blocks/s")
        print(f"watchd, {args.watches:,} watches, blocks already fetched (processing only):     "
              f"{cached:,.0f} blocks/s")
        print(f"wallet sync of {args.payments} transactions (node start to the last one listed): {synced:.1f} s "
              f"({args.payments / synced:,.0f} tx/s); balance {funds['confirmed_sat'] / 1e8:.3f} BTC")
    finally:
        if node_proc is not None and node_proc.poll() is None:
            node_proc.terminate()
            node_proc.wait(30)
        chain_proc.terminate()
        chain_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
