"""The chain backend interface, and the block and transaction parsing every chain plugin shares.

A backend is a plugin (in any service; bitcoind runs in watchd's) that answers six control requests,
in the spirit of Core Lightning's backend methods:

    chain.info       -> {network, height, best_hash, syncing}
    chain.fees       -> {"2": sat_per_kvb, "6": ..., "12": ..., "144": ...}   (targets in blocks)
    chain.block      {height} -> {hash, raw (hex)} or None above the tip
    chain.utxo       {txid, vout} -> {value_sat, script (hex)} or None when spent or unknown
    chain.broadcast  {raw (hex)} -> {txid}; an RpcError (BROADCAST_REJECTED) when the network refuses it;
                     a transaction already in the mempool or in a block counts as sent
    chain.in_mempool {txid} -> bool

A backend that cannot be reached answers quickly with an RpcError (SERVICE_UNAVAILABLE) saying so,
rather than making its callers wait.

`ChainBackend` is the same as a Python protocol; `backend_subscriptions(get_backend)` turns an
object implementing it into those subscriptions, and `ChainClient(ctx)` calls them from any service.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from embit.transaction import Transaction

from .types import RpcError, ServiceContext, Subscription, control_method

BROADCAST_REJECTED = -26
REQUESTS = ("chain.info", "chain.fees", "chain.block", "chain.utxo", "chain.broadcast", "chain.in_mempool")
CLIENT_TIMEOUT = 10.0  # a backend should answer sooner (bitcoind's default is 3 s), this is the last resort
FEE_TARGETS = (2, 6, 12, 144)


@dataclass(frozen=True)
class ChainInfo:
    """The backend's view of the chain."""

    network: str
    height: int
    best_hash: str
    syncing: bool = False


class ChainBackend(Protocol):
    """What a chain backend provides (bitcoind, or any other source of blocks)."""

    def info(self) -> ChainInfo:
        """The network, tip height and hash, and whether the source is still syncing."""

    def fees(self) -> dict[int, int]:
        """Fee estimates in sat per 1000 vbytes by confirmation target in blocks (missing when unknown)."""

    def block(self, height: int) -> tuple[str, bytes] | None:
        """The block at `height` (its hash and raw bytes), None above the tip."""

    def utxo(self, txid: str, vout: int) -> tuple[int, bytes] | None:
        """Value and script of an unspent output, None when spent or unknown."""

    def broadcast(self, raw: bytes) -> str:
        """Send a transaction; returns its txid once the backend's mempool (or chain) holds it, raises
        RpcError if not. Sending a transaction the backend has already is a success."""

    def in_mempool(self, txid: str) -> bool:
        """Whether the backend's mempool holds the transaction."""


def backend_subscriptions(get_backend: Callable[[ServiceContext], ChainBackend]) -> list[Subscription]:
    """The control subscriptions of REQUESTS, served by the backend `get_backend(ctx)` returns."""

    def info(ctx: ServiceContext) -> dict[str, Any]:
        i = get_backend(ctx).info()
        return {"network": i.network, "height": i.height, "best_hash": i.best_hash, "syncing": i.syncing}

    def fees(ctx: ServiceContext) -> dict[str, int]:
        return {str(k): v for k, v in get_backend(ctx).fees().items()}

    def block(ctx: ServiceContext, height: int) -> dict[str, Any] | None:
        found = get_backend(ctx).block(height)
        return None if found is None else {"hash": found[0], "raw": found[1].hex()}

    def utxo(ctx: ServiceContext, txid: str, vout: int) -> dict[str, Any] | None:
        found = get_backend(ctx).utxo(txid, vout)
        return None if found is None else {"value_sat": found[0], "script": found[1].hex()}

    def broadcast(ctx: ServiceContext, raw: str) -> dict[str, str]:
        try:
            tx = bytes.fromhex(raw)
        except ValueError:
            raise RpcError(RpcError.INVALID_PARAMS, "chain.broadcast: parameter 'raw' must be hex") from None
        return {"txid": get_backend(ctx).broadcast(tx)}

    def in_mempool(ctx: ServiceContext, txid: str) -> bool:
        return get_backend(ctx).in_mempool(txid)

    handlers = (info, fees, block, utxo, broadcast, in_mempool)
    return [control_method(name)(fn) for name, fn in zip(REQUESTS, handlers)]


class ChainClient:
    """A `ChainBackend` for any service: each call is a control request to the backend."""

    def __init__(self, ctx: ServiceContext, timeout: float = CLIENT_TIMEOUT) -> None:
        self._ctx, self._timeout = ctx, timeout

    def _ask(self, name: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return self._ctx.request(name, body or {}, timeout=self._timeout)
        except RpcError as e:  # the backend's service not answering in time: say what it means to the caller
            if e.code in (RpcError.SERVICE_UNAVAILABLE, RpcError.TIMEOUT) and not e.message.startswith("chain backend"):
                raise RpcError(RpcError.SERVICE_UNAVAILABLE, f"chain backend not answering: {e.message}") from None
            raise

    def info(self) -> ChainInfo:
        i = self._ask("chain.info")
        return ChainInfo(i["network"], i["height"], i["best_hash"], i["syncing"])

    def fees(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self._ask("chain.fees").items()}

    def block(self, height: int) -> tuple[str, bytes] | None:
        found = self._ask("chain.block", {"height": height})
        return None if found is None else (found["hash"], bytes.fromhex(found["raw"]))

    def utxo(self, txid: str, vout: int) -> tuple[int, bytes] | None:
        found = self._ask("chain.utxo", {"txid": txid, "vout": vout})
        return None if found is None else (found["value_sat"], bytes.fromhex(found["script"]))

    def broadcast(self, raw: bytes) -> str:
        return str(self._ask("chain.broadcast", {"raw": raw.hex()})["txid"])

    def in_mempool(self, txid: str) -> bool:
        return bool(self._ask("chain.in_mempool", {"txid": txid}))


# --- parsing -------------------------------------------------------------------------------------

def block_hash(header: bytes) -> str:
    """The block hash (as displayed) of an 80-byte header."""
    return hashlib.sha256(hashlib.sha256(header[:80]).digest()).digest()[::-1].hex()


def parse_block(raw: bytes) -> tuple[str, str, list[Transaction]]:
    """A raw block's hash, its parent's hash, and its transactions."""
    if len(raw) < 81:
        raise ValueError("block shorter than its header")
    stream = io.BytesIO(raw)
    header = stream.read(80)
    count = _read_compact(stream)
    txs = [Transaction.read_from(stream) for _ in range(count)]
    return block_hash(header), header[4:36][::-1].hex(), txs


def _read_compact(stream: io.BytesIO) -> int:
    first = stream.read(1)[0]
    if first < 0xFD:
        return first
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(stream.read(size), "little")


def txid(tx: Transaction) -> str:
    """A transaction's id, as displayed."""
    return tx.txid().hex()

