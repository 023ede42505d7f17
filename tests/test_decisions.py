"""Decisions that decide: ordered participants, rich results, asynchronous answers, timeouts.

Unit tests of the ordering, the results and the bus's non-blocking requests; then real nodes (both
bus modes) with the testkit's `tk_asker` and its participants (tests/plugins/lnp-testkit/lnp_testkit/decide.py).
"""
from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import zmq

from conftest import lnp_host
from lnp_host.bus import REPLY, Bus, Endpoints, ServiceUnavailable, decode, encode
from lnp_host.decisions import CycleError, order, with_profile
from lnp_plugin_api import (Continue, Decision, DecisionSpec, Fail, Resolve, RpcError, Subscription, as_result,
                            result_from_json, result_to_json)

# --- unit: ordering ----------------------------------------------------------------------------------

def test_order_follows_before_and_after_with_ties_in_profile_order() -> None:
    assert order(["a", "b", "c", "d"], []) == ["a", "b", "c", "d"]
    # d before a and c: of those that may come next, the first in profile order comes first
    assert order(["a", "b", "c", "d"], [("d", "a"), ("d", "c")]) == ["b", "d", "a", "c"]
    assert order(["a", "b", "c"], [("c", "a"), ("b", "c")]) == ["b", "c", "a"]
    # constraints naming plugins that do not take part are ignored
    assert order(["a", "b"], [("x", "a"), ("b", "y")]) == ["a", "b"]


def test_order_refuses_a_cycle_and_names_it() -> None:
    with pytest.raises(CycleError) as e:
        order(["a", "b", "c", "z"], [("a", "b"), ("b", "c"), ("c", "a"), ("c", "z")])
    assert e.value.cycle in (["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"])
    assert "'a'" in str(e.value) and "'c'" in str(e.value) and "'z'" not in str(e.value)
    with pytest.raises(CycleError):
        order(["a"], [("a", "a")])


def test_subscription_takes_before_and_after() -> None:
    sub = Subscription.decision("d", print, before="x", after=["y", "z"])
    assert (sub.before, sub.after) == (("x",), ("y", "z"))
    with pytest.raises(TypeError):
        Subscription.decision("d", print, before=[1])


# --- unit: results -----------------------------------------------------------------------------------

@pytest.mark.parametrize("result", [
    Continue(), Continue({"amount_msat": 5, "onion": "ab"}), Fail("no"), Fail("no", b"\x40\x0f", "p"),
    Fail("no", {"code": 7}), Resolve(b"\x11" * 32, "p"), Resolve({"preimage": "11" * 32}), Resolve()])
def test_results_travel_as_json(result) -> None:
    assert result_from_json(decode(encode(result_to_json(result)))) == result


def test_result_json_of_bytes_is_hex() -> None:
    assert result_to_json(Fail("x", b"\x20\x07")) == {"result": "fail", "by": "", "reason": "x",
                                                      "payload_hex": "2007"}


@pytest.mark.parametrize("bad", [None, [], {}, {"result": "maybe"}, {"result": "continue", "replace": [1]},
                                 {"result": "fail", "payload_hex": "zz"}])
def test_bad_result_json_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        result_from_json(bad)


def test_old_answers_still_mean_what_they_meant() -> None:
    assert as_result(None, "p") == Continue() and as_result(True, "p") == Continue()
    assert as_result(False, "p") == Fail("refused", None, "p")
    assert as_result(Decision(False, "why"), "p") == Fail("why", None, "p")
    assert as_result(Decision(True), "p") == Continue()
    assert as_result(Fail("x", b"1"), "p").by == "p" and as_result(Resolve(1), "p") == Resolve(1, "p")
    for bad in ("yes", 1, Continue(replace=[1])):
        with pytest.raises(TypeError):
            as_result(bad, "p")


def test_yes_no_form_of_results() -> None:
    assert Decision.of(Continue({"a": 1})) == Decision(True)
    assert Decision.of(Fail("why", by="p")) == Decision(False, "why", "p")
    resolved = Decision.of(Resolve(b"x", "p"))  # a yes/no asker cannot use a payload: fail safe
    assert not resolved and resolved.by == "p" and resolved.result == Resolve(b"x", "p")


