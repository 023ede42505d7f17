"""Supervision in processes mode, on real node processes: restart windows, node_ready after a restart,
children that outlive a killed lnpd."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import wait_for
from peer_tools import free_port
from test_chain import external_chain, external_profile  # noqa: F401  (a fixture, and the profile it runs)
from test_node import PROCESSES

CHAIN_PROCESSES = 'mode = "processes"\nheartbeat_interval = 0.5\nheartbeat_misses = 3'


def gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_restarts_spread_over_time_do_not_stop_the_node(nodes) -> None:
    node = nodes(PROCESSES + '\n[services.hello]\nmax_restarts = 1\nrestart_window = 4.0\n').start()
    for n in (1, 2, 3):  # each crash comes after the window of the previous restart has passed
        os.kill(node.service("hello")["pid"], signal.SIGKILL)
        wait_for(lambda: node.service("hello")["restarts"] == n and node.service("hello")["state"] == "running")
        time.sleep(4.1)
    assert node.proc.poll() is None, (node.data_dir / "lnp-host.log").read_text()[-3000:]
    with node.client() as c:
        assert c.hello("gina")["greeting"] == "hi gina"
    os.kill(node.service("hello")["pid"], signal.SIGKILL)  # two crashes within the window: that is too many
    wait_for(lambda: node.service("hello")["restarts"] == 4 and node.service("hello")["state"] == "running")
    os.kill(node.service("hello")["pid"], signal.SIGKILL)
    assert node.proc.wait(20) == 1
    assert "max_restarts (1) reached within restart_window (4s)" in (node.data_dir / "lnp-host.log").read_text()


def test_a_restarted_watchd_follows_the_chain_at_once(nodes, external_chain) -> None:  # noqa: F811
    port, btc = external_chain
    node = nodes(external_profile(port, ["tk_chain"], bus=CHAIN_PROCESSES), name="rw").start()
    address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    with node.client() as c:
        wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 0)
        os.kill(node.service("watchd")["pid"], signal.SIGKILL)
        wait_for(lambda: node.service("watchd")["restarts"] == 1 and node.service("watchd")["state"] == "running")
        btc.call("generatetoaddress", 1, address)
        # not after 30 s waiting for a node_ready that went out once, at startup
        wait_for(lambda: c.call("chaininfo")["watchd"]["height"] == 1, timeout=5)


def test_children_exit_soon_after_lnpd_is_killed(nodes, external_chain) -> None:  # noqa: F811
    port, _ = external_chain
    profile = external_profile(port, ["wallet", "hello", "peerd"], bus=CHAIN_PROCESSES)
    node = nodes(profile + f'[plugins.peerd]\nlisten = ["127.0.0.1:{free_port()}"]\n', name="orphans").start()
    with node.client() as c:
        c.call("newaddr")  # the wallet has started and talks to watchd and signd
        children = [s["pid"] for s in c.info()["services"] if s["pid"] != node.proc.pid]
    assert len(children) == 5  # signd, watchd, wallet, hello, peerd
    node.proc.kill()
    node.proc.wait(5)
    killed = time.monotonic()
    wait_for(lambda: all(gone(pid) for pid in children), timeout=40, interval=0.05)
    assert time.monotonic() - killed < 2.0, "a child outlived lnpd by 2 s or more"
    # each stopped cleanly (its shutdown did not wait on services that were gone), not by the last resort
    assert "did not stop within" not in node.log.read_text()


def _started_at(pid: int) -> float:
    """When process `pid` started, in seconds since boot (/proc/PID/stat's starttime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def test_service_processes_are_spawned_together_and_start_in_order(nodes) -> None:
    """Each child loads its code while those before it start (a node is ready sooner); each binds in turn."""
    node = nodes(PROCESSES, name="together").start()
    with node.client() as c:
        services = [s for s in c.info()["services"] if s["launch"] == "process"]
    assert len(services) >= 3 and all(s["state"] == "running" for s in services)
    started = [_started_at(s["pid"]) for s in services]
    # one after another, each child would start only once the one before answered (>= 0.3 s each)
    assert max(started) - min(started) < 0.5, started
    log = node.log.read_text()
    order = [log.index(f"service {s['name']} running") for s in services]
    assert order == sorted(order)  # and they still came up in the profile's order
