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
CRASH_FILE_ENV = "LNP_DEV_CRASH_FILE"   # a file naming the next point: read at each point, removed when it fires


def crash_point(name: str, network: str) -> None:
    """Developers: SIGKILL this process here when LNP_DEV_CRASH_AT names `channeld:NAME`, or when the file
    LNP_DEV_CRASH_FILE names it (never on mainnet). The file is removed as the point fires, so a service
    restarted by the supervisor (processes mode) does not die there again, and a test names the next point
    without restarting the node. Tests kill a node between two protocol steps this way and check nothing is
    lost; in threads mode the whole node dies, in processes mode channeld's process."""
    if network == "mainnet":
        return
    if os.environ.get(CRASH_ENV) == f"channeld:{name}" or _named_in_file(f"channeld:{name}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _named_in_file(point: str) -> bool:
    path = os.environ.get(CRASH_FILE_ENV)
    if not path:
        return False
    try:
        with open(path) as f:
            if f.read().strip() != point:
                return False
        os.unlink(path)   # one shot; of two threads there, only the one that removed it fires
    except OSError:
        return False
    return True
