"""An lnprototest runner for lnp-host: a real `lnp-host run` node on a real regtest chain (bcoin).

    PYTHONPATH=tests/conformance pytest --runner=lnp_runner.LnpRunner PATH/TO/lnprototest/tests/test_bolt1-01-init.py

lnprototest plays the peer over BOLT-8 (pyln-proto's transport, an implementation independent of ours) and
drives the node through its RPC for what a peer cannot do (fund a channel, make an invoice, close). Every
`start` is a fresh node (new data dir) with the keys lnprototest expects: node key 0x01 (`--dev-force-privkey`)
and, when this lnp-host has the options, `--dev-force-bip32-seed` and `--dev-force-channel-secrets`.
The chain is the project's bcoin launcher, given lnprototest's fixed block 1 and then 100 blocks, as
lnprototest's own bitcoind backend does; it survives node restarts and is renewed when a run changed it.

Environment: TIMEOUT (seconds to wait for a message, default 30), LNP_RUNNER_BUS (threads or processes).
"""
from __future__ import annotations

import atexit
import concurrent.futures
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import lnprototest
import pytest
import pyln.proto.wire
from cryptography.exceptions import InvalidTag
from lnprototest import Conn, Event, EventError, KeySet, MustNotMsg, SpecFileError

from lnp_host.client import Client
from lnp_host.keys import FORCED_KEY_ENV
from lnp_plugin_api import RpcError, bolt11
from lnp_plugin_api import features as feature_bits
from lnp_plugin_api.messages import Init
from lnp_plugins.bitcoind import Bitcoind
from lnp_plugins.regtest import KEY_ENV, NODE_DIR, install

TIMEOUT = float(os.environ.get("TIMEOUT", "30"))
log = logging.getLogger("lnp_runner")

# lnprototest's fixed regtest block 1 (as its bitcoind backend submits it): its coinbase pays a key of the
# suite (cUB4V7VCk6mX32981TWviQVLkj3pa2zBcXrjMZ9QwaZB5Kojhp59), which the suite's funding transactions spend.
BLOCK_1 = (
    "0000002006226e46111a0b59caaf126043eb5bbf28c34f3a5e332a1fc7b2b73cf188910f84591a56720aabc8023cecf71801c5e0f9"
    "d049d0c550ab42412ad12a67d89f3a3dbb6c60ffff7f200400000001020000000001010000000000000000000000000000000000000"
    "000000000000000000000000000ffffffff03510101ffffffff0200f2052a0100000016001419f5016f07fe815f611df3a2a0802dbd"
    "74e634c40000000000000000266a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9012000"
    "0000000000000000000000000000000000000000000000000000000000000000000000"
)

# The keys lnprototest's tests assume (the values Core Lightning's runner forces).
NODE_PRIVKEY = "01"
BIP32_SEED = "00" * 31 + "01"
FUNDING_SECRET = "00" * 31 + "10"
CHANNEL_SECRETS = [FUNDING_SECRET] + ["00" * 31 + f"{i:02x}" for i in (0x11, 0x12, 0x13, 0x14)] + ["FF" * 32]


def wallet_address() -> str:
    """The node's first receive address (BIP84, m/84'/1'/0'/0/0 of BIP32_SEED, docs/keys.md): the chain's
    blocks pay their coinbase to it, so that the node's wallet can fund channels (`fundchannel`) once the
    coinbase of block 2 matures, at lnprototest's block 102."""
    from embit import bip32, script
    from embit.networks import NETWORKS
    key = bip32.HDKey.from_seed(bytes.fromhex(BIP32_SEED)).derive("m/84h/1h/0h/0/0")
    return script.p2wpkh(key.key).address(NETWORKS["regtest"])

