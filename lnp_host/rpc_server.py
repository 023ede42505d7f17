"""The RPC endpoint: JSON-RPC 2.0 over ZeroMQ, routed to the service that owns each command.

Local clients use a Unix socket (ipc://) in the data dir, mode 0600. A TCP endpoint is only
offered with CURVE encryption, and only clients whose public key is in DATA_DIR/rpc/clients/ get
through: ZeroMQ's ZAP handshake drops every other connection before a byte of JSON is read.
Requests are forwarded without blocking, so a slow command does not hold up the others.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from lnp_plugin_api import RpcError, RpcMethod

from . import bus as wire
from .buskeys import zap_start, zap_stop
from .bus import TooDeep, decode, decode_untrusted, encode, new_socket, prepare_bind
from .context import Environment
from .keys import allowed_clients, server_keys
from .schema import check_params, coerce_text

log = logging.getLogger("lnp.host.rpc")
PARSE_ERROR = -32700
ZAP_DOMAIN = "lnp-rpc"


@dataclass
class _Pending:
    client: zmq.Socket
    ident: bytes
    request_id: Any
    method: str
    service: str
    started: float
    deadline: float


class _AllowList:
    """ZAP credentials check: re-reads the allow-list for each connection, so `rpc-client` takes effect
    at once and removing a `.pub` file revokes a client."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in allowed_clients(self.env.node.data_dir)
        if not allowed:
            log.warning("refused an RPC client with an unknown CURVE key")
        return allowed


def bind_params(method: RpcMethod, params: Any) -> dict[str, Any]:
    """Match positional or named parameters to the method's and check their types."""
    if params is None:
        params = {}
    if isinstance(params, list):
        if len(params) > len(method.params):
            raise RpcError(RpcError.INVALID_PARAMS,
                           f"{method.name} takes at most {len(method.params)} parameters, got {len(params)}")
        params = {p.name: v for p, v in zip(method.params, params)}
    if not isinstance(params, dict):
        raise RpcError(RpcError.INVALID_PARAMS, "params must be a list or an object")
    return check_params(method.name, method.params, params, lambda v, t: coerce_text(v, t, decode_untrusted))


