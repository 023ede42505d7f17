"""watchd's look back for a watch made with `since`, on a fake backend: told what processed blocks did, and
not lost when the backend fails during the look (it is done at the next poll)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from embit.transaction import Transaction, TransactionInput, TransactionOutput
from embit.script import Script

from lnp_host.outbox import HOST_TABLES, MODELS as HOST_MODELS
from lnp_host.storage import Database
from lnp_plugin_api import RpcError
from lnp_plugin_api.chain import ChainInfo
from lnp_plugins.watchd import storage
from lnp_plugins.watchd.scanner import Scanner

SPENT = bytes(range(32))


def block(parent: bytes, n: int, txs: list[Transaction]) -> tuple[str, bytes]:
    header = (1).to_bytes(4, "little") + parent + hashlib.sha256(bytes([n])).digest() + bytes(12)
    raw = header + bytes([len(txs)]) + b"".join(t.serialize() for t in txs)
    return hashlib.sha256(hashlib.sha256(header).digest()).digest()[::-1].hex(), raw


class Chain:
    def __init__(self) -> None:
        spend = Transaction(vin=[TransactionInput(SPENT, 1)], vout=[TransactionOutput(1000, Script(b"\x51"))])
        self.blocks: list[tuple[str, bytes]] = []
        parent = bytes(32)
        for n, txs in enumerate([[], [spend], []]):
            self.blocks.append(block(parent, n, txs))
            parent = bytes.fromhex(self.blocks[-1][0])[::-1]
        self.spend_txid = spend.txid().hex()
        self.fail_next = 0

    def info(self) -> ChainInfo:
        return ChainInfo("regtest", len(self.blocks) - 1, self.blocks[-1][0])

    def block(self, height: int) -> tuple[str, bytes] | None:
        if self.fail_next:
            self.fail_next -= 1
            raise RpcError(RpcError.SERVICE_UNAVAILABLE, "backend away")
        return self.blocks[height] if height < len(self.blocks) else None


class Tx:
    def __init__(self, db: Database, emitted: list) -> None:
        self._begin, self.emitted = db.begin(), emitted

    def __enter__(self) -> "Tx":
        self.conn = self._begin.__enter__()
        self.rows: list = []
        return self

    def emit(self, name: str, body: dict) -> None:
        self.rows.append((name, body))

    def __exit__(self, kind: Any, *exc: Any) -> Any:
        out = self._begin.__exit__(kind, *exc)
        if kind is None:
            self.emitted.extend(self.rows)
        return out


def test_a_look_back_interrupted_by_the_backend_is_done_at_the_next_poll(tmp_path: Path) -> None:
    db = Database("", tmp_path)
    db.migrate({HOST_TABLES: HOST_MODELS, "watchd": storage.MODELS})
    emitted: list = []
    chain = Chain()
    scanner = Scanner(db, chain, lambda: Tx(db, emitted), start_height=0)
    scanner.poll()
    assert scanner.tip == (2, chain.blocks[2][0])
    outpoint = f"{SPENT.hex()}:1"
    scanner.add("outpoint", outpoint, "owner", since=1)   # made after the block spending it was processed
    chain.fail_next = 1
    try:
        scanner.poll()
        raise AssertionError("the backend's failure reaches the poll (watchd retries it)")
    except RpcError:
        pass
    assert not [e for e in emitted if e[0] == "outpoint_spent"]
    scanner.poll()
    spent = [b for name, b in emitted if name == "outpoint_spent"]
    assert [(b["outpoint"], b["spending_txid"], b["height"]) for b in spent] == [(outpoint, chain.spend_txid, 1)]
    scanner.add("outpoint", outpoint, "owner", since=1)   # asked again once told: not told twice
    scanner.poll()
    assert len([e for e in emitted if e[0] == "outpoint_spent"]) == 1
    db.close()
