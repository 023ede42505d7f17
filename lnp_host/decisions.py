"""Decisions: participants asked one after another, in a declared order, without blocking anyone.

A decision is asked by a plugin (`ctx.decide_async`, or the blocking `ctx.decide`). Its participants
are ordered once, when the registry is built (`order`): by their `before`/`after` constraints, ties
in profile order. A `Chain` then asks them one at a time: each may continue (replacing parts of the
request for the next), fail or resolve; the first answer that is not `Continue` ends the chain.
Every step of a chain runs on the asking service's thread: local participants are called there,
and the answers of remote participants (over the control bus) and of local Futures are handed back
to it with `post`. A participant that fails or does not answer within the decision's timeout gets
the decision's default result.
"""
from __future__ import annotations

import dataclasses
import heapq
import logging
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Iterable

from lnp_plugin_api import (Continue, DecisionResult, DecisionSpec, Fail, RpcError, as_result, result_from_json,
                            result_to_json)

from . import bus as wire
from .bus_io import settle

if TYPE_CHECKING:  # plugins.py orders participants with this module
    from .plugins import Owned

log = logging.getLogger("lnp.host.decisions")


class CycleError(ValueError):
    """Participants whose before/after constraints contradict each other."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        path = " before ".join(repr(p) for p in cycle + cycle[:1])
        super().__init__(f"the before/after constraints of {', '.join(map(repr, cycle))} form a cycle ({path})")


def order(plugins: list[str], edges: Iterable[tuple[str, str]]) -> list[str]:
    """`plugins` (in profile order) sorted so that for each edge (a, b), a comes before b; edges naming
    a plugin not in `plugins` are ignored; ties keep profile order. CycleError when impossible."""
    index = {p: i for i, p in enumerate(plugins)}
    after: dict[str, set[str]] = {p: set() for p in plugins}
    waiting = dict.fromkeys(plugins, 0)          # how many plugins must come before each one
    for a, b in edges:
        if a in index and b in index and b not in after[a]:
            after[a].add(b)
            waiting[b] += 1
    ready = [index[p] for p in plugins if waiting[p] == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        p = plugins[heapq.heappop(ready)]
        out.append(p)
        for q in after[p]:
            waiting[q] -= 1
            if waiting[q] == 0:
                heapq.heappush(ready, index[q])
    if len(out) < len(plugins):
        raise CycleError(_cycle([p for p in plugins if waiting[p] > 0], after))
    return out


def _cycle(stuck: list[str], after: dict[str, set[str]]) -> list[str]:
    """A cycle among `stuck`: each of them still waits for another one of them."""
    before = {q: next(p for p in stuck if q in after[p]) for q in stuck}  # one stuck predecessor each
    seen: list[str] = []
    p = stuck[0]
    while p not in seen:
        seen.append(p)
        p = before[p]
    return list(reversed(seen[seen.index(p):]))


def order_participants(participants: list[Owned], edges: Iterable[tuple[str, str]]) -> list[Owned]:
    """`participants` (in profile order) in the order they are asked."""
    by_plugin = {o.plugin: o for o in participants}
    return [by_plugin[p] for p in order(list(by_plugin), edges)]


def with_profile(spec: DecisionSpec, settings: dict[str, Any]) -> DecisionSpec:
    """The spec as the profile's `[decisions.NAME]` table amends it (timeout, on_timeout)."""
    timeout = settings.get("timeout") or spec.timeout
    default: Continue | Fail = spec.default
    if settings.get("on_timeout") == "continue":
        default = Continue()
    elif settings.get("on_timeout") == "fail" and not isinstance(default, Fail):
        default = Fail("timeout")
    return dataclasses.replace(spec, timeout=timeout, default=default)


def describe(result: DecisionResult) -> str:
    """A result for logs: its kind and reason, never its payload (it may be a secret: a preimage)."""
    if isinstance(result, Fail):
        return f"fail ({result.reason})"
    return "continue" if isinstance(result, Continue) else "resolve"


Post = Callable[[Callable[[], None]], None]


