"""Assembling a node from a validated profile: `run_node` (the whole node) and `run_service` (one).

`run_node` is the lnpd process: it owns the data dir lock, migrates storage, holds the node key,
serves RPC, runs the lnpd service and supervises the others (as threads or child processes).
`run_service` runs one service alone (a child of lnpd, or on another host) and reaches the key and
the rest of the node over the buses.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import coincurve
import zmq

from lnp_plugin_api import NodeInfo, RemoteCustody, RpcError

from . import __version__, logs, outbox
from .bus import Bus, Endpoints
from .buskeys import ZAP_DOMAIN, BusCurve, BusKeyError, create_keys, uses_tcp, zap_start, zap_stop
from .context import HEALTH_REQUEST, Environment, record_health
from .keys import (CUSTODY_ONLY_ENV, SEED_PASSPHRASE_ENV, BusKeyCustody, DevSecrets, FileKeyCustody,
                   force_dev_secrets)
from .plugins import Registry, discover
from .profile import HOST_SERVICE, Profile
from .rpc_server import RpcServer
from .runtime import ServiceFailed, ServiceRuntime
from .schema import type_name
from .storage import Database, StorageError
from .supervisor import Supervisor

log = logging.getLogger("lnp.host")
LOCK_FILE = "lnp-host.lock"
PARENT_ENV = "LNP_HOST_PARENT_PID"
GATE_ENV = "LNP_HOST_START_GATE"  # a service process spawned ahead waits to read a byte from this descriptor
ORPHAN_GRACE = 1.5  # seconds a child of a vanished lnpd has to stop cleanly before it just exits
PRIVATE_UMASK = 0o077  # files 0600, directories and sockets 0700


class NodeError(Exception):
    """The node cannot start (data dir in use, database unusable, endpoint taken)."""


def prepare_data_dir(profile: Profile) -> Path:
    """Create the data dir (mode 0700), or restrict an existing one to 0700.

    From here on everything this process and its children create is private to the user (umask 077).
    """
    data_dir, was_open = _prepare_data_dir(profile)
    _say_tightened(data_dir, was_open)  # before logs.setup: Python prints warnings to stderr
    return data_dir


def _prepare_data_dir(profile: Profile) -> tuple[Path, int | None]:
    """`prepare_data_dir`, also returning the data dir's former mode when it was open to others."""
    os.umask(PRIVATE_UMASK)
    data_dir = profile.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if not mode & 0o077:
        return data_dir, None
    try:
        os.chmod(data_dir, 0o700)
    except OSError as e:
        raise NodeError(f"cannot restrict {data_dir} (mode {mode:o}) to its owner: {e.strerror}") from None
    return data_dir, mode


def _say_tightened(data_dir: Path, mode: int | None) -> None:
    if mode is not None:
        log.warning("%s was mode %o, open to other users: restricted it to 0700", data_dir, mode)


class HostControl:
    """What the host exposes to plugins of the lnpd service (`ctx.host`)."""

    def __init__(self, env: Environment, supervisor: Supervisor) -> None:
        self._env, self._supervisor = env, supervisor
        self._commands: list[dict[str, Any]] | None = None

    def info(self) -> dict[str, Any]:
        """Node id, alias, network, version, plugins and services."""
        node = self._env.node
        return {"node_id": node.node_id.hex(), "alias": node.alias, "network": node.network,
                "version": node.version, "data_dir": str(node.data_dir),
                "bus_mode": self._supervisor.mode, "plugins": self.plugins(enabled_only=True),
                "services": [{**s, "problems": {p: self._env.health[p] for p in s["plugins"] if p in self._env.health}}
                             for s in self._supervisor.describe()]}

    def plugins(self, enabled_only: bool = False) -> list[dict[str, Any]]:
        """The discovered plugins (or only the loaded ones) with version, distribution, service."""
        reg = self._env.registry
        found = reg.plugins if enabled_only else {**discover(), **reg.plugins}
        out = []
        for name, d in found.items():
            item = d.describe(name in reg.plugins)
            item["service"] = reg.service_of.get(name)
            out.append(item)
        return out

    def commands(self) -> list[dict[str, Any]]:
        """Every RPC command with its parameters and help (the registry is fixed once the node runs)."""
        if self._commands is None:
            self._commands = self._list_commands()
        return self._commands

    def _list_commands(self) -> list[dict[str, Any]]:
        out = []
        for name, owned in sorted(self._env.registry.rpc.items()):
            m = owned.item
            out.append({"command": name, "plugin": owned.plugin, "help": m.help,
                        "params": [{"name": p.name, "type": type_name(p.type), "required": p.required}
                                   for p in m.params]})
        return out

    def stop(self) -> None:
        """Stop the node (after the current RPC call has been answered)."""
        threading.Timer(0.2, self._supervisor.request_stop).start()


