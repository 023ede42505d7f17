"""Non-blocking control requests: `Bus.request_async` and `Bus.call_later` are served here.

One background I/O thread per `Bus` owns its own DEALER sockets (one per destination), sends the
requests handed to it from any thread, matches replies to them by id, and fails those whose deadline
passes (a heap of deadlines, which also holds the timers of `call_later`). The caller gets a
`concurrent.futures.Future` at once. Its done callbacks, and timer functions, run on the I/O thread:
they must be short and must not block (hand the work to a service with `ctx.call_soon`).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any, Callable

import zmq

from lnp_plugin_api import RpcError

from .bus import ERR, OK, REPLY, ServiceUnavailable, decode, encode

if TYPE_CHECKING:
    from .bus import Bus

log = logging.getLogger("lnp.host.bus")
JOIN_TIMEOUT = 5.0


def settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    """Complete `future` unless it is already done (for example cancelled by its caller)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class _Pending:
    """A request sent (or waiting to be sent) whose reply has not come yet."""

    __slots__ = ("future", "service", "name", "timeout")

    def __init__(self, future: Future[Any], service: str, name: str, timeout: float) -> None:
        self.future, self.service, self.name, self.timeout = future, service, name, timeout


class BusIO:
    """The I/O thread of one Bus. Every method is thread-safe; state is touched on the I/O thread only."""

    def __init__(self, bus: "Bus") -> None:
        self._bus = bus
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._closing = False            # asked to stop
        self._closed = False             # takes no more work (under _lock)
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        # the rest belongs to the I/O thread
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._pending: dict[bytes, _Pending] = {}
        self._oneway: set[bytes] = set()   # pending ids of one-way messages: done once sent
        # (endpoint, asking service) -> (generation, DEALER): the DEALER's routing id names the asker
        self._dealers: dict[tuple[str, str], tuple[int, zmq.Socket]] = {}
        self._outbox: dict[zmq.Socket, deque[tuple[bytes, list[bytes]]]] = {}
        self._poller = zmq.Poller()
        self._thread = threading.Thread(target=self._run, name="bus-io", daemon=True)
        self._thread.start()

    # --- any thread -------------------------------------------------------------------------------

    def request(self, service: str, endpoint: str, kind: bytes, name: str, body: Any,
                timeout: float, source: str) -> Future[Any]:
        """Send a control request; the Future gets the reply, an RpcError, or ServiceUnavailable."""
        future: Future[Any] = Future()
        frames = [kind, b"", name.encode(), encode(body)]  # encoded here: a bad body fails its caller
        if not self._submit(lambda: self._send(service, endpoint, source, frames,
                                               _Pending(future, service, name, timeout))):
            settle(future, error=ServiceUnavailable(service, "is unreachable: the bus is closed"))
        return future

    def send(self, service: str, endpoint: str, source: str, frames: list[bytes], timeout: float) -> Future[None]:
        """Send a one-way message (a wire message to its handler's inbox), in order after the ones sent
        before to the same endpoint; the Future is done once ZeroMQ took it, or fails after `timeout`
        (the service not connected, or its inbox full), failing every later one queued behind it too,
        so a receiver never gets a message whose predecessor was lost."""
        future: Future[None] = Future()
        if not self._submit(lambda: self._send_oneway(service, endpoint, source, frames,
                                                      _Pending(future, service, "a message", timeout))):
            settle(future, error=ServiceUnavailable(service, "is unreachable: the bus is closed"))
        return future

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run `fn()` on the I/O thread after `delay` seconds (short and non-blocking, like callbacks)."""
        due = time.monotonic() + max(delay, 0.0)
        if not self._submit(lambda: heapq.heappush(self._timers, (due, next(self._seq), fn))):
            raise ServiceUnavailable("bus", "is closed")

    def close(self) -> None:
        """Stop the thread; requests still waiting fail with ServiceUnavailable."""
        self._closing = True
        self._wake()
        self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            log.error("the bus I/O thread did not stop within %gs", JOIN_TIMEOUT)
            return  # it still uses the pipe: leave it open rather than pull it from under the thread
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _submit(self, work: Callable[[], None]) -> bool:
        with self._lock:  # against _shut: work is either refused or run, never forgotten
            if self._closed:
                return False
            self._inbox.put(work)
        self._wake()
        return True

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"!")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake-up is pending anyway

    # --- the I/O thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        self._poller.register(self._wake_read, zmq.POLLIN)
        try:
            while not self._closing:
                for item, events in self._poller.poll(self._poll_ms()):
                    if item == self._wake_read:
                        self._take_work()
                        continue
                    if events & zmq.POLLIN:
                        self._receive(item)
                    if events & zmq.POLLOUT:
                        self._flush(item)
                self._fire_timers()
        except Exception:
            log.exception("the bus I/O thread failed")
        finally:
            self._closing = True
            self._shut()

    def _poll_ms(self) -> int:
        if not self._timers:
            return 1000
        return max(0, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)

    def _take_work(self) -> None:
        try:
            os.read(self._wake_read, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                work = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                work()
            except Exception:
                log.exception("bus I/O work failed")

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception:
                log.exception("a bus timer failed")

    def _dealer(self, endpoint: str, source: str) -> zmq.Socket:
        gen = self._bus.generation.get(endpoint, 0)
        cached = self._dealers.get((endpoint, source))
        if cached is not None and cached[0] == gen:
            return cached[1]
        if cached is not None:  # the service restarted: inproc:// does not reconnect, so connect afresh
            self._drop(cached[1], "was restarted")
        sock = self._bus.connect(endpoint, source=source)
        self._dealers[(endpoint, source)] = (gen, sock)
        self._poller.register(sock, zmq.POLLIN)
        return sock

    def _drop(self, sock: zmq.Socket, why: str) -> None:
        for rid, _ in self._outbox.pop(sock, ()):
            self._fail(rid, why)
        self._poller.unregister(sock)
        sock.close(0)

    def _socket_for(self, service: str, endpoint: str, source: str, pending: _Pending) -> zmq.Socket | None:
        """The DEALER to send on, or None with `pending` failed (the bus closed, the endpoint unusable)."""
        if self._closed:
            settle(pending.future, error=ServiceUnavailable(service, "is unreachable: the bus is closed"))
            return None
        try:
            return self._dealer(endpoint, source)
        except zmq.ZMQError as e:
            settle(pending.future, error=ServiceUnavailable(service, f"is unreachable: {e}"))
            return None

    def _send(self, service: str, endpoint: str, source: str, frames: list[bytes], pending: _Pending) -> None:
        if pending.future.done():
            return  # cancelled before it left
        sock = self._socket_for(service, endpoint, source, pending)
        if sock is None:
            return
        rid = str(next(self._ids)).encode()
        frames[1] = rid
        self._pending[rid] = pending
        heapq.heappush(self._timers, (time.monotonic() + pending.timeout, next(self._seq),
                                      lambda: self._fail(rid, f"did not answer {pending.name!r} within "
                                                              f"{pending.timeout:g}s")))
        waiting = self._outbox.get(sock)
        if waiting:  # keep the order of requests to one service
            waiting.append((rid, frames))
            return
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # not connected yet (or the queue is full): send once it can take it
            self._outbox[sock] = deque([(rid, frames)])
            self._poller.modify(sock, zmq.POLLIN | zmq.POLLOUT)

    def _send_oneway(self, service: str, endpoint: str, source: str, frames: list[bytes],
                     pending: _Pending) -> None:
        sock = self._socket_for(service, endpoint, source, pending)
        if sock is None:
            return
        rid = b"~" + str(next(self._ids)).encode()  # never a reply's id: requests' ids are digits
        waiting = self._outbox.get(sock)
        if not waiting:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
                settle(pending.future, None)
                return
            except zmq.Again:  # not connected yet (or the inbox is full): send once it can take it
                waiting = self._outbox[sock] = deque()
                self._poller.modify(sock, zmq.POLLIN | zmq.POLLOUT)
        self._pending[rid] = pending
        self._oneway.add(rid)
        waiting.append((rid, frames))
        heapq.heappush(self._timers, (time.monotonic() + pending.timeout, next(self._seq),
                                      lambda: self._fail_after(sock, rid)))

    def _fail_after(self, sock: zmq.Socket, rid: bytes) -> None:
        """A one-way message could not be sent in time: it fails, and so do the ones queued after it."""
        if rid not in self._pending:
            return  # sent meanwhile
        why = "did not take a message in time (not connected, or its inbox is full)"
        after = False
        for queued, _ in list(self._outbox.get(sock, ())):
            after = after or queued == rid
            if after and queued in self._oneway:
                self._oneway.discard(queued)
                self._fail(queued, why)

    def _flush(self, sock: zmq.Socket) -> None:
        waiting = self._outbox.get(sock)
        while waiting:
            rid, frames = waiting[0]
            if rid in self._pending:
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    return
                if rid in self._oneway:  # one-way: done once sent
                    self._oneway.discard(rid)
                    settle(self._pending.pop(rid).future, None)
            waiting.popleft()
        self._outbox.pop(sock, None)
        self._poller.modify(sock, zmq.POLLIN)

    def _receive(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 4 or frames[0] != REPLY:
                log.warning("dropped a malformed reply (%d frames)", len(frames))
                continue
            pending = self._pending.pop(frames[1], None)
            if pending is None:
                continue  # the answer to a request that timed out
            try:
                body = decode(frames[3])
            except ValueError:
                settle(pending.future, error=RpcError(RpcError.INTERNAL_ERROR,
                                                      f"{pending.service} sent a reply that is not JSON"))
                continue
            if frames[2] == OK:
                settle(pending.future, body)
            elif frames[2] == ERR and isinstance(body, dict):
                settle(pending.future, error=RpcError(body.get("code", RpcError.INTERNAL_ERROR),
                                                      str(body.get("message", "error")), body.get("data")))
            else:
                settle(pending.future, error=RpcError(RpcError.INTERNAL_ERROR,
                                                      f"{pending.service} sent a malformed reply"))

    def _fail(self, rid: bytes, why: str) -> None:
        pending = self._pending.pop(rid, None)
        if pending is not None:
            settle(pending.future, error=ServiceUnavailable(pending.service, why))

    def _shut(self) -> None:
        with self._lock:
            self._closed = True
        self._take_work()  # what was submitted before: requests fail (closed), nothing is left waiting
        for rid in list(self._pending):
            self._fail(rid, "is unreachable: the bus is closed")
        for _, sock in self._dealers.values():
            sock.close(0)
        self._dealers.clear()
        self._timers.clear()
