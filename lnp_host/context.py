"""The context each plugin receives: its config, the node's resources, and the buses.

Calls to a plugin of the same service are plain function calls; calls to another service go over
the control or message bus. The plugin's code is the same either way.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import zmq

from lnp_plugin_api import Decision, Event, KeyCustody, NodeInfo, RpcError, Storage, WireMessage

from . import bus as wire
from .bus import Bus, Endpoints
from .outbox import Transaction
from .plugins import Owned, Registry
from .profile import HOST_SERVICE, Profile

log = logging.getLogger("lnp.host")
HEALTH_REQUEST = "host.health"
_UNSET = object()


@dataclass
class Environment:
    """What one process of the node shares between the services it runs."""

    profile: Profile
    registry: Registry
    endpoints: Endpoints
    zctx: zmq.Context
    bus: Bus
    node: NodeInfo
    storage: Storage
    keys: KeyCustody
    host: Any = None                          # the supervisor's control, in the lnpd process only
    builtins: dict[str, Callable[[Any], Any]] = field(default_factory=dict)  # host control requests
    contexts: dict[str, "PluginContext"] = field(default_factory=dict)      # running plugins here
    failures: dict[str, str] = field(default_factory=dict)                  # service -> reason
    health: dict[str, str] = field(default_factory=dict)    # plugin -> its problem (lnpd keeps them all)
    couriers: dict[str, Any] = field(default_factory=dict)  # service -> its outbox.Courier (running here)


class PluginContext:
    """A plugin's view of the node (see `lnp_plugin_api.ServiceContext`)."""

    def __init__(self, env: Environment, plugin: str) -> None:
        self._env = env
        self.plugin = plugin
        self.service = env.registry.service_of[plugin]
        self.config: dict[str, Any] = env.profile.plugin_table(plugin)
        self.node: NodeInfo = env.node
        self.log = logging.getLogger(f"lnp.{self.service}.{plugin}")
        self.storage = env.storage
        self.keys = env.keys
        self.host = env.host
        self._data_dir = env.node.data_dir / "plugins" / plugin
        self._health: Any = _UNSET  # the last problem reported to lnpd

    @property
    def data_dir(self) -> Path:
        """The plugin's own directory in the data dir, created on first use."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        return self._data_dir

    def _local(self, owned: Owned) -> "PluginContext | None":
        """The owner's context when it runs in this same service, so it can be called directly."""
        if owned.service != self.service:
            return None
        return self._env.contexts.get(owned.plugin)

    def request(self, service: str, name: str, body: dict[str, Any] | None = None,
                timeout: float = 30.0) -> Any:
        """Send a control request to `service` and wait for its reply."""
        owned = self._env.registry.control.get((service, name))
        if owned is not None:
            ctx = self._local(owned)
            if ctx is not None:
                result = owned.item(ctx, body or {})
                return result.result(timeout) if isinstance(result, Future) else result
        return self._env.bus.request(service, name, body or {}, timeout=timeout)

    def emit(self, event: str, body: dict[str, Any] | None = None) -> None:
        """Notify every subscriber of `event`: local ones by a call, other services over the bus."""
        spec = self._env.registry.event_specs.get(event)
        if spec is None or spec.plugin != self.plugin:
            raise ValueError(f"plugin {self.plugin!r} did not declare event {event!r} in lnp_events")
        if getattr(spec.item, "durable", False):  # a transaction of its own: stored, then delivered
            with self.transaction() as tx:
                tx.emit(event, body)
            return
        publish(self._env, event, self.plugin, body or {}, self)

    def transaction(self) -> Transaction:
        """`with ctx.transaction() as tx:` the plugin's writes (`tx.conn`) and the durable events,
        one-way requests and wire messages that follow from them, committed together (lnp_host.outbox)."""
        return Transaction(self._env, self.plugin)

    def decide(self, decision: str, body: dict[str, Any] | None = None,
               timeout: float = 30.0) -> Decision:
        """Ask each participant of `decision` in profile order; the first refusal (or failure) wins."""
        body = body or {}
        for owned in self._env.registry.decisions.get(decision, []):
            ctx = self._local(owned)
            try:
                if ctx is not None:
                    verdict = as_decision(owned.item(ctx, body), owned.plugin)
                else:
                    answer = self._env.bus.request(owned.service, decision,
                                                   {"plugin": owned.plugin, "body": body},
                                                   kind=wire.DECISION, timeout=timeout)
                    verdict = Decision(bool(answer["allowed"]), answer.get("reason", ""), owned.plugin)
            except Exception as e:
                # Failing safe: a participant that cannot answer refuses.
                reason = e.message if isinstance(e, RpcError) else type(e).__name__
                verdict = Decision(False, f"participant failed: {reason}", owned.plugin)
            if not verdict.allowed:
                return verdict
        return Decision(True)

    def send_wire(self, msg: WireMessage) -> None:
        """Send a wire message to a peer through the transport plugin."""
        owned = self._env.registry.outbound
        if owned is None:
            raise RpcError(RpcError.SERVICE_UNAVAILABLE, "no peer transport plugin is enabled")
        ctx = self._local(owned)
        if ctx is not None:
            owned.item(ctx, msg)
        else:
            self._env.bus.send_wire(owned.service, wire.WIRE_OUT, msg)

    def deliver_wire(self, msg: WireMessage) -> bool:
        """Hand a message from a peer to the plugin that handles its type; False if none does."""
        owned = self._env.registry.wire.get(msg.type)
        if owned is None:
            return False
        ctx = self._local(owned)
        if ctx is not None:
            owned.item(ctx, msg)
        else:
            self._env.bus.send_wire(owned.service, wire.WIRE_IN, msg)
        return True

    def wire_service(self, msg_type: int) -> str | None:
        """The service whose plugin handles wire messages of `msg_type`, or None."""
        owned = self._env.registry.wire.get(msg_type)
        return owned.service if owned is not None else None

    def set_health(self, problem: str | None) -> None:
        """Report a problem of the plugin (None: none); `info` shows it with the plugin's service."""
        if problem == self._health:
            return
        if self._env.host is not None:  # in lnpd: kept here
            record_health(self._env, self.plugin, problem)
        else:
            try:
                self._env.bus.request(HOST_SERVICE, HEALTH_REQUEST, {"plugin": self.plugin, "problem": problem},
                                      timeout=2.0)
            except RpcError as e:  # lnpd busy or gone: told at the next report
                self.log.debug("could not report health to lnpd: %s", e.message)
                return
        self._health = problem

    def fail(self, reason: str) -> None:
        """Declare this service broken; its runtime stops and the failure policy applies."""
        self.log.error("service %s declared failed by %s: %s", self.service, self.plugin, reason)
        self._env.failures[self.service] = f"{self.plugin}: {reason}"


