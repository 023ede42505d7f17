"""bitcoind: the chain backend over Bitcoin Core's JSON-RPC (and nodes that imitate it, such as bcoin).

Runs in the watchd service and answers the `chain.*` control requests (see lnp_plugin_api.chain).
Answers are read in both the shapes bitcoind and bcoin give; a broadcast counts only once the
transaction is really in the mempool; with `zmq_rawblock` set, new blocks are announced at once
(event `chain_block_hint`), otherwise watchd polls. Mempool transactions are announced as
`chain_mempool_tx`, from `zmq_rawtx` or by polling the mempool (`mempool_poll_interval`).
"""
from __future__ import annotations

import base64
import http.client
import itertools
import json
import logging
import threading
import time
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any

import zmq
from embit.transaction import Transaction

from lnp_plugin_api import EventSpec, Field, PerContext, RpcError, ServiceContext, hookimpl
from lnp_plugin_api.chain import BROADCAST_REJECTED, FEE_TARGETS, ChainBackend, ChainInfo, backend_subscriptions

NETWORKS = {"main": "mainnet", "test": "testnet", "testnet4": "testnet", "signet": "signet", "regtest": "regtest"}
UNREACHABLE = -32000


def _url_check(value: str) -> str | None:
    parsed = urllib.parse.urlparse(value)
    return None if parsed.scheme in ("http", "https") and parsed.hostname else "expected http://HOST:PORT"


SCHEMA = {
    "url": Field(str, "http://127.0.0.1:18443", "bitcoind's JSON-RPC endpoint", check=_url_check),
    "user": Field(str, "", "RPC user (or use cookie_file)"),
    "password": Field(str, "", "RPC password"),
    "cookie_file": Field(str, "", "bitcoind's .cookie file (user:password), read at each connection; "
                         "relative to the data dir unless absolute"),
    "timeout": Field(float, 3.0, "seconds to wait for an answer before reporting the backend as not answering",
                     check=lambda v: None if v > 0 else "must be greater than zero"),
    "zmq_rawblock": Field(str, "", "bitcoind's zmqpubrawblock endpoint, e.g. tcp://127.0.0.1:28332"),
    "zmq_rawtx": Field(str, "", "bitcoind's zmqpubrawtx endpoint: mempool transactions as they arrive"),
    "mempool_poll_interval": Field(float, 0.0, "without zmq_rawtx: seconds between mempool polls (0: off)",
                                   check=lambda v: None if v >= 0 else "must be zero or more"),
}
MEMPOOL_REMEMBERED = 100_000
ALREADY_IN_MEMPOOL = ("txn-already-in-mempool", "txn-already-known")  # bitcoind's -26 reasons (older versions)
POOL_SIZE = 4  # idle connections kept


class BitcoindError(RpcError):
    """An error answer from bitcoind, or bitcoind unreachable (code UNREACHABLE)."""


class Bitcoind:
    """A small thread-safe JSON-RPC client. Kept-alive HTTP connections are pooled, so one call
    waiting for an answer never holds up another; every call gives up after `timeout` seconds of
    silence (a stopped node is reported as not answering, not waited for)."""

    def __init__(self, url: str, user: str = "", password: str = "", cookie_file: str = "",
                 timeout: float = 3.0, log: logging.Logger | None = None) -> None:
        self.url = urllib.parse.urlparse(url)
        self._user, self._password, self._cookie = user, password, cookie_file
        self.timeout = timeout
        self.log = log or logging.getLogger("lnp.bitcoind")
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False

    def _auth(self) -> str:
        if self._cookie:
            try:
                creds = Path(self._cookie).expanduser().read_text().strip()
            except OSError as e:
                raise BitcoindError(UNREACHABLE, f"chain backend: cannot read cookie file {self._cookie}: "
                                    f"{e.strerror}") from None
        else:
            creds = f"{self._user}:{self._password}"
        return "Basic " + base64.b64encode(creds.encode()).decode()

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (True: reused) or a new one."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        cls = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        return cls(self.url.hostname, self.url.port or 8332, timeout=timeout), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < POOL_SIZE:
                self._idle.append(conn)
                return
        conn.close()

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call `method`; raises BitcoindError with bitcoind's code and message (UNREACHABLE when
        bitcoind cannot be reached, does not answer within `timeout`, or refuses the credentials)."""
        started = time.monotonic()
        try:
            result = self._call(method, params, self.timeout if timeout is None else timeout)
        except BitcoindError as e:
            self.log.debug("bitcoind %s failed after %.1f ms: %s", method, (time.monotonic() - started) * 1000,
                           e.message)
            raise
        self.log.debug("bitcoind %s: %.1f ms", method, (time.monotonic() - started) * 1000)
        return result

    def _call(self, method: str, params: tuple[Any, ...], wait: float) -> Any:
        body = json.dumps({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)})
        headers = {"Authorization": self._auth(), "Content-Type": "application/json"}
        while True:
            conn, reused = self._connection(wait)
            try:
                conn.request("POST", self.url.path or "/", body, headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except TimeoutError:
                conn.close()
                raise BitcoindError(UNREACHABLE, f"chain backend not answering: no reply from {self.url.netloc} "
                                    f"within {wait:g} s") from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if not reused:  # a kept-alive connection the server closed is retried on a new one
                    raise BitcoindError(UNREACHABLE, f"chain backend unreachable: {self.url.netloc}: "
                                        f"{getattr(e, 'strerror', None) or e}") from None
        self._release(conn)
        if response.status == 401:
            raise BitcoindError(UNREACHABLE, f"chain backend refused the RPC credentials ({self.url.netloc}: "
                                "check user and password, or cookie_file)")
        try:
            answer = json.loads(raw, parse_float=Decimal)
        except ValueError:
            raise BitcoindError(UNREACHABLE, f"chain backend answered HTTP {response.status} without JSON") from None
        if answer.get("error"):  # bitcoind uses HTTP 500 for errors, bcoin HTTP 200: read the body either way
            err = answer["error"]
            raise BitcoindError(int(err.get("code", -1)), str(err.get("message", "error")))
        return answer.get("result")

    def close(self) -> None:
        """Drop the idle connections; connections in use are closed when their call ends."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.close()