def _lock(data_dir: Path) -> Any:
    f = open(data_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise NodeError(f"another lnp-host is running on {data_dir}") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _custody(registry: Registry, profile: Profile, dev: DevSecrets | None) -> Any:
    """The key custody: a plugin's (local or RemoteCustody), or the host's key file.

    With a forced dev key, a custody service (RemoteCustody) uses that key as the node key (it reads
    `keys.dev_secrets`), so the node id is the forced key's; a local custody plugin is replaced by
    the host's, holding the forced key in memory. A forced BIP32 seed or channel secrets need a
    custody service (signd): the host's key file has no seed.
    """
    dev = dev or DevSecrets()
    forced_key = dev.node_key
    try:  # firstresult: the first plugin in profile order (or a tryfirst one) that answers
        custody = registry.pm.hook.lnp_key_custody(node=profile)
    except Exception as e:
        raise NodeError(f"a plugin could not provide the node key: {e}") from None
    if isinstance(custody, RemoteCustody):
        # the key's service is where the plugin answering host.keys.* runs, which a profile may move
        owner = registry.control.get("host.keys.node_id")
        custody = RemoteCustody(owner.service if owner else custody.service, custody.node_id)
    if (dev.bip32_seed is not None or dev.channel_secrets is not None) and not isinstance(custody, RemoteCustody):
        raise NodeError("--dev-force-bip32-seed and --dev-force-channel-secrets need signd (a key custody service)")
    if custody is None or forced_key is not None and not isinstance(custody, RemoteCustody):
        return FileKeyCustody(profile.data_dir, forced_key)
    if forced_key is None:
        return custody
    return RemoteCustody(custody.service, coincurve.PrivateKey(forced_key).public_key.format())


def run_node(profile: Profile, registry: Registry, verbosity: int = 0, profile_args: list[str] | None = None,
             dev: DevSecrets | None = None, instance: str = "",
             stop_event: threading.Event | None = None) -> int:
    """Run the whole node until SIGINT/SIGTERM, `lnp-cli stop`, or a fatal service failure."""
    if os.environ.get(outbox.CRASH_ENV) and profile.section("node")["network"] == "mainnet":
        raise NodeError(f"{outbox.CRASH_ENV} (a developer's crash point) is refused on mainnet")
    data_dir, was_open = _prepare_data_dir(profile)
    lock = _lock(data_dir)
    logs.setup(profile, registry.services, verbosity)
    _say_tightened(data_dir, was_open)
    log.info("lnp-host %s starting on %s (%s, %s mode)", __version__, data_dir, profile.section("node")["network"],
             profile.section("bus")["mode"])
    db = Database(profile.section("storage")["url"], data_dir, profile.section("storage")["sqlite_synchronous"])
    zctx = zmq.Context()
    rpc: RpcServer | None = None
    sockets_closed = True  # False: a thread still holds a socket, so the context must stay (see _release)
    try:
        try:
            db.migrate({outbox.HOST_TABLES: outbox.MODELS, **registry.storage})  # the host's first
        except StorageError as e:
            raise NodeError(str(e)) from None
        dev = dev or DevSecrets()
        force_dev_secrets(data_dir, dev)  # for a custody service in this process (threads mode)
        custody = _custody(registry, profile, dev)
        mode = profile.section("bus")["mode"]
        endpoints = Endpoints.for_profile(registry.services, mode, data_dir,
                                          profile.section("bus")["endpoints"], instance)
        bus = Bus(zctx, endpoints, HOST_SERVICE)
        if uses_tcp(endpoints):
            create_keys(data_dir, registry.services)  # per node, as the RPC's client keys
            _curve(profile, zctx, bus, registry.services, registry.services)
        custody_service = HOST_SERVICE
        if isinstance(custody, RemoteCustody):  # the key lives in a service: reach it over the bus
            custody_service = custody.service
            custody = BusKeyCustody(bus, custody.service, custody.node_id)
        node = NodeInfo(custody.node_id(), profile.section("node")["alias"], profile.section("node")["network"],
                        data_dir, __version__, registry.feature_specs())
        env = Environment(profile, registry, endpoints, zctx, bus, node, db, custody)
        env.builtins.update(custody.control_handlers() if hasattr(custody, "control_handlers") else {})
        env.builtins[HEALTH_REQUEST] = lambda body: record_health(env, str(body["plugin"]), body.get("problem"))
        env.builtins["host.node_info"] = lambda _body: {
            "node_id": node.node_id.hex(), "alias": node.alias, "network": node.network,
            "custody": custody_service}

        passphrase = os.environ.get(SEED_PASSPHRASE_ENV, "")

        def spawn(service: str, gate: int | None) -> subprocess.Popen[bytes]:
            cmd = [sys.executable, "-m", "lnp_host", "run", "--service", service, *(profile_args or [])]
            child_env = {**os.environ, PARENT_ENV: str(os.getpid())}
            child_env.pop(GATE_ENV, None)
            if gate is not None:
                child_env[GATE_ENV] = str(gate)
            for name in CUSTODY_ONLY_ENV:  # the seed's passphrase and a forced key reach the custodian alone
                child_env.pop(name, None)
            if service == custody_service:
                if passphrase:
                    child_env[SEED_PASSPHRASE_ENV] = passphrase
                child_env.update(dev.environment())  # forced dev secrets: never on a command line
            return subprocess.Popen(cmd, env=child_env, pass_fds=() if gate is None else (gate,))

        supervisor = Supervisor(env, spawn)
        env.host = HostControl(env, supervisor)
        stop = stop_event or threading.Event()
        _on_signals(lambda: supervisor.request_stop(0))
        threading.Thread(target=lambda: (stop.wait(), supervisor.request_stop(0)), daemon=True).start()
        supervisor.start_all()
        if not supervisor.stop_requested.is_set():
            rpc = RpcServer(env)
            try:
                rpc.start()
            except RuntimeError as e:
                supervisor.request_stop(1)
                log.error("%s", e)
            log.info("node %s ready", node.node_id.hex())
            supervisor.announce_ready({"node_id": node.node_id.hex()})
            supervisor.watch()
        log.info("stopping")
        if rpc is not None:
            rpc.stop()
            rpc.remove_socket()
        supervisor.stop_all()
        sockets_closed = bus.close()
        if supervisor.threads_left():
            log.warning("service thread(s) %s still running: their sockets are left open",
                        ", ".join(supervisor.threads_left()))
            sockets_closed = False
        return supervisor.exit_status
    finally:
        force_dev_secrets(data_dir, None)
        db.close()
        _release(zctx, sockets_closed)
        log.info("stopped")
        lock.close()


def run_service(profile: Profile, registry: Registry, service: str, verbosity: int = 0,
                dev: DevSecrets | None = None) -> int:
    """Run one service alone, connected to the rest of the node over the profile's bus endpoints.

    `dev` (developers) are the forced secrets the custody service uses, as `run_node`'s.
    """
    if not _wait_for_turn():
        return 0
    data_dir, was_open = _prepare_data_dir(profile)
    logs.setup(profile, registry.services, verbosity)
    _say_tightened(data_dir, was_open)
    force_dev_secrets(data_dir, dev)
    zctx = zmq.Context()
    endpoints = Endpoints.for_profile(registry.services, profile.section("bus")["mode"], data_dir,
                                      profile.section("bus")["endpoints"])
    bus = Bus(zctx, endpoints, service)
    if uses_tcp(endpoints):
        try:
            _curve(profile, zctx, bus, registry.services, [service])
        except BaseException:
            zctx.destroy(linger=0)
            raise
    db = Database(profile.section("storage")["url"], data_dir, profile.section("storage")["sqlite_synchronous"])
    runtime: ServiceRuntime | None = None
    stopping = threading.Event()

    def stop() -> None:
        stopping.set()
        if runtime is not None:
            runtime.stop()

    def parent_gone() -> None:
        bus.abandon("lnpd is gone")  # what shutdown would ask of other services fails at once
        stop()

    _on_signals(stop)
    _watch_parent(parent_gone)
    try:
        info = None
        while info is None and not stopping.is_set():
            try:  # lnpd holds the node key; wait for it to answer (it may start after us)
                info = bus.request(HOST_SERVICE, "host.node_info", timeout=2.0)
            except RpcError:
                log.info("waiting for lnpd")
                stopping.wait(0.5)
        if info is None:
            return 0
        node_id = bytes.fromhex(info["node_id"])
        node = NodeInfo(node_id, info["alias"], info["network"], data_dir, __version__, registry.feature_specs())
        env = Environment(profile, registry, endpoints, zctx, bus, node, db,
                          BusKeyCustody(bus, info.get("custody", HOST_SERVICE), node_id))
        runtime = ServiceRuntime(env, service)
        if stopping.is_set():
            return 0
        runtime.run()
        return 0
    except ServiceFailed as e:
        log.error("service %s failed: %s", service, e)
        return 2 if e.fatal else 1
    finally:
        force_dev_secrets(data_dir, None)
        sockets_closed = bus.close()
        db.close()
        _release(zctx, sockets_closed)


def _wait_for_turn() -> bool:
    """A service process spawned ahead (its code loaded while the services before it start) waits for
    lnpd to open its gate; False when lnpd closed it instead (the node stops before this service starts)."""
    gate = os.environ.pop(GATE_ENV, None)
    if gate is None:
        return True
    try:
        fd = int(gate)
        opened = os.read(fd, 1) == b"!"
        os.close(fd)
    except (ValueError, OSError):
        return False
    return opened


def _release(zctx: zmq.Context, sockets_closed: bool) -> None:
    """Destroy the ZeroMQ context, unless a thread still holds one of its sockets: libzmq aborts the
    process when a socket is closed under a thread using it, so those are left to the process's exit."""
    zap_stop(zctx)
    if sockets_closed:
        zctx.destroy(linger=0)


def _curve(profile: Profile, zctx: zmq.Context, bus: Bus, services: list[str], own: list[str]) -> None:
    """tcp:// bus endpoints: CURVE with the node's service keys, or refuse to start (exit 2)."""
    try:
        bus.curve = BusCurve.load(profile.data_dir, services, own)
    except BusKeyError as e:
        raise profile.error(("bus", "endpoints"), str(e)) from None
    zap_start(zctx, ZAP_DOMAIN, bus.curve.allowed)


def _on_signals(handler: Callable[[], None]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # embedded (tests): the caller stops the node through its stop event
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: handler())


def _watch_parent(stop: Callable[[], None]) -> None:
    """A child of lnpd stops when lnpd is gone, so no orphan keeps serving; within ORPHAN_GRACE at most."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.2)
        log.warning("lnpd (pid %s) is gone: stopping", parent)
        stop()
        time.sleep(ORPHAN_GRACE)  # a daemon thread: a process that stopped in time is gone before this
        log.error("service did not stop within %gs of losing lnpd: exiting", ORPHAN_GRACE)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
