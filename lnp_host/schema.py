"""Type checks shared by profile validation and RPC parameter validation."""
from __future__ import annotations

import json
import types
import typing
from typing import Any, Callable, Sequence, get_args, get_origin

from lnp_plugin_api import Param, RpcError


def type_matches(value: Any, expected: Any) -> bool:
    """True when a TOML/JSON value fits a declared type (str, int, float, bool, dict, list[X], X | None)."""
    if expected is Any or expected is object:
        return True
    origin = get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, t) for t in get_args(expected))
    if expected is None or expected is type(None):
        return value is None
    if origin in (list, tuple):
        args = get_args(expected)
        item = args[0] if args else Any
        return isinstance(value, list) and all(type_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if expected in (list, tuple):
        return isinstance(value, list)
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(expected, type) and isinstance(value, expected)


def type_name(t: Any) -> str:
    """A readable name for a declared type."""
    origin = get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(t))
    if origin in (list, tuple):
        args = get_args(t)
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict:
        return "an object"
    if t is None or t is type(None):
        return "null"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "a table", list: "a list", Any: "any value"}.get(t, getattr(t, "__name__", str(t)))


def _plural(t: Any) -> str:
    """The items of a list type, for `type_name` ("a list of strings")."""
    return {str: "strings", int: "integers", float: "numbers", bool: "true or false values", dict: "tables",
            Any: "values"}.get(t) or type_name(t)


def coerce_text(value: Any, expected: Any, parse: Callable[[str], Any] = json.loads) -> Any:
    """Turn a command-line string into the declared type when it is not a string ("5" -> 5).

    Values that are not strings, and strings for string parameters, are returned unchanged, as are
    strings `parse` refuses (it raises ValueError; the RPC server passes its depth-limited decoder).
    """
    if not isinstance(value, str) or type_matches(value, expected):
        return value
    try:
        parsed = parse(value)
    except (ValueError, RecursionError):  # RecursionError: a string of 5,000 "[" from a client
        return value
    return parsed if type_matches(parsed, expected) else value


def check_params(name: str, params: Sequence[Param], values: dict[str, Any],
                 convert: Callable[[Any, Any], Any] | None = None) -> dict[str, Any]:
    """Check named values against declared parameters (RPC parameters, control request bodies).

    Raises RpcError(INVALID_PARAMS) naming the first unknown, missing or mistyped key; `convert(value,
    type)` may first turn a value into the declared type (the command line's strings).
    """
    known = {p.name for p in params}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RpcError(RpcError.INVALID_PARAMS, f"{name}: unknown parameter {unknown[0]!r}")
    out: dict[str, Any] = {}
    for p in params:
        if p.name not in values:
            if p.required:
                raise RpcError(RpcError.INVALID_PARAMS, f"{name}: missing parameter {p.name!r}")
            continue
        value = values[p.name] if convert is None else convert(values[p.name], p.type)
        if not type_matches(value, p.type):
            raise RpcError(RpcError.INVALID_PARAMS, f"{name}: parameter {p.name!r} must be "
                           f"{type_name(p.type)}, got {json.dumps(value, default=repr)[:40]}")
        out[p.name] = value
    return out
