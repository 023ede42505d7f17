"""The plugin API's own pieces: RPC methods from signatures, parameter binding, type checks."""
from __future__ import annotations

from typing import Any

import pytest

from lnp_host.rpc_server import bind_params
from lnp_host.schema import coerce_text, type_matches, type_name
from lnp_plugin_api import REQUIRED, RpcError, rpc_method


@rpc_method
def sample(ctx: Any, amount: int, label: str = "x", tags: list[str] | None = None) -> dict:
    """Do a sample thing."""
    return {}


def test_rpc_method_from_signature() -> None:
    assert sample.name == "sample" and sample.help == "Do a sample thing."
    assert [(p.name, p.required) for p in sample.params] == [("amount", True), ("label", False), ("tags", False)]
    assert sample.params[0].default is REQUIRED


def test_bind_params() -> None:
    assert bind_params(sample, [5]) == {"amount": 5}
    assert bind_params(sample, {"amount": "7", "tags": '["a"]'}) == {"amount": 7, "tags": ["a"]}
    assert bind_params(sample, {"amount": 1, "tags": None}) == {"amount": 1, "tags": None}
    for bad in ([1, "a", [], 4], {"amount": "x"}, {"label": "y"}, {"amount": 1, "zz": 2}, "str",
                {"amount": True}, {"amount": 1, "tags": [1]}):
        with pytest.raises(RpcError) as e:
            bind_params(sample, bad)
        assert e.value.code == RpcError.INVALID_PARAMS


def test_type_checks() -> None:
    assert type_matches(3, float) and not type_matches(True, int) and not type_matches("3", int)
    assert type_matches(["a"], list[str]) and not type_matches(["a", 1], list[str])
    assert type_matches(None, str | None) and type_name(list[int]) == "a list of integers"
    assert coerce_text("true", bool) is True and coerce_text("abc", int) == "abc"


def test_rpc_method_refuses_varargs() -> None:
    with pytest.raises(TypeError):
        rpc_method(lambda ctx, *a: None)
