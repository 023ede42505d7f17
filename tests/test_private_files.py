"""Everything a node creates under its data dir is private to its user: files 0600, directories and
sockets 0700, and a data dir left open to others (0755) is restricted to 0700."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from conftest import lnp_host
from peer_tools import free_port

PROFILE = """
[node]
network = "regtest"
data_dir = "DATA_DIR"
[bus]
mode = "processes"
heartbeat_interval = 0.5
[rpc]
tcp = "tcp://127.0.0.1:PORT"
[plugins]
enabled = ["core", "signd", "hello", "tk_alpha", "tk_beta"]
[plugins.tk_beta]
limit = 5
"""


def modes(data_dir: Path) -> dict[str, int]:
    """Each path under `data_dir` (itself included) and its permission bits, symlinks not followed."""
    out = {".": stat.S_IMODE(data_dir.lstat().st_mode)}
    for path in data_dir.rglob("*"):
        out[str(path.relative_to(data_dir))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def assert_private(data_dir: Path) -> dict[str, int]:
    found = modes(data_dir)
    for name, mode in found.items():
        path = data_dir / name
        expected = 0o600 if stat.S_ISREG(path.lstat().st_mode) else 0o700  # directories and sockets
        assert mode == expected, f"{name} has mode {mode:o}"
    return found


def test_everything_the_node_creates_is_private(nodes) -> None:
    node = nodes(PROFILE.replace("PORT", str(free_port())), name="priv")
    node.data_dir.mkdir(mode=0o755)
    os.chmod(node.data_dir, 0o755)  # as an older version, or a user's mkdir, left it
    for old in ("lnp-host.log", "lnp.sqlite3"):  # an empty file is an empty SQLite database
        (node.data_dir / old).touch()
        os.chmod(node.data_dir / old, 0o644)
    node.start()
    made = lnp_host("rpc-client", "laptop", "--profile", str(node.profile), site=node.site)
    assert made.returncode == 0, made.stderr
    with node.client() as c:
        assert c.hello("x")["times"] == 1  # writes the database
        found = assert_private(node.data_dir)  # while it runs: sockets, -wal and -shm exist
    expected = {".", "lnp-host.log", "lnp-host.lock", "lnp.sqlite3", "lnp.sqlite3-wal", "lnp.sqlite3-shm",
                "rpc.sock", "run", "run/lnpd.control", "run/hello.message", "signd", "signd/seed.json",
                "signd/node_id", "rpc", "rpc/server.key", "rpc/clients", "rpc/clients/laptop.pub"}
    assert expected <= set(found), expected - set(found)
    assert node.stop() == 0
    assert_private(node.data_dir)
    log = (node.data_dir / "lnp-host.log").read_text()
    assert f"{node.data_dir} was mode 755, open to other users: restricted it to 0700" in log