def test_spec_defaults_and_profile_overrides() -> None:
    spec = DecisionSpec("d")
    assert spec.timeout == 30.0 and spec.default == Fail("timeout")
    assert with_profile(spec, {}) == spec
    assert with_profile(spec, {"timeout": 2.5, "on_timeout": ""}) == DecisionSpec("d", timeout=2.5)
    assert with_profile(spec, {"on_timeout": "continue"}).default == Continue()
    own = DecisionSpec("d", default=Fail("busy", b"\x20\x07"))
    assert with_profile(own, {"on_timeout": "fail"}).default == own.default  # its own failure stays
    assert with_profile(DecisionSpec("d", default=Continue()), {"on_timeout": "fail"}).default == Fail("timeout")
    for bad in ({"timeout": 0}, {"timeout": -1}, {"default": Resolve()}, {"default": None}):
        with pytest.raises(ValueError):
            DecisionSpec("d", **bad)


# --- unit: the bus's non-blocking requests -----------------------------------------------------------

@pytest.fixture
def bus_and_server():
    """A Bus whose service `s` is a ROUTER the test answers by hand."""
    zctx = zmq.Context()
    endpoint = f"inproc://decisions-test-{next(_ids)}"
    server = zctx.socket(zmq.ROUTER)
    server.bind(endpoint)
    bus = Bus(zctx, Endpoints({"s": endpoint, "gone": "inproc://nobody-here"}, {}), "test")
    yield bus, server, endpoint
    bus.close()
    server.close(0)
    zctx.term()


_ids = itertools.count()


def _serve(server: zmq.Socket, count: int) -> list[list[bytes]]:
    got = []
    while len(got) < count:
        assert server.poll(5000), "no request arrived"
        got.append(server.recv_multipart())
    return got


def test_request_async_matches_replies_out_of_order(bus_and_server) -> None:
    bus, server, _ = bus_and_server
    caller = threading.get_ident()
    futures = [bus.request_async("s", "echo", {"i": i}, timeout=5) for i in range(3)]
    called_on: list[int] = []
    futures[0].add_done_callback(lambda f: called_on.append(threading.get_ident()))
    requests = _serve(server, 3)
    for ident, kind, rid, name, body in reversed(requests):  # answered last first
        assert kind == b"Q" and name == b"echo"
        server.send_multipart([ident, REPLY, rid, b"ok", encode({"echo": decode(body)["i"]})])
    assert [f.result(5) for f in futures] == [{"echo": 0}, {"echo": 1}, {"echo": 2}]
    assert called_on and called_on[0] != caller  # callbacks run on the bus's I/O thread


def test_request_async_errors_and_deadlines(bus_and_server) -> None:
    bus, server, _ = bus_and_server
    refused = bus.request_async("s", "x", {}, timeout=5)
    slow = bus.request_async("s", "y", {}, timeout=0.3)
    ident, _, rid, _, _ = _serve(server, 2)[0]
    server.send_multipart([ident, REPLY, rid, b"err", encode({"code": RpcError.REFUSED, "message": "no"})])
    with pytest.raises(RpcError) as e:
        refused.result(5)
    assert e.value.code == RpcError.REFUSED and e.value.message == "no"
    start = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="did not answer 'y' within 0.3s"):
        slow.result(5)
    assert time.monotonic() - start < 2
    with pytest.raises(ServiceUnavailable, match="not part of this node"):
        bus.request_async("nosuch", "x").result(1)


def test_request_async_waits_for_a_service_that_is_not_there_yet(bus_and_server) -> None:
    bus, server, _ = bus_and_server
    early = bus.request_async("gone", "x", {}, timeout=5)  # nobody bound: it waits to be sent
    never = bus.request_async("gone", "y", {}, timeout=0.2)
    late = server.context.socket(zmq.ROUTER)
    try:
        time.sleep(0.3)
        late.bind("inproc://nobody-here")
        ident, _, rid, name, _ = _serve(late, 1)[0]
        assert name == b"x"  # the expired one was never sent
        late.send_multipart([ident, REPLY, rid, b"ok", encode("hi")])
        assert early.result(5) == "hi"
        with pytest.raises(ServiceUnavailable):
            never.result(1)
    finally:
        late.close(0)


