"""The outbox: what a plugin commits to is delivered, after the commit, in order, at least once.

A plugin writes its state and the durable events, one-way requests and wire messages that follow
from it in one storage transaction (`ctx.transaction()`): they become rows of `lnp_outbox`, one per
receiving plugin (the fan-out is decided at write time from the registry). Nothing leaves before
the commit (persist before send). Each service's courier thread then delivers its plugins' rows,
per receiving plugin in id order, a window at a time, as one control request (`host.outbox`); the
receiving service runs the handlers and answers with the highest id it applied, and the courier
deletes the rows up to it. A receiver that is down or whose handler fails is retried with backoff
until it takes them; rows left when a service stops are delivered when it starts again.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from sqlalchemy import (BigInteger, Column, Index, Integer, MetaData, String, Table, Text, bindparam, delete,
                        select)

from lnp_plugin_api import Event, RpcError, StorageModels, WireMessage

from .bus import Encoded
from .control import answer, no_such_request

if TYPE_CHECKING:
    from .context import Environment

log = logging.getLogger("lnp.host.outbox")

HOST_TABLES = "lnp_host"   # the host's own entry in lnp_schema_versions
DELIVER = "host.outbox"    # the control request carrying a window of rows to a service
EVENT, REQUEST, WIRE = "E", "Q", "W"
WINDOW = 1000              # rows per delivery
RECEIVE_BUDGET = 5.0       # seconds a receiver spends on one window before answering with what it did
DELIVERY_TIMEOUT = 15.0    # seconds the courier waits for that answer
IDLE = 5.0                 # seconds between looks at the table when nothing woke it (commits wake it)
MAX_BACKOFF = 10.0
STOP_WAIT = 3.0            # seconds a stopping service waits for its courier's delivery in flight
CRASH_ENV = "LNP_DEV_CRASH_AT"
AFTER_COMMIT = "outbox_after_commit"

metadata = MetaData()
# ids are never given twice (SQLite's AUTOINCREMENT; PostgreSQL's sequences never go back), so a
# receiver that remembers the last number it applied never mistakes a new row for an old one
outbox = Table(
    "lnp_outbox", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("source", String(128), nullable=False),   # the plugin that wrote it
    Column("dest", String(128), nullable=False),     # the plugin that receives it
    Column("kind", String(1), nullable=False),       # E event, Q one-way request, W wire message to a peer
    Column("name", String(128), nullable=False),     # the event, the request, or the wire type
    Column("body", Text, nullable=False),            # JSON
    Index("ix_lnp_outbox_dest", "dest", "id"),
    sqlite_autoincrement=True,
)
MODELS = StorageModels(metadata, version=1)


def crash_point(name: str, network: str) -> None:
    """Developers: SIGKILL this process here when LNP_DEV_CRASH_AT names this point (never on mainnet)."""
    if os.environ.get(CRASH_ENV) == name and network != "mainnet":
        log.warning("%s=%s: killing this process", CRASH_ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)


_write_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def _write_lock(service: str) -> threading.Lock:
    with _locks_lock:
        return _write_locks.setdefault(service, threading.Lock())


class Transaction:
    """`with ctx.transaction() as tx:` the plugin's writes (`tx.conn`) and the outbox rows, committed
    together; a failure inside the block rolls back both, and nothing is sent."""

    def __init__(self, env: "Environment", plugin: str) -> None:
        self._env, self.plugin = env, plugin
        self._begin = env.storage.begin()
        self._rows: list[dict[str, Any]] = []
        self._lossy: list[tuple[str, dict[str, Any]]] = []
        self.conn: Any = None

    def __enter__(self) -> "Transaction":
        self.conn = self._begin.__enter__()
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool | None:
        if kind is not None or not self._rows:
            result = self._begin.__exit__(kind, value, tb)
        else:
            # Ids are taken at the insert, rows seen at the commit: one service's transactions insert
            # and commit one at a time, so its rows become visible in id order (PostgreSQL's
            # sequences would otherwise let a lower id appear after a higher one was delivered).
            # SQLite needs no lock: a writer holds the database from its first write to its commit
            # (and taking one there could deadlock with a writer waiting for the database).
            sqlite = self.conn.dialect.name == "sqlite"
            with nullcontext() if sqlite else _write_lock(self._env.registry.service_of[self.plugin]):
                try:
                    self.conn.execute(outbox.insert(), self._rows)  # one statement for the whole batch
                except BaseException as e:
                    self._begin.__exit__(type(e), e, e.__traceback__)
                    raise
                result = self._begin.__exit__(None, None, None)
        if kind is None:
            crash_point(AFTER_COMMIT, self._env.node.network)
            if self._rows:
                courier = self._env.couriers.get(self._env.registry.service_of[self.plugin])
                if courier is not None:
                    courier.wake({row["dest"] for row in self._rows})
            if self._lossy:
                from .context import publish  # the lossy path, after the commit like the rest
                for event, body in self._lossy:
                    publish(self._env, event, self.plugin, body, self._env.contexts.get(self.plugin))
        return result

    def _add(self, dest: str, kind: str, name: str, body: Any) -> None:
        self._rows.append({"source": self.plugin, "dest": dest, "kind": kind, "name": name,
                           "body": json.dumps(body, separators=(",", ":"))})

    def emit(self, event: str, body: dict[str, Any] | None = None) -> None:
        """The event goes to each subscribing plugin after the commit: durable ones through the
        outbox, others (declared lossy) as `ctx.emit` sends them."""
        reg = self._env.registry
        spec = reg.event_specs.get(event)
        if spec is None or spec.plugin != self.plugin:
            raise ValueError(f"plugin {self.plugin!r} did not declare event {event!r} in lnp_events")
        if not getattr(spec.item, "durable", False):
            self._lossy.append((event, body or {}))
            return
        for dest in dict.fromkeys(sub.plugin for sub in reg.subscribers(event)):
            self._add(dest, EVENT, event, body or {})

    def request(self, name: str, body: dict[str, Any] | None = None) -> None:
        """A one-way control request to the plugin answering `name`, delivered after the commit (its
        answer is not kept)."""
        owned = self._env.registry.control.get(name)
        if owned is None:
            raise no_such_request(name)
        self._add(owned.plugin, REQUEST, name, body or {})

    def send_wire(self, msg: WireMessage) -> None:
        """A wire message for the transport (peerd), handed over only after the commit. peerd sends it
        if the peer is connected and drops it otherwise: BOLT-2's reestablish recovers from that."""
        owned = self._env.registry.outbound
        if owned is None:
            raise RpcError(RpcError.SERVICE_UNAVAILABLE, "no peer transport plugin is enabled")
        # the time of the commit goes along: replayed after a restart, a message of an earlier connection
        # must not reach the next one (BOLT-2 retransmits after channel_reestablish instead)
        self._add(owned.plugin, WIRE, str(msg.type),
                  {"peer": msg.peer_id.hex(), "type": msg.type, "payload": msg.payload.hex(),
                   "at": msg.committed_at or time.time()})


