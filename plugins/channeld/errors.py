"""channeld's errors: what goes back to an RPC caller, and what goes to a peer."""
from __future__ import annotations

import os
import signal

from lnp_plugin_api import RpcError


class ChannelError(Exception):
    """A peer broke the protocol or a limit of ours: the channel (or the opening) fails, and the message,
    safe to send, goes to the peer in an `error` (or a `warning` when `warning` is set)."""

    def __init__(self, message: str, warning: bool = False) -> None:
        super().__init__(message)
        self.warning = warning


def refused(message: str) -> RpcError:
    """An RPC refusal the caller sees as is."""
    return RpcError(RpcError.INVALID_PARAMS, message)


CRASH_ENV = "LNP_DEV_CRASH_AT"   # the host's developer crash points (refused on mainnet by the host)


def crash_point(name: str, network: str) -> None:
    """Developers: SIGKILL this process here when LNP_DEV_CRASH_AT names `channeld:NAME` (never on mainnet).
    Tests kill a node between two protocol steps this way and check nothing is lost."""
    if os.environ.get(CRASH_ENV) == f"channeld:{name}" and network != "mainnet":
        os.kill(os.getpid(), signal.SIGKILL)
