"""The ZeroMQ buses between services.

Every service binds two ROUTER sockets, its inboxes: one on the control bus (requests, replies,
events, decisions, pings) and one on the message bus (peer wire messages). Other services reach it
through DEALER sockets connected to those endpoints, one per destination and per thread, so any
thread of a plugin may send. The endpoints follow from the profile alone (inproc:// in threads
mode, ipc:// or tcp:// in processes mode), so no directory service is needed.

Control frames:  [kind, request id, name, JSON body]   kind: Q request, C RPC call, D decision,
                                                       E event (no reply), P ping
Reply frames:    [b"R", request id, b"ok" | b"err", JSON body]
Message frames:  [b"I" | b"O", peer id, 2-byte type, payload]   I: received from the peer, for the
                                                       handler of its type; O: to send to the peer

A request to a service whose loop runs in this same process (threads mode, inproc:// endpoints) skips
ZeroMQ: the same JSON bytes go through the service's in-process inbox (`Bus.serve_here`) and the reply
comes back through a `Waiter`, which saves the sockets' share of the thread handoff (about half of a
round trip). The body is encoded by the caller and decoded by the service as on the bus, so errors,
copies and the caller's identity are those of the bus path.

A request or event to a service of this host over ipc:// (processes mode) skips ZeroMQ as well: it
goes over the calling thread's own AF_UNIX connection to the service (`lnp_host.bus_direct`), with the
same frames, and over ZeroMQ only when nobody listens there yet.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zmq

from lnp_plugin_api import RpcError, WireMessage

from .bus_direct import DirectLink, LinkLost, SendTimeout, direct_path
from .bus_waiter import Waiter
from .caller import routing_id

REQUEST, CALL, DECISION, EVENT, PING, REPLY = b"Q", b"C", b"D", b"E", b"P", b"R"
WIRE_IN, WIRE_OUT = b"I", b"O"
OK, ERR = b"ok", b"err"
SEND_HWM = 10_000
WAKE_MS = 200  # a long wait wakes this often to notice that the node is gone (`Bus.abandon`)
CLOSE_WAIT = 2.0  # seconds `Bus.close` gives other threads to give up their waits and close their sockets
MAX_DEPTH = 100  # JSON nesting accepted from outside the node; no command needs more than a few levels
log = logging.getLogger("lnp.host.bus")


class ServiceUnavailable(RpcError):
    """The destination service is not connected or did not answer in time."""

    def __init__(self, service: str, why: str) -> None:
        super().__init__(RpcError.SERVICE_UNAVAILABLE, f"service {service!r} {why}")
        self.service = service


@dataclass(frozen=True)
class Endpoints:
    """Where each service's two inboxes are."""

    control: dict[str, str]
    message: dict[str, str]

    @classmethod
    def for_profile(cls, services: list[str], mode: str, data_dir: Path, overrides: dict[str, Any],
                    instance: str = "") -> "Endpoints":
        """Endpoints from the profile: explicit ones, else inproc:// (threads) or ipc:// (processes).

        `instance` keeps inproc names apart when several nodes share one process (tests).
        """
        control, message = {}, {}
        for s in services:
            given = overrides.get(s, {})
            if mode == "threads":
                control[s] = given.get("control", f"inproc://lnp{instance}.{s}.control")
                message[s] = given.get("message", f"inproc://lnp{instance}.{s}.message")
            else:
                control[s] = given.get("control", f"ipc://{data_dir}/run/{s}.control")
                message[s] = given.get("message", f"ipc://{data_dir}/run/{s}.message")
        return cls(control, message)


_encoder = json.JSONEncoder(separators=(",", ":"))
_scan = json.JSONDecoder().scan_once


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


# json.dumps builds a C encoder on every call, a third of a small body's cost: build it once. Without
# its per-call table of containers being encoded, a circular body ends in RecursionError (see encode).
_fast_encoder = None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(
    None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)


class Encoded(bytes):
    """A body already in the bus's JSON encoding (the outbox's rows are stored as JSON): sent as is."""


def encode(body: Any) -> bytes:
    """The JSON encoding every control body uses (TypeError or ValueError for what JSON cannot carry)."""
    if isinstance(body, Encoded):
        return body
    if _fast_encoder is None or isinstance(body, str):
        return _encoder.encode(body).encode()
    try:
        return "".join(_fast_encoder(body, 0)).encode()
    except RecursionError:
        raise ValueError("Circular reference detected, or nested too deeply for JSON") from None


