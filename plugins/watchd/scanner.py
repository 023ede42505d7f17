"""watchd's state machine: follow the chain block by block, match watches, undo on reorgs.

Each connected or disconnected block is one database transaction holding the watch states, the tip
and the block's events (durable: the host's outbox delivers them after the commit, in order, at
least once, to each subscriber), so a restart never loses one: it resumes from the stored tip.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

from sqlalchemy import delete, insert, select, update

from lnp_plugin_api import RpcError, Storage
from embit.transaction import Transaction

from lnp_plugin_api.chain import ChainBackend, parse_block

from . import storage as db

log = logging.getLogger("lnp.watchd")
Begin = Callable[[], ContextManager[Any]]  # ctx.transaction: a transaction with `conn` and `emit`


@dataclass
class Watch:
    """One watch as kept in memory (the database holds the same)."""

    id: int
    kind: str
    key: str
    owner: str
    depths: list[int] = field(default_factory=lambda: [1])
    confirmed_height: int | None = None
    notified_depth: int = 0
    spent_txid: str | None = None
    spent_height: int | None = None

    def describe(self) -> dict[str, Any]:
        """The JSON form of the watch."""
        return {k: getattr(self, k) for k in ("id", "kind", "key", "owner", "depths", "confirmed_height",
                                               "notified_depth", "spent_txid", "spent_height")}


@dataclass
class Found:
    """What blocks told the watches: events to emit, watch rows to update, script payments to store."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    watch_updates: dict[int, dict[str, Any]] = field(default_factory=dict)
    new_payments: list[dict[str, Any]] = field(default_factory=list)


