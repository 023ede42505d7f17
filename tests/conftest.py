"""Shared fixtures: real node processes, and third-party plugin packages installed by pip."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from lnp_host.client import Client
from lnp_plugin_api import RpcError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "lnp-hello"
TESTKIT = ROOT / "tests" / "plugins" / "lnp-testkit"
VECTORS = Path(__file__).resolve().parent / "vectors"  # copied from the BOLTs (tests/vectors/README.md)


@pytest.fixture(scope="session")
def plugin_site() -> Iterator[Path]:
    """A directory where pip installed the example and test plugin packages (not the host's env)."""
    target = Path(tempfile.mkdtemp(prefix="lnp-site-"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(EXAMPLE), str(TESTKIT)],
                   check=True)
    yield target
    shutil.rmtree(target, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (ipc:// socket paths must stay under ~100 characters)."""
    d = Path(tempfile.mkdtemp(prefix="lnp-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def env_with(site: Path | None) -> dict[str, str]:
    """The environment for a node process that sees the plugins installed in `site`."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def lnp_host(*args: str, site: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `lnp-host ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "lnp_host", *args], capture_output=True, text=True,
                          env=env_with(site), timeout=timeout)


class NodeProcess:
    """A real `lnp-host run` process on a profile written for the test."""

    def __init__(self, root: Path, profile: str, site: Path | None, name: str = "node") -> None:
        self.data_dir = root / name
        self.profile = root / f"{name}.toml"
        self.profile.write_text(profile.replace("DATA_DIR", str(self.data_dir)))
        self.site = site
        self.proc: subprocess.Popen[str] | None = None
        self.log = root / f"{name}.stderr"

    def start(self, *extra: str, wait: bool = True) -> "NodeProcess":
        """Start the node and wait until `info` answers."""
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "lnp_host", "run", "--profile", str(self.profile),
                                          *extra], stdout=subprocess.DEVNULL, stderr=err, text=True,
                                         env=env_with(self.site))
        if wait:
            self.wait_ready()
        return self

    def client(self, timeout: float = 20.0) -> Client:
        """A client on the node's Unix socket."""
        return Client(data_dir=self.data_dir, timeout=timeout)

    def wait_ready(self, timeout: float = 30.0) -> dict:
        """Wait for `info` to answer; fail with the node's stderr if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with self.client(timeout=2) as c:
                    return c.info()
            except RpcError:
                time.sleep(0.1)
        raise AssertionError(f"node did not become ready:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the node and wait for it to exit; returns its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        status = self.proc.wait(timeout)
        if status != 0 and status != -sig:  # shown with the test's failure
            print(f"{self.data_dir.name} exited with {status}; the end of its stderr:\n{self.log.read_text()[-4000:]}")
        return status

    def service(self, name: str) -> dict:
        """The `info` entry of one service."""
        with self.client() as c:
            return next(s for s in c.info()["services"] if s["name"] == name)


def _node_factory(root: Path, default_site: Path) -> Iterator[callable]:
    made: list[NodeProcess] = []

    def make(profile: str, name: str = "node", site: Path | None = default_site) -> NodeProcess:
        node = NodeProcess(root, profile, site, name)
        made.append(node)
        return node

    yield make
    for node in made:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)


@pytest.fixture
def nodes(short_tmp: Path, plugin_site: Path) -> Iterator[callable]:
    """Make nodes: `nodes(profile_text, name=...)`; every node is stopped after the test."""
    yield from _node_factory(short_tmp, plugin_site)


@pytest.fixture(scope="module")
def nodes_module(plugin_site: Path) -> Iterator[callable]:
    """Like `nodes`, for nodes shared by the tests of one module."""
    root = Path(tempfile.mkdtemp(prefix="lnp-", dir="/tmp"))
    yield from _node_factory(root, plugin_site)
    shutil.rmtree(root, ignore_errors=True)


def wait_for(predicate: callable, timeout: float = 20.0, interval: float = 0.1) -> None:
    """Wait until `predicate()` is true, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")