class Chain:
    """One asking of a decision. Its steps run on the thread `post` hands them to (the asker's)."""

    def __init__(self, env: Any, local: Callable[[Owned], Any], spec: DecisionSpec, participants: list[Owned],
                 body: dict[str, Any], post: Post, on_done: Callable[[DecisionResult], None] | None,
                 logger: logging.Logger = log) -> None:
        self.future: Future[DecisionResult] = Future()
        self._env, self._local, self._spec, self._participants = env, local, spec, participants
        self._log = logger
        self._body, self._post_fn, self._on_done = dict(body), post, on_done
        self._replaced: dict[str, Any] = {}
        self._step = 0

    def start(self) -> None:
        """Ask the first participant (and the next ones while they answer at once)."""
        self._advance()

    def _advance(self) -> None:
        while self._step < len(self._participants):
            owned = self._participants[self._step]
            ctx = self._local(owned)
            try:
                if ctx is None:
                    answer: Any = self._env.bus.request_async(
                        owned.service, self._spec.name, {"plugin": owned.plugin, "body": self._body},
                        kind=wire.DECISION, timeout=self._spec.timeout)
                else:
                    answer = owned.item(ctx, dict(self._body))
                if isinstance(answer, Future):
                    self._wait(answer, owned, remote=ctx is None)
                    return
                result = as_result(answer, owned.plugin)
            except Exception as e:
                result = self._default(owned, e)
            if self._settled(result):
                return
        self._finish(Continue(self._replaced or None))

    def _wait(self, answer: Future[Any], owned: Owned, remote: bool) -> None:
        step = self._step
        answer.add_done_callback(lambda f: self._post(lambda: self._answered(step, f, owned, remote)))
        if not remote:  # a remote request has its own deadline on the bus
            self._env.bus.call_later(self._spec.timeout, lambda: self._post(lambda: self._timed_out(step, owned)))

    def _answered(self, step: int, answer: Future[Any], owned: Owned, remote: bool) -> None:
        if step != self._step or self.future.done():
            return  # its timeout came first
        try:
            value = answer.result()
            result = as_result(result_from_json(value) if remote else value, owned.plugin)
        except BaseException as e:
            result = self._default(owned, e)
        if not self._settled(result):
            self._advance()

    def _timed_out(self, step: int, owned: Owned) -> None:
        if step != self._step or self.future.done():
            return  # answered in time
        if not self._settled(self._default(owned, TimeoutError(f"no answer within {self._spec.timeout:g}s"))):
            self._advance()

    def _default(self, owned: Owned, error: BaseException) -> DecisionResult:
        """The spec's default for a participant that failed or did not answer, logged."""
        default = self._spec.default
        expected = isinstance(error, (RpcError, TimeoutError))  # no answer in time, a remote error
        why = error.message if isinstance(error, RpcError) else str(error) if expected else \
            f"{type(error).__name__}: {error}"
        self._log.warning("decision %s: no answer from participant %s (%s): %s applies", self._spec.name,
                          owned.plugin, why, describe(default), exc_info=None if expected else error)
        return dataclasses.replace(default, by=owned.plugin) if isinstance(default, Fail) else default

    def _settled(self, result: DecisionResult) -> bool:
        """Apply one participant's result; True when it ended the chain."""
        if isinstance(result, Continue):
            if result.replace:
                self._body.update(result.replace)
                self._replaced.update(result.replace)
            self._step += 1
            return False
        self._finish(result)
        return True

    def _finish(self, result: DecisionResult) -> None:
        settle(self.future, result)
        if self._on_done is not None:
            try:
                self._on_done(result)
            except Exception:
                self._log.exception("the on_done function of decision %s failed", self._spec.name)

    def _post(self, fn: Callable[[], None]) -> None:
        try:
            self._post_fn(fn)
        except Exception as e:  # the asking service has stopped: the decision is abandoned
            self._log.info("decision %s abandoned: %s", self._spec.name, getattr(e, "message", e))


def answer_remote(env: Any, service: str, decision: str, body: Any) -> Any:
    """A DECISION frame for a participant of `service`: its result's JSON, or a Future of it."""
    plugin = body.get("plugin") if isinstance(body, dict) else None
    request = body.get("body") if isinstance(body, dict) else None
    if not isinstance(request, dict):
        raise RpcError(RpcError.INVALID_PARAMS, "a decision's body must be an object")
    for owned in env.registry.decisions.get(decision, []):
        if owned.plugin == plugin and owned.service == service:
            ctx = env.contexts.get(owned.plugin)
            if ctx is None:
                raise RpcError(RpcError.SERVICE_UNAVAILABLE, f"plugin {plugin!r} is not running")
            answer = owned.item(ctx, request)
            if not isinstance(answer, Future):
                return result_to_json(as_result(answer, owned.plugin))
            reply: Future[Any] = Future()

            def done(f: Future[Any]) -> None:
                try:
                    settle(reply, result_to_json(as_result(f.result(), owned.plugin)))
                except BaseException as e:
                    settle(reply, error=e)
            answer.add_done_callback(done)
            return reply
    raise RpcError(RpcError.METHOD_NOT_FOUND, f"{plugin!r} takes no part in decision {decision!r} here")
