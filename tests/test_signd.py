"""signd: the seed (created, encrypted, deterministic), key derivation, and its control API."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import lnp_host, wait_for
from peer_tools import RawPeer, free_port
from lnp_plugin_api import RpcError
from lnp_plugin_api.bolt3 import derive_pubkey, per_commitment_secret, point
from lnp_plugins.signd import seed
from lnp_plugins.signd.keys import Keychain, PER_COMMITMENT_FAMILY

WORDS = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"


def profile(data_dir: Path, port: int, mode: str = "threads", signd: str = "", enabled: str = "") -> str:
    """signd, peerd and tk_signer (granted what channeld will have); `signd`: more of signd's table."""
    return (f'[node]\nnetwork = "regtest"\ndata_dir = "{data_dir}"\n[bus]\nmode = "{mode}"\n'
            f'[plugins]\nenabled = ["core", "signd", "peerd", "tk_signer"{enabled}]\n'
            f'[plugins.peerd]\nlisten = ["127.0.0.1:{port}"]\n'
            f'[plugins.signd]\ngrant = {{tksigner = ["channel", "node_message"]}}\n{signd}')


def test_same_seed_same_keys() -> None:
    a, b = Keychain(WORDS, "regtest"), Keychain(WORDS, "regtest")
    assert a.node_id() == b.node_id() and a.descriptors() == b.descriptors()
    # BIP84's own test vector for this mnemonic (account 0, testnet coin type)
    assert a.account_xpub().startswith("tpubDC8msFGeGuwnKG9Upg7DM2b4DaRqg3CUZa5g8v2SRQ6K4NSkxUgd7HsL2XVWbVm39yBA")
    assert Keychain(WORDS, "mainnet").node_id() != a.node_id()  # coin type 0 on mainnet
    assert a.basepoints(0) != a.basepoints(1)
    secret = per_commitment_secret(a.channel_secret(PER_COMMITMENT_FAMILY, 3), (1 << 48) - 1 - 7)
    assert a.per_commitment_point(3, 7) == point(secret)


def test_seed_files_and_passphrase(tmp_path: Path) -> None:
    words = seed.create(tmp_path, "correct horse")
    path = seed.folder(tmp_path) / seed.SEED_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert words not in path.read_text() and "mnemonic" not in json.loads(path.read_text())
    assert seed.load(tmp_path, "correct horse") == words
    with pytest.raises(seed.SeedError, match="wrong seed passphrase"):
        seed.load(tmp_path, "wrong")
    with pytest.raises(seed.SeedError, match="encrypted"):
        seed.load(tmp_path, "")
    with pytest.raises(seed.SeedError, match="exists already"):
        seed.create(tmp_path)
    with pytest.raises(seed.SeedError, match="not a valid BIP39"):
        seed.create(tmp_path / "other", mnemonic="abandon " * 12)


def test_init_then_run_with_an_encrypted_seed(short_tmp: Path, plugin_site: Path, nodes) -> None:
    (short_tmp / "pass").write_text("s3cret phrase\n")
    node = nodes(profile(Path("DATA_DIR"), free_port(), signd=f'passphrase_file = "{short_tmp / "pass"}"\n'),
                 name="enc")
    path, data_dir = node.profile, node.data_dir
    done = lnp_host("init", "--profile", str(path), site=plugin_site)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["signd"]
    assert shown["encrypted"] is True and shown["mnemonic"].startswith("(hidden")
    again = lnp_host("init", "--profile", str(path), "--show-mnemonic", site=plugin_site)
    assert again.returncode == 1 and "exists already" in again.stderr  # never overwrites a seed
    node.start()
    info = node.wait_ready()
    assert info["node_id"] == shown["node_id"]
    node.stop()
    (short_tmp / "pass").write_text("wrong\n")
    failed = lnp_host("run", "--profile", str(path), site=plugin_site, timeout=60)
    assert failed.returncode != 0 and "wrong seed passphrase" in (data_dir / "lnp-host.log").read_text()
    logs = (data_dir / "lnp-host.log").read_text() + node.log.read_text()
    assert "s3cret" not in logs


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_signd_serves_the_node_key_and_channel_keys(nodes, mode: str) -> None:
    port = free_port()
    node = nodes(profile(Path("DATA_DIR"), port, mode), name=f"s{mode[0]}")
    node.start()
    node_id = node.wait_ready()["node_id"]
    assert (node.data_dir / "signd" / "node_id").read_text().strip() == node_id
    assert not (node.data_dir / "node_key").exists()  # the host's key file is not used
    raw = RawPeer(port)  # the BOLT-8 handshake needs ECDH with the node key: answered by signd
    try:
        raw.connect(bytes.fromhex(node_id))
        with node.client() as c:
            wait_for(lambda: len(c.call("peers")["peers"]) == 1)
    finally:
        raw.close()
    with node.client() as c:
        got = c.call("tk_signer_basepoints", 0)
        words = seed.load(node.data_dir)
        keys = Keychain(words, "regtest")
        assert got == keys.basepoints(0)
        pcp = c.call("tk_signer_point", 0, 5)["point"]
        assert pcp == keys.per_commitment_point(0, 5).hex()
        assert derive_pubkey(bytes.fromhex(got["payment_basepoint"]), bytes.fromhex(pcp))  # usable points
        sig = c.call("tk_signer_message", "node_announcement", node_announcement(node_id))["signature"]
        assert len(bytes.fromhex(sig)) == 64
        with pytest.raises(RpcError) as bad:  # a bad body says what was wrong
            c.call("tk_signer_request", "signd.sign_node_message", {"message": "00"})
        assert bad.value.code == RpcError.INVALID_PARAMS and "missing parameter 'kind'" in bad.value.message
        dump = json.dumps([c.call("help"), c.info()])
    secret_hex = keys.node_key.secret.hex()
    for text in (dump, (node.data_dir / "lnp-host.log").read_text(), node.log.read_text()):
        assert secret_hex not in text and words not in text
    assert os.environ.get(seed.PASSPHRASE_ENV) is None
    raw.close()


