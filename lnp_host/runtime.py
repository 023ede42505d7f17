"""One service's runtime: bind its inboxes, start its plugins, dispatch bus messages, stop.

The same runtime runs as a thread (threads mode) or as the main loop of a process (processes mode,
or `lnp-host run --service NAME`).
"""
from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

import zmq

from lnp_plugin_api import Event, RpcError, SettingError

from . import bus as wire
from .bus import ServiceUnavailable, Waiter, decode, encode, new_socket, prepare_bind, wire_from_frames
from .bus_direct import DirectInbox, direct_path
from .bus_waiter import Wakeup
from .caller import calling_as, source_of
from .context import Environment, PluginContext
from .control import answer, as_rpc_error, no_such_request
from .decisions import answer_remote
from .outbox import DELIVER, Courier, receive

POLL_MS = 100
BATCH = 100  # messages of one ZeroMQ inbox handled before the loop looks at the others
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
Reply = Callable[[bytes, bytes], None]  # sends a reply: (OK | ERR, JSON body)


def share_one_cpu() -> None:
    """Run the calling thread (and the threads it starts) on this process's one chosen CPU.

    In threads mode the services take turns anyway (the GIL), so one CPU loses little, and handing a
    request from one service's thread to another's then wakes a thread on the same CPU instead of
    another, idle one: in a virtual machine that cross-CPU wake-up takes most of a round trip.
    """
    if not hasattr(os, "sched_setaffinity"):  # not Linux
        return
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[os.getpid() % len(cpus)]})  # spread the nodes of one machine
    except OSError:
        pass  # not allowed here: the services just run where the system puts them


class ServiceFailed(Exception):
    """The service could not start or was declared broken; `fatal` when a restart cannot help."""

    def __init__(self, reason: str, fatal: bool = False) -> None:
        super().__init__(reason)
        self.fatal = fatal


