"""Which service sent the control request being handled: the host stamps it, handlers read it.

A DEALER's routing id starts with the name of the service it sends for (`SERVICE/PID/N`); the
service's ROUTER sees that id with every request, and the runtime makes it the current caller while
the handler runs. What that proves depends on the transport (docs/architecture.md, "Who is asking"):
inproc:// stays inside one process, whose host code sets the id; ipc:// sockets live in the node's
0700 run directory, so only the node's own user can connect (and could read the data dir anyway);
over tcp:// only CURVE proves anything, so there the key the peer authenticated with names the
service, whatever routing id it claims.
"""
from __future__ import annotations

import itertools
import os
from contextvars import ContextVar

_caller: ContextVar[str | None] = ContextVar("lnp_caller", default=None)
_ids = itertools.count(1)


def routing_id(source: str) -> bytes:
    """A routing id unique in this node (ROUTERs drop a second peer with the same one) naming `source`."""
    return f"{source}/{os.getpid()}/{next(_ids)}".encode()


def source_of(ident: bytes) -> str | None:
    """The service a routing id made by `routing_id` names; None for any other (a random id)."""
    name, sep, _ = bytes(ident).partition(b"/")
    if not sep or not name:
        return None
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        return None


def current_caller() -> str | None:
    """The service whose control request is being handled here, or None when unknown."""
    return _caller.get()


class calling_as:  # noqa: N801 - used as a function: `with calling_as(service):`
    """Handle a request on behalf of `service` (the runtime, and direct calls within one service).

    A class rather than a generator: it runs on every control request, and costs a third as much."""

    __slots__ = ("_service", "_token")

    def __init__(self, service: str | None) -> None:
        self._service = service

    def __enter__(self) -> None:
        self._token = _caller.set(self._service)

    def __exit__(self, *_: object) -> None:
        _caller.reset(self._token)
