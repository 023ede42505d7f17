"""The registry calls hooks the pluggy way (tryfirst, firstresult, wrappers), keys control requests by
name, and traces hook calls with LNP_TRACE_PLUGINS=1. Plugins here are objects of this module."""
from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lnp_host.context import PluginContext
from lnp_host.control import answer
from lnp_host.node import _custody
from lnp_host.plugins import Discovered, load_registry
from lnp_host.profile import ProfileError, load_profile
from lnp_plugin_api import RemoteCustody, RpcError, Subscription, control_method, hookimpl, rpc_method

KEY = bytes.fromhex("02" + "11" * 32)


@rpc_method
def hello(ctx: Any) -> dict:
    """Say hello."""
    return {}


@rpc_method
def secret_thing(ctx: Any) -> dict:
    """A method the wrapper below hides."""
    return {}


@control_method("x.ping")
def ping(ctx: Any, n: int) -> dict:
    return {"pong": n}


class First:
    @hookimpl
    def lnp_service(self) -> str:
        return "one"

    @hookimpl
    def lnp_rpc_methods(self) -> list:
        return [hello, secret_thing]

    @hookimpl
    def lnp_subscriptions(self) -> list:
        return [ping]

    @hookimpl
    def lnp_key_custody(self, node: Any) -> RemoteCustody:
        return RemoteCustody("one", KEY)


class Eager:
    """Later in the profile, but asks to be called first."""

    @hookimpl(tryfirst=True)
    def lnp_key_custody(self, node: Any) -> RemoteCustody:
        return RemoteCustody("eager", KEY)


class Late:
    """Later in the profile, an ordinary implementation: the first plugin's answer wins."""

    @hookimpl
    def lnp_key_custody(self, node: Any) -> RemoteCustody:
        return RemoteCustody("late", KEY)


class Hider:
    """A wrapper around every plugin's RPC declarations, as a policy plugin might be."""

    @hookimpl(wrapper=True)
    def lnp_rpc_methods(self) -> Any:
        results = yield  # pluggy's: one list per implementation called (here, the one plugin's)
        return [[m for m in methods if not m.name.startswith("secret_")] for methods in results]


class Keeper:
    """Serves the node key over the control bus, as signd does."""

    @hookimpl
    def lnp_subscriptions(self) -> list:
        return [Subscription.control("host.keys.node_id", lambda ctx, body: {"node_id": KEY.hex()})]

    @hookimpl
    def lnp_key_custody(self, node: Any) -> RemoteCustody:
        return RemoteCustody("keeper", KEY)  # its default service, named as signd names its own


class Duplicate:
    @hookimpl
    def lnp_service(self) -> str:
        return "two"

    @hookimpl
    def lnp_subscriptions(self) -> list:
        return [ping]


FIRST, EAGER, LATE, HIDER, KEEPER, DUPLICATE = First(), Eager(), Late(), Hider(), Keeper(), Duplicate()
PLUGINS = ("first", "eager", "late", "hider", "keeper", "duplicate")  # entry points: this module's FIRST, ...


def registry(tmp_path: Path, enabled: list[str], extra: str = "") -> Any:
    found = {n: Discovered(n, "1", "test", md.EntryPoint(n, f"{__name__}:{n.upper()}", "lnp_host.plugins"))
             for n in PLUGINS}
    path = tmp_path / "p.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path}/d"\n[plugins]\nenabled = {enabled!r}\n'.replace("'", '"')
                    + extra)
    profile = load_profile(path)
    return load_registry(profile, found), profile


def test_firstresult_in_profile_order_and_tryfirst(tmp_path: Path) -> None:
    reg, profile = registry(tmp_path, ["first", "late"])
    assert _custody(reg, profile, None).service == "one"  # profile order: first answers first
    reg, profile = registry(tmp_path, ["first", "eager"])
    assert _custody(reg, profile, None).service == "eager"  # tryfirst goes before profile order


