"""Answering a control request: one code path for a caller in the same service and one across the bus.

The body is checked against the handler's declared parameters (`@control_method`) before it runs,
and a handler's unexpected exception becomes the same INTERNAL_ERROR wherever the caller is.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from lnp_plugin_api import RpcError

from .plugins import Owned
from .schema import check_params


def answer(owned: Owned, ctx: Any, name: str, body: Any) -> Any:
    """Run the handler of control request `name` on `body`: its reply, or a Future of it."""
    sub = owned.item
    if sub.params is None:  # a plain `Subscription.control(name, fn(ctx, body))`
        return sub.handler(ctx, body)
    if not isinstance(body, dict):
        raise RpcError(RpcError.INVALID_PARAMS, f"{name}: the body must be an object")
    return sub.handler(ctx, **check_params(name, sub.params, body))


def as_rpc_error(service: str, name: str, e: BaseException, log: logging.Logger) -> RpcError:
    """What the caller of `name` sees when its handler in `service` raised `e` (logged unless an RpcError)."""
    if isinstance(e, RpcError):
        return e
    log.error("%r failed", name, exc_info=e)
    return RpcError(RpcError.INTERNAL_ERROR, f"internal error in {service} handling {name!r}: {type(e).__name__}")


def no_such_request(name: str) -> RpcError:
    """The error for a control request no enabled plugin answers."""
    return RpcError(RpcError.METHOD_NOT_FOUND, f"no enabled plugin answers control request {name!r}")


def result_of(value: Any, timeout: float, service: str, name: str) -> Any:
    """Wait for a handler's Future (a handler may answer later); a late answer fails as on the bus."""
    if not isinstance(value, Future):
        return value
    try:
        return value.result(timeout)
    except TimeoutError:
        raise RpcError(RpcError.SERVICE_UNAVAILABLE,
                       f"service {service!r} did not answer {name!r} within {timeout:g}s") from None
