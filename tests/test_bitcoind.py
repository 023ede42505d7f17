"""The bitcoind backend against bitcoind-shaped answers (a fake JSON-RPC server in this test) —
the real regtest node (bcoin's shapes) is covered in test_chain.py — and its failure modes."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest

from lnp_plugin_api import RpcError
from lnp_plugin_api.chain import BROADCAST_REJECTED, parse_block
from lnp_plugins.bitcoind import UNREACHABLE, Bitcoind, BitcoindBackend

GENESIS = bytes.fromhex(  # regtest's genesis block
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f61"
    "7fc81bc3888a51323a9fb8aa4b1e5e4adae5494dffff7f20020000000101000000010000000000000000000000000000000000000000"
    "000000000000000000000000ffffffff4d04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63"
    "656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01"
    "000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec11"
    "2de5c384df7ba0b8d578a4c702b6bf11d5fac00000000")


class FakeBitcoind:
    """Answers JSON-RPC like bitcoind 27 (HTTP 500 for errors), from a table of handlers."""

    def __init__(self, handlers: dict[str, Callable[..., Any]], password: str = "pw") -> None:
        self.handlers, self.calls = handlers, []
        expected = "Basic " + base64.b64encode(f"u:{password}".encode()).decode()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls.append(req["method"])
                try:
                    body, status = {"result": fake.handlers[req["method"]](*req["params"]), "error": None}, 200
                except KeyError:
                    body, status = {"result": None, "error": {"code": -32601, "message": "Method not found"}}, 500
                except RpcError as e:
                    body, status = {"result": None, "error": {"code": e.code, "message": e.message}}, 500
                raw = json.dumps({**body, "id": req["id"]}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    made: list[FakeBitcoind] = []

    def make(handlers: dict[str, Callable[..., Any]]) -> FakeBitcoind:
        made.append(FakeBitcoind(handlers))
        return made[-1]

    yield make
    for f in made:
        f.close()


def test_bitcoind_shapes(fake) -> None:
    def block_hash(height: int) -> str:
        if height > 0:
            raise RpcError(-8, "Block height out of range")
        return "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"

    node = fake({
        "getblockchaininfo": lambda: {"chain": "main", "blocks": 5, "headers": 9, "initialblockdownload": False,
                                      "bestblockhash": "ab" * 32},
        "estimatesmartfee": lambda target: {"feerate": 0.00012, "blocks": target} if target < 100
        else {"errors": ["Insufficient data or no feerate found"], "blocks": target},
        "getblockhash": block_hash,
        "getblock": lambda h, verbosity: GENESIS.hex(),
        "gettxout": lambda txid, vout, *mempool: {"value": 0.5, "scriptPubKey": {"hex": "0014" + "11" * 20,
                                                                                  "address": "bc1q..."}},
    })
    backend = BitcoindBackend(Bitcoind(node.url, "u", "pw"))
    info = backend.info()
    assert (info.network, info.height, info.syncing) == ("mainnet", 5, True)  # headers ahead: still syncing
    assert backend.fees() == {2: 12000, 6: 12000, 12: 12000}  # 144: no estimate yet
    found = backend.block(0)
    assert found is not None and parse_block(found[1])[0] == found[0]
    assert backend.block(1) is None
    assert backend.utxo("cd" * 32, 0) == (50_000_000, bytes.fromhex("0014" + "11" * 20))


def test_broadcast_is_confirmed_in_the_mempool(fake) -> None:
    mempool: list[str] = []

    def entry(txid: str) -> dict:
        if txid not in mempool:
            raise RpcError(-5, "Transaction not in mempool")
        return {"vsize": 100}
    node = fake({"sendrawtransaction": lambda raw: "ef" * 32,  # answers with a txid whatever happens
                 "getmempoolentry": entry, "gettxout": lambda *a: None})
    backend = BitcoindBackend(Bitcoind(node.url, "u", "pw"))
    with pytest.raises(RpcError) as e:
        backend.broadcast(b"\x01\x02")
    assert e.value.code == BROADCAST_REJECTED and "not in the node's mempool" in e.value.message
    mempool.append("ef" * 32)
    assert backend.broadcast(b"\x01\x02") == "ef" * 32

    def refuse(raw: str) -> str:
        raise RpcError(-26, "min relay fee not met")
    node.handlers["sendrawtransaction"] = refuse
    with pytest.raises(RpcError) as e:
        backend.broadcast(b"\x01\x02")
    assert "min relay fee not met" in e.value.message


def test_credentials_and_reachability(fake, tmp_path: Path) -> None:
    node = fake({"getblockcount": lambda: 7})
    (tmp_path / ".cookie").write_text("u:pw")
    assert Bitcoind(node.url, cookie_file=str(tmp_path / ".cookie")).call("getblockcount") == 7
    with pytest.raises(RpcError, match="refused the RPC credentials"):
        Bitcoind(node.url, "u", "nope").call("getblockcount")
    with pytest.raises(RpcError, match="cannot read cookie file"):
        Bitcoind(node.url, cookie_file=str(tmp_path / "missing")).call("getblockcount")
    node.close()
    with pytest.raises(RpcError, match="unreachable"):
        Bitcoind(node.url, "u", "pw", timeout=2).call("getblockcount")


def test_a_transaction_already_sent_counts_as_sent(fake) -> None:
    """Racing sends of one transaction: bitcoind (before 0.21) answers -26 txn-already-in-mempool,
    and -27 once it is mined. Neither is a failure; a backend not answering is not a rejection."""
    coinbase = parse_block(GENESIS)[2][0]
    tx, txid = coinbase.serialize(), coinbase.txid().hex()
    answers = [RpcError(-26, "txn-already-in-mempool"), RpcError(-26, "txn-already-known"),
               RpcError(-27, "Transaction outputs already in utxo set")]

    def send(raw: str) -> str:
        raise answers.pop(0)
    node = fake({"sendrawtransaction": send})
    backend = BitcoindBackend(Bitcoind(node.url, "u", "pw"))
    assert [backend.broadcast(tx) for _ in range(3)] == [txid] * 3
    node.close()
    with pytest.raises(RpcError) as e:
        backend.broadcast(tx)
    assert e.value.code == UNREACHABLE and "unreachable" in e.value.message


@pytest.fixture
def silent():
    """A port that accepts connections and never answers (a stopped bitcoind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_silent_backend_is_reported_quickly_and_holds_up_no_other_call(silent: str) -> None:
    rpc = Bitcoind(silent, "u", "pw", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RpcError, match="chain backend not answering"):
        rpc.call("getblockchaininfo")
    assert time.monotonic() - started < 0.9  # once, not retried
    with pytest.raises(RpcError, match="chain backend not answering"):
        BitcoindBackend(rpc).fees()  # the first estimate gives up, not one per target
    assert time.monotonic() - started < 1.4
    errors: list[RpcError] = []
    threads = [threading.Thread(target=lambda: errors.append(pytest.raises(RpcError, rpc.call, "x").value))
               for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and time.monotonic() - started < 0.9  # side by side, not one after the other
    rpc.close()
