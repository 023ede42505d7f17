"""Plugin discovery through entry points, and the registry of what the enabled plugins declare.

The host has no list of plugins: built-in and third-party plugins are found the same way, in the
entry-point group `lnp_host.plugins`. Declarative hooks are called per plugin so everything a plugin
declares is attributed to it; every process builds the same registry from the same profile.

Hooks go through pluggy's hook callers: a per-plugin call (`Registry.call`) is a subset caller holding
that plugin's implementations and every plugin's wrappers (`hookwrapper=True` / `wrapper=True`), and
whole-node hooks (`lnp_key_custody`, firstresult) are `pm.hook.NAME(...)`, so `tryfirst`/`trylast`,
`firstresult` and wrappers behave as pluggy documents. Plugins are registered in reverse profile order
so that pluggy, which calls the last registered first, calls them in profile order.
`LNP_TRACE_PLUGINS=1` writes every hook call to stderr (pluggy's hook call monitoring).
"""
from __future__ import annotations

import importlib.metadata as md
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

import lnp_plugin_api
from lnp_plugin_api import hookspecs
from lnp_plugin_api import DecisionSpec, Event, EventSpec, FeatureSpec, Field, RpcMethod, StorageModels, Subscription

from .decisions import CycleError, order_participants, with_profile
from .profile import HOST_SERVICE, Profile, ProfileError


HOST_PLUGIN = "lnp-host"
HOST_EVENTS = (
    EventSpec("node_ready", "every service has started; body: {node_id}"),
    EventSpec("service_state", "a service changed state; body: {service, state, error}"),
)


@dataclass(frozen=True)
class Discovered:
    """An installed plugin, known from its entry point without importing it."""

    name: str
    version: str
    distribution: str
    entry_point: md.EntryPoint

    def describe(self, enabled: bool) -> dict[str, Any]:
        """The JSON form `lnp-host plugins` and `lnp-cli plugins` print."""
        return {"name": self.name, "version": self.version, "distribution": self.distribution,
                "module": self.entry_point.value, "enabled": enabled}


class PluginLoadError(Exception):
    """An enabled plugin that could not be imported or declared something invalid."""


def discover() -> dict[str, Discovered]:
    """Every plugin installed in this environment, by entry-point name."""
    found: dict[str, Discovered] = {}
    for ep in md.entry_points(group=lnp_plugin_api.ENTRY_POINT_GROUP):
        dist = ep.dist
        found.setdefault(ep.name, Discovered(ep.name, dist.version if dist else "?",
                                             dist.metadata["Name"] if dist else "?", ep))
    return found


def new_manager() -> pluggy.PluginManager:
    """A plugin manager that knows the hook specs."""
    pm = pluggy.PluginManager(lnp_plugin_api.PROJECT)
    pm.add_hookspecs(hookspecs)
    if os.environ.get(TRACE_ENV, "") not in ("", "0"):
        trace_hook_calls(pm)
    return pm


TRACE_ENV = "LNP_TRACE_PLUGINS"


def trace_hook_calls(pm: pluggy.PluginManager) -> None:
    """Write one line per hook call to stderr: the hook, the plugins called, the outcome and the time.

    Arguments and results are not written: they may hold a profile or keys.
    """
    started = threading.local()

    def before(hook: str, impls: Any, kwargs: Any) -> None:
        started.stack = getattr(started, "stack", []) + [time.perf_counter()]

    def after(outcome: Any, hook: str, impls: Any, kwargs: Any) -> None:
        elapsed = (time.perf_counter() - started.stack.pop()) * 1000
        failed = outcome.exception
        names = ", ".join(i.plugin_name for i in impls) or "no plugin"
        print(f"lnp trace: {hook} [{names}] {'ok' if failed is None else type(failed).__name__} "
              f"in {elapsed:.2f} ms", file=sys.stderr, flush=True)

    pm.add_hookcall_monitoring(before, after)


@dataclass(frozen=True)
class Owned:
    """Something a plugin declared, with the plugin and service it belongs to."""

    plugin: str
    service: str
    item: Any


class BatchHandler:
    """An event handler that takes lists (`Subscription.events`), callable with one event too."""

    def __init__(self, batch: Callable[[Any, list[Event]], Any]) -> None:
        self.batch = batch

    def __call__(self, ctx: Any, event: Event) -> Any:
        return self.batch(ctx, [event])


