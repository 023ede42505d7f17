"""The RPC client library (what `lnp-cli` is built on).

    from lnp_host.client import Client
    node = Client(data_dir="~/.lnp-host")                 # the local Unix socket
    node.info()                                           # one method per command
    remote = Client("tcp://host:9836", keys=Client.load_keys("alice.json"))

Errors come back as `lnp_plugin_api.RpcError` with the server's code.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

import zmq

from lnp_plugin_api import RpcError

DEFAULT_DATA_DIR = "~/.lnp-host"


def _check_listening(path: Path) -> None:
    """Fail at once, rather than after the timeout, when no node listens on a Unix socket."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except FileNotFoundError:
        raise RpcError(RpcError.SERVICE_UNAVAILABLE, f"no node is running on {path.parent} (no rpc.sock)") from None
    except OSError as e:
        raise RpcError(RpcError.SERVICE_UNAVAILABLE, f"no node answers on {path}: {e.strerror}") from None
    finally:
        probe.close()


class ClientKeys(dict):
    """CURVE credentials of a TCP client: `public`, `secret` and the server's `server_public` (Z85)."""


class Client:
    """A connection to a node's RPC endpoint."""

    def __init__(self, endpoint: str | None = None, keys: dict[str, str] | None = None, *,
                 data_dir: str | os.PathLike[str] | None = None, timeout: float = 60.0) -> None:
        if endpoint is None:
            folder = Path(data_dir or DEFAULT_DATA_DIR).expanduser()
            endpoint = f"ipc://{folder.absolute() / 'rpc.sock'}"
            _check_listening(folder / "rpc.sock")
        if endpoint.startswith("tcp://") and not keys:
            raise ValueError("a tcp:// endpoint needs CURVE keys (create them with `lnp-host rpc-client NAME`)")
        self.endpoint = endpoint
        self.timeout = timeout
        self._params: dict[str, list[str]] = {}   # method -> its parameters' names (from `help`)
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if keys:
            self._sock.curve_publickey = keys["public"].encode()
            self._sock.curve_secretkey = keys["secret"].encode()
            self._sock.curve_serverkey = keys["server_public"].encode()
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)

    @staticmethod
    def load_keys(path: str | os.PathLike[str]) -> ClientKeys:
        """Read the credentials file written by `lnp-host rpc-client NAME --output FILE`."""
        data = json.loads(Path(path).expanduser().read_text())
        return ClientKeys({k: data[k] for k in ("public", "secret", "server_public")})

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call `method` with positional and/or named parameters and return its result."""
        if args and kwargs:
            kwargs = self._name_positions(method, args, kwargs)
            args = ()
        rid = next(self._ids)
        request = {"jsonrpc": "2.0", "id": rid, "method": method, "params": list(args) if args else kwargs}
        self._sock.send(json.dumps(request).encode())
        remaining = int(self.timeout * 1000)
        while self._sock.poll(remaining):
            try:
                reply = json.loads(self._sock.recv())
            except (ValueError, RecursionError):
                raise RpcError(RpcError.INTERNAL_ERROR, f"{self.endpoint} answered with bad JSON") from None
            if not isinstance(reply, dict) or reply.get("id") != rid:
                continue  # the answer to an earlier call that timed out, or not an answer at all
            if "error" in reply:
                err = reply["error"] if isinstance(reply["error"], dict) else {}
                raise RpcError(err.get("code", RpcError.INTERNAL_ERROR), err.get("message", ""), err.get("data"))
            return reply.get("result")
        raise RpcError(RpcError.TIMEOUT, f"no answer from {self.endpoint} within {self.timeout:g}s")

    def _name_positions(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Both kinds given: name the positional values after the method's declared parameters."""
        params = self._params.get(method)
        if params is None:  # asked once per method: a connection's node keeps its commands
            params = self._params[method] = [p["name"] for p in self.call("help", method)["params"]]
        free = [p for p in params if p not in kwargs]
        if len(args) > len(free):
            raise RpcError(RpcError.INVALID_PARAMS, f"{method}: too many parameters "
                           f"(it takes {', '.join(params) or 'none'})")
        return {**dict(zip(free, args)), **kwargs}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    def close(self) -> None:
        """Close the connection."""
        self._sock.close(0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