def btc_to_sat(value: Any) -> int:
    """A BTC amount from JSON (read as Decimal) in satoshis."""
    return int((Decimal(str(value)) * 100_000_000).to_integral_value())


class BitcoindBackend(ChainBackend):
    """`ChainBackend` on bitcoind's RPC, tolerant of bcoin's answers."""

    def __init__(self, rpc: Bitcoind) -> None:
        self.rpc = rpc

    def info(self) -> ChainInfo:
        i = self.rpc.call("getblockchaininfo")
        chain = str(i["chain"])
        syncing = bool(i.get("initialblockdownload", False)) or i.get("headers", i["blocks"]) > i["blocks"]
        return ChainInfo(NETWORKS.get(chain, chain), int(i["blocks"]), str(i["bestblockhash"]), syncing)

    def fees(self) -> dict[int, int]:
        out = {}
        for target in FEE_TARGETS:
            try:
                answer = self.rpc.call("estimatesmartfee", target)
            except BitcoindError as e:
                if e.code == UNREACHABLE:
                    raise
                continue
            rate = answer.get("feerate", answer.get("fee"))  # bitcoind: feerate; bcoin: fee (-1 if unknown)
            if rate is not None and Decimal(str(rate)) > 0:
                out[target] = btc_to_sat(rate)
        return out

    def block(self, height: int) -> tuple[str, bytes] | None:
        try:
            block_hash = self.rpc.call("getblockhash", height)
        except BitcoindError as e:
            if e.code == -8:  # out of range
                return None
            raise
        raw = self.rpc.call("getblock", block_hash, False)  # verbosity false: raw hex (both nodes)
        return str(block_hash), bytes.fromhex(raw)

    def utxo(self, txid: str, vout: int) -> tuple[int, bytes] | None:
        out = self.rpc.call("gettxout", txid, vout)
        if not out:
            return None
        return btc_to_sat(out["value"]), bytes.fromhex(out["scriptPubKey"]["hex"])

    def broadcast(self, raw: bytes) -> str:
        try:
            txid = str(self.rpc.call("sendrawtransaction", raw.hex()))
        except BitcoindError as e:
            # Already in a block, or already in the mempool (a send of the same transaction got
            # there first, as when both ends of a close broadcast it): what was asked is done.
            if e.code == -27 or (e.code == BROADCAST_REJECTED and any(m in e.message for m in ALREADY_IN_MEMPOOL)):
                return Transaction.parse(raw).txid().hex()
            if e.code == UNREACHABLE:
                raise
            raise RpcError(BROADCAST_REJECTED, f"transaction rejected: {e.message}") from None
        # Some nodes answer with the txid even when their mempool refused the transaction.
        if self.in_mempool(txid):
            return txid
        if self.rpc.call("gettxout", txid, 0, False) is not None:
            return txid  # already confirmed
        raise RpcError(BROADCAST_REJECTED, "transaction rejected: not in the node's mempool after sendrawtransaction")

    def in_mempool(self, txid: str) -> bool:
        try:
            self.rpc.call("getmempoolentry", txid)
            return True
        except BitcoindError as e:  # bitcoind: -5; bcoin: -1 "Transaction not in mempool."
            if e.code == -5 or "not in mempool" in e.message.lower():
                return False
            raise