def receive(env: "Environment", service: str, body: Any) -> dict[str, int]:
    """The receiving side (`host.outbox` in `service`): apply the rows in order; answers the highest
    id applied. A handler that raises stops the window there: that row and the next come again."""
    if not isinstance(body, dict) or not isinstance(body.get("rows"), list):
        raise RpcError(RpcError.INVALID_PARAMS, "host.outbox needs {dest, rows}")
    dest = str(body.get("dest"))
    ctx = env.contexts.get(dest)
    if ctx is None or env.registry.service_of.get(dest) != service:
        raise RpcError(RpcError.SERVICE_UNAVAILABLE, f"plugin {dest!r} is not running in service {service!r}")
    rows, acked = body["rows"], 0
    deadline = time.monotonic() + RECEIVE_BUDGET
    i = 0
    while i < len(rows):
        rid, kind, name, source, item = rows[i]
        batch = _batch_handler(env, ctx, kind, name)
        n = 1
        if batch is not None:  # the events of the same name that follow go in the same call
            while i + n < len(rows) and rows[i + n][1] == EVENT and rows[i + n][2] == name:
                n += 1
        try:
            if batch is not None:
                batch(ctx, [Event(r[2], r[3], r[4], int(r[0])) for r in rows[i:i + n]])
            else:
                _apply(env, ctx, service, int(rid), kind, name, source, item)
        except Exception:
            ctx.log.exception("%s %r from %s (outbox #%s) failed; it will be delivered again",
                              {EVENT: "event", REQUEST: "request", WIRE: "wire message"}.get(kind, kind),
                              name, source, rid)
            break
        acked = int(rows[i + n - 1][0])
        i += n
        if time.monotonic() > deadline:
            break
    return {"acked": acked}