def test_a_wrapper_wraps_every_plugins_declarations(tmp_path: Path) -> None:
    reg, _ = registry(tmp_path, ["first"])
    assert set(reg.rpc) == {"hello", "secret_thing"}
    reg, _ = registry(tmp_path, ["first", "hider"])
    assert set(reg.rpc) == {"hello"}


def test_control_requests_by_name_one_answerer_per_node(tmp_path: Path) -> None:
    reg, _ = registry(tmp_path, ["first"])
    assert reg.control["x.ping"].service == "one" and reg.control["x.ping"].plugin == "first"
    with pytest.raises(ProfileError, match="plugins 'first' and 'duplicate' both declare control request 'x.ping'"):
        registry(tmp_path, ["first", "duplicate"])


def test_a_profile_moves_a_plugin(tmp_path: Path) -> None:
    reg, profile = registry(tmp_path, ["first"], '[plugins.first]\nservice = "elsewhere"\n')
    assert reg.service_of["first"] == "elsewhere" and reg.services == ["lnpd", "elsewhere"]
    assert reg.control["x.ping"].service == "elsewhere"
    assert profile.plugin_table("first") == {}  # the host's key, not the plugin's config
    reg, profile = registry(tmp_path, ["keeper"], '[plugins.keeper]\nservice = "vault"\n')
    assert _custody(reg, profile, None).service == "vault"  # the key is asked where its plugin runs


def test_control_bodies_are_checked(tmp_path: Path) -> None:
    reg, _ = registry(tmp_path, ["first"])
    owned = reg.control["x.ping"]
    assert answer(owned, None, "x.ping", {"n": 3}) == {"pong": 3}
    for body, words in (({"n": "3"}, "parameter 'n' must be an integer"), ({}, "missing parameter 'n'"),
                        ({"n": 1, "m": 2}, "unknown parameter 'm'"), ([], "the body must be an object")):
        with pytest.raises(RpcError) as e:
            answer(owned, None, "x.ping", body)
        assert e.value.code == RpcError.INVALID_PARAMS and f"x.ping: {words}" in e.value.message


def test_trace_plugins_logs_each_hook_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    registry(tmp_path, ["first"])
    assert "lnp trace" not in capfd.readouterr().err
    monkeypatch.setenv("LNP_TRACE_PLUGINS", "1")
    reg, profile = registry(tmp_path, ["first", "hider"])
    _custody(reg, profile, None)
    err = capfd.readouterr().err
    assert "lnp trace: lnp_service [first] ok in " in err
    assert "lnp trace: lnp_rpc_methods [first, hider] ok in " in err  # the wrapper and the plugin it wraps
    assert "lnp trace: lnp_key_custody [first] ok in " in err
    assert "KEY" not in err and KEY.hex() not in err  # arguments and results are not written


def test_request_in_one_service_checks_and_answers_as_the_bus_does(tmp_path: Path) -> None:
    reg, profile = registry(tmp_path, ["first"])
    env = SimpleNamespace(registry=reg, profile=profile, node=SimpleNamespace(data_dir=tmp_path), storage=None,
                          keys=None, host=None, contexts={})
    ctx = PluginContext(env, "first")  # type: ignore[arg-type]  (the parts a local request uses)
    env.contexts["first"] = ctx
    assert ctx.request("x.ping", {"n": 2}) == {"pong": 2}
    with pytest.raises(RpcError) as e:
        ctx.request("x.ping", {"n": "2"})
    assert (e.value.code, e.value.message) == (RpcError.INVALID_PARAMS,
                                               "x.ping: parameter 'n' must be an integer, got \"2\"")
    with pytest.raises(RpcError) as e:
        ctx.request("x.nothing")
    assert e.value.code == RpcError.METHOD_NOT_FOUND
    with pytest.raises(TypeError, match=r"use ctx.request\('x.ping', body\)"):
        ctx.request("one", "x.ping", {"n": 1})  # the old form, naming the service: refused, not misrouted
