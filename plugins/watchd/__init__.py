"""watchd: follows the chain through the chain backend and tells other services what they watch.

Control requests (from any service):
    watchd.watch    {kind: outpoint|txid|script, key, owner, depths?} -> the watch
    watchd.unwatch  {id} -> {removed}
    watchd.status   -> {height, hash, watches}
Events, all durable (written in the block's transaction, delivered by the host's outbox in order
and at least once to each subscriber, also one that was down; `event.seq` numbers them):
block_connected / block_disconnected {height, hash}; outpoint_spent / outpoint_unspent;
tx_depth (once per requested depth) / tx_unconfirmed; script_paid / script_unpaid. Each watch
event carries the watch's `watch_id` and `owner`. Spends and payments seen in the mempool (when
the backend announces mempool transactions) come first with `height` None, then again when mined.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from lnp_plugin_api import (EventSpec, Field, PerContext, RpcError, ServiceContext, Subscription, control_method,
                            hookimpl, rpc_method)
from lnp_plugin_api.chain import ChainClient

from . import storage
from .scanner import Scanner

NODE_READY_WAIT = 30.0
# Durable, block events too: they are ordered with the watch events of the same block, so a
# subscriber's view of the tip never runs ahead of or behind what it was told about the block.
EVENTS = [
    EventSpec("block_connected", "{height, hash}", durable=True),
    EventSpec("block_disconnected", "a reorg took the block back; {height, hash}", durable=True),
    EventSpec("outpoint_spent", "{watch_id, owner, outpoint, spending_txid, spending_tx, height}", durable=True),
    EventSpec("outpoint_unspent", "a reorg undid the spend; {watch_id, owner, outpoint, spending_txid, height}",
              durable=True),
    EventSpec("tx_depth", "a watched txid reached a requested depth; {watch_id, owner, txid, depth, height}",
              durable=True),
    EventSpec("tx_unconfirmed", "a reorg undid the confirmation; {watch_id, owner, txid, height}", durable=True),
    EventSpec("script_paid", "{watch_id, owner, script, txid, vout, value_sat, height, tx}", durable=True),
    EventSpec("script_unpaid", "a reorg undid the payment; {watch_id, owner, script, txid, vout, height}",
              durable=True),
]


class Watchd:
    """The scanner and the thread that polls the backend."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.poll_interval = float(ctx.config["poll_interval"])
        self.scanner = Scanner(ctx.storage, ChainClient(ctx), ctx.transaction, int(ctx.config["start_height"]))
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.node_ready = threading.Event()  # every service is up, so no subscriber misses an event
        self.thread = threading.Thread(target=self._run, name="watchd-poll", daemon=True)
        self.last_error = ""

    def _run(self) -> None:
        # Blocks found at startup (mined while the node was down) are only processed once the
        # services that subscribe to their events are listening; alone (--service), after a while.
        self.node_ready.wait(NODE_READY_WAIT)
        while not self.stopping.is_set():
            try:
                started = time.monotonic()
                done = self.scanner.poll()
                self.ctx.log.debug("chain poll: %d block(s) processed in %.1f ms, tip %s", done,
                                   (time.monotonic() - started) * 1000, self.scanner.tip and self.scanner.tip[0])
                if self.last_error:
                    self.ctx.log.info("chain backend answering again")
                self.last_error = ""
                self.ctx.set_health(None)  # passed on only when it changes
            except RpcError as e:  # the backend is unreachable or not started yet: try again
                if e.message != self.last_error:  # logged once, not at every poll
                    self.ctx.log.warning("chain backend: %s", e.message)
                self.last_error = e.message
                self.ctx.set_health(e.message)
            except Exception:
                self.ctx.log.exception("processing blocks failed")
                self.ctx.fail("processing blocks failed")
                return
            self.wake.wait(self.poll_interval)
            self.wake.clear()


_running: PerContext[Watchd] = PerContext("watchd")
_get = _running.get


@control_method("watchd.watch")
def _watch(ctx: ServiceContext, kind: str, key: str, owner: str, depths: list[int] | None = None,
           since: int | None = None) -> dict[str, Any]:
    w = _get(ctx)
    out = w.scanner.add(kind, key, owner, depths, since)
    w.wake.set()  # a new watch may already be due at the current tip (depth 1 of a mined txid is not)
    return out


@control_method("watchd.unwatch")
def _unwatch(ctx: ServiceContext, id: int) -> dict[str, bool]:
    return {"removed": _get(ctx).scanner.remove(id)}


@control_method("watchd.status")
def _status(ctx: ServiceContext) -> dict[str, Any]:
    return _get(ctx).scanner.status()


def _node_ready(ctx: ServiceContext, event: Any) -> None:
    _get(ctx).node_ready.set()


def _hint(ctx: ServiceContext, event: Any) -> None:
    _get(ctx).wake.set()


def _mempool_tx(ctx: ServiceContext, event: Any) -> None:
    try:
        _get(ctx).scanner.mempool_tx(bytes.fromhex(str(event.body.get("tx", ""))))
    except ValueError:
        ctx.log.warning("a mempool transaction that does not parse was ignored")


@rpc_method
def chaininfo(ctx: ServiceContext) -> dict[str, Any]:
    """watchd's tip and watch counts, and the backend's view of the chain."""
    w = _get(ctx)
    try:
        backend = ChainClient(ctx, timeout=10).info()
        chain = {"network": backend.network, "height": backend.height, "best_hash": backend.best_hash,
                 "syncing": backend.syncing}
    except RpcError as e:
        chain = {"error": e.message}
    return {"watchd": w.scanner.status(), "backend": chain}


@hookimpl
def lnp_service() -> str:
    return "watchd"


@hookimpl
def lnp_requires() -> list[str]:
    return ["chain.info", "chain.block"]  # a chain backend (bitcoind, or another) in this service


@hookimpl
def lnp_config_schema() -> dict:
    return {"poll_interval": Field(float, 2.0, "seconds between polls of the backend (ZMQ hints come at once)",
                                   check=lambda v: None if v > 0 else "must be greater than zero"),
            "start_height": Field(int, -1, "block to start from on first run (-1: the tip)")}


@hookimpl
def lnp_storage_models() -> Any:
    return storage.MODELS


@hookimpl
def lnp_events() -> list:
    return EVENTS


@hookimpl
def lnp_rpc_methods() -> list:
    return [chaininfo]


@hookimpl
def lnp_subscriptions() -> list:
    return [_watch, _unwatch, _status, Subscription.event("chain_block_hint", _hint),
            Subscription.event("chain_mempool_tx", _mempool_tx), Subscription.event("node_ready", _node_ready)]


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    w = Watchd(ctx)
    _running.set(ctx, w)
    w.thread.start()


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    w = _running.pop(ctx)
    if w is not None:
        w.stopping.set()
        w.node_ready.set()
        w.wake.set()
        w.thread.join(10)