class Scanner:
    """The chain as processed so far, the watch list, and the block-by-block work."""

    def __init__(self, storage: Storage, chain: ChainBackend, transaction: Begin, start_height: int = -1) -> None:
        self.storage, self.chain, self.transaction = storage, chain, transaction
        self.start_height = start_height
        self.lock = threading.RLock()
        self.watches: dict[int, Watch] = {}
        self.by_key: dict[tuple[str, str], list[Watch]] = {}
        self.deepening: dict[int, Watch] = {}  # confirmed txid watches with depths still to notify
        self.tip: tuple[int, str] | None = None
        self.looks: list[tuple[int, int]] = []   # (watch id, since): new watches to look back for
        self._load()

    # --- the watch list ------------------------------------------------------------------------

    def _load(self) -> None:
        with self.storage.begin() as conn:
            for r in conn.execute(select(db.watches)):
                self._index(Watch(r.id, r.kind, r.key, r.owner, json.loads(r.depths), r.confirmed_height,
                                  r.notified_depth, r.spent_txid, r.spent_height))
            top = conn.execute(select(db.blocks).order_by(db.blocks.c.height.desc()).limit(1)).first()
        self.tip = (top.height, top.hash) if top is not None else None

    def _index(self, w: Watch) -> None:
        self.watches[w.id] = w
        self.by_key.setdefault((w.kind, w.key), []).append(w)
        self._track(w)

    def _track(self, w: Watch) -> None:
        """Keep `deepening` right, so each block looks only at the watches that may be due."""
        if w.kind == "txid" and w.confirmed_height is not None and w.notified_depth < max(w.depths):
            self.deepening[w.id] = w
        else:
            self.deepening.pop(w.id, None)

    def add(self, kind: str, key: str, owner: str, depths: list[int] | None = None,
            since: int | None = None) -> dict[str, Any]:
        """Watch an outpoint ("txid:vout"), a txid, or a script (hex); the same request twice is one watch.
        With `since` (a height), blocks from there to the tip are looked at for the new watch too, at the
        next poll (its events come then)."""
        key = _normalise(kind, key)
        wanted = sorted(set(depths or [1]))
        if any(d < 1 or d > 10_000 for d in wanted):
            raise RpcError(RpcError.INVALID_PARAMS, "depths must be 1..10000")
        with self.lock:
            for w in self.by_key.get((kind, key), []):
                if w.owner == owner:
                    if since is not None and w.spent_txid is None and w.confirmed_height is None:
                        self.looks.append((w.id, since))   # asked again, nothing found yet: look again
                        # (a restart loses the looks not done: the owner asks again, as channeld does)
                    if kind == "txid" and w.depths != wanted:
                        w.depths = sorted(set(w.depths) | set(wanted))
                        self._track(w)
                        with self.storage.begin() as conn:
                            conn.execute(update(db.watches).where(db.watches.c.id == w.id)
                                         .values(depths=json.dumps(w.depths)))
                    return w.describe()
            with self.storage.begin() as conn:
                new_id = conn.execute(insert(db.watches).values(kind=kind, key=key, owner=owner,
                                                                depths=json.dumps(wanted), notified_depth=0)
                                      ).inserted_primary_key[0]
            w = Watch(int(new_id), kind, key, owner, wanted)
            self._index(w)
            if since is not None:   # done by the polling thread (the backend may answer on this service's thread)
                self.looks.append((w.id, since))
            return w.describe()

    def remove(self, watch_id: int) -> bool:
        """Stop a watch; False when there was none with that id."""
        with self.lock:
            w = self.watches.pop(watch_id, None)
            if w is None:
                return False
            self.by_key[(w.kind, w.key)].remove(w)
            self.deepening.pop(watch_id, None)
            with self.storage.begin() as conn:
                conn.execute(delete(db.watches).where(db.watches.c.id == watch_id))
                conn.execute(delete(db.payments).where(db.payments.c.watch_id == watch_id))
            return True

    # --- following the chain -------------------------------------------------------------------

    def poll(self) -> int:
        """Process every block the backend has beyond our tip (undoing reorged ones); returns how many.

        The backend is asked outside the lock, so a slow one never holds up watch requests."""
        done = 0
        self._look_backs()
        info = self.chain.info()
        if self.tip is None:
            start = info.height if self.start_height < 0 else min(self.start_height, info.height)
            found = self.chain.block(start)
            if found is None:
                return 0
            with self.lock:
                self._connect(start, found[1])
            done += 1
        assert self.tip is not None
        while True:
            height, tip_hash = self.tip  # only this thread moves the tip
            if height > info.height or (height == info.height and tip_hash != info.best_hash):
                with self.lock:
                    self._disconnect()
                done += 1
                continue
            if height == info.height:
                return done
            found = self.chain.block(height + 1)
            if found is None:  # the backend's tip moved back since `info`
                info = self.chain.info()
                continue
            block_hash, parent, _ = parse_block(found[1])
            with self.lock:
                if parent != tip_hash:  # our tip is not on the backend's chain any more
                    self._disconnect()
                else:
                    self._connect(height + 1, found[1])
            done += 1

    def _connect(self, height: int, raw: bytes) -> None:
        block_hash, _, txs = parse_block(raw)
        found = Found()
        self._match(height, txs, self.by_key, found)
        self._deepen(list(self.deepening.values()), height, found)  # including the block just connected
        events, watch_updates, new_payments = found.events, found.watch_updates, found.new_payments
        with self.transaction() as tx:
            conn = tx.conn
            for watch_id, values in watch_updates.items():
                conn.execute(update(db.watches).where(db.watches.c.id == watch_id).values(**values))
            for p in new_payments:
                conn.execute(delete(db.payments).where((db.payments.c.watch_id == p["watch_id"])
                                                       & (db.payments.c.txid == p["txid"])
                                                       & (db.payments.c.vout == p["vout"])))
                conn.execute(insert(db.payments).values(**p))
            conn.execute(delete(db.blocks).where(db.blocks.c.height >= height))
            conn.execute(insert(db.blocks).values(height=height, hash=block_hash))
            conn.execute(delete(db.blocks).where(db.blocks.c.height <= height - db.KEEP_BLOCKS))
            # the block's own event comes last: a subscriber at this tip has had the block's watch events
            for name, body in events + [("block_connected", {"height": height, "hash": block_hash})]:
                tx.emit(name, body)
        self.tip = (height, block_hash)
        log.debug("block %d (%s) connected: %d transactions, %d events", height, block_hash, len(txs), len(events))

    def _match(self, height: int, txs: list[Any], by_key: dict[tuple[str, str], list[Watch]], found: "Found") -> None:
        """The watches of `by_key` that the block's transactions spend, confirm or pay."""
        for tx in txs:
            txid = tx.txid().hex()
            raw_tx: str | None = None
            for vin in tx.vin:
                outpoint = f"{vin.txid.hex()}:{vin.vout}"
                for w in by_key.get(("outpoint", outpoint), []):
                    raw_tx = raw_tx or tx.serialize().hex()
                    w.spent_txid, w.spent_height = txid, height
                    found.watch_updates[w.id] = {"spent_txid": txid, "spent_height": height}
                    found.events.append(("outpoint_spent", {"watch_id": w.id, "owner": w.owner, "outpoint": outpoint,
                                                            "spending_txid": txid, "spending_tx": raw_tx,
                                                            "height": height}))
            for w in by_key.get(("txid", txid), []):
                w.confirmed_height, w.notified_depth = height, 0
                found.watch_updates[w.id] = {"confirmed_height": height, "notified_depth": 0}
                self._track(w)
            for vout, out in enumerate(tx.vout):
                script = out.script_pubkey.data.hex()
                for w in by_key.get(("script", script), []):
                    raw_tx = raw_tx or tx.serialize().hex()
                    found.new_payments.append({"watch_id": w.id, "txid": txid, "vout": vout, "value_sat": out.value,
                                               "height": height})
                    found.events.append(("script_paid", {"watch_id": w.id, "owner": w.owner, "script": script,
                                                         "txid": txid, "vout": vout, "value_sat": out.value,
                                                         "height": height, "tx": raw_tx}))

    def _deepen(self, watches: list[Watch], height: int, found: "Found") -> None:
        """Depth notifications of confirmed txid watches now due at `height`."""
        for w in watches:
            if w.kind != "txid" or w.confirmed_height is None:
                continue
            depth = height - w.confirmed_height + 1
            due = [d for d in w.depths if w.notified_depth < d <= depth]
            if due:
                w.notified_depth = max(due)
                found.watch_updates.setdefault(w.id, {})["notified_depth"] = w.notified_depth
                self._track(w)
                for d in due:
                    found.events.append(("tx_depth", {"watch_id": w.id, "owner": w.owner, "txid": w.key, "depth": d,
                                                      "height": w.confirmed_height}))

    def _look_backs(self) -> None:
        """New watches made with `since`, over blocks already processed (from `since` to the tip): what
        each would have been told, told now (e.g. an output spent in the block after the one its owner
        heard of). Only this thread moves the tip, so it stays put meanwhile. A block that is no longer
        the one processed at its height ends the look: `poll` undoes and redoes the reorg, the watch in place."""
        with self.lock:
            looks, self.looks = self.looks, []
        try:
            while looks:
                self._look_back_one(*looks[0])
                looks.pop(0)
        except BaseException:   # the backend unreachable: those not done are tried at the next poll
            with self.lock:
                self.looks[:0] = looks
            raise

    def _look_back_one(self, watch_id: int, since: int) -> None:
        w = self.watches.get(watch_id)
        if w is None or self.tip is None or since > self.tip[0]:
            return
        with self.storage.begin() as conn:
            kept = {r.height: r.hash for r in conn.execute(select(db.blocks).where(db.blocks.c.height >= since))}
        blocks = []
        for height in range(max(since, 0), self.tip[0] + 1):   # asked outside the lock
            got = self.chain.block(height)
            if got is None or (height in kept and kept[height] != got[0]):
                break
            blocks.append((height, parse_block(got[1])[2]))
        with self.lock:
            if self.watches.get(watch_id) is w:
                self._look_back(w, blocks)

    def _look_back(self, w: Watch, blocks: list[tuple[int, list[Any]]]) -> None:
        assert self.tip is not None
        if not blocks:
            return
        found = Found()
        for height, txs in blocks:
            self._match(height, txs, {(w.kind, w.key): [w]}, found)
        self._deepen([w], self.tip[0], found)
        if not found.events and not found.watch_updates:
            return
        with self.transaction() as tx:
            for watch_id, values in found.watch_updates.items():
                tx.conn.execute(update(db.watches).where(db.watches.c.id == watch_id).values(**values))
            for p in found.new_payments:
                tx.conn.execute(insert(db.payments).values(**p))
            for name, body in found.events:
                tx.emit(name, body)
        log.info("watch %d (%s %s): %d event(s) from blocks %d..%d it did not exist for", w.id, w.kind, w.key,
                 len(found.events), blocks[0][0], blocks[-1][0])

    def _disconnect(self) -> None:
        assert self.tip is not None
        height, block_hash = self.tip
        events: list[tuple[str, dict[str, Any]]] = []
        watch_updates: dict[int, dict[str, Any]] = {}
        for w in self.watches.values():
            if w.kind == "txid" and w.confirmed_height == height:
                w.confirmed_height, w.notified_depth = None, 0
                watch_updates[w.id] = {"confirmed_height": None, "notified_depth": 0}
                self._track(w)
                events.append(("tx_unconfirmed", {"watch_id": w.id, "owner": w.owner, "txid": w.key,
                                                  "height": height}))
            elif w.kind == "txid" and w.confirmed_height is not None and w.notified_depth > height - w.confirmed_height:
                w.notified_depth = height - w.confirmed_height  # deeper depths will be notified again
                watch_updates[w.id] = {"notified_depth": w.notified_depth}
                self._track(w)
            elif w.kind == "outpoint" and w.spent_height == height:
                events.append(("outpoint_unspent", {"watch_id": w.id, "owner": w.owner, "outpoint": w.key,
                                                    "spending_txid": w.spent_txid, "height": height}))
                w.spent_txid, w.spent_height = None, None
                watch_updates[w.id] = {"spent_txid": None, "spent_height": None}
        with self.transaction() as tx:
            conn = tx.conn
            for r in conn.execute(select(db.payments).where(db.payments.c.height == height)):
                w = self.watches.get(r.watch_id)
                events.append(("script_unpaid", {"watch_id": r.watch_id, "owner": w.owner if w else "",
                                                 "script": w.key if w else "", "txid": r.txid, "vout": r.vout,
                                                 "height": height}))
            conn.execute(delete(db.payments).where(db.payments.c.height == height))
            for watch_id, values in watch_updates.items():
                conn.execute(update(db.watches).where(db.watches.c.id == watch_id).values(**values))
            conn.execute(delete(db.blocks).where(db.blocks.c.height == height))
            below = conn.execute(select(db.blocks).where(db.blocks.c.height == height - 1)).first()
            if below is None:  # deeper than we keep: start again from the backend's block there
                found = self.chain.block(height - 1)
                if found is None:
                    raise RpcError(RpcError.INTERNAL_ERROR, f"reorg deeper than block {height - 1}")
                conn.execute(insert(db.blocks).values(height=height - 1, hash=found[0]))
                below_hash = found[0]
            else:
                below_hash = below.hash
            for name, body in events + [("block_disconnected", {"height": height, "hash": block_hash})]:
                tx.emit(name, body)
        self.tip = (height - 1, below_hash)
        log.info("block %d (%s) disconnected", height, block_hash)

    def mempool_tx(self, raw: bytes) -> None:
        """A transaction entered the mempool: tell the owners of the scripts it pays and the outpoints it
        spends, with `height` None. No watch state changes; the same events come again when it is mined."""
        tx = Transaction.parse(raw)
        txid = tx.txid().hex()
        events: list[tuple[str, dict[str, Any]]] = []
        with self.lock:
            for vin in tx.vin:
                outpoint = f"{vin.txid.hex()}:{vin.vout}"
                for w in self.by_key.get(("outpoint", outpoint), []):
                    events.append(("outpoint_spent", {"watch_id": w.id, "owner": w.owner, "outpoint": outpoint,
                                                      "spending_txid": txid, "spending_tx": raw.hex(),
                                                      "height": None}))
            for vout, out in enumerate(tx.vout):
                script = out.script_pubkey.data.hex()
                for w in self.by_key.get(("script", script), []):
                    events.append(("script_paid", {"watch_id": w.id, "owner": w.owner, "script": script,
                                                   "txid": txid, "vout": vout, "value_sat": out.value,
                                                   "height": None, "tx": raw.hex()}))
        if events:
            with self.transaction() as out:
                for name, body in events:
                    out.emit(name, body)

    def status(self) -> dict[str, Any]:
        """The tip and the number of watches of each kind."""
        with self.lock:
            counts: dict[str, int] = {}
            for w in self.watches.values():
                counts[w.kind] = counts.get(w.kind, 0) + 1
            return {"height": self.tip[0] if self.tip else None, "hash": self.tip[1] if self.tip else None,
                    "watches": counts}


def _normalise(kind: str, key: str) -> str:
    key = key.strip().lower()
    try:
        if kind == "outpoint":
            txid, vout = key.split(":")
            if len(bytes.fromhex(txid)) != 32 or not 0 <= int(vout) < 2**32:
                raise ValueError
            return f"{txid}:{int(vout)}"
        if kind == "txid":
            if len(bytes.fromhex(key)) != 32:
                raise ValueError
            return key
        if kind == "script":
            if not 0 < len(bytes.fromhex(key)) <= 10_000:
                raise ValueError
            return key
    except ValueError:
        raise RpcError(RpcError.INVALID_PARAMS, f"not a valid {kind}: {key[:100]!r}") from None
    raise RpcError(RpcError.INVALID_PARAMS, f"unknown watch kind {kind!r} (outpoint, txid or script)")

