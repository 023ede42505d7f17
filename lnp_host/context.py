"""The context each plugin receives: its config, the node's resources, and the buses.

Calls to a plugin of the same service are plain function calls; calls to another service go over
the control or message bus. The plugin's code is the same either way.
"""
from __future__ import annotations

import logging
import queue
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import zmq

from lnp_plugin_api import Decision, DecisionResult, Event, KeyCustody, NodeInfo, RpcError, Storage, WireMessage

from . import bus as wire
from .bus import Bus, Endpoints
from .decisions import Chain, Post
from .control import answer, as_rpc_error, no_such_request, result_of
from .caller import calling_as
from .outbox import Transaction
from .plugins import Owned, Registry
from .profile import HOST_SERVICE, Profile

log = logging.getLogger("lnp.host")
HEALTH_REQUEST = "host.health"
_UNSET = object()


class ServiceLoop(Protocol):
    """A running service's loop, as contexts see it (`runtime.ServiceRuntime`)."""

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on the service's thread."""

    def on_own_thread(self) -> bool:
        """True when called on the service's thread."""


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
    loops: dict[str, ServiceLoop] = field(default_factory=dict)             # running services here
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
        # the key custody asks as this plugin's service, so a custodian can check what it may do
        self.keys = env.keys.for_service(self.service) if hasattr(env.keys, "for_service") else env.keys
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

    def request(self, name: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Send control request `name` to the plugin that answers it, wherever it runs, and wait.

        The registry knows the one plugin answering each name; in this same service it is called
        directly, with the body and reply passed through JSON and the same checks, so its answers and
        errors are exactly those a caller in another service gets.
        """
        if isinstance(body, str):  # the old request(service, name, body): say so rather than misroute
            raise TypeError(f"ctx.request({name!r}, {body!r}, ...): the service is no longer named, "
                            f"use ctx.request({body!r}, body)")
        body = {} if body is None else body
        owned = self._env.registry.control.get(name)
        if owned is None:
            if not name.startswith("host."):  # the host's own requests, answered by lnpd
                raise no_such_request(name)
            return self._env.bus.request(HOST_SERVICE, name, body, timeout=timeout, source=self.service)
        ctx = self._local(owned)
        if ctx is None:
            return self._env.bus.request(owned.service, name, body, timeout=timeout, source=self.service)
        body = wire.decode(wire.encode(body))  # a body JSON cannot carry fails here as it would on the bus
        try:
            with calling_as(self.service):  # the callee sees who asks, as it would over the bus
                answered = answer(owned, ctx, name, body)
            return wire.decode(wire.encode(result_of(answered, timeout, owned.service, name)))
        except Exception as e:
            raise as_rpc_error(owned.service, name, e, ctx.log) from None

    def plugins_in(self, service: str) -> list[str]:
        """The enabled plugins running in `service` (empty for a service this node does not have)."""
        return self._env.registry.plugins_in(service) if service in self._env.registry.services else []

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

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on this plugin's service thread, from any thread, after what it is doing now."""
        loop = self._env.loops.get(self.service)
        if loop is None:
            raise RpcError(RpcError.SERVICE_UNAVAILABLE, f"service {self.service!r} is not running")
        loop.call_soon(fn)

    def decide_async(self, decision: str, body: dict[str, Any] | None = None,
                     on_done: Callable[[DecisionResult], None] | None = None) -> Future[DecisionResult]:
        """Ask `decision` without blocking: the participants are asked from this service's thread, in
        order; the Future gets the result, and `on_done(result)` runs on this service's thread."""
        chain = self._chain(decision, body, self.call_soon, on_done)
        self.call_soon(chain.start)
        return chain.future

    def transaction(self) -> Transaction:
        """`with ctx.transaction() as tx:` the plugin's writes (`tx.conn`) and the durable events,
        one-way requests and wire messages that follow from them, committed together (lnp_host.outbox)."""
        return Transaction(self._env, self.plugin)

    def decide(self, decision: str, body: dict[str, Any] | None = None,
               timeout: float | None = None) -> Decision:
        """Ask `decision` and wait for its outcome as a yes/no (`Decision.result` has the full result).

        Blocks its caller: for code that may block (handlers of a thread service, other threads),
        not for event loops. On the service's own thread the chain is driven here, so a participant
        in this same service is still asked. `timeout` bounds the wait (default: every participant's
        timeout added up); past it the decision's default applies.
        """
        loop = self._env.loops.get(self.service)
        steps: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        here = loop is None or loop.on_own_thread()
        chain = self._chain(decision, body, steps.put if here else self.call_soon, None)
        spec = self._env.registry.decision_specs[decision].item
        if timeout is None:
            timeout = spec.timeout * len(self._env.registry.decisions.get(decision, [])) + 1.0
        if here:
            chain.start()
        else:
            self.call_soon(chain.start)
        deadline = time.monotonic() + timeout
        while not chain.future.done():
            remaining = deadline - time.monotonic()
            try:
                if here:
                    steps.get(timeout=max(remaining, 0.0))()
                else:
                    chain.future.result(max(remaining, 0.0))
            except (queue.Empty, TimeoutError):
                self.log.warning("decision %s: no outcome within %gs: its default applies", decision, timeout)
                return Decision.of(spec.default)
        return Decision.of(chain.future.result())

    def _chain(self, decision: str, body: dict[str, Any] | None, post: Post,
               on_done: Callable[[DecisionResult], None] | None) -> Chain:
        owned = self._env.registry.decision_specs.get(decision)
        if owned is None:
            raise ValueError(f"no enabled plugin declares decision {decision!r} in lnp_decisions")
        if body is not None and not isinstance(body, dict):
            raise TypeError(f"the body of decision {decision!r} must be a dict")
        return Chain(self._env, self._local, owned.item, self._env.registry.decisions.get(decision, []),
                     body or {}, post, on_done, self.log)

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

    def deliver_wire(self, msg: WireMessage, timeout: float = 5.0) -> bool:
        """Hand a message from a peer to the plugin that handles its type; False if none does.
        Waits up to `timeout` seconds (0: not at all) for that plugin's service to take it."""
        owned = self._env.registry.wire.get(msg.type)
        if owned is None:
            return False
        ctx = self._local(owned)
        if ctx is not None:
            owned.item(ctx, msg)
        else:
            self._env.bus.send_wire(owned.service, wire.WIRE_IN, msg, timeout)
        return True

    def deliver_wire_soon(self, msg: WireMessage, timeout: float = 2.0) -> "Future[None] | None":
        """Hand a message from a peer to the plugin that handles its type without waiting (for event
        loops): None if no plugin does; else a Future that fails when its service did not take the
        message within `timeout` (messages are taken in order, and none after a failed one)."""
        owned = self._env.registry.wire.get(msg.type)
        if owned is None:
            return None
        ctx = self._local(owned)
        if ctx is None:
            return self._env.bus.send_wire_soon(owned.service, wire.WIRE_IN, msg, timeout, source=self.service)
        owned.item(ctx, msg)  # in this same service: handled now, as `deliver_wire` does
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def connect_wire_handlers(self) -> None:
        """Connect the calling thread to the services that handle wire messages, so that its first
        `deliver_wire(msg, timeout=0)` does not find the connection still being made (an event loop
        that delivers calls this once, on its own thread)."""
        for service in sorted({owned.service for owned in self._env.registry.wire.values()} - {self.service}):
            self._env.bus.connect_ahead(service)
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
