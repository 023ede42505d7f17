"""Starts the services (threads or processes), notices when one dies, restarts it or stops the node.

A thread is dead when it ended; a child process when it exited; any process-mode or external
service when its connection misses `heartbeat_misses` heartbeats. Heartbeats are ZeroMQ's own
(ZMTP PING/PONG, answered by libzmq's I/O thread), so a service busy in a long handler is alive
while a stopped or vanished one is not. What follows is the service's `on_failure` policy: a
restart, unless `max_restarts` restarts happened within the last `restart_window` seconds, or a stop.
A service that (re)starts after the node became ready receives `node_ready` at once.
Nothing waits without a deadline.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from lnp_plugin_api import RpcError

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import bus as wire
from .context import Environment, publish
from .plugins import HOST_PLUGIN
from .profile import HOST_SERVICE
from .runtime import ServiceRuntime

log = logging.getLogger("lnp.host.supervisor")
START_TIMEOUT = 30.0
EXIT_BAD_SETTING = 2  # a service that cannot start on its settings; the node exits with it too
STOP_TIMEOUT = 10.0


@dataclass
class ServiceHandle:
    """One service as the supervisor sees it."""

    name: str
    launch: str                      # "thread", "process" or "external"
    plugins: list[str]
    state: str = "stopped"           # starting, running, restarting, unreachable, failed, stopping, stopped
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)  # monotonic, within the restart window
    pid: int | None = None
    since: float = field(default_factory=time.time)
    error: str | None = None
    connected: bool = False
    down_since: float = 0.0          # monotonic time the heartbeat connection was last lost
    monitor: Any = None              # (heartbeat DEALER, its monitor socket) for process services
    fatal: bool = False              # failed on a setting: not restarted, the node exits with status 2
    runtime: ServiceRuntime | None = None
    thread: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None

    def set_state(self, state: str, error: str | None = None) -> None:
        """Move to `state`, remembering when and why."""
        self.state, self.since = state, time.time()
        if error is not None:
            self.error = error

    def describe(self) -> dict[str, Any]:
        """The JSON form `info` shows."""
        return {"name": self.name, "state": self.state, "launch": self.launch, "pid": self.pid,
                "plugins": self.plugins, "restarts": self.restarts, "since": round(self.since, 3),
                "error": self.error}


class Supervisor:
    """Owns the services of a node run by `lnp-host run`."""

    def __init__(self, env: Environment, spawn: Callable[[str, int | None], subprocess.Popen[bytes]]) -> None:
        self.env = env
        self.spawn = spawn  # spawn(service, gate): with a gate, the child waits to read a byte from it to go on
        self._waiting: dict[str, tuple[subprocess.Popen[bytes], int]] = {}  # spawned ahead: (process, gate)
        bus_cfg = env.profile.section("bus")
        self.mode = bus_cfg["mode"]
        self.heartbeat = bus_cfg["heartbeat_interval"]
        self.misses = bus_cfg["heartbeat_misses"]
        self.services: dict[str, ServiceHandle] = {}
        for name in env.registry.services:
            settings = env.profile.service_settings(name)
            if name == HOST_SERVICE or self.mode == "threads":
                launch = "thread"
            else:
                launch = "process" if settings["launch"] == "auto" else "external"
            self.services[name] = ServiceHandle(name, launch, env.registry.plugins_in(name))
        self.stop_requested = threading.Event()
        self.exit_status = 0
        self.ready: dict[str, Any] | None = None  # node_ready's body, once every service has started

    def announce_ready(self, body: dict[str, Any]) -> None:
        """Tell every service the node is ready; services (re)started later are told when they start."""
        self.ready = body
        publish(self.env, "node_ready", HOST_PLUGIN, body)

    def _set(self, handle: ServiceHandle, state: str, error: str | None = None) -> None:
        handle.set_state(state, error)
        if state in ("running", "failed", "unreachable", "restarting"):
            publish(self.env, "service_state", HOST_PLUGIN,
                    {"service": handle.name, "state": state, "error": handle.error if state != "running" else None})
        if state == "running" and self.ready is not None:
            self._tell_ready(handle.name)

    def _tell_ready(self, service: str) -> None:
        """Deliver node_ready to one service that started after it was announced (it would wait for it)."""
        if not any(sub.service == service for sub in self.env.registry.subscribers("node_ready")):
            return
        try:
            self.env.bus.post(service, "node_ready", {"source": HOST_PLUGIN, "body": self.ready}, timeout=0.5)
        except RpcError as e:
            log.warning("node_ready not delivered to %s: %s", service, e.message)

    # --- starting ---------------------------------------------------------------------------------

    def start_all(self) -> None:
        """Start every service in order; a service that cannot start applies its failure policy.

        Service processes are all spawned at once and load their code side by side; each waits at its
        gate (a pipe) until its turn comes, so they still start, and bind, in the profile's order."""
        self._spawn_ahead()
        try:
            self._start_in_order()
        finally:
            for proc, gate in self._waiting.values():  # never started (the node stops): EOF ends them
                os.close(gate)
                proc.wait(STOP_TIMEOUT)
            self._waiting.clear()

    def _spawn_ahead(self) -> None:
        for handle in self.services.values():
            if handle.launch != "process":
                continue
            gate_read, gate_write = os.pipe()
            try:
                proc = self.spawn(handle.name, gate_read)
            except OSError as e:
                os.close(gate_write)
                log.error("service %s could not be spawned: %s", handle.name, e)
                continue
            finally:
                os.close(gate_read)
            self._waiting[handle.name] = (proc, gate_write)

    def _start_in_order(self) -> None:
        for handle in self.services.values():
            if self.stop_requested.is_set():
                return
            if handle.launch == "external":
                self._set(handle, "starting")
                log.info("service %s is external: waiting for it to answer", handle.name)
                continue
            if not self._start(handle):
                self._on_death(handle, handle.error or "failed to start")

    def _start(self, handle: ServiceHandle) -> bool:
        self._set(handle, "starting")
        if handle.launch == "thread":
            runtime = ServiceRuntime(self.env, handle.name)
            thread = threading.Thread(target=self._thread_main, args=(runtime,), name=handle.name, daemon=True)
            handle.runtime, handle.thread, handle.pid = runtime, thread, os.getpid()
            thread.start()
            deadline = time.monotonic() + START_TIMEOUT
            while not runtime.ready.wait(0.05):
                if not thread.is_alive() or time.monotonic() > deadline:
                    handle.fatal = runtime.fatal
                    self._set(handle, "failed", runtime.error or "did not start in time")
                    return False
        else:
            waiting = self._waiting.pop(handle.name, None)
            if waiting is not None:  # spawned ahead: open its gate
                handle.process, gate = waiting
                try:
                    os.write(gate, b"!")
                except OSError:
                    pass  # it already ended: seen below as exited while starting
                os.close(gate)
            else:
                handle.process = self.spawn(handle.name, None)
            handle.pid = handle.process.pid
            self._heartbeat_events(handle)
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if handle.process.poll() is not None:
                    handle.fatal = handle.process.returncode == EXIT_BAD_SETTING
                    self._set(handle, "failed", f"exited with status {handle.process.returncode} while starting")
                    return False
                if self._ping(handle, 0.2):
                    break
                if time.monotonic() > deadline:
                    self._set(handle, "failed", "did not answer in time")
                    self._kill(handle)
                    return False
        self._set(handle, "running")
        return True

    @staticmethod
    def _thread_main(runtime: ServiceRuntime) -> None:
        try:
            runtime.run()
        except Exception as e:  # recorded for the supervisor; the thread just ends
            runtime.error = runtime.error or f"{type(e).__name__}: {e}"

    def _ping(self, handle: ServiceHandle, timeout: float) -> bool:
        try:
            self.env.bus.request(handle.name, "", kind=wire.PING, timeout=timeout)
            return True
        except RpcError:
            return False

    # --- watching ---------------------------------------------------------------------------------

    def watch(self) -> None:
        """Watch the services until the node is asked to stop."""
        while not self.stop_requested.wait(0.2):
            for handle in self.services.values():
                if handle.state in ("failed", "stopped", "stopping"):
                    continue
                reason = self._check(handle)
                if reason:
                    self._on_death(handle, reason)

    def _check(self, handle: ServiceHandle) -> str | None:
        if handle.launch == "thread":
            assert handle.thread is not None and handle.runtime is not None
            if not handle.thread.is_alive():
                return handle.runtime.error or "its thread ended"
            return None
        if handle.process is not None and handle.process.poll() is not None:
            code = handle.process.returncode
            return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        self._heartbeat_events(handle)
        if handle.state == "running" and not handle.connected \
                and time.monotonic() - handle.down_since > self.heartbeat * self.misses:
            if self._ping(handle, self.heartbeat):  # the heartbeat connection lags (a loaded machine)
                handle.down_since = time.monotonic()
                return None
            return f"missed {self.misses} heartbeats"
        if handle.state in ("starting", "unreachable") and handle.connected and self._ping(handle, 0.2):
            self._set(handle, "running")
        return None

    def _heartbeat_events(self, handle: ServiceHandle) -> None:
        """Follow the heartbeat connection: a completed handshake means alive, a disconnect dead."""
        if handle.monitor is None:
            ivl = max(int(self.heartbeat * 1000), 50)
            sock = self.env.bus.connect(self.env.endpoints.control[handle.name], {
                zmq.HEARTBEAT_IVL: ivl, zmq.HEARTBEAT_TIMEOUT: ivl * self.misses,
                zmq.HEARTBEAT_TTL: ivl * self.misses, zmq.RECONNECT_IVL: ivl})
            handle.monitor = (sock, sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED))
            handle.connected, handle.down_since = False, time.monotonic()
        _, monitor = handle.monitor
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                handle.connected = True
            elif handle.connected:
                handle.connected, handle.down_since = False, time.monotonic()

    def _drop_monitor(self, handle: ServiceHandle) -> None:
        if handle.monitor is not None:
            sock, monitor = handle.monitor
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            handle.monitor = None

    def _on_death(self, handle: ServiceHandle, reason: str) -> None:
        log.error("service %s died: %s", handle.name, reason)
        policy = self.env.profile.service_settings(handle.name)
        if handle.launch == "external":
            if handle.state != "unreachable":
                self._set(handle, "unreachable", reason)
            if policy["on_failure"] == "stop":
                self.request_stop(1)
            return
        if handle.fatal:  # it cannot start on its settings: a restart cannot help
            policy = {**policy, "on_failure": "stop"}
        self._kill(handle)
        self._drop_monitor(handle)
        # only recent restarts count: a service that crashes now and then, months apart, is kept
        now = time.monotonic()
        handle.restart_times = [t for t in handle.restart_times if now - t < policy["restart_window"]]
        if policy["on_failure"] == "restart" and len(handle.restart_times) < policy["max_restarts"] \
                and not self.stop_requested.is_set():
            handle.restarts += 1
            handle.restart_times.append(now)
            self._set(handle, "restarting", reason)
            self.env.bus.restarted(handle.name)
            log.warning("restarting service %s (restart %d of %d allowed within %gs)", handle.name,
                        len(handle.restart_times), policy["max_restarts"], policy["restart_window"])
            if self._start(handle):
                return
            reason = handle.error or reason
        elif policy["on_failure"] == "restart" and not self.stop_requested.is_set():
            reason = (f"{reason}; max_restarts ({policy['max_restarts']}) reached within restart_window "
                      f"({policy['restart_window']:g}s)")
        self._set(handle, "failed", reason)
        log.error("service %s failed (%s): stopping the node", handle.name, reason)
        self.request_stop(EXIT_BAD_SETTING if handle.fatal else 1)

    def request_stop(self, status: int = 0) -> None:
        """Ask the node to stop; `status` becomes the exit status unless one was set already."""
        if not self.stop_requested.is_set():
            self.exit_status = status
        self.stop_requested.set()

    # --- stopping ---------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop the services in reverse start order, each within a deadline."""
        for handle in reversed(list(self.services.values())):
            if handle.launch == "external" or handle.state == "stopped":
                continue
            self._set(handle, "stopping")
            if handle.runtime is not None:
                handle.runtime.stop()
                if handle.thread is not None:
                    handle.thread.join(STOP_TIMEOUT)
                    if handle.thread.is_alive():
                        log.error("service %s did not stop within %gs", handle.name, STOP_TIMEOUT)
            self._kill(handle, graceful=True)
            self._set(handle, "stopped")

    def threads_left(self) -> list[str]:
        """The services whose thread is still running (it did not stop within STOP_TIMEOUT)."""
        return [h.name for h in self.services.values() if h.thread is not None and h.thread.is_alive()]

    def _kill(self, handle: ServiceHandle, graceful: bool = False) -> None:
        proc = handle.process
        if proc is None or proc.poll() is not None:
            return
        if graceful:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                log.error("service %s did not stop within %gs: killing it", handle.name, STOP_TIMEOUT)
        proc.kill()
        proc.wait(STOP_TIMEOUT)

    def describe(self) -> list[dict[str, Any]]:
        """Every service and its state."""
        return [h.describe() for h in self.services.values()]