def record_health(env: Environment, plugin: str, problem: str | None) -> None:
    """Keep (or clear) a plugin's problem for `info`; the handler of HEALTH_REQUEST in lnpd."""
    if problem:
        env.health[plugin] = str(problem)[:500]
    else:
        env.health.pop(plugin, None)


def publish(env: Environment, event: str, source: str, body: dict[str, Any],
            sender: PluginContext | None = None) -> None:
    """Deliver an event: direct calls to subscribers in the sender's service, the bus for the others."""
    remote: set[str] = set()
    for sub in env.registry.subscribers(event):
        ctx = sender._local(sub) if sender is not None else None
        if ctx is None:
            remote.add(sub.service)
            continue
        try:
            sub.item(ctx, Event(event, source, body))
        except Exception:
            ctx.log.exception("handler of event %s failed", event)
    for service in sorted(remote):
        try:
            env.bus.post(service, event, {"source": source, "body": body}, timeout=0.5)
        except RpcError as e:
            log.warning("event %s not delivered to %s: %s", event, service, e.message)


def as_decision(value: Any, plugin: str) -> Decision:
    """Normalise a participant's answer: None/True accept, False refuses, a Decision stands."""
    if isinstance(value, Decision):
        return Decision(value.allowed, value.reason, value.by or plugin)
    if value is None or value is True:
        return Decision(True, by=plugin)
    if value is False:
        return Decision(False, "refused", plugin)
    raise TypeError(f"decision handler of {plugin!r} returned {type(value).__name__}")

