"""regtest: starts and stops a real Bitcoin regtest node (bcoin, made to behave like Core's regtest).

With this plugin a regtest profile works on a fresh machine with no bitcoind: the node is
installed with `npm ci` on first use (from the package-lock.json shipped here), keeps its chain in
DATA_DIR/regtest/chain so a restart resumes it, and writes its RPC credentials to
DATA_DIR/regtest/.cookie (mode 0600) for the bitcoind backend (`cookie_file = "regtest/.cookie"`);
the node gets its key through its environment, not its command line. `lnp-cli mine N [ADDRESS]`
mines blocks, to the node's own wallet by default.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import select
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from lnp_plugin_api import Field, PerContext, RpcError, ServiceContext, hookimpl, rpc_method
from lnp_plugin_api.services import Funding

from lnp_plugins.bitcoind import UNREACHABLE, Bitcoind, BitcoindError

NODE_DIR = Path(__file__).resolve().parent / "node"
START_TIMEOUT = 60.0
KEY_ENV = "LNP_REGTEST_API_KEY"
CALL_TIMEOUT = 3.0          # seconds for a call to the node; a stopped node is reported at once
SECONDS_PER_BLOCK = 0.02    # extra time allowed to mine each block


def install(log: logging.Logger) -> None:
    """`npm ci` the regtest node the first time, from the committed package-lock.json."""
    if (NODE_DIR / "node_modules" / "bcoin").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the regtest node needs Node.js and npm (apt-get install nodejs npm)")
    log.info("installing the regtest node (npm ci) in %s", NODE_DIR)
    done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"npm ci failed: {done.stderr.strip()[-500:]}")


class RegtestNode:
    """The bcoin process: installed if needed, started, watched, stopped."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.port = int(ctx.config["rpc_port"])
        self.home = ctx.node.data_dir / "regtest"
        self.home.mkdir(mode=0o700, exist_ok=True)
        self.cookie = self.home / ".cookie"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.rpc: Bitcoind | None = None

    def start(self) -> None:
        """Start the node and wait until its RPC answers."""
        install(self.ctx.log)
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("the regtest node needs Node.js (apt-get install nodejs)")
        key = secrets.token_hex(16)
        fd = os.open(self.cookie, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"__cookie__:{key}\n")
        log = open(self.home / "node.log", "ab")
        wallet_port = self.ctx.config["wallet_port"] or self.port + 1
        self.proc = subprocess.Popen(
            [node, str(NODE_DIR / "launcher.js"), "--rpc-port", str(self.port), "--wallet-port", str(wallet_port),
             "--prefix", str(self.home / "chain"), "--exit-with-parent"],
            stdout=subprocess.PIPE, stderr=log, cwd=NODE_DIR, env={**os.environ, KEY_ENV: key})
        log.close()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {}
        if not answer.get("ready"):
            self.stop()
            if answer.get("port") is not None:  # a port is taken: say which key sets it
                key_name = "rpc_port" if answer["port"] == self.port else "wallet_port"
                raise RuntimeError(f"the regtest node cannot listen on 127.0.0.1:{answer['port']}: "
                                   f"the port is in use (set another plugins.regtest.{key_name})")
            raise RuntimeError(f"the regtest node did not start; see {self.home / 'node.log'}")
        self.rpc = Bitcoind(f"http://127.0.0.1:{self.port}", cookie_file=str(self.cookie), timeout=CALL_TIMEOUT,
                            log=self.ctx.log)
        self.ctx.log.info("regtest node running on 127.0.0.1:%d (pid %s)", self.port, answer["pid"])
        threading.Thread(target=self._watch, name="regtest-watch", daemon=True).start()

    def _watch(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        if not self.stopping.is_set():
            self.ctx.fail(f"the regtest node exited with status {self.proc.returncode}")

    def stop(self) -> None:
        """Stop the node (SIGTERM, then SIGKILL after 10 s)."""
        self.stopping.set()
        if self.rpc is not None:
            self.rpc.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


_nodes: PerContext[RegtestNode] = PerContext("the regtest node")


@rpc_method
def mine(ctx: ServiceContext, blocks: int = 1, address: str | None = None) -> dict[str, Any]:
    """Mine BLOCKS blocks (regtest only) to ADDRESS, by default a new address of the node's wallet."""
    node = _nodes.get(ctx)
    if node.rpc is None:
        raise RpcError(RpcError.SERVICE_UNAVAILABLE, "the regtest node is not running")
    if not 1 <= blocks <= 1000:
        raise RpcError(RpcError.INVALID_PARAMS, "blocks must be 1..1000")
    node.rpc.call("getblockcount")  # a node that does not answer is reported now, not after mining's long wait
    if address is None:
        address = Funding(ctx).new_address()
    try:
        hashes = node.rpc.call("generatetoaddress", blocks, address,
                               timeout=CALL_TIMEOUT + blocks * SECONDS_PER_BLOCK)
    except BitcoindError as e:
        if e.code == UNREACHABLE:
            raise
        raise RpcError(RpcError.INVALID_PARAMS, f"cannot mine to {address!r}: {e.message}") from None
    return {"blocks": hashes, "address": address, "height": node.rpc.call("getblockcount")}


@hookimpl
def lnp_service() -> str:
    return "regtest"


def _port_check(low: int, high: int) -> Any:
    return lambda v: None if low <= v <= high else f"must be a TCP port, {low}..{high}"


@hookimpl
def lnp_config_schema() -> dict:
    return {"rpc_port": Field(int, 18443, "the regtest node's JSON-RPC port (loopback only)",
                              check=_port_check(1, 65534)),  # rpc_port + 1 is the wallet's by default
            "wallet_port": Field(int, 0, "its wallet's HTTP port (0: rpc_port + 1)",
                                 check=lambda v: None if v == 0 else _port_check(1, 65535)(v))}


@hookimpl
def lnp_rpc_methods() -> list:
    return [mine]


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    if ctx.node.network != "regtest":
        raise RuntimeError(f"the regtest plugin only runs on regtest, not {ctx.node.network}")
    node = RegtestNode(ctx)
    node.start()
    _nodes.set(ctx, node)


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    node = _nodes.pop(ctx)
    if node is not None:
        node.stop()

