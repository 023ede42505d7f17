"""The receiving side of the outbox with list-taking event handlers (`Subscription.events`): a window's
run of same-named events is one call; a raise acknowledges none of that run, and what came before stays
acknowledged."""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from lnp_host.outbox import EVENT, receive
from lnp_host.plugins import BatchHandler, Owned
from lnp_plugin_api import Event


class Sink:
    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[tuple[str, int | None, dict]]] = []
        self.fail_on = fail_on

    def batch(self, ctx: Any, events: list[Event]) -> None:
        if any(e.body.get("i") == self.fail_on for e in events):
            raise RuntimeError("refused")
        self.calls.append([(e.name, e.seq, e.body) for e in events])

    def one(self, ctx: Any, event: Event) -> None:
        self.calls.append([(event.name, event.seq, event.body)])


def env_with(subs: dict[str, list[Owned]]) -> Any:
    ctx = SimpleNamespace(plugin="sink", log=logging.getLogger("test.sink"))
    registry = SimpleNamespace(service_of={"sink": "svc"}, subscribers=lambda name: subs.get(name, []))
    return SimpleNamespace(contexts={"sink": ctx}, registry=registry)


def rows(*names: str) -> list[list[Any]]:
    return [[i + 1, EVENT, name, "src", {"i": i + 1}] for i, name in enumerate(names)]


def test_a_run_of_the_same_event_is_one_call_in_order() -> None:
    sink = Sink()
    env = env_with({"a": [Owned("sink", "svc", BatchHandler(sink.batch))],
                    "b": [Owned("sink", "svc", sink.one)]})
    got = receive(env, "svc", {"dest": "sink", "rows": rows("a", "a", "a", "b", "a", "a")})
    assert got == {"acked": 6}
    assert sink.calls == [[("a", 1, {"i": 1}), ("a", 2, {"i": 2}), ("a", 3, {"i": 3})],
                          [("b", 4, {"i": 4})],
                          [("a", 5, {"i": 5}), ("a", 6, {"i": 6})]]


def test_a_failing_batch_acknowledges_only_what_came_before_it() -> None:
    sink = Sink(fail_on=5)
    env = env_with({"a": [Owned("sink", "svc", BatchHandler(sink.batch))],
                    "b": [Owned("sink", "svc", sink.one)]})
    got = receive(env, "svc", {"dest": "sink", "rows": rows("a", "a", "b", "a", "a", "b")})
    assert got == {"acked": 3}   # rows 4 and 5 (and 6 after them) come again
    assert [len(c) for c in sink.calls] == [2, 1]


def test_a_batch_handler_takes_a_lone_event_as_a_list() -> None:
    sink = Sink()
    handler = BatchHandler(sink.batch)
    handler(None, Event("a", "src", {"i": 7}))
    assert sink.calls == [[("a", None, {"i": 7})]]
