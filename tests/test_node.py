"""Whole nodes as real processes: modes, discovery, the example plugin, restarts, dying services."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import env_with, lnp_host, wait_for
from lnp_host.client import Client
from lnp_plugin_api import RpcError

THREADS = """
[node]
data_dir = "DATA_DIR"
alias = "t1"
[bus]
mode = "threads"
[plugins]
enabled = ["core", "hello", "tk_alpha", "tk_beta"]
[plugins.hello]
greeting = "hi"
[plugins.tk_beta]
limit = 100
"""
PROCESSES = THREADS.replace('mode = "threads"', 'mode = "processes"\nheartbeat_interval = 0.5')


def test_discovers_builtin_and_third_party_plugins(plugin_site: Path, tmp_path: Path) -> None:
    out = lnp_host("plugins", site=plugin_site)
    assert out.returncode == 0, out.stderr
    found = {p["name"]: p for p in json.loads(out.stdout)}
    assert found["core"]["distribution"] == "lnp-host" and found["core"]["enabled"]
    assert found["hello"]["distribution"] == "lnp-hello" and found["hello"]["version"] == "1.0.0"
    assert not found["hello"]["enabled"]  # the default profile does not enable it
    bare = lnp_host("plugins")  # without the package installed, it is simply not there
    assert "hello" not in {p["name"] for p in json.loads(bare.stdout)}


@pytest.mark.parametrize("profile", [THREADS, PROCESSES], ids=["threads", "processes"])
def test_node_answers_info_and_runs_plugins(nodes, profile: str) -> None:
    node = nodes(profile).start()
    with node.client() as c:
        info = c.info()
        assert info["alias"] == "t1" and info["network"] == "regtest" and len(info["node_id"]) == 66
        assert {p["name"]: p["version"] for p in info["plugins"]} == {
            "core": info["version"], "hello": "1.0.0", "tk_alpha": "0.1.0", "tk_beta": "0.1.0"}
        services = {s["name"]: s for s in info["services"]}
        assert set(services) == {"lnpd", "hello", "alpha", "beta"}
        assert all(s["state"] == "running" for s in services.values())
        greeting = c.hello("carol")
        assert greeting["greeting"] == "hi carol" and greeting["times"] == 1
        pids = {s["pid"] for s in services.values()}
        if "processes" in profile:
            assert len(pids) == 4 and greeting["pid"] == services["hello"]["pid"]
        else:
            assert pids == {node.proc.pid}
        # the example reacts to the host's node_ready event, and its `greeted` event reaches beta
        assert greeting["node_ready_seen"] == 1
        wait_for(lambda: {"event": "greeted", "source": "hello", "body": {"name": "carol"}} in c.tk_received())
        # control-bus requests between services, decisions where a participant refuses
        assert c.tk_roundtrips(n=50)["n"] == 50
        assert c.tk_spend(amount=10) == {"allowed": True, "reason": "", "by": ""}
        assert c.tk_spend(amount=1000) == {"allowed": False, "reason": "over the limit of 100", "by": "tk_beta"}
        # wire messages travel on the message bus to the plugin that registered their type
        assert c.tk_deliver(msg_type=32769, payload_hex="cafe") == {"delivered": True}
        assert c.tk_deliver(msg_type=32771, payload_hex="00") == {"delivered": False}
        wait_for(lambda: {"type": 32769, "payload": "cafe", "peer": "00" * 33} in c.tk_received())
    assert node.stop() == 0


def test_leaving_a_plugin_out_disables_it(nodes) -> None:
    node = nodes(THREADS.replace('"hello", ', "")).start()
    with node.client() as c:
        with pytest.raises(RpcError) as e:
            c.hello("x")
        assert e.value.code == RpcError.METHOD_NOT_FOUND
        assert "hello" not in {p["name"] for p in c.info()["plugins"]}
        assert {p["name"]: p["enabled"] for p in c.plugins()}["hello"] is False


def test_restart_keeps_node_id_and_data(nodes) -> None:
    node = nodes(THREADS).start()
    with node.client() as c:
        first = c.info()["node_id"]
        c.hello("dave")
    assert node.stop(signal.SIGINT) == 0
    key = node.data_dir / "node_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    node.start()
    with node.client() as c:
        assert c.info()["node_id"] == first
        assert c.hello("dave")["times"] == 2
    assert node.stop() == 0
    log = (node.data_dir / "lnp-host.log").read_text()
    assert log.count("lnp.host: stopped") == 2
    assert key.read_text().strip() not in log


def test_killed_service_process_is_restarted(nodes) -> None:
    node = nodes(PROCESSES).start()
    before = node.service("hello")
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(lambda: node.service("hello")["restarts"] == 1 and node.service("hello")["state"] == "running")
    after = node.service("hello")
    assert after["pid"] != before["pid"] and "killed by signal 9" in after["error"]
    with node.client() as c:
        assert c.hello("erin")["pid"] == after["pid"]
    assert node.stop() == 0


def test_killed_service_with_stop_policy_stops_the_node(nodes) -> None:
    node = nodes(PROCESSES + '\n[services.hello]\non_failure = "stop"\n').start()
    os.kill(node.service("hello")["pid"], signal.SIGKILL)
    assert node.proc.wait(20) == 1
    assert "service hello failed" in (node.data_dir / "lnp-host.log").read_text()


def test_hung_service_process_misses_heartbeats(nodes) -> None:
    node = nodes(PROCESSES).start()
    pid = node.service("beta")["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive but silent
    try:
        wait_for(lambda: node.service("beta")["restarts"] == 1, timeout=20)
        assert "missed" in node.service("beta")["error"]
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_for(lambda: node.service("beta")["state"] == "running")
    assert node.stop() == 0


def test_failed_thread_service_is_restarted(nodes) -> None:
    node = nodes(THREADS + '\n[services.alpha]\nmax_restarts = 1\n').start()
    with node.client() as c:
        c.tk_fail(reason="disk on fire")
    wait_for(lambda: node.service("alpha")["restarts"] == 1 and node.service("alpha")["state"] == "running")
    assert "disk on fire" in node.service("alpha")["error"]
    with node.client() as c:
        assert c.tk_roundtrips(n=5)["n"] == 5  # the restarted service is reachable again
        c.tk_fail()
    assert node.proc.wait(20) == 1  # max_restarts reached: the node stops


def test_service_that_cannot_start_stops_the_node(nodes) -> None:
    node = nodes(THREADS.replace('"tk_beta"]', '"tk_beta", "tk_broken"]') +
                 '\n[services.tk_broken]\non_failure = "stop"\n').start(wait=False)
    assert node.proc.wait(30) == 1
    assert "this plugin never starts" in (node.data_dir / "lnp-host.log").read_text()


def test_handler_exception_is_an_error_not_a_crash(nodes) -> None:
    node = nodes(THREADS).start()
    with node.client() as c:
        with pytest.raises(RpcError) as e:
            c.tk_crash()
        assert e.value.code == RpcError.INTERNAL_ERROR and "secret-looking" not in e.value.message
        assert node.service("alpha")["state"] == "running"


def test_one_data_dir_one_node(nodes) -> None:
    first = nodes(THREADS).start()
    second = subprocess.run([sys.executable, "-m", "lnp_host", "run", "--profile", str(first.profile)],
                            capture_output=True, text=True, env=env_with(first.site), timeout=30)
    assert second.returncode == 1 and "another lnp-host is running" in second.stderr
    with first.client() as c:
        assert c.info()["alias"] == "t1"


def test_two_nodes_on_one_machine(nodes) -> None:
    alice = nodes(THREADS.replace('alias = "t1"', 'alias = "alice"'), name="alice").start()
    bob = nodes(PROCESSES.replace('alias = "t1"', 'alias = "bob"'), name="bob").start()
    with alice.client() as a, bob.client() as b:
        assert a.info()["alias"] == "alice" and b.info()["alias"] == "bob"
        assert a.info()["node_id"] != b.info()["node_id"]
        assert a.hello("x")["times"] == 1 and b.hello("x")["times"] == 1


def test_external_service_on_its_own(nodes, short_tmp: Path) -> None:
    """--service runs one service alone; lnpd waits for it and notices when it goes."""
    profile = PROCESSES + '\n[services.beta]\nlaunch = "external"\n'
    node = nodes(profile).start()
    assert node.service("beta")["state"] == "starting"
    beta = subprocess.Popen([sys.executable, "-m", "lnp_host", "run", "--profile", str(node.profile),
                             "--service", "beta"], stderr=subprocess.DEVNULL, env=env_with(node.site))
    try:
        wait_for(lambda: node.service("beta")["state"] == "running")
        with node.client() as c:
            assert c.tk_spend(amount=1000)["by"] == "tk_beta"
        beta.terminate()
        assert beta.wait(10) == 0
        wait_for(lambda: node.service("beta")["state"] == "unreachable")
    finally:
        beta.kill()
    assert node.stop() == 0


def test_client_library_and_stop_command(nodes) -> None:
    node = nodes(THREADS).start()
    with Client(data_dir=node.data_dir) as c:
        assert c.call("hello", "frank")["greeting"] == "hi frank"
        assert c.stop() == {"result": "stopping"}
    assert node.proc.wait(20) == 0
    assert not (node.data_dir / "rpc.sock").exists()
    with pytest.raises(RpcError) as e:
        Client(data_dir=node.data_dir)
    assert e.value.code == RpcError.SERVICE_UNAVAILABLE


def test_verbose_logs_bus_requests_with_their_duration(nodes) -> None:
    node = nodes(PROCESSES).start("-v")
    with node.client() as c:
        assert c.tk_roundtrips(n=3)["n"] == 3
    assert node.stop() == 0
    log = (node.data_dir / "lnp-host.log").read_text()
    assert re.search(r"lnp\.host\.bus: bus Q echo -> beta: ok in \d+\.\d ms", log)
    assert re.search(r"lnp\.host\.rpc: rpc tk_roundtrips -> alpha: ok in \d+\.\d ms", log)


def test_forced_key_sources_are_checked_and_never_echoed(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(f'[node]\nnetwork = "regtest"\ndata_dir = "{tmp_path}/d"\n[plugins]\nenabled = ["core"]\n')
    short = tmp_path / "short.key"
    short.write_text("0101\n")
    env = dict(os.environ, LNP_DEV_FORCE_PRIVKEY="zz" * 32)
    for args, env_, words in (
            (["--dev-force-privkey-file", str(tmp_path / "none")], None, "--dev-force-privkey-file: cannot read"),
            (["--dev-force-privkey-file", str(short)], None, "--dev-force-privkey-file: expected 64 hex"),
            ([], env, "LNP_DEV_FORCE_PRIVKEY: expected 64 hex")):
        out = subprocess.run([sys.executable, "-m", "lnp_host", "run", "--profile", str(profile), *args],
                             capture_output=True, text=True, env=env_, timeout=60)
        assert out.returncode == 2 and words in out.stderr, out.stderr
        assert "0101" not in out.stderr and "zz" not in out.stderr
    main = tmp_path / "main.toml"
    main.write_text(profile.read_text().replace("regtest", "mainnet"))
    out = subprocess.run([sys.executable, "-m", "lnp_host", "run", "--profile", str(main)], capture_output=True,
                         text=True, env=dict(os.environ, LNP_DEV_FORCE_PRIVKEY="01" * 32), timeout=60)
    assert out.returncode == 2 and "LNP_DEV_FORCE_PRIVKEY: refused on mainnet" in out.stderr
    assert not (tmp_path / "d").exists()  # nothing was started or written