def test_call_later_and_closing(bus_and_server) -> None:
    bus, server, _ = bus_and_server
    fired: Future = Future()
    start = time.monotonic()
    bus.call_later(0.2, lambda: fired.set_result(time.monotonic() - start))
    assert 0.15 < fired.result(5) < 2
    pending = bus.request_async("s", "x", {}, timeout=30)
    _serve(server, 1)
    bus.close()
    with pytest.raises(ServiceUnavailable, match="closed"):
        pending.result(5)
    with pytest.raises(ServiceUnavailable):
        bus.request_async("s", "x").result(1)


# --- real nodes ----------------------------------------------------------------------------------------

PROFILE = """
[node]
data_dir = "DATA_DIR"
[bus]
mode = "MODE"
heartbeat_interval = 0.5
[plugins]
enabled = ["core", "tk_asker", "tk_local", "tk_p1", "tk_p2", "tk_p3"]
[decisions.tk_quick]
timeout = 0.5
on_timeout = "continue"
"""
ORDER = ["tk_p3", "tk_p1", "tk_p2", "tk_local"]  # profile order is tk_local, tk_p1, tk_p2, tk_p3
_ask_ids = itertools.count()


@pytest.fixture(scope="module", params=["threads", "processes"])
def node(request, nodes_module):
    mode = request.param
    node = nodes_module(PROFILE.replace("MODE", mode), name=f"decide-{mode}").start()
    yield node
    assert node.stop() == 0


def ask(node, decision: str, acts: dict | None = None, blocking: bool = False) -> tuple[dict, list[str]]:
    """Ask a decision of the node's tk_asker; its answer and the participants that saw the request."""
    rid = f"r{next(_ask_ids)}"
    with node.client() as c:
        body = {"id": rid, "trace": [], "acts": acts or {}}
        answer = c.tk_ask_blocking(decision, body) if blocking else c.tk_ask(decision, body)
        return answer, c.tk_seen(rid)


def test_participants_are_asked_in_order_each_seeing_the_last_ones_replacements(node) -> None:
    answer, seen = ask(node, "tk_order")
    assert answer["result"] == {"result": "continue", "replace": {"trace": ORDER, "on_thread": True}}
    assert answer["on_thread"], "on_done must run on the asking service's thread"
    assert seen == sorted(ORDER)


def test_fail_ends_the_chain_with_its_payload(node) -> None:
    answer, seen = ask(node, "tk_order", {"tk_p1": "fail"})
    assert answer["result"] == {"result": "fail", "by": "tk_p1", "reason": "refused by tk_p1 after ['tk_p3']",
                                "payload_hex": "400f"}
    assert seen == ["tk_p1", "tk_p3"]  # tk_p2 and tk_local were not asked


def test_resolve_ends_the_chain_with_its_payload(node) -> None:
    answer, seen = ask(node, "tk_order", {"tk_p2": "resolve"})
    assert answer["result"] == {"result": "resolve", "by": "tk_p2", "payload_hex": "11" * 32}
    assert seen == ["tk_p1", "tk_p2", "tk_p3"]


def test_old_style_answers_and_failing_participants(node) -> None:
    assert ask(node, "tk_order", {"tk_p3": "false"})[0]["result"] == {
        "result": "fail", "by": "tk_p3", "reason": "refused", "payload": None}
    assert ask(node, "tk_order", {"tk_local": "decision"})[0]["result"]["reason"] == "old style"
    # a participant that raises gets the decision's default (here: fail, temporary_channel_failure)
    answer, seen = ask(node, "tk_order", {"tk_p1": "raise"})
    assert answer["result"] == {"result": "fail", "by": "tk_p1", "reason": "timeout", "payload_hex": "2007"}
    assert seen == ["tk_p1", "tk_p3"]


def test_timeout_applies_the_decisions_default(node) -> None:
    answer, seen = ask(node, "tk_order", {"tk_p1": 3.0})  # holds longer than tk_order's 1 s
    assert answer["result"] == {"result": "fail", "by": "tk_p1", "reason": "timeout", "payload_hex": "2007"}
    assert 0.9 < answer["seconds"] < 2.5
    assert seen == ["tk_p1", "tk_p3"]
    answer, _ = ask(node, "tk_order", {"tk_local": 3.0})  # a local participant's Future, too
    assert answer["result"]["by"] == "tk_local" and 0.9 < answer["seconds"] < 2.5