# lnprototest's option names that are not BOLT-9's names of today
OPTION_ALIASES = {"option_anchor_outputs": 20, "option_anchors_zero_fee_htlc_tx": 22,
                  "supports_open_accept_channel_type": feature_bits.BY_NAME["option_channel_type"]}


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it is true; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RegtestChain:
    """The project's regtest node (bcoin, segwit from genesis) with lnprototest's block 1 and 100 more."""

    def __init__(self) -> None:
        self.port = 0
        self.key = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.rpc: Bitcoind | None = None
        self.address = ""

    def start(self) -> None:
        """Start the node and lay the chain lnprototest expects (height 101)."""
        install(log)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "launcher.js"), "--rpc-port", str(self.port), "--wallet-port", str(free_port()),
             "--exit-with-parent"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=NODE_DIR,
            env={**os.environ, KEY_ENV: self.key})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(b'{"ready"'):
            self.stop()
            raise RuntimeError(f"regtest node did not start: {line!r}")
        self.rpc = Bitcoind(f"http://127.0.0.1:{self.port}", "x", self.key, timeout=30)
        try:
            rejected = self.call("submitblock", BLOCK_1)
            if rejected is not None or self.call("getblockcount") != 1:
                raise RuntimeError(f"regtest node refused lnprototest's block 1: {rejected}")
            self.address = wallet_address()
            self.call("generatetoaddress", 100, self.address)
        except BaseException:
            self.stop()
            raise

    def call(self, method: str, *params: Any) -> Any:
        """A JSON-RPC call to the regtest node."""
        assert self.rpc is not None, "regtest node not started"
        return self.rpc.call(method, *params)

    def reset(self) -> None:
        """Lay a fresh chain if a run changed this one (as lnprototest's backend does)."""
        if self.call("getblockcount") != 101 or self.call("getrawmempool"):
            self.stop()
            self.start()

    def stop(self) -> None:
        """Stop the regtest node (its chain is in memory) and close the client."""
        if self.rpc is not None:
            self.rpc.close()
            self.rpc = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


class LnpConn(Conn):
    """lnprototest's side of a connection: pyln-proto's BOLT-8 initiator, to the node under test."""

    def __init__(self, connprivkey: str, node_id: bytes, port: int) -> None:
        super().__init__(connprivkey)
        self.connection = pyln.proto.wire.connect(pyln.proto.wire.PrivateKey(self.connprivkey.secret),
                                                  pyln.proto.wire.PublicKey(node_id), "127.0.0.1", port)
        # pyln writes a message in two sends: without NODELAY the second waits for an ACK (40 ms)
        self.connection.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self, timeout: float) -> bytes | None:
        """The next message, or None when the connection is closed or nothing came in time."""
        sock = self.connection.connection
        try:
            sock.settimeout(timeout)
            return self.connection.read_message()
        except (OSError, ValueError, InvalidTag):  # closed, reset, timed out, a short read, or garbage
            return None

    def close(self) -> None:
        """Close the socket."""
        self.connection.connection.close()