@dataclass
class Registry:
    """What the enabled plugins declare, and where each piece runs."""

    pm: pluggy.PluginManager
    plugins: dict[str, Discovered]                       # enabled, in profile order
    service_of: dict[str, str]                           # plugin -> service
    services: list[str]                                  # lnpd first, then in order of appearance
    schemas: dict[str, dict[str, Field]] = field(default_factory=dict)
    rpc: dict[str, Owned] = field(default_factory=dict)                  # method -> RpcMethod
    wire: dict[int, Owned] = field(default_factory=dict)                 # type -> handler
    control: dict[str, Owned] = field(default_factory=dict)              # name -> Subscription
    events: dict[str, list[Owned]] = field(default_factory=dict)         # name -> handlers
    event_specs: dict[str, Owned] = field(default_factory=dict)          # name -> EventSpec
    decisions: dict[str, list[Owned]] = field(default_factory=dict)      # name -> handlers, in order
    decision_specs: dict[str, Owned] = field(default_factory=dict)      # name -> DecisionSpec (as profiled)
    decision_edges: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # (a, b): a asked first
    storage: dict[str, StorageModels] = field(default_factory=dict)
    channel_extensions: dict[str, Owned] = field(default_factory=dict)
    features: dict[int, Owned] = field(default_factory=dict)            # even bit -> FeatureSpec
    outbound: Owned | None = None                        # who sends wire messages to peers

    def call(self, hook: str, plugin: str, **kwargs: Any) -> Any:
        """Call `hook` on one plugin only (and every plugin's wrappers of it); None when the plugin
        does not implement it."""
        caller = getattr(self.pm.hook, hook)
        impls = caller.get_hookimpls()
        if not any(i.plugin_name == plugin and not (i.hookwrapper or i.wrapper) for i in impls):
            return None
        others = {i.plugin for i in impls if i.plugin_name != plugin and not (i.hookwrapper or i.wrapper)}
        result = self.pm.subset_hook_caller(hook, others)(**kwargs)
        if caller.spec is not None and caller.spec.opts.get("firstresult"):
            return result
        return result[0] if result else None

    def plugins_in(self, service: str) -> list[str]:
        """The enabled plugins of `service`, in profile order."""
        return [p for p in self.plugins if self.service_of[p] == service]

    def feature_specs(self) -> tuple[FeatureSpec, ...]:
        """The features the enabled plugins implement, by bit."""
        return tuple(self.features[b].item for b in sorted(self.features))

    def subscribers(self, event: str) -> list[Owned]:
        """Who receives `event`."""
        return self.events.get(event, [])


def load_registry(profile: Profile, discovered: dict[str, Discovered] | None = None) -> Registry:
    """Import the enabled plugins, collect their declarations, and finish validating the profile."""
    discovered = discover() if discovered is None else discovered
    pm = new_manager()
    enabled: dict[str, Discovered] = {}
    modules: dict[str, Any] = {}
    for name in profile.enabled:
        if name not in discovered:
            raise profile.error(("plugins", "enabled"), f"unknown plugin {name!r} "
                                f"(discovered: {', '.join(sorted(discovered)) or 'none'})")
        try:
            modules[name] = discovered[name].entry_point.load()
        except Exception as e:  # a broken third-party package must not take the host down
            raise profile.error(("plugins", "enabled"), f"plugin {name!r} failed to load: "
                                f"{type(e).__name__}: {e}") from None
        enabled[name] = discovered[name]
    for name in reversed(profile.enabled):  # pluggy calls the last registered first: profile order
        try:
            pm.register(modules[name], name=name)
        except Exception as e:  # a hook that is not in the specs, or a module enabled twice
            raise profile.error(("plugins", "enabled"), f"plugin {name!r} failed to load: "
                                f"{type(e).__name__}: {e}") from None
    reg = Registry(pm, enabled, {}, [HOST_SERVICE])
    for spec in HOST_EVENTS:
        reg.event_specs[spec.name] = Owned(HOST_PLUGIN, HOST_SERVICE, spec)
    for name in enabled:
        service = profile.service_override(name) or reg.call("lnp_service", name) or name
        reg.service_of[name] = service
        if service not in reg.services:
            reg.services.append(service)
        reg.schemas[name] = reg.call("lnp_config_schema", name) or {}
    profile.validate_plugins(reg.schemas, set(discovered), set(reg.services))
    for name in enabled:
        try:
            _collect(reg, name, profile)
        except (ProfileError, PluginLoadError):
            raise
        except Exception as e:  # a declarative hook that raised (e.g. a DecisionSpec with a bad timeout)
            raise PluginLoadError(f"plugin {name!r}: {type(e).__name__}: {e}") from None
    _order_decisions(reg, profile)
    requires = {name: _list(reg.call("lnp_requires", name), str, name, "lnp_requires") for name in enabled}
    profile.validate_requirements(requires, set(reg.control), set(discovered))
    return reg


