"""peerd's errors: why a connection closed, and the RPC error codes clients see."""
from __future__ import annotations

CONNECT_FAILED = 401   # the peer could not be reached, or the handshake or init failed
NOT_CONNECTED = 402    # the command needs a connected peer
PING_FAILED = 403      # no pong in time, or the peer went away


class PeerError(Exception):
    """A reason to close one peer connection.

    `warn` asks for a BOLT-1 `warning` to be sent before closing, so the peer learns why.
    """

    def __init__(self, reason: str, warn: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.warn = warn