def decode(raw: bytes) -> Any:
    """Inverse of `encode`; raises ValueError for anything else, however deeply nested."""
    if not raw:
        return None
    try:
        # what `encode` makes is ASCII: decoded as such, skipping json.loads's guess of the encoding,
        # which it can only make otherwise for a NUL among the first two bytes (UTF-16 or UTF-32)
        if raw.isascii() and raw[0] and raw[1:2] != b"\0":
            text = raw.decode("ascii")
            try:  # the decoder's C scanner without its Python wrapper, which skips whitespace twice
                value, end = _scan(text, 0)
            except StopIteration:  # not JSON here: json.loads says why
                return json.loads(raw)
            if end == len(text):
                return value
        return json.loads(raw)  # whitespace around it, extra data (an error), or not ASCII
    except RecursionError:  # deeper than the interpreter's stack: nothing `encode` made
        raise ValueError("JSON nested too deeply") from None


class TooDeep(ValueError):
    """JSON nested deeper than allowed."""


def decode_untrusted(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON from outside the node (RPC clients): standard JSON only, nested at most `max_depth` deep.

    Raises TooDeep for deeper nesting, and ValueError for the rest: not UTF-8 JSON, NaN or Infinity,
    numbers out of range, strings that are not Unicode (lone surrogates). Never RecursionError.
    """
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise TooDeep(f"nested deeper than {max_depth} levels") from None
    stack = [(value, 0)]
    while stack:  # iterative, so no depth of nesting can exhaust the stack
        item, depth = stack.pop()
        if isinstance(item, str):
            _unicode(item)
        elif isinstance(item, (list, dict)):
            if depth >= max_depth:
                raise TooDeep(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key in item:
                    _unicode(key)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _unicode(text: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone surrogate (not Unicode)") from None


# the in-process inbox of a service: deliver(kind, name, JSON body, caller, waiter)
Deliver = Callable[[bytes, str, bytes, str, Waiter], None]


# pyzmq's send_multipart/recv_multipart combine enum flags in Python on every frame, which costs three
# times the send itself: these plain ints and loops do the same for a fraction (the hot path's frames)
_MORE, _NOW = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """`sock.send_multipart(frames, zmq.NOBLOCK)`, faster; zmq.Again when it cannot be queued now
    (nothing is sent then: a message's first frame is queued with all the others or not at all)."""
    for frame in frames[:-1]:
        sock.send(frame, _MORE)
    sock.send(frames[-1], _NOW)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """`sock.recv_multipart(flags)`, faster: every frame of the next message."""
    frame = sock.recv(flags, copy=False)  # a Frame knows whether more follow: no socket option read
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame.bytes)
    return frames


def wire_frames(direction: bytes, msg: WireMessage) -> list[bytes]:
    """A wire message as message-bus frames; `direction` is WIRE_IN or WIRE_OUT."""
    return [direction, msg.peer_id, msg.type.to_bytes(2, "big"), msg.payload]


def wire_from_frames(frames: list[bytes]) -> WireMessage:
    """Inverse of `wire_frames` (without the routing identity)."""
    _, peer, t, payload = frames
    return WireMessage(bytes(peer), int.from_bytes(t, "big"), bytes(payload))


def prepare_bind(endpoint: str) -> None:
    """Create the directory of an ipc:// endpoint and remove a stale socket file."""
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://"):])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            path.unlink()


def new_socket(zctx: zmq.Context, kind: int) -> zmq.Socket:
    """A socket that never blocks on close and bounds its queues."""
    sock = zctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, SEND_HWM)
    sock.setsockopt(zmq.RCVHWM, SEND_HWM)
    return sock


def _result(service: str, name: str, status: bytes, raw: bytes) -> Any:
    """The reply to request `name`, or the RpcError it carries."""
    try:
        result = decode(raw)
    except ValueError:
        raise RpcError(RpcError.INTERNAL_ERROR, f"{service} answered {name!r} with bad JSON") from None
    if status == OK:
        return result
    if not isinstance(result, dict):
        result = {}
    raise RpcError(result.get("code", RpcError.INTERNAL_ERROR), result.get("message", "error"), result.get("data"))


