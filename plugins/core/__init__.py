"""core: the node's own commands (info, plugins, help, stop), as a plugin of the lnpd service.

Built in, and registered by entry point exactly like any third-party plugin.
"""
from __future__ import annotations

from typing import Any

from lnp_plugin_api import RpcError, ServiceContext, hookimpl, rpc_method


def _host(ctx: ServiceContext) -> Any:
    if ctx.host is None:  # only lnpd has the host's control
        raise RpcError(RpcError.INTERNAL_ERROR, "core must run in the lnpd service")
    return ctx.host


@rpc_method
def info(ctx: ServiceContext) -> dict[str, Any]:
    """Node id, alias, network, version, the plugins loaded and each service with its state."""
    return _host(ctx).info()


@rpc_method
def plugins(ctx: ServiceContext) -> list[dict[str, Any]]:
    """Every discovered plugin: name, version, distribution, service, enabled or not."""
    return _host(ctx).plugins()


@rpc_method(name="help")
def help_(ctx: ServiceContext, command: str | None = None) -> Any:
    """List the commands with their help, or show one COMMAND."""
    commands = _host(ctx).commands()
    if command is None:
        return {"commands": commands}
    for c in commands:
        if c["command"] == command:
            return c
    raise RpcError(RpcError.METHOD_NOT_FOUND, f"unknown command {command!r}")


@rpc_method
def stop(ctx: ServiceContext) -> dict[str, str]:
    """Stop the node: every service in reverse order, storage left consistent."""
    _host(ctx).stop()
    return {"result": "stopping"}


@hookimpl
def lnp_service() -> str:
    return "lnpd"


@hookimpl
def lnp_rpc_methods() -> list:
    return [info, plugins, help_, stop]
