"""The command lines: `--set` in every process, LNP_DATA_DIR, and lnp-cli's checks of typed values."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, env_with, wait_for
from lnp_host.client import Client
from lnp_plugin_api import RpcError
from peer_tools import free_port
from test_node import PROCESSES
from test_peerd import start


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    """Run lnp-cli; its exit status and its JSON output."""
    out = subprocess.run([sys.executable, "-m", "lnp_host.cli_client", *args], capture_output=True, text=True,
                         env=env or dict(os.environ), timeout=60)
    return out.returncode, json.loads(out.stdout)


def test_set_reaches_every_process(nodes) -> None:
    node = nodes(PROCESSES).start("--set", "plugins.hello.greeting=yo")
    with node.client() as c:
        greeting = c.hello("gina")
        assert greeting["greeting"] == "yo gina"  # answered by the hello process lnpd started
        assert greeting["pid"] != node.proc.pid
    assert node.stop() == 0


def test_mistyped_values_are_refused_before_anything_is_sent(nodes) -> None:
    peer = start(nodes, "typed")
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen()
    target.settimeout(1.0)
    data_dir = str(peer.node.data_dir)
    try:
        someone = "02" + "11" * 32
        code, err = cli("--data-dir", data_dir, "connect", f"{someone}@127.0.0.1:{target.getsockname()[1]}",
                        "--persistent=maybe")
        assert code == 2, err
        message = err["error"]["message"]
        assert "'persistent'" in message and "true or false" in message and "maybe" in message
        try:
            target.accept()[0].close()
            raise AssertionError("lnp-cli connected although a value was wrong")
        except socket.timeout:
            pass
        code, err = cli("--data-dir", data_dir, "ping", someone, "--bytes=lots")
        assert code == 2 and "'bytes'" in err["error"]["message"] and "an integer" in err["error"]["message"]
        code, out = cli("--data-dir", data_dir, "peers", "--known=true")  # the same form, with a good value
        assert code == 0 and out["peers"] == []
    finally:
        target.close()


def test_data_dir_from_the_environment(short_tmp: Path) -> None:
    profile = short_tmp / "p.toml"
    profile.write_text('[plugins]\nenabled = ["core"]\n')  # no data dir in the profile
    data_dir = short_tmp / "node"
    env = {**env_with(None), "LNP_DATA_DIR": str(data_dir), "HOME": str(short_tmp / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "lnp_host", "run", "--profile", str(profile)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: (data_dir / "rpc.sock").exists() or proc.poll() is not None)
        assert proc.poll() is None and not (short_tmp / "home").exists()
        code, info = cli("info", env=env)
        assert code == 0 and info["data_dir"] == str(data_dir)
        code, err = cli("info", env={**env, "LNP_DATA_DIR": str(short_tmp / "elsewhere")})
        assert code == 1 and f"tried {short_tmp / 'elsewhere' / 'rpc.sock'}" in err["error"]["message"]
        assert "$LNP_DATA_DIR" in err["error"]["message"]
        code, info = cli("--data-dir", str(data_dir), "info", env={**env, "LNP_DATA_DIR": "/nonexistent"})
        assert code == 0  # --data-dir comes first
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_alice_and_bob_on_data_dirs_and_ports_of_ones_choosing(short_tmp: Path) -> None:
    """The shipped alice.toml and bob.toml, unedited, anywhere: Bob follows Alice's chain."""
    rpc_port = free_port()
    alice_dir, bob_dir = short_tmp / "alice", short_tmp / "bob"
    env = {**env_with(None), "ALICE_DIR": str(alice_dir)}
    chain = ["--set", f"plugins.bitcoind.url=http://127.0.0.1:{rpc_port}"]
    procs = []

    def run(name: str, data_dir: Path, *extra: str) -> None:
        with open(short_tmp / f"{name}.stderr", "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "lnp_host", "run", "--profile", str(ROOT / "configs" / f"{name}.toml"),
                 "--data-dir", str(data_dir), "--set", f'plugins.peerd.listen=["127.0.0.1:{free_port()}"]',
                 *chain, *extra], stdout=subprocess.DEVNULL, stderr=err, env=env))

    def call(data_dir: Path, method: str, *args: object) -> object:
        with Client(data_dir=data_dir, timeout=60) as c:
            return c.call(method, *args)

    def answers(data_dir: Path) -> bool:
        try:
            return bool(call(data_dir, "info"))
        except RpcError:
            return False

    try:
        run("alice", alice_dir, "--set", f"plugins.regtest.rpc_port={rpc_port}",
            "--set", f"plugins.regtest.wallet_port={free_port()}")
        wait_for(lambda: answers(alice_dir), timeout=120)
        run("bob", bob_dir)
        wait_for(lambda: answers(bob_dir), timeout=60)
        height = call(alice_dir, "mine", 3)["height"]
        assert height >= 3
        wait_for(lambda: call(bob_dir, "chaininfo")["watchd"]["height"] == height, timeout=30)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