def test_profile_overrides_timeout_and_default(node) -> None:
    """tk_quick is tk_order waiting 2 s; the profile sets timeout = 0.5, on_timeout = "continue"."""
    answer, seen = ask(node, "tk_quick", {"tk_p1": 3.0})
    assert answer["result"] == {"result": "continue",
                                "replace": {"trace": ["tk_p3", "tk_p2", "tk_local"], "on_thread": True}}
    assert 0.45 < answer["seconds"] < 1.8
    assert seen == sorted(ORDER)
    log = (node.data_dir / "lnp-host.log").read_text()
    assert "decision tk_quick: no answer from participant tk_p1 (service 'pa' did not answer 'tk_quick' " \
           "within 0.5s): continue applies" in log


@pytest.mark.parametrize("holder", ["tk_p2", "tk_local"], ids=["remote-holder", "local-holder"])
def test_a_held_decision_holds_up_no_other(node, holder: str) -> None:
    """One decision held 2 s by a participant's Future; 100 more asked at once all complete meanwhile."""
    with node.client(timeout=30) as c:
        out = c.tk_ask_many(n=100, holder=holder, hold=2.0)
    assert out["others"] == {"count": 100, "max_seconds": out["others"]["max_seconds"], "continued": 100}
    assert out["others"]["max_seconds"] < 1.0, out
    assert 2.0 <= out["held"]["seconds"] < 4.0
    assert out["held"]["result"] == {"result": "continue", "replace": {"trace": ["tk_local", "tk_p2"],
                                                                      "on_thread": True}}
    assert out["on_thread"]


def test_blocking_decide_on_the_askers_own_thread(node) -> None:
    """ctx.decide from a handler of the asker's service: a participant of that same service answering
    with a Future (completed on another thread) and remote ones do not deadlock it."""
    answer, _ = ask(node, "tk_order", {"tk_local": 0.5}, blocking=True)
    assert answer["allowed"] and answer["result"]["replace"]["trace"] == ORDER and answer["seconds"] >= 0.5
    answer, _ = ask(node, "tk_order", {"tk_p2": "fail"}, blocking=True)
    assert (answer["allowed"], answer["by"]) == (False, "tk_p2") and answer["reason"].startswith("refused by tk_p2")


# --- profiles ------------------------------------------------------------------------------------------

def refused(tmp: Path, site: Path, text: str) -> str:
    profile = tmp / "p.toml"
    profile.write_text(f'[node]\ndata_dir = "{tmp / "data"}"\n' + text)
    done = lnp_host("check", "--profile", str(profile), site=site)
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(profile) in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def test_a_cycle_in_the_order_is_a_profile_error(tmp_path: Path, plugin_site: Path) -> None:
    err = refused(tmp_path, plugin_site,
                  '[plugins]\nenabled = ["core", "tk_asker", "tk_p1", "tk_p3", "tk_cycle"]\n')
    assert "[plugins] enabled" in err and "decision 'tk_order'" in err and "cycle" in err
    assert all(p in err for p in ("'tk_p1'", "'tk_p3'", "'tk_cycle'"))


@pytest.mark.parametrize("table, words", [
    ('[decisions.tk_nope]\ntimeout = 1\n', "[decisions] tk_nope: no enabled plugin declares this decision"),
    ('[decisions.tk_order]\ntimeout = 0\n', "[decisions.tk_order] timeout: expected a number of seconds above 0"),
    ('[decisions.tk_order]\non_timeout = "maybe"\n', "[decisions.tk_order] on_timeout: expected one of"),
    ('[decisions.tk_order]\ntimeuot = 1\n', "[decisions.tk_order] timeuot: unknown key"),
])
def test_bad_decisions_table_is_a_profile_error(tmp_path: Path, plugin_site: Path, table: str, words: str) -> None:
    err = refused(tmp_path, plugin_site, '[plugins]\nenabled = ["core", "tk_asker"]\n' + table)
    assert words in err, err