class ServiceRuntime:
    """Runs one service until `stop()` is called or it fails."""

    def __init__(self, env: Environment, name: str) -> None:
        self.env = env
        self.name = name
        self.plugins = env.registry.plugins_in(name)
        self.log = logging.getLogger(f"lnp.{name}")
        self.ready = threading.Event()
        self.error: str | None = None
        self.fatal = False  # it failed on a setting (SettingError): restarting cannot help
        self._stop = threading.Event()
        # handlers may answer later with a Future; its reply is sent from this thread when it is done
        self._finished: queue.SimpleQueue[tuple[Reply, str, Future[Any]]] = queue.SimpleQueue()
        # requests from services running in this process (Bus.serve_here): no sockets, the same checks
        self._here: queue.SimpleQueue[tuple[bytes, str, bytes, str, Waiter]] = queue.SimpleQueue()
        self._wakeup = Wakeup()  # what other threads hand this one is waiting: the loop polls it
        self._wake_read = self._wakeup.fileno()
        # functions other threads hand to this one (ctx.call_soon), run between messages
        self._soon: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._soon_lock = threading.Lock()
        self._soon_closed = False
        self._thread_id: int | None = None

    def stop(self) -> None:
        """Ask the loop to end; `run` then stops the plugins in reverse order."""
        self._stop.set()

    def run(self) -> None:
        """Serve until stopped. Raises ServiceFailed when startup fails or a plugin calls `fail`."""
        zctx = self.env.zctx
        control = new_socket(zctx, zmq.ROUTER)
        message = new_socket(zctx, zmq.ROUTER)
        started: list[str] = []
        self._thread_id = threading.get_ident()
        self.env.loops[self.name] = self
        bus_cfg = self.env.profile.section("bus")
        if bus_cfg["mode"] == "threads" and bus_cfg["one_cpu"]:
            share_one_cpu()
        courier = Courier(self.env, self.name)
        try:
            for sock, endpoint in ((control, self.env.endpoints.control[self.name]),
                                   (message, self.env.endpoints.message[self.name])):
                prepare_bind(endpoint)
                if endpoint.startswith("tcp://"):  # never plaintext over TCP (lnp_host.buskeys)
                    self.env.bus.curve.server(sock, self.name)
                try:
                    sock.bind(endpoint)
                except zmq.ZMQError as e:
                    raise ServiceFailed(f"cannot bind {endpoint}: {e}") from None
            contexts = {p: PluginContext(self.env, p) for p in self.plugins}
            self.env.contexts.update(contexts)
            for plugin in self.plugins:
                try:
                    self.env.registry.call("lnp_startup", plugin, ctx=contexts[plugin])
                except SettingError as e:  # the user's to fix: one line, no traceback
                    self.log.error("%s", e)
                    raise ServiceFailed(str(e), fatal=True) from None
                except Exception as e:
                    self.log.exception("plugin %s failed to start", plugin)
                    raise ServiceFailed(f"plugin {plugin!r} failed to start: {type(e).__name__}: {e}") from None
                started.append(plugin)
            self.env.failures.pop(self.name, None)
            self.env.bus.serve_here(self.name, self._deliver)
            self.log.info("service %s running (%s)", self.name, ", ".join(self.plugins) or "host only")
            self.ready.set()
            self.env.couriers[self.name] = courier
            courier.start()  # what the plugins committed before (and while) this service was down
            self._loop(control, message)
        except ServiceFailed as e:
            self.error, self.fatal = str(e), e.fatal
            raise
        finally:
            courier.stop()
            self.env.couriers.pop(self.name, None)
            for plugin in reversed(started):
                try:
                    self.env.registry.call("lnp_shutdown", plugin, ctx=self.env.contexts[plugin])
                except Exception:
                    self.log.exception("plugin %s failed to stop cleanly", plugin)
            for plugin in self.plugins:
                self.env.contexts.pop(plugin, None)
            if self.env.loops.get(self.name) is self:
                del self.env.loops[self.name]
            self.env.bus.serve_here(self.name, None)
            with self._soon_lock:  # no write may reach the wake-up descriptor once closed (and reused)
                self._soon_closed = True
            self._refuse_here()
            control.close(0)
            message.close(0)
            self._wakeup.close()
            self.env.bus.close_thread()
            self.log.info("service %s stopped", self.name)

    def _loop(self, control: zmq.Socket, message: zmq.Socket) -> None:
        # select.poll, not zmq.Poller: zmq_poll asks every ZeroMQ socket for its events before and
        # after it waits (six system calls), on every wake-up, though in-process and direct requests
        # never touch those sockets. A socket's descriptor only says "ask me": so a socket is asked
        # (ZMQ_EVENTS) after its descriptor fired or this thread used it, and until then the loop may
        # not block; asked and found empty, its descriptor fires when anything new comes.
        poller = select.poll()
        sockets = {control.get(zmq.FD): control, message.get(zmq.FD): message}
        for fd in sockets:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        curve = bool(control.curve_server)  # asked once: a socket option read costs a call per message
        direct = self._direct_inbox(poller)
        unasked = {control, message}
        asked = 0.0
        try:
            while not self._stop.is_set():
                failure = self.env.failures.get(self.name)
                if failure:
                    raise ServiceFailed(failure)
                now = time.monotonic()
                if now - asked >= POLL_MS / 1000:  # and every POLL_MS anyway: a safety net, never a wait
                    asked = now
                    unasked.update((control, message))
                for sock in (control, message):
                    if sock in unasked and not self._serve_socket(sock, control, curve):
                        unasked.discard(sock)
                for fd, events in poller.poll(0 if unasked else POLL_MS):
                    sock = sockets.get(fd)
                    if sock is not None:
                        unasked.add(sock)
                        continue
                    try:
                        if fd == self._wake_read:
                            self._drain_wake()
                            self._serve_here()
                            if self._send_finished():  # replies went out on the control socket
                                unasked.add(control)
                            self._run_soon()
                        elif direct is not None:
                            direct.ready(fd, events)
                    except Exception:  # one bad message must never end the service
                        self.log.exception("unexpected error handling a bus message in %s; serving on", self.name)
        finally:
            if direct is not None:
                direct.close()

    def _serve_socket(self, sock: zmq.Socket, control: zmq.Socket, curve: bool) -> bool:
        """Handle what waits on a ZeroMQ inbox, up to BATCH messages; True when more may wait."""
        for _ in range(BATCH):
            if not sock.get(_EVENTS) & _POLLIN:
                return False
            try:
                if sock is control:
                    self._on_control(control, *self._receive_control(control, curve))
                else:
                    self._on_message(wire.recv_frames(sock, zmq.NOBLOCK))
            except Exception:  # one bad message must never end the service
                self.log.exception("unexpected error handling a bus message in %s; serving on", self.name)
        return True

    def _direct_inbox(self, poller: select.poll) -> DirectInbox | None:
        """Listen for direct connections from services of this host (ipc:// only, lnp_host.bus_direct)."""
        path = direct_path(self.env.endpoints.control[self.name])
        if path is None:
            return None
        try:
            return DirectInbox(path, self._on_direct, poller.register, poller.unregister)
        except OSError as e:  # callers find nobody there and use ZeroMQ
            self.log.warning("no direct inbox at %s (%s): requests come over ZeroMQ", path, e)
            return None

    def _on_direct(self, frames: list[bytes], caller: str | None, reply: Reply | None) -> None:
        """A control message from a direct connection: the frames of the bus without the routing id,
        the caller named by the connection's hello."""
        if len(frames) != 4 or reply is None:
            self.log.warning("dropped a malformed control message (%d frames)", len(frames))
            return
        kind, _, name_raw, body_raw = frames
        self._handle(kind, name_raw.decode(errors="replace"), body_raw, caller, reply)

    def _receive_control(self, sock: zmq.Socket, curve: bool) -> tuple[list[bytes], str | None]:
        """A control frame set and the service that sent it: over CURVE the one whose key the sender
        authenticated with, else the one its routing id names (lnp_host.caller)."""
        if curve:
            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            return [p.bytes for p in parts], self.env.bus.curve.service_of(parts[-1].get("User-Id"))
        frames = wire.recv_frames(sock, zmq.NOBLOCK)
        return frames, source_of(frames[0]) if frames else None

    def _on_control(self, sock: zmq.Socket, frames: list[bytes], caller: str | None = None) -> None:
        if len(frames) != 5:
            self.log.warning("dropped a malformed control message (%d frames)", len(frames))
            return
        ident, kind, rid, name_raw, body_raw = frames

        def reply(status: bytes, raw: bytes) -> None:
            try:
                wire.send_frames(sock, [ident, wire.REPLY, rid, status, raw])
            except zmq.ZMQError as e:  # the asker's queue is full: its request times out, the others go on
                self.log.warning("could not answer %r: %s", name_raw[:100], e)

        self._handle(kind, name_raw.decode(errors="replace"), body_raw, caller, reply)

    def _handle(self, kind: bytes, name: str, body_raw: bytes, caller: str | None, reply: Reply) -> None:
        """Answer one control message, however it came: `reply` sends the answer (none for events)."""
        try:
            try:
                body = decode(body_raw)
            except ValueError as e:
                raise RpcError(RpcError.INVALID_REQUEST, f"the body of {name!r} is not valid JSON: {e}") from None
            with calling_as(caller):
                result = self._dispatch(kind, name, body)
            if isinstance(result, Future):  # answered later, without holding up this service
                result.add_done_callback(lambda f: self._finish_later(reply, name, f))
                return
            status, raw = wire.OK, encode(result)
        except Exception as e:
            status, raw = wire.ERR, encode(self._error(kind, name, e))
        if kind != wire.EVENT:  # events are one-way, even when their handling failed
            reply(status, raw)

    def _deliver(self, kind: bytes, name: str, body_raw: bytes, caller: str, waiter: Waiter) -> None:
        """A request from a service in this process (any thread): queued for this service's thread."""
        with self._soon_lock:
            if self._soon_closed:
                raise ServiceUnavailable(self.name, "has stopped")
            self._here.put((kind, name, body_raw, caller, waiter))
            self._wake()

    def _serve_here(self) -> None:
        for _ in range(self._here.qsize()):  # only those queued so far, as `_run_soon`
            kind, name, body_raw, caller, waiter = self._here.get_nowait()
            try:
                self._handle(kind, name, body_raw, caller, waiter.set)
            except Exception as e:  # never leave the caller waiting for its timeout
                waiter.fail(e)
                raise

    def _refuse_here(self) -> None:
        while not self._here.empty():
            self._here.get_nowait()[4].fail(ServiceUnavailable(self.name, "has stopped"))

    def _error(self, kind: bytes, name: str, e: BaseException) -> dict[str, Any]:
        return as_rpc_error(self.name, name, e, self.log).to_json()

    def _finish_later(self, reply: Reply, name: str, future: Future[Any]) -> None:
        """Runs in whichever thread completed the future: hand the reply to the service's thread."""
        self._finished.put((reply, name, future))
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()

    def _drain_wake(self) -> None:
        self._wakeup.clear()

    def _send_finished(self) -> bool:
        """Send the replies that Futures completed; True when there were any."""
        if self._finished.empty():
            return False
        while not self._finished.empty():
            reply, name, future = self._finished.get()
            try:
                status, raw = wire.OK, encode(future.result())
            except BaseException as e:
                status, raw = wire.ERR, encode(self._error(wire.REQUEST, name, e))
            reply(status, raw)
        return True

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on this service's thread (from any thread), between two messages."""
        with self._soon_lock:
            if self._soon_closed:
                raise ServiceUnavailable(self.name, "has stopped")
            self._soon.put(fn)
            self._wake()

    def on_own_thread(self) -> bool:
        """True when called on this service's thread."""
        return threading.get_ident() == self._thread_id

    def _run_soon(self) -> None:
        for _ in range(self._soon.qsize()):  # only those queued so far: the loop must serve messages too
            fn = self._soon.get_nowait()
            try:
                fn()
            except Exception:
                self.log.exception("a function run with call_soon failed")

    def _dispatch(self, kind: bytes, name: str, body: Any) -> Any:
        reg = self.env.registry
        if kind == wire.PING:
            return {"service": self.name, "plugins": self.plugins}
        if kind == wire.CALL:
            owned = reg.rpc.get(name)
            if owned is None or owned.service != self.name:
                raise RpcError(RpcError.METHOD_NOT_FOUND, f"unknown command {name!r}")
            if not isinstance(body, dict):
                raise RpcError(RpcError.INVALID_PARAMS, "parameters must be an object")
            return owned.item.handler(self.env.contexts[owned.plugin], **body)
        if kind == wire.REQUEST and name == DELIVER:  # durable rows from another service's courier
            return receive(self.env, self.name, body)
        if kind == wire.REQUEST:
            owned = reg.control.get(name)
            if owned is not None and owned.service == self.name:
                return answer(owned, self.env.contexts[owned.plugin], name, body)
            builtin = self.env.builtins.get(name)
            if builtin is not None:
                return builtin(body)
            if owned is None:
                raise no_such_request(name)
            raise RpcError(RpcError.METHOD_NOT_FOUND, f"service {self.name!r} has no control request {name!r} "
                           f"({owned.plugin!r} answers it in {owned.service!r})")
        if kind == wire.EVENT:
            source = body.get("source", "?") if isinstance(body, dict) else "?"
            event = Event(name, source, body.get("body", {}) if isinstance(body, dict) else {})
            for sub in reg.subscribers(name):
                if sub.service == self.name:
                    try:
                        sub.item(self.env.contexts[sub.plugin], event)
                    except Exception:
                        self.log.exception("handler of event %s in %s failed", name, sub.plugin)
            return None
        if kind == wire.DECISION:  # a Future answer is replied to later, like a request's
            return answer_remote(self.env, self.name, name, body)
        raise RpcError(RpcError.INVALID_REQUEST, f"unknown control message kind {kind!r}")

    def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 5 or frames[1] not in (wire.WIRE_IN, wire.WIRE_OUT) or len(frames[3]) != 2:
            self.log.warning("dropped a malformed message-bus frame set")
            return
        direction = frames[1]
        msg = wire_from_frames(frames[1:])
        reg = self.env.registry
        owned = reg.outbound if direction == wire.WIRE_OUT else reg.wire.get(msg.type)
        if owned is None or owned.service != self.name:
            self.log.warning("no handler here for wire message type %d (%s)", msg.type, direction.decode())
            return
        try:
            owned.item(self.env.contexts[owned.plugin], msg)
        except Exception:
            self.log.exception("handler of wire message type %d in %s failed", msg.type, owned.plugin)