class LnpRunner(lnprototest.Runner):
    """lnprototest's Runner for a real lnp-host node on a real regtest chain."""

    def __init__(self, config: Any, chain: RegtestChain | None = None) -> None:
        super().__init__(config)
        self.chain = chain or RegtestChain()
        self.owns_chain = chain is None
        self.running = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.node_id = b""
        self.node_features: set[int] = set()
        self.startup_flags = [f"--{flag}" for flag in config.getoption("runner_args", default=None) or []]
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.fundchannel_future: concurrent.futures.Future[Any] | None = None
        self.fundchannel_expect_fail = False
        self.dev_options = list(self._dev_options())
        self.log_path = Path(self.directory) / "node.log"
        # lnprototest stops a runner only after a run that passed: stop what a failed one left at exit
        atexit.register(self._stop_at_exit)

    # --- the node ---------------------------------------------------------------------------------------

    @staticmethod
    @functools.cache
    def _dev_options() -> list[str]:
        """The key-forcing options this lnp-host has, beyond --dev-force-privkey (others may not exist yet)."""
        helptext = subprocess.run([sys.executable, "-m", "lnp_host", "run", "--help"], capture_output=True,
                                  text=True, timeout=60).stdout
        out = []
        if "--dev-force-bip32-seed" in helptext:
            out.append(f"--dev-force-bip32-seed={BIP32_SEED}")
        if "--dev-force-channel-secrets" in helptext:
            out.append(f"--dev-force-channel-secrets={'/'.join(CHANNEL_SECRETS)}")
        return out

    @property
    def data_dir(self) -> Path:
        return Path(self.directory) / "node"

    def _profile(self) -> Path:
        plugins = ["core", "signd", "bitcoind", "watchd", "wallet", "peerd"]
        extra = ""
        installed = {ep.name for ep in importlib.metadata.entry_points(group="lnp_host.plugins")}
        if "channeld" in installed:
            plugins += ["channeld"] + [p for p in ("invoices", "pay") if p in installed]
            extra = "[plugins.channeld]\nmin_depth = 3\n"  # lnprototest's tests assume a minimum depth of 3
        mode = os.environ.get("LNP_RUNNER_BUS", "threads")
        path = Path(self.directory) / "node.toml"
        path.write_text(
            f'[node]\nnetwork = "regtest"\ndata_dir = "{self.data_dir}"\n[bus]\nmode = "{mode}"\n'
            f'[plugins]\nenabled = {json.dumps(plugins)}\n'
            f'[plugins.peerd]\nlisten = ["127.0.0.1:{self.port}"]\n'
            f'[plugins.bitcoind]\nurl = "http://127.0.0.1:{self.chain.port}"\nuser = "x"\n'
            f'password = "{self.chain.key}"\nmempool_poll_interval = 0.2\n'
            f'[plugins.watchd]\npoll_interval = 0.1\nstart_height = 0\n{extra}')
        return path

    def is_running(self) -> bool:
        return self.running

    def start(self) -> None:
        """A fresh node on the chain (started first if needed), ready for connections; a node already
        started for `has_option` (which tests call while building their events) and not used yet is kept."""
        if self.running:
            return
        if self.chain.proc is None:
            self.chain.start()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.port = free_port()
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lnp_host", "run", "--profile", str(self._profile()), *self.dev_options,
                 *self.startup_flags], stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, FORCED_KEY_ENV: NODE_PRIVKEY.rjust(64, "0")})
        self.running = True
        info = self._wait_ready()
        self.node_id = bytes.fromhex(info["node_id"])
        self.node_features = self._probe_features()

    def _wait_ready(self) -> dict:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"lnp-host exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with Client(data_dir=self.data_dir, timeout=2) as c:
                    info = c.info()
                if all(s["state"] == "running" for s in info["services"]):
                    return info
            except RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"lnp-host did not become ready:\n{self._log_tail()}")
            time.sleep(0.1)

    def _probe_features(self) -> set[int]:
        """The feature bits the node sends in its `init` (what it implements, not what we hope)."""
        conn = LnpConn("7e" * 32, self.node_id, self.port)
        try:
            msg = conn.read(TIMEOUT)
        finally:
            conn.close()
        if msg is None:
            raise RuntimeError("the node sent no init")
        init = Init.decode(msg)
        return feature_bits.decode(init.globalfeatures) | feature_bits.decode(init.features)

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def rpc(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A call to the node's RPC; errors (an unknown method included) raise the node's RpcError."""
        with Client(data_dir=self.data_dir, timeout=TIMEOUT) as c:
            return c.call(method, *args, **kwargs)

    def stop(self, print_logs: bool = False, also_chain: bool = True) -> None:
        """Stop the node (and the chain, if this runner started it); raise a fundchannel's unexpected failure
        (one still running is ended by the stop, as lnprototest's own runner ends it)."""
        failure = self._fundchannel_failure()
        for conn in self.conns.values():
            conn.close()
        self.conns = {}
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc = None
        self.running = False
        if print_logs:
            log.info("---------- lnp-host log ----------\n%s", self._log_tail(1000))
        if also_chain and self.owns_chain:
            self.chain.stop()
        if also_chain and self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        if failure is not None:
            raise failure

    def _stop_at_exit(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.owns_chain:
            self.chain.stop()

    def restart(self) -> None:
        """A fresh node, and a fresh chain if the last run changed it."""
        self.stop(also_chain=False)
        super().restart()
        self.chain.reset()
        self.start()

    def teardown(self) -> None:
        atexit.unregister(self._stop_at_exit)
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- peers ------------------------------------------------------------------------------------------

    def connect(self, event: Event, connprivkey: str) -> None:
        self.add_conn(LnpConn(connprivkey, self.node_id, self.port))

    def recv(self, event: Event, conn: Conn, outbuf: bytes) -> None:
        """Send `outbuf` from lnprototest's peer to the node."""
        try:
            conn.connection.send_message(outbuf)
        except OSError:
            last = conn.read(1)
            raise EventError(event, f"connection closed{f' after {last.hex()}' if last else ''}") from None

    def get_output_message(self, conn: Conn, event: Event, timeout: float = TIMEOUT) -> bytes | None:
        """The node's next message to lnprototest's peer, or None (closed, or nothing within `timeout`)."""
        return conn.read(timeout)

    def check_error(self, event: Event, conn: Conn) -> str | None:
        super().check_error(event, conn)
        msg = self.get_output_message(conn, event)
        return None if msg is None else msg.hex()

    def check_final_error(self, event: Event, conn: Conn, expected: bool, must_not_events: list[MustNotMsg]) -> None:
        """Unless an error was expected, make sure the node sent none (nor a banned message) before hanging up."""
        if not expected:
            # 18 bytes that cannot decrypt: the node hangs up once it has handled everything before them
            try:
                conn.connection.connection.sendall(bytes(18))
            except OSError:
                pass
            while (msg := self.get_output_message(conn, event)) is not None:
                for banned in must_not_events:
                    if banned.matches(msg):
                        raise EventError(event, f"got a message banned by {banned}: {msg.hex()}")
                if int.from_bytes(msg[:2], "big") == 17:
                    raise EventError(event, f"got an error message: {msg.hex()}")
        conn.close()

    # --- the chain --------------------------------------------------------------------------------------

    def getblockheight(self) -> int:
        return self.chain.call("getblockcount")

    def trim_blocks(self, newheight: int) -> None:
        self.chain.call("invalidateblock", self.chain.call("getblockhash", newheight + 1))

    def add_blocks(self, event: Event, txs: list[str], n: int) -> None:
        """Mine `n` blocks, the first with `txs`, and wait until the node has seen them."""
        for tx in txs:
            try:
                self.chain.call("sendrawtransaction", tx)
            except RpcError as e:
                raise EventError(event, f"the regtest node refused a transaction: {e}") from None
        self.chain.call("generatetoaddress", n, self.chain.address)
        height = self.getblockheight()
        try:
            wait_until(lambda: self.rpc("chaininfo")["watchd"]["height"] == height, TIMEOUT,
                       f"the node to reach height {height}")
        except TimeoutError as e:
            raise EventError(event, str(e)) from None

    def expect_tx(self, event: Event, txid: str) -> None:
        """Wait for the node to broadcast `txid` (lnprototest gives it in internal byte order)."""
        shown = bytes.fromhex(txid)[::-1].hex()
        try:
            wait_until(lambda: shown in self.chain.call("getrawmempool"), TIMEOUT, f"tx {shown} in the mempool")
        except TimeoutError:
            raise EventError(event, f"the node did not broadcast {shown}; mempool: "
                                    f"{self.chain.call('getrawmempool')}") from None

    # --- what only the node's RPC can do -----------------------------------------------------------------

    def fundchannel(self, event: Event, conn: Conn, amount: int, feerate: int = 253,
                    expect_fail: bool = False) -> None:
        """Ask the node to open a channel to `conn` (its RPC blocks until the channel is funded, so it runs
        beside the suite, which plays the peer's side of the opening meanwhile)."""
        if self.fundchannel_future is not None and not self.fundchannel_future.done():
            raise SpecFileError(event, "fundchannel while another is still running")
        peer = conn.pubkey.format().hex()
        # the wallet (paid by the chain's coinbases, see wallet_address) must have seen the last block
        height = self.getblockheight()
        wait_until(lambda: self.rpc("funds")["height"] == height, TIMEOUT, "the wallet to reach the chain's tip")
        self.fundchannel_expect_fail = expect_fail
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.fundchannel_future = self.executor.submit(self.rpc, "fundchannel", peer, amount,
                                                       feerate_per_kw=feerate)

    def _fundchannel_failure(self) -> Exception | None:
        fut, self.fundchannel_future = self.fundchannel_future, None
        if fut is None or not fut.done() or self.fundchannel_expect_fail:
            return None
        return fut.exception()

    def init_rbf(self, event: Event, conn: Conn, channel_id: str, amount: int, utxo_txid: str, utxo_outnum: int,
                 feerate: int) -> None:
        self.rpc("openchannel_bump", channel_id, amount, f"{utxo_txid}:{utxo_outnum}", feerate_per_kw=feerate)

    def accept_add_fund(self, event: Event) -> None:
        self.rpc("funderupdate", policy="match", policy_mod=100)

    def invoice(self, event: Event, amount: int, preimage: str) -> None:
        self.rpc("invoice", amount, str(event), description=f"invoice from {event}", preimage=preimage)

    def addhtlc(self, event: Event, conn: Conn, amount: int, preimage: str) -> None:
        """Have the node offer an HTLC of `amount` msat for `preimage`'s hash to `conn`: it pays a BOLT-11
        invoice made here and signed with the peer's key (the node's `pay` RPC, without waiting)."""
        inv = bolt11.Invoice(currency=bolt11.currency_for("regtest"), timestamp=int(time.time()),
                             payment_hash=hashlib.sha256(bytes.fromhex(preimage)).digest(),
                             payment_secret=hashlib.sha256(b"lnprototest" + bytes.fromhex(preimage)).digest(),
                             amount_msat=amount, description=f"lnprototest {event}",
                             payee=conn.pubkey.format())
        self.rpc("pay", bolt11.encode(inv, bolt11.sign_with_key(conn.connprivkey.secret)), wait=0)

    def close_channel(self, channel_id: str) -> None:
        """The node's `close`: it answers once the close is agreed, which needs the suite's next events, so it
        is asked to answer after a second whatever the state (the close goes on)."""
        self.rpc("close", channel_id, timeout=1.0)

    # --- what the suite must know about the node ---------------------------------------------------------

    def _forced(self, option: str) -> None:
        if not any(o.startswith(f"--{option}=") for o in self.dev_options):
            raise RuntimeError(f"this lnp-host has no --{option}: the suite cannot know its channel keys")

    def get_keyset(self) -> KeySet:
        self._forced("dev-force-channel-secrets")
        _, revocation, payment, delayed, htlc, shachain = CHANNEL_SECRETS
        return KeySet(revocation_base_secret=revocation, payment_base_secret=payment,
                      delayed_payment_base_secret=delayed, htlc_base_secret=htlc, shachain_seed=shachain)

    def get_node_privkey(self) -> str:
        return NODE_PRIVKEY

    def get_node_bitcoinkey(self) -> str:
        self._forced("dev-force-channel-secrets")
        return FUNDING_SECRET

    def has_option(self, optname: str) -> str | None:
        """'even' (required), 'odd' (supported) or None, from the `init` the node sent."""
        bit = OPTION_ALIASES.get(optname, feature_bits.BY_NAME.get(optname))
        if bit is None:
            return None
        self.start()  # the features are those of the real node's init
        even = bit & ~1
        if even in self.node_features:
            return "even"
        if even + 1 in self.node_features:
            return "odd"
        return None

    def runner_features(self, additional_features: list[int] | None = None, globals: bool = False) -> str:
        """The features lnprototest's helpers put in their `init`: option_static_remotekey (odd) always in
        `features`, since lnp-host opens and accepts no channel without it, and the ones asked."""
        bits = list(additional_features or [])
        if not globals:
            bits.append(feature_bits.BY_NAME["option_static_remotekey"] | 1)
        return lnprototest.bitfield(*bits) if bits else ""

    def add_startup_flag(self, flag: str) -> None:
        self.startup_flags.append(f"--{flag}")


@pytest.fixture(scope="module")
def chain() -> Iterator[RegtestChain]:
    """One regtest chain for a test module (laid again by the runner when a test changed it)."""
    c = RegtestChain()
    c.start()
    yield c
    c.stop()