class RpcServer:
    """Serves the RPC endpoints in a thread of the lnpd process."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        cfg = env.profile.section("rpc")
        self.endpoint = cfg["endpoint"] or f"ipc://{env.node.data_dir / 'rpc.sock'}"
        self.tcp_endpoint = cfg["tcp"]
        self.timeout = cfg["timeout"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rpc", daemon=True)
        self._ready = threading.Event()
        self._error: str | None = None
        self._zap = False  # using the process's ZAP authenticator (lnp_host.buskeys)

    def start(self) -> None:
        """Bind the endpoints; raises RuntimeError if that fails."""
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise RuntimeError(self._error)

    def stop(self) -> None:
        """Stop serving and close the endpoints."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._zap:
            zap_stop(self.env.zctx)
            self._zap = False

    def remove_socket(self) -> None:
        """Remove the ipc:// socket file, so clients see at once that no node is running."""
        if self.endpoint.startswith("ipc://"):
            Path(self.endpoint[len("ipc://"):]).unlink(missing_ok=True)

    def _bind(self) -> list[zmq.Socket]:
        zctx = self.env.zctx
        local = new_socket(zctx, zmq.ROUTER)
        prepare_bind(self.endpoint)
        local.bind(self.endpoint)  # born private: the node runs under umask 077 in a 0700 data dir
        sockets = [local]
        if self.tcp_endpoint:
            zap_start(zctx, ZAP_DOMAIN, _AllowList(self.env).callback)
            self._zap = True
            public, secret = server_keys(self.env.node.data_dir)
            remote = new_socket(zctx, zmq.ROUTER)
            remote.curve_server = True
            remote.curve_publickey = public
            remote.curve_secretkey = secret
            remote.zap_domain = ZAP_DOMAIN.encode()
            remote.bind(self.tcp_endpoint)
            sockets.append(remote)
        return sockets

    def _run(self) -> None:
        try:
            clients = self._bind()
        except (zmq.ZMQError, OSError) as e:
            self._error = f"cannot bind the RPC endpoint: {e}"
            self._ready.set()
            return
        log.info("RPC on %s%s", self.endpoint, f" and {self.tcp_endpoint} (CURVE)" if self.tcp_endpoint else "")
        self._ready.set()
        dealers: dict[str, tuple[int, zmq.Socket]] = {}
        pending: dict[bytes, _Pending] = {}
        counter = 0
        poller = zmq.Poller()
        for sock in clients:
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(100):
                    try:
                        if sock in clients:
                            ident, *rest = sock.recv_multipart()
                            counter += 1
                            self._on_request(sock, ident, rest, dealers, poller, pending, str(counter).encode())
                        else:
                            self._on_reply(sock.recv_multipart(), pending)
                    except Exception:  # one bad message must never end the RPC thread
                        log.exception("unexpected error handling an RPC message; serving on")
                now = time.monotonic()
                for rid in [r for r, p in pending.items() if p.deadline < now]:
                    p = pending.pop(rid)
                    err = RpcError(RpcError.TIMEOUT, f"{p.method} got no answer within {self.timeout:g}s")
                    self._respond(p.client, p.ident, p.request_id, error=err)
        finally:
            for sock in [d for _, d in dealers.values()] + clients:
                sock.close(0)

    def _on_request(self, client: zmq.Socket, ident: bytes, frames: list[bytes],
                    dealers: dict[str, tuple[int, zmq.Socket]],
                    poller: zmq.Poller, pending: dict[bytes, _Pending], rid: bytes) -> None:
        request_id = None
        try:
            if len(frames) != 1:
                raise RpcError(RpcError.INVALID_REQUEST, "expected one frame holding a JSON request")
            try:
                request = decode_untrusted(frames[0])
            except TooDeep as e:
                raise RpcError(RpcError.INVALID_REQUEST, f"the request is {e}") from None
            except ValueError as e:
                raise RpcError(PARSE_ERROR, f"the request is not valid JSON: {str(e)[:100]}") from None
            if not isinstance(request, dict):
                raise RpcError(RpcError.INVALID_REQUEST, "expected {\"method\": NAME, \"params\": ...}")
            if not _valid_id(request.get("id")):
                raise RpcError(RpcError.INVALID_REQUEST, "id must be a string, a number or null")
            request_id = request.get("id")
            name = request.get("method")
            if not isinstance(name, str):
                raise RpcError(RpcError.INVALID_REQUEST, "expected {\"method\": NAME, \"params\": ...}")
            owned = self.env.registry.rpc.get(name)
            if owned is None:
                raise RpcError(RpcError.METHOD_NOT_FOUND, f"unknown command {name!r}; try 'help'")
            params = bind_params(owned.item, request.get("params"))
            dealer = self._dealer(owned.service, dealers, poller)
            try:
                dealer.send_multipart([wire.CALL, rid, name.encode(), encode(params)], zmq.NOBLOCK)
            except zmq.Again:
                raise RpcError(RpcError.SERVICE_UNAVAILABLE,
                               f"service {owned.service!r} is not running") from None
            now = time.monotonic()
            pending[rid] = _Pending(client, ident, request_id, name, owned.service, now, now + self.timeout)
        except RpcError as e:
            self._respond(client, ident, request_id, error=e)
        except Exception:  # a bug, not the client's fault: answer, log, serve on
            log.exception("unexpected error handling an RPC request")
            self._respond(client, ident, request_id,
                          error=RpcError(RpcError.INTERNAL_ERROR, "internal error handling the request"))

    def _dealer(self, service: str, dealers: dict[str, tuple[int, zmq.Socket]], poller: zmq.Poller) -> zmq.Socket:
        """The RPC thread's connection to `service`, made afresh when the service restarted."""
        endpoint = self.env.endpoints.control[service]
        gen = self.env.bus.generation.get(endpoint, 0)
        cached = dealers.get(service)
        if cached is None or cached[0] != gen:
            if cached is not None:  # the service restarted: connect afresh
                poller.unregister(cached[1])
                cached[1].close(0)
            dealer = self.env.bus.connect(endpoint)
            dealers[service] = (gen, dealer)
            poller.register(dealer, zmq.POLLIN)
            dealer.poll(1000, zmq.POLLOUT)  # first use: give the connection a moment
        return dealers[service][1]

    def _on_reply(self, frames: list[bytes], pending: dict[bytes, _Pending]) -> None:
        if len(frames) != 4 or frames[0] != wire.REPLY:
            return
        p = pending.pop(frames[1], None)
        if p is None:
            return  # answered after its timeout
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rpc %s -> %s: %s in %.1f ms", p.method, p.service, frames[2].decode(errors="replace"),
                      (time.monotonic() - p.started) * 1000)
        try:
            body = decode(frames[3])
        except ValueError:
            self._respond(p.client, p.ident, p.request_id, error=RpcError(
                RpcError.INTERNAL_ERROR, f"service {p.service!r} answered {p.method!r} with bad JSON"))
            return
        if frames[2] == wire.OK:
            self._respond(p.client, p.ident, p.request_id, result=body)
        else:
            body = body if isinstance(body, dict) else {}
            self._respond(p.client, p.ident, p.request_id,
                          error=RpcError(body.get("code", RpcError.INTERNAL_ERROR), body.get("message", ""),
                                         body.get("data")))

    @staticmethod
    def _respond(client: zmq.Socket, ident: bytes, request_id: Any, result: Any = None,
                 error: RpcError | None = None) -> None:
        out: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if error is not None:
            out["error"] = error.to_json()
        else:
            out["result"] = result
        try:
            payload = json.dumps(out).encode()
        except Exception:  # e.g. an answer nested too deeply to encode: still answer
            log.error("the answer to an RPC request could not be encoded as JSON")
            out = {"jsonrpc": "2.0", "id": request_id,
                   "error": RpcError(RpcError.INTERNAL_ERROR, "the answer could not be encoded as JSON").to_json()}
            payload = json.dumps(out).encode()
        try:
            client.send_multipart([ident, payload], zmq.NOBLOCK)
        except zmq.ZMQError:
            log.debug("an RPC client left before its answer")


def _valid_id(value: Any) -> bool:
    """JSON-RPC ids are strings, numbers or null (never containers, which we would have to echo back)."""
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))
