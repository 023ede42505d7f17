"""signd's narrow contract: secrets reach signd alone, typed signing operations with their own policy,
and per-service capabilities."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import lnp_host
from peer_tools import RawPeer, free_port
from test_signd import WORDS, descendants, holding, profile
from lnp_plugins import signd
from lnp_plugins.signd import seed

PASSPHRASE = "hunter2 horse staple"


def test_first_run_never_decrypts_the_seed(tmp_path: Path, monkeypatch) -> None:
    """lnpd learns the node id from the public file; creating the seed needs no decryption."""
    def no_decrypting(*_args, **_kwargs):
        raise AssertionError("lnpd decrypted the seed")
    monkeypatch.setattr(seed, "load", no_decrypting)
    monkeypatch.setenv(seed.PASSPHRASE_ENV, PASSPHRASE)
    node_id = signd.public_node_id(tmp_path, "regtest", "")
    assert (tmp_path / "signd" / "node_id").read_text().strip() == node_id.hex()
    monkeypatch.delenv(seed.PASSPHRASE_ENV)
    assert signd.public_node_id(tmp_path, "regtest", "") == node_id  # no passphrase needed to read it
    (tmp_path / "signd" / "node_id").unlink()
    with pytest.raises(seed.SeedError, match="node_id .*missing.*lnp-host init"):
        signd.public_node_id(tmp_path, "regtest", "")


def test_the_passphrase_reaches_signd_alone(nodes, monkeypatch) -> None:
    """Processes mode, an encrypted seed: only signd's process has the passphrase in its environment,
    and the node works (the BOLT-8 handshake needs signd's ECDH)."""
    port = free_port()
    node = nodes(profile(Path("DATA_DIR"), port, "processes"), name="pp")
    monkeypatch.setenv(seed.PASSPHRASE_ENV, PASSPHRASE)
    node.start()
    monkeypatch.delenv(seed.PASSPHRASE_ENV)
    node_id = node.wait_ready()["node_id"]
    assert "encrypted" in (node.data_dir / "signd" / "seed.json").read_text()
    raw = RawPeer(port)
    try:
        raw.connect(bytes.fromhex(node_id))
        with node.client() as c:
            services = {s["name"]: s for s in c.info()["services"]}
    finally:
        raw.close()
    children = [p for p in descendants(node.proc.pid) if p != node.proc.pid]
    assert len(children) >= 3  # signd, peerd, tksigner at least
    assert holding(children, "environ", PASSPHRASE) == {services["signd"]["pid"]}
    assert node.stop() == 0


def test_init_rewrites_a_lost_node_id(short_tmp: Path, plugin_site: Path, nodes) -> None:
    """lnpd refuses to start without the public node id (it would have to decrypt the seed);
    `lnp-host init` (an offline tool, as signd) writes it again."""
    node = nodes(profile(Path("DATA_DIR"), free_port()), name="lost")
    seed.create(node.data_dir, "", WORDS)
    failed = lnp_host("run", "--profile", str(node.profile), site=plugin_site, timeout=60)
    assert failed.returncode != 0 and "lnp-host init" in failed.stderr + (node.data_dir / "lnp-host.log").read_text()
    done = lnp_host("init", "--profile", str(node.profile), site=plugin_site)
    assert done.returncode == 0, done.stderr
    assert (node.data_dir / "signd" / "node_id").exists()