class _Plugin:
    def __init__(self, ctx: ServiceContext) -> None:
        cfg = ctx.config
        cookie = cfg["cookie_file"]
        if cookie and not Path(cookie).expanduser().is_absolute():  # relative to the node's data dir
            cookie = str(ctx.node.data_dir / cookie)
        self.ctx = ctx
        self.rpc = Bitcoind(cfg["url"], cfg["user"], cfg["password"], cookie, cfg["timeout"], ctx.log)
        self.mempool_rpc = Bitcoind(cfg["url"], cfg["user"], cfg["password"], cookie, cfg["timeout"], ctx.log)
        self.backend = BitcoindBackend(self.rpc)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.seen: dict[str, None] = {}  # mempool txids announced already, oldest first
        if cfg["zmq_rawblock"] or cfg["zmq_rawtx"] or cfg["mempool_poll_interval"] > 0:
            self.thread = threading.Thread(target=self._listen, name="bitcoind-news", daemon=True)
            self.thread.start()

    def _listen(self) -> None:
        """New blocks and mempool transactions: from bitcoind's ZMQ publishers, or by polling the mempool."""
        cfg = self.ctx.config
        zctx = zmq.Context.instance()
        poller = zmq.Poller()
        sockets = []
        for topic, endpoint in ((b"rawblock", cfg["zmq_rawblock"]), (b"rawtx", cfg["zmq_rawtx"])):
            if endpoint:
                sub = zctx.socket(zmq.SUB)
                sub.setsockopt(zmq.LINGER, 0)
                sub.setsockopt(zmq.SUBSCRIBE, topic)
                sub.connect(endpoint)
                poller.register(sub, zmq.POLLIN)
                sockets.append(sub)
        interval = float(cfg["mempool_poll_interval"])
        next_poll = 0.0
        try:
            while not self.stop.is_set():
                for sub, _ in poller.poll(200) if sockets else []:
                    frames = sub.recv_multipart()
                    if len(frames) >= 2 and frames[0] == b"rawblock":
                        self.ctx.emit("chain_block_hint", {"raw_size": len(frames[1])})
                    elif len(frames) >= 2 and frames[0] == b"rawtx":
                        self._announce(frames[1].hex())
                if not sockets:
                    self.stop.wait(min(interval, 0.2))
                if interval > 0 and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + interval
                    self._poll_mempool()
        finally:
            for sub in sockets:
                sub.close(0)

    def _poll_mempool(self) -> None:
        try:
            txids = self.mempool_rpc.call("getrawmempool")
            for txid in txids:
                if txid not in self.seen:
                    self._announce(str(self.mempool_rpc.call("getrawtransaction", txid)), txid)
        except RpcError as e:
            self.ctx.log.debug("mempool poll: %s", e.message)

    def _announce(self, raw: str, txid: str | None = None) -> None:
        if txid is None:
            try:
                txid = Transaction.parse(bytes.fromhex(raw)).txid().hex()
            except Exception:
                return  # not a transaction: nothing to announce
        if txid in self.seen:
            return
        self.seen[txid] = None
        while len(self.seen) > MEMPOOL_REMEMBERED:
            self.seen.pop(next(iter(self.seen)))
        self.ctx.emit("chain_mempool_tx", {"tx": raw})


_plugins: PerContext[_Plugin] = PerContext("the bitcoind backend")


def _backend(ctx: ServiceContext) -> ChainBackend:
    return _plugins.get(ctx).backend


@hookimpl
def lnp_service() -> str:
    return "watchd"


@hookimpl
def lnp_config_schema() -> dict:
    return SCHEMA


@hookimpl
def lnp_subscriptions() -> list:
    return backend_subscriptions(_backend)


@hookimpl
def lnp_events() -> list:
    return [EventSpec("chain_block_hint", "bitcoind announced a block over ZMQ; watchd polls at once"),
            EventSpec("chain_mempool_tx", "a transaction entered the mempool; body: {tx (hex)}")]


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    _plugins.set(ctx, _Plugin(ctx))


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    plugin = _plugins.pop(ctx)
    if plugin is not None:
        plugin.stop.set()
        if plugin.thread is not None:
            plugin.thread.join(2)
        plugin.rpc.close()
        plugin.mempool_rpc.close()
