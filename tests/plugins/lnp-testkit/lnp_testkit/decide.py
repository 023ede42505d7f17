"""Decisions in order, asynchronously: `tk_asker` (service asker) asks; participants answer.

Participants, each a plugin of its own (entry points name the objects below):
    tk_p1 (service pa), tk_p3 (service pa, before tk_p1), tk_p2 (service pb, after tk_p3),
    tk_local (service asker, the asker's own: after tk_p2), tk_cycle (pa: after tk_p1, before tk_p3).
A request's `acts` tells a participant what to do ({plugin: act}); by default it continues, adding
its name to `trace` (a replacement the next participant sees). Acts: "fail", "resolve", "false",
"decision" (old-style answers), "raise", or a number of seconds to hold the request (a Future
completed from another thread) before continuing. Each participant notes the requests it saw by
`id` and whether it ran on its service's thread.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from lnp_plugin_api import (Continue, Decision, DecisionSpec, Fail, PerContext, Resolve, Subscription, hookimpl,
                            result_to_json, rpc_method)

seen: list[tuple[str, str]] = []                   # (request id, plugin), in this process
threads: PerContext[int] = PerContext("the service thread")
FAIL_PAYLOAD = bytes.fromhex("400f")               # incorrect_or_unknown_payment_details
RESOLVE_PAYLOAD = bytes.fromhex("11" * 32)


def later(seconds: float, value: Any) -> Future:
    """A Future that another thread completes with `value` in `seconds`."""
    future: Future = Future()
    timer = threading.Timer(seconds, lambda: future.set_result(value))
    timer.daemon = True
    timer.start()
    return future


class Participant:
    """One participant plugin: its service, its place in the order, and its answers."""

    def __init__(self, name: str, service: str, before: tuple[str, ...] = (), after: tuple[str, ...] = (),
                 answers_seen: bool = False) -> None:
        self.name, self.service, self.before, self.after = name, service, before, after
        self.answers_seen = answers_seen   # the one plugin of its service answering `tk_seen.SERVICE`

    def answer(self, ctx: Any, body: dict) -> Any:
        on_thread = threading.get_ident() == threads.find(ctx)
        seen.append((str(body.get("id", "")), self.name))
        go_on = Continue({"trace": body.get("trace", []) + [self.name],
                          "on_thread": body.get("on_thread", True) and on_thread})
        act = body.get("acts", {}).get(self.name)
        if act == "fail":
            return Fail(f"refused by {self.name} after {body.get('trace', [])}", FAIL_PAYLOAD)
        if act == "resolve":
            return Resolve(RESOLVE_PAYLOAD)
        if act == "false":
            return False
        if act == "decision":
            return Decision(False, "old style")
        if act == "raise":
            raise RuntimeError("a participant that fails")
        if isinstance(act, (int, float)):
            return later(act, go_on)
        return go_on

    def seen_by(self, ctx: Any, body: dict) -> list:
        return sorted({plugin for rid, plugin in seen if rid == body["id"]})

    @hookimpl
    def lnp_service(self) -> str:
        return self.service

    @hookimpl
    def lnp_startup(self, ctx: Any) -> None:
        threads.set(ctx, threading.get_ident())

    @hookimpl
    def lnp_subscriptions(self) -> list:
        subs = [Subscription.decision(d, self.answer, self.before, self.after) for d in ("tk_order", "tk_quick")]
        if self.name in ("tk_p2", "tk_local"):
            subs.append(Subscription.decision("tk_hold", self.answer))
        if self.answers_seen:
            subs.append(Subscription.control(f"tk_seen.{self.service}", self.seen_by))
        return subs


p1 = Participant("tk_p1", "pa", answers_seen=True)
p2 = Participant("tk_p2", "pb", after=("tk_p3",), answers_seen=True)
p3 = Participant("tk_p3", "pa", before=("tk_p1",))
local = Participant("tk_local", "asker", after=("tk_p2",), answers_seen=True)
cycle = Participant("tk_cycle", "pa", before=("tk_p3",), after=("tk_p1",))


# --- the asker -------------------------------------------------------------------------------------

class Asker:
    """tk_asker: asks the decisions from RPC commands, without blocking its service."""

    @hookimpl
    def lnp_service(self) -> str:
        return "asker"

    @hookimpl
    def lnp_startup(self, ctx: Any) -> None:
        threads.set(ctx, threading.get_ident())

    @hookimpl
    def lnp_decisions(self) -> list:
        timeout_fail = Fail("timeout", bytes.fromhex("2007"))  # temporary_channel_failure
        return [DecisionSpec("tk_order", "tk_p3, tk_p1, tk_p2, tk_local in turn", 1.0, timeout_fail),
                DecisionSpec("tk_quick", "tk_order's participants, waiting longer; the tests' profile "
                             "shortens it", 2.0, timeout_fail),
                DecisionSpec("tk_hold", "tk_local then tk_p2; either may hold a request", 10.0)]

    @hookimpl
    def lnp_rpc_methods(self) -> list:
        return [tk_ask, tk_ask_blocking, tk_ask_many, tk_seen]


@rpc_method
def tk_ask(ctx, decision: str, body: dict) -> Future:
    """Ask DECISION with BODY (decide_async); the result, how long it took, and where on_done ran."""
    start, reply = time.monotonic(), Future()

    def done(result: Any) -> None:
        on_thread = threading.get_ident() == threads.find(ctx)
        reply.set_result({"result": result_to_json(result), "seconds": time.monotonic() - start,
                          "on_thread": on_thread})
    ctx.decide_async(decision, body, on_done=done)
    return reply


@rpc_method
def tk_ask_blocking(ctx, decision: str, body: dict) -> dict:
    """Ask DECISION with BODY with the blocking ctx.decide, on the service's own thread."""
    start = time.monotonic()
    verdict = ctx.decide(decision, body)
    return {"allowed": verdict.allowed, "reason": verdict.reason, "by": verdict.by,
            "result": result_to_json(verdict.result), "seconds": time.monotonic() - start}


@rpc_method
def tk_ask_many(ctx, n: int, holder: str, hold: float = 2.0) -> Future:
    """Ask tk_hold once with HOLDER holding it for HOLD seconds, then N times more, all at once."""
    start, reply, times = time.monotonic(), Future(), {}

    def record(key: str, result: Any) -> None:
        times[key] = (time.monotonic() - start, result_to_json(result),
                      threading.get_ident() == threads.find(ctx))
        if len(times) == n + 1:
            others = [v for k, v in times.items() if k != "held"]
            reply.set_result({
                "held": {"seconds": times["held"][0], "result": times["held"][1]},
                "others": {"count": len(others), "max_seconds": max(v[0] for v in others),
                           "continued": sum(v[1]["result"] == "continue" for v in others)},
                "on_thread": all(v[2] for v in times.values())})

    ctx.decide_async("tk_hold", {"acts": {holder: hold}}, on_done=lambda r: record("held", r))
    for i in range(n):
        ctx.decide_async("tk_hold", {}, on_done=lambda r, i=i: record(str(i), r))
    return reply


@rpc_method
def tk_seen(ctx, id: str) -> list:
    """The participants that saw request ID, in any service."""
    found = set()
    for service in ("pa", "pb", "asker"):
        found.update(ctx.request(f"tk_seen.{service}", {"id": id}))
    return sorted(found)


asker = Asker()