def _order_decisions(reg: Registry, profile: Profile) -> None:
    """Participants in the order they are asked; the profile's `[decisions]` amend the specs."""
    for decision, participants in reg.decisions.items():
        try:
            reg.decisions[decision] = order_participants(participants, reg.decision_edges.get(decision, []))
        except CycleError as e:
            raise profile.error(("plugins", "enabled"), f"decision {decision!r}: {e}") from None
    profile.validate_decisions(set(reg.decision_specs))
    for decision, owned in reg.decision_specs.items():
        spec = with_profile(owned.item, profile.decision_settings(decision))
        reg.decision_specs[decision] = Owned(owned.plugin, owned.service, spec)


def _collect(reg: Registry, name: str, profile: Profile) -> None:
    service = reg.service_of[name]

    def conflict(what: str, other: str) -> Exception:
        return profile.error(("plugins", "enabled"), f"plugins {other!r} and {name!r} both declare {what}")

    for method in _list(reg.call("lnp_rpc_methods", name), RpcMethod, name, "lnp_rpc_methods"):
        if method.name in reg.rpc:
            raise conflict(f"RPC method {method.name!r}", reg.rpc[method.name].plugin)
        reg.rpc[method.name] = Owned(name, service, method)
    for sub in _list(reg.call("lnp_subscriptions", name), Subscription, name, "lnp_subscriptions"):
        owned = Owned(name, service, sub if sub.kind == "control" else sub.handler)
        if sub.kind == "wire":
            if sub.key in reg.wire:
                raise conflict(f"a handler for wire message type {sub.key}", reg.wire[sub.key].plugin)
            reg.wire[int(sub.key)] = owned
        elif sub.kind == "control":
            # one answerer per name and node, so a request needs no service name (see ctx.request)
            if sub.key in reg.control:
                raise conflict(f"control request {sub.key!r}", reg.control[str(sub.key)].plugin)
            reg.control[str(sub.key)] = owned
        elif sub.kind == "event":
            if sub.batch:  # every path calls item(ctx, event); the outbox calls its .batch with a window
                owned = Owned(name, service, BatchHandler(sub.handler))
            reg.events.setdefault(str(sub.key), []).append(owned)
        elif sub.kind == "decision":
            participants = reg.decisions.setdefault(str(sub.key), [])
            if any(o.plugin == name for o in participants):
                raise profile.error(("plugins", "enabled"), f"plugin {name!r} takes part in decision "
                                    f"{sub.key!r} twice")
            participants.append(owned)
            reg.decision_edges.setdefault(str(sub.key), []).extend(
                [(name, b) for b in sub.before] + [(a, name) for a in sub.after])
        elif sub.kind == "outbound":
            if reg.outbound is not None:
                raise conflict("the outbound peer transport", reg.outbound.plugin)
            reg.outbound = owned
        else:
            raise PluginLoadError(f"plugin {name!r}: unknown subscription kind {sub.kind!r}")
    for spec in _list(reg.call("lnp_events", name), EventSpec, name, "lnp_events"):
        if spec.name in reg.event_specs:
            raise conflict(f"event {spec.name!r}", reg.event_specs[spec.name].plugin)
        reg.event_specs[spec.name] = Owned(name, service, spec)
    for spec in _list(reg.call("lnp_decisions", name), DecisionSpec, name, "lnp_decisions"):
        if spec.name in reg.decision_specs:
            raise conflict(f"decision {spec.name!r}", reg.decision_specs[spec.name].plugin)
        reg.decision_specs[spec.name] = Owned(name, service, spec)
    for spec in _list(reg.call("lnp_features", name), FeatureSpec, name, "lnp_features"):
        if spec.pair in reg.features:
            raise conflict(f"feature {spec.name!r}", reg.features[spec.pair].plugin)
        reg.features[spec.pair] = Owned(name, service, spec)
    models = reg.call("lnp_storage_models", name)
    if models is not None:
        if not isinstance(models, StorageModels):
            raise PluginLoadError(f"plugin {name!r}: lnp_storage_models must return StorageModels")
        reg.storage[name] = models
    for ext in reg.call("lnp_channel_extensions", name) or []:
        if ext.name in reg.channel_extensions:
            raise conflict(f"channel extension {ext.name!r}", reg.channel_extensions[ext.name].plugin)
        reg.channel_extensions[ext.name] = Owned(name, service, ext)


def _list(value: Any, kind: type, plugin: str, hook: str) -> list[Any]:
    if value is None:
        return []
    items = list(value)
    for item in items:
        if not isinstance(item, kind):
            raise PluginLoadError(f"plugin {plugin!r}: {hook} returned {type(item).__name__}, "
                                  f"expected {kind.__name__}")
    return items