def node_announcement(node_id: str, features: str = "") -> str:
    """A BOLT-7 node_announcement of NODE_ID (hex) with a zero signature, as hex."""
    return ("0101" + "00" * 64 + f"{len(features) // 2:04x}" + features + "00000001" + node_id + "010203"
            + "61" * 32 + "0000")


FORCED = "01" * 32
FORCED_ID = "031b84c5567b126440995d3ed5aaba0565d71e1834604819ff9c17f5e9d5dd078f"
FULL_STACK = """
[node]
network = "regtest"
data_dir = "DATA_DIR"
[bus]
mode = "{mode}"
[plugins]
enabled = ["core", "signd", "regtest", "bitcoind", "watchd", "wallet", "peerd"]
[plugins.peerd]
listen = ["127.0.0.1:{peer_port}"]
[plugins.regtest]
rpc_port = {port}
[plugins.bitcoind]
url = "http://127.0.0.1:{port}"
cookie_file = "regtest/.cookie"
"""


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def holding(pids: list[int], what: str, secret: str) -> set[int]:
    """The processes whose /proc/PID/`what` (cmdline, environ) holds `secret`."""
    found = set()
    for pid in pids:
        try:
            if secret.encode() in (Path("/proc") / str(pid) / what).read_bytes():
                found.add(pid)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("mode,source", [("threads", "flag"), ("threads", "env"), ("processes", "file")])
def test_forced_node_key_with_the_whole_stack(nodes, short_tmp: Path, monkeypatch, mode: str, source: str) -> None:
    """--dev-force-privkey on a fresh data dir with signd and the wallet: the seed is created as usual,
    signd serves the forced key as the node key, and the key shows on no command line and in no log."""
    peer_port = free_port()
    node = nodes(FULL_STACK.format(mode=mode, peer_port=peer_port, port=free_port()), name=f"f{source}")
    if source == "flag":
        node.start("--dev-force-privkey", FORCED, wait=False)
    elif source == "file":
        key_file = short_tmp / "forced.key"
        key_file.write_text(FORCED + "\n")
        node.start("--dev-force-privkey-file", str(key_file), wait=False)
    else:
        monkeypatch.setenv("LNP_DEV_FORCE_PRIVKEY", FORCED)
        node.start(wait=False)
        monkeypatch.delenv("LNP_DEV_FORCE_PRIVKEY")
    assert node.wait_ready(timeout=90)["node_id"] == FORCED_ID
    assert (node.data_dir / "signd" / "seed.json").exists()
    raw = RawPeer(peer_port)  # BOLT-8 needs ECDH with the node key: signd has the forced one
    try:
        raw.connect(bytes.fromhex(FORCED_ID))
        with node.client() as c:
            wait_for(lambda: [p["id"] for p in c.call("peers")["peers"]] == [raw.key.node_id().hex()])
            assert c.call("newaddr")["address"].startswith("bcrt1q")  # the wallet's keys: from the seed
            services = {s["name"]: s for s in c.info()["services"]}
    finally:
        raw.close()
    others = [p for p in descendants(node.proc.pid) if p != node.proc.pid]
    assert others  # the regtest chain at least
    assert holding(others, "cmdline", FORCED) == set()
    assert holding([node.proc.pid], "cmdline", FORCED) == ({node.proc.pid} if source == "flag" else set())
    assert holding(others, "environ", FORCED) == ({services["signd"]["pid"]} if mode == "processes" else set())
    assert node.stop() == 0
    for text in ((node.data_dir / "lnp-host.log").read_text(), node.log.read_text()):
        assert FORCED not in text and "node key is forced" in text
    for path in node.data_dir.rglob("*"):  # never written to disk
        if path.is_file() and "regtest" not in path.parts:
            assert FORCED.encode() not in path.read_bytes(), path