def _batch_handler(env: "Environment", ctx: Any, kind: str, name: str) -> Any:
    """The list-taking handler of `ctx`'s plugin for event `name` (None: not an event, or handled one by one)."""
    if kind != EVENT:
        return None
    subs = [sub for sub in env.registry.subscribers(name) if sub.plugin == ctx.plugin]
    if len(subs) == 1 and hasattr(subs[0].item, "batch"):
        return subs[0].item.batch
    return None


def _apply(env: "Environment", ctx: Any, service: str, rid: int, kind: str, name: str, source: str,
           item: Any) -> None:
    reg = env.registry
    if kind == EVENT:
        for sub in reg.subscribers(name):
            if sub.plugin == ctx.plugin:
                sub.item(ctx, Event(name, source, item, rid))
    elif kind == REQUEST:
        owned = reg.control.get(name)
        if owned is None or owned.plugin != ctx.plugin:
            raise RpcError(RpcError.METHOD_NOT_FOUND, f"{ctx.plugin!r} has no control request {name!r}")
        result = answer(owned, ctx, name, item)  # the body checked as any control request's
        if isinstance(result, Future):
            result.result(RECEIVE_BUDGET)
    elif kind == WIRE:
        owned = reg.outbound
        if owned is None or owned.plugin != ctx.plugin:
            raise RpcError(RpcError.SERVICE_UNAVAILABLE, f"{ctx.plugin!r} is not the peer transport")
        owned.item(ctx, WireMessage(bytes.fromhex(item["peer"]), int(item["type"]), bytes.fromhex(item["payload"]),
                                    float(item.get("at", 0.0))))
    else:
        raise ValueError(f"unknown outbox row kind {kind!r}")