class Bus:
    """One process's access to the buses: sends requests, events and wire messages to services.

    Thread-safe: each thread gets its own DEALER sockets.
    """

    def __init__(self, zctx: zmq.Context, endpoints: Endpoints, source: str) -> None:
        self.zctx = zctx
        self.endpoints = endpoints
        self.source = source
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._sockets: list[zmq.Socket] = []
        # socket or direct link -> the thread that opened it: only that thread may close it while it lives
        # (libzmq aborts the process when a socket is closed under a thread waiting on it)
        self._owner: dict[Any, threading.Thread] = {}
        self._cancelled: set[threading.Thread] = set()  # threads whose waits end now (`cancel_waits`)
        self._lock = threading.Lock()
        self.closed = False
        self.abandoned = ""                   # why every wait fails at once: the node is gone
        self.generation: dict[str, int] = {}  # endpoint -> times its service was restarted
        self._io: Any = None                   # the BusIO thread, started by the first request_async
        self.curve: Any = None  # lnp_host.buskeys.BusCurve when endpoints are tcp://: DEALERs there use CURVE
        self._service_at = {e: s for table in (endpoints.control, endpoints.message) for s, e in table.items()}
        self._here: dict[str, Deliver] = {}   # services whose loop runs in this process, on inproc://
        self._timeouts: dict[zmq.Socket, int] = {}  # each DEALER's receive timeout, without asking zmq
        # control endpoint -> its service's direct socket (ipc:// only: the same host, lnp_host.bus_direct)
        self._direct_at = {e: direct_path(e) for e in endpoints.control.values()}
        self._links: list[DirectLink] = []

    def serve_here(self, service: str, deliver: Deliver | None) -> None:
        """Requests to `service` go to `deliver` (its loop runs in this process), or again over the bus
        (None). Only for an inproc:// control endpoint: any other may be served by another process."""
        if deliver is None:
            self._here.pop(service, None)
        elif self.endpoints.control.get(service, "").startswith("inproc://"):
            self._here[service] = deliver

    def abandon(self, why: str) -> None:
        """The rest of the node is gone: requests waiting now, and later ones, fail at once (within
        WAKE_MS) instead of each waiting for its timeout, so shutdown never waits on a dead peer."""
        self.abandoned = why

    def _give_up_if_abandoned(self, service: str) -> None:
        if self.abandoned:
            raise ServiceUnavailable(service, f"is unreachable: {self.abandoned}")
        if self.closed:  # the node is stopping: a wait ends, and its thread can close its own sockets
            raise ServiceUnavailable(service, "is unreachable: the bus is closed")
        if self._cancelled and threading.current_thread() in self._cancelled:
            raise ServiceUnavailable(service, "is not waited for: the caller is stopping")

    def cancel_waits(self, thread: threading.Thread) -> None:
        """End `thread`'s current and later waits on this bus (within WAKE_MS) with ServiceUnavailable:
        it is stopping, and what it waits for is repeated at the next start."""
        with self._lock:
            self._cancelled = self._cancelled | {thread}

    def restarted(self, service: str) -> None:
        """A service rebound its inboxes: connect afresh (inproc:// connections do not reconnect)."""
        for endpoint in (self.endpoints.control[service], self.endpoints.message[service]):
            self.generation[endpoint] = self.generation.get(endpoint, 0) + 1

    def connect(self, endpoint: str, options: dict[int, int] | None = None, source: str | None = None) -> zmq.Socket:
        """A new DEALER connected to `endpoint`, that never queues for an absent peer; with `source`,
        its routing id names that service (the caller the receiving service sees, lnp_host.caller)."""
        sock = new_socket(self.zctx, zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if source is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id(source))
        if self.curve is not None and endpoint.startswith("tcp://") and endpoint in self._service_at:
            self.curve.client(sock, source or self.source, self._service_at[endpoint])
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        sock.connect(endpoint)
        return sock

    def _dealer(self, endpoint: str, source: str | None = None) -> zmq.Socket:
        source = source or self.source
        cache = getattr(self._local, "dealers", None)
        if cache is None:
            cache = self._local.dealers = {}
        gen = self.generation.get(endpoint, 0)
        cached = cache.get((endpoint, source))
        if cached is not None and cached[0] == gen:
            return cached[1]
        if self.closed:
            raise ServiceUnavailable(endpoint, "is unreachable: the bus is closed")
        if cached is not None:
            self._forget(cached[1])
        sock = self.connect(endpoint, source=source)
        cache[(endpoint, source)] = (gen, sock)
        with self._lock:
            self._sockets.append(sock)
            self._owner[sock] = threading.current_thread()
        return sock

    def _forget(self, sock: zmq.Socket) -> None:
        sock.close(0)
        self._timeouts.pop(sock, None)
        with self._lock:
            if sock in self._sockets:
                self._sockets.remove(sock)
            self._owner.pop(sock, None)

    def _send(self, service: str, endpoint: str, frames: list[bytes], timeout: float,
              source: str | None = None) -> zmq.Socket:
        sock = self._dealer(endpoint, source)
        try:
            send_frames(sock, frames)
        except zmq.Again:  # not connected (yet): wait for the connection, within the timeout
            if timeout <= 0:  # the caller must not wait (an event loop)
                raise ServiceUnavailable(service, "cannot take it now (not connected, or its inbox is full)") \
                    from None
            deadline = time.monotonic() + timeout
            while not sock.poll(max(min(int((deadline - time.monotonic()) * 1000), WAKE_MS), 0), zmq.POLLOUT):
                self._give_up_if_abandoned(service)
                if time.monotonic() >= deadline:
                    raise ServiceUnavailable(service, "is not connected") from None
            send_frames(sock, frames)
        return sock

    def request(self, service: str, name: str, body: Any = None, kind: bytes = REQUEST,
                timeout: float = 30.0, source: str | None = None) -> Any:
        """Send a request to `service`'s control inbox and wait for the reply (timed in debug logs).

        `source`: the service asking (default: this bus's), which the receiver sees as the caller."""
        if not log.isEnabledFor(logging.DEBUG):  # the hot path formats nothing
            return self._request(service, name, body, kind, timeout, source)
        started, outcome = time.perf_counter(), "failed"
        try:
            result = self._request(service, name, body, kind, timeout, source)
            outcome = "ok"
            return result
        except RpcError as e:
            outcome = f"error {e.code}"
            raise
        finally:
            log.debug("bus %s %s -> %s: %s in %.1f ms", kind.decode(errors="replace"), name, service, outcome,
                      (time.perf_counter() - started) * 1000)

    def _request(self, service: str, name: str, body: Any, kind: bytes, timeout: float,
                 source: str | None = None) -> Any:
        endpoint = self.endpoints.control.get(service)
        if endpoint is None:
            raise ServiceUnavailable(service, "is not part of this node")
        self._give_up_if_abandoned(service)
        deliver = self._here.get(service)
        if deliver is not None:
            return self._request_here(deliver, service, name, body, kind, timeout, source or self.source)
        rid = str(next(self._ids)).encode()
        frames = [kind, rid, name.encode(), encode(body)]
        if self._direct_at.get(endpoint) is not None:
            reply = self._request_direct(service, endpoint, name, frames, timeout, source or self.source)
            if reply is not None:
                return _result(service, name, *reply)
        sock = self._send(service, endpoint, frames, timeout, source)
        wake_ms = min(int(timeout * 1000), WAKE_MS)
        if self._timeouts.get(sock) != wake_ms:  # a setsockopt only when it changes
            sock.rcvtimeo = self._timeouts[sock] = wake_ms
        deadline = time.monotonic() + timeout
        while True:
            try:
                # a blocking receive (with a timeout) is one system call less than poll + receive
                frames = recv_frames(sock)
            except zmq.Again:
                self._give_up_if_abandoned(service)
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    break
                sock.rcvtimeo = self._timeouts[sock] = min(remaining_ms, WAKE_MS)
                continue
            if len(frames) == 4 and frames[1] == rid:
                return _result(service, name, frames[2], frames[3])
            # a late reply to a request that timed out earlier: skip it
            if time.monotonic() >= deadline:
                break
        raise ServiceUnavailable(service, f"did not answer {name!r} within {timeout:g}s")

    def _request_direct(self, service: str, endpoint: str, name: str, frames: list[bytes], timeout: float,
                        source: str) -> tuple[bytes, bytes] | None:
        """A request over the calling thread's direct connection to `service`: (status, body), or
        None when there is no connection to be had (the service is starting: ZeroMQ waits for it)."""
        deadline = time.monotonic() + timeout
        for _ in range(2):  # a connection found closed before anything left is made afresh, once
            link = self._link(endpoint, source)
            if link is None:
                return None
            try:
                self._send_direct(link, service, frames, deadline, timeout, name)
                reply = link.receive(frames[1], deadline, lambda: self._give_up_if_abandoned(service))
            except LinkLost as e:
                if e.unsent:
                    continue
                # it may have been handled: never sent twice, as over ZeroMQ, but failed at once
                raise ServiceUnavailable(service, f"{e} before answering {name!r}") from None
            if reply is None:
                break
            return reply[2], reply[3]
        raise ServiceUnavailable(service, f"did not answer {name!r} within {timeout:g}s")

    def _send_direct(self, link: DirectLink, service: str, frames: list[bytes], deadline: float,
                     timeout: float, what: str) -> None:
        try:
            link.send(frames, deadline, lambda: self._give_up_if_abandoned(service))
        except SendTimeout:  # its inbox is full: over ZeroMQ the message would have waited in a queue
            if timeout <= 0:
                raise ServiceUnavailable(service, "cannot take it now (not connected, or its inbox is full)") \
                    from None
            raise ServiceUnavailable(service, f"did not take {what!r} within {timeout:g}s") from None

    def _link(self, endpoint: str, source: str) -> DirectLink | None:
        """The calling thread's direct connection to `endpoint`'s service, asking as `source`; None
        when none can be made now (nobody listens: the service is starting, or the bus is closed)."""
        links = getattr(self._local, "links", None)
        if links is None:
            links = self._local.links = {}
        gen = self.generation.get(endpoint, 0)
        cached = links.get((endpoint, source))
        if cached is not None:
            if cached[0] == gen and cached[1].open:
                return cached[1]
            del links[(endpoint, source)]
            self._forget_link(cached[1])
        if self.closed:
            return None
        try:
            link = DirectLink(self._direct_at[endpoint], source, WAKE_MS)
        except OSError:
            return None
        links[(endpoint, source)] = (gen, link)
        with self._lock:
            self._links.append(link)
            self._owner[link] = threading.current_thread()
        return link

    def _forget_link(self, link: DirectLink) -> None:
        link.close()
        with self._lock:
            if link in self._links:
                self._links.remove(link)
            self._owner.pop(link, None)

    def _request_here(self, deliver: Deliver, service: str, name: str, body: Any, kind: bytes,
                      timeout: float, source: str) -> Any:
        """A request to a service in this process: its inbox and a Waiter instead of two sockets."""
        waiter = Waiter()
        deliver(kind, name, encode(body), source, waiter)
        deadline = time.monotonic() + timeout
        while not waiter.wait(min(deadline - time.monotonic(), WAKE_MS / 1000)):
            self._give_up_if_abandoned(service)
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(service, f"did not answer {name!r} within {timeout:g}s")
        if waiter.error is not None:
            raise waiter.error
        return _result(service, name, *waiter.reply)

    def request_async(self, service: str, name: str, body: Any = None, kind: bytes = REQUEST,
                      timeout: float = 30.0, source: str | None = None) -> Future[Any]:
        """Send a request to `service` without waiting: the Future gets the reply (or the error).

        `source`: the service asking (default: this bus's), which the receiver sees as the caller.

        Its done callbacks run on the bus's I/O thread: keep them short (see `lnp_host.bus_io`).
        """
        endpoint = self.endpoints.control.get(service)
        if endpoint is None:
            future: Future[Any] = Future()
            future.set_exception(ServiceUnavailable(service, "is not part of this node"))
            return future
        return self._io_thread().request(service, endpoint, kind, name, body, timeout, source or self.source)

    def send_wire_soon(self, service: str, direction: bytes, msg: WireMessage, timeout: float = 2.0,
                       source: str | None = None) -> Future[None]:
        """Put a wire message in `service`'s message inbox without waiting: in order after the ones sent
        this way before; the Future fails when the service did not take it within `timeout`."""
        endpoint = self.endpoints.message.get(service)
        if endpoint is None:
            future: Future[None] = Future()
            future.set_exception(ServiceUnavailable(service, "is not part of this node"))
            return future
        return self._io_thread().send(service, endpoint, source or self.source, wire_frames(direction, msg), timeout)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run `fn()` on the bus's I/O thread in `delay` seconds (short and non-blocking)."""
        self._io_thread().call_later(delay, fn)

    def _io_thread(self) -> Any:
        with self._lock:
            if self._io is None:
                if self.closed:
                    raise ServiceUnavailable("bus", "is closed")
                from .bus_io import BusIO  # imported here: bus_io builds on this module
                self._io = BusIO(self)
            return self._io

    def post(self, service: str, name: str, body: Any = None, kind: bytes = EVENT,
             timeout: float = 5.0, source: str | None = None) -> None:
        """Send a one-way control message (an event) to `service`.

        Over the calling thread's direct connection when requests take it, so that a request sent
        after an event from the same thread arrives after it, as on one DEALER."""
        endpoint = self.endpoints.control[service]
        frames = [kind, b"", name.encode(), encode(body)]
        if self._direct_at.get(endpoint) is not None:
            deadline = time.monotonic() + timeout
            for _ in range(2):
                link = self._link(endpoint, source or self.source)
                if link is None:
                    break
                try:
                    return self._send_direct(link, service, frames, deadline, timeout, name)
                except LinkLost as e:
                    if not e.unsent:
                        raise ServiceUnavailable(service, f"{e} while taking {name!r}") from None
        self._send(service, endpoint, frames, timeout, source)

    def connect_ahead(self, service: str) -> None:
        """Open the calling thread's connection to `service`'s message inbox now: a new connection
        takes a moment, and a send that must not wait (timeout 0) would find it still connecting."""
        self._dealer(self.endpoints.message[service])

    def send_wire(self, service: str, direction: bytes, msg: WireMessage, timeout: float = 5.0) -> None:
        """Put a wire message in `service`'s message inbox, waiting up to `timeout` seconds for room
        (0: not at all; ServiceUnavailable at once when it cannot be queued now)."""
        self._send(service, self.endpoints.message[service], wire_frames(direction, msg), timeout)

    def close_thread(self) -> None:
        """Close the DEALERs the calling thread opened (a service thread ending)."""
        with self._lock:
            self._cancelled = self._cancelled - {threading.current_thread()}
        cache = getattr(self._local, "dealers", None) or {}
        for _, sock in cache.values():
            self._forget(sock)
        cache.clear()
        links = getattr(self._local, "links", None) or {}
        for _, link in links.values():
            self._forget_link(link)
        links.clear()

    def close(self) -> bool:
        """Close every DEALER and direct link this bus opened; False when some are left open.

        A socket is closed here only when the thread that opened it has ended (or is this one):
        threads still waiting give up within WAKE_MS and close their own (`close_thread`). The
        sockets of a thread that is still alive after CLOSE_WAIT are left open, and logged: the
        caller must then not destroy the ZeroMQ context either."""
        self.closed = True
        with self._lock:
            io, self._io = self._io, None
        if io is not None:
            io.close()
        deadline = time.monotonic() + CLOSE_WAIT
        while True:
            with self._lock:
                held = self._close_unowned()
            if not held or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if held:
            log.warning("bus: thread(s) %s still hold %d socket(s): left open",
                        ", ".join(sorted({t.name for t in held.values()})), len(held))
        self._timeouts.clear()
        self._local = threading.local()
        return not held

    def _close_unowned(self) -> dict[Any, threading.Thread]:
        """Close the sockets and links whose thread has ended (under _lock); the ones still held."""
        me = threading.current_thread()
        held: dict[Any, threading.Thread] = {}
        for item in [*self._sockets, *self._links]:
            owner = self._owner.get(item)
            if owner is not None and owner is not me and owner.is_alive():
                held[item] = owner
                continue
            if isinstance(item, zmq.Socket):
                item.close(0)
            else:
                item.close()
            self._owner.pop(item, None)
        self._sockets = [s for s in self._sockets if s in held]
        self._links = [link for link in self._links if link in held]
        return held