class Courier:
    """One service's delivery thread for the rows its plugins wrote."""

    def __init__(self, env: "Environment", service: str) -> None:
        self.env, self.service = env, service
        self.sources = env.registry.plugins_in(service)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._retry_at: dict[str, float] = {}  # receiving plugin -> when to try again
        self._failures: dict[str, int] = {}
        # the receivers commits have written rows for since they were last looked at; None: look at the
        # table for all of them (at start, and every IDLE seconds as a safety net)
        self._due: set[str] | None = None
        self._due_lock = threading.Lock()
        self._looked = 0.0   # when the table was last looked at for every receiver
        mine = outbox.c.source.in_(self.sources) & (outbox.c.dest == bindparam("dest"))
        self._window = (select(outbox.c.id, outbox.c.kind, outbox.c.name, outbox.c.source, outbox.c.body)
                        .where(mine).order_by(outbox.c.id).limit(WINDOW))
        self._acked = delete(outbox).where(mine & outbox.c.id.between(bindparam("first"), bindparam("last")))
        self.thread = threading.Thread(target=self._run, name=f"outbox-{service}", daemon=True)

    def start(self) -> None:
        """Deliver what is pending (rows left by an earlier run first), then what is committed next."""
        self.thread.start()

    def wake(self, dests: set[str] | None = None) -> None:
        """Rows for `dests` (None: any receiver) were committed: look at once."""
        with self._due_lock:
            if dests is None or self._due is None:
                self._due = None
            else:
                self._due |= dests
        self._wake.set()

    def stop(self) -> None:
        """End the thread; what is not delivered stays in the table for the next start."""
        self._stopping.set()
        self._wake.set()
        if self.thread.is_alive():  # a delivery in flight is not waited for: it is repeated at the next start
            self.env.bus.cancel_waits(self.thread)
            self.thread.join(STOP_WAIT)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    busy = self._round()
                except Exception:  # the database unreachable for a moment: never end the thread
                    log.exception("outbox of %s: delivery round failed", self.service)
                    with self._due_lock:
                        self._due = None   # what was due is looked for again, after the wait below
                    busy = False
                if not busy:
                    now = time.monotonic()
                    due = [t - now for t in self._retry_at.values()]
                    self._wake.wait(max(0.0, min([IDLE] + due)))
        finally:
            self.env.bus.close_thread()

    def _round(self) -> bool:
        """One window to each receiver that is due; True when more may be waiting."""
        if not self.sources:
            return False
        with self._due_lock:
            due, self._due = self._due, set()
        if due is None or time.monotonic() - self._looked > IDLE:   # and every IDLE s, as a safety net
            self._looked = time.monotonic()
            with self.env.storage.engine.connect() as conn:
                due = {r[0] for r in conn.execute(select(outbox.c.dest).where(outbox.c.source.in_(self.sources))
                                                  .distinct())}
        now, busy = time.monotonic(), False
        for dest in sorted(due | set(self._retry_at)):
            if self._stopping.is_set():
                break
            if self._retry_at.get(dest, 0.0) <= now and self._deliver(dest):
                busy = True
                with self._due_lock:   # delivered: look again (an empty window ends it)
                    if self._due is not None:
                        self._due.add(dest)
        return busy

    def _deliver(self, dest: str) -> bool:
        with self.env.storage.engine.connect() as conn:
            rows = conn.execute(self._window, {"dest": dest}).all()
        if not rows:
            return False
        service = self.env.registry.service_of.get(dest)
        if service is None:  # the profile no longer enables it: kept for when it comes back
            self._failed(dest, f"plugin {dest!r} is not enabled; {len(rows)}+ row(s) kept for it", MAX_BACKOFF * 6)
            return False
        # the bodies are JSON as stored: spliced into the request, not decoded and encoded again
        window = Encoded(('{"dest":%s,"rows":[%s]}' % (json.dumps(dest), ",".join(
            "[%d,%s,%s,%s,%s]" % (r.id, json.dumps(r.kind), json.dumps(r.name), json.dumps(r.source), r.body)
            for r in rows))).encode())
        try:
            answer = self.env.bus.request(service, DELIVER, window, timeout=DELIVERY_TIMEOUT)
            acked = int(answer.get("acked", 0)) if isinstance(answer, dict) else 0
        except RpcError as e:
            self._failed(dest, e.message)
            return False
        if acked:  # the rows of this window only
            with self.env.storage.begin() as conn:
                conn.execute(self._acked, {"dest": dest, "first": rows[0].id, "last": acked})
        if acked < rows[-1].id and acked == 0:
            self._failed(dest, f"its handler failed on outbox #{rows[0].id} (see {service}'s log)")
            return False
        if self._failures.pop(dest, 0):
            log.info("outbox of %s: %s takes deliveries again", self.service, dest)
        self._retry_at.pop(dest, None)
        return True

    def _failed(self, dest: str, why: str, delay: float | None = None) -> None:
        n = self._failures.get(dest, 0) + 1
        self._failures[dest] = n
        if n == 1 or n % 20 == 0:  # not at every retry
            log.warning("outbox of %s: delivery to %s failed (%s); retrying", self.service, dest, why)
        self._retry_at[dest] = time.monotonic() + (delay or min(0.2 * 2 ** (n - 1), MAX_BACKOFF))
