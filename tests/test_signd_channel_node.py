"""signd's channel operations through a real node, in both bus modes, with the conformance dev options
(--dev-force-bip32-seed, --dev-force-channel-secrets): capabilities, policy, state kept across a restart,
and the forced secrets never on a command line, in a log or on disk."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peer_tools import free_port
from lnp_plugin_api import RpcError
from lnp_plugin_api.bolt3 import point
from lnp_plugins.signd.keys import Keychain
from signer_tools import Channel, Counterparty, params
from test_signd import descendants, holding, profile

SEED = "5e" * 32
SECRETS = [f"{i:02x}" * 32 for i in range(0x21, 0x27)]  # funding/revocation/payment/delayed/htlc/shachain seed
KEYS = Keychain("", "regtest", bip32_seed=bytes.fromhex(SEED), channel_secrets=tuple(bytes.fromhex(s) for s in SECRETS))


def request(c, name: str, body: dict) -> dict:
    return c.call("tk_signer_request", f"signd.{name}", body)["reply"]


def refused(c, name: str, body: dict, match: str, code: int = RpcError.REFUSED) -> None:
    with pytest.raises(RpcError) as e:
        request(c, name, body)
    assert e.value.code == code and match in e.value.message, e.value.message


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_channel_policy_through_a_node_with_forced_secrets(nodes, mode: str) -> None:
    node = nodes(profile(Path("DATA_DIR"), free_port(), mode), name=f"c{mode[0]}")
    forced = ("--dev-force-bip32-seed", SEED, "--dev-force-channel-secrets", "/".join(SECRETS))
    node.start(*forced)
    assert node.wait_ready()["node_id"] == KEYS.node_id().hex()  # the node key comes from the forced root
    ch = Channel(KEYS, 3, Counterparty())
    with node.client() as c:
        got = request(c, "channel_keys", {"index": 3})
        assert got["funding_pubkey"] == point(bytes.fromhex(SECRETS[0])).hex()
        assert got["payment_basepoint"] == point(bytes.fromhex(SECRETS[2])).hex()
        request(c, "ready_channel", {"index": 3, "params": params(ch.them)})
        theirs = ch.commitment(0, ch.their_outputs(0))
        request(c, "sign_counterparty_commitment", {"index": 3, "commitment_number": 0,
                                                    "tx": theirs.serialize().hex(),
                                                    "per_commitment_point": ch.them.point(0).hex()})
        refused(c, "sign_counterparty_commitment", {  # another outpoint
            "index": 3, "commitment_number": 1, "per_commitment_point": ch.them.point(1).hex(),
            "tx": ch.commitment(1, ch.their_outputs(1), txid="bb" * 32).serialize().hex()}, "funding outpoint")
        for n in (0, 1):
            tx = ch.commitment(n, ch.our_outputs(n))
            request(c, "validate_holder_commitment", {"index": 3, "commitment_number": n, "tx": tx.serialize().hex(),
                                                      "signature": ch.their_sig(tx).hex()})
        request(c, "revoke_holder_commitment", {"index": 3, "commitment_number": 0})
        refused(c, "revoke_holder_commitment", {"index": 3, "commitment_number": 1}, "current state")
        refused(c, "onion_ecdh", {"point": KEYS.node_id().hex()}, "may not ask signd")  # tksigner lacks "onion"
        refused(c, "sign_invoice", {"hrp": "lnbcrt", "data": "qq"}, "may not ask signd")
        refused(c, "validate_holder_commitment", {"index": 3, "commitment_number": "x"}, "commitment_number",
                RpcError.INVALID_PARAMS)
        services = {s["name"]: s for s in c.info()["services"]}
    others = [p for p in descendants(node.proc.pid) if p != node.proc.pid]
    for secret in [SEED, *SECRETS]:
        assert holding(others, "cmdline", secret) == set()
        assert holding(others, "environ", secret) == ({services["signd"]["pid"]} if mode == "processes" else set())
    assert node.stop() == 0
    node.start(*forced)  # the signer's state is in the node's database
    with node.client() as c:
        refused(c, "sign_holder_commitment", {"index": 3, "commitment_number": 0}, "was revoked")
        closing = request(c, "sign_holder_commitment", {"index": 3, "commitment_number": 1})
        assert closing["txid"] == ch.commitment(1, ch.our_outputs(1)).txid().hex()
        refused(c, "revoke_holder_commitment", {"index": 3, "commitment_number": 1}, "may be on chain")
    assert node.stop() == 0
    logs = (node.data_dir / "lnp-host.log").read_text() + node.log.read_text()
    assert "BIP32 seed is forced" in logs and "channel's secrets are forced" in logs
    for secret in [SEED, *SECRETS]:
        assert secret not in logs
        for path in node.data_dir.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_forced_secret_options_are_checked_and_never_echoed(tmp_path: Path) -> None:
    """Bad values exit 2 without echoing them; mainnet refuses the options; nothing is started."""
    prof = tmp_path / "p.toml"
    prof.write_text(f'[node]\nnetwork = "regtest"\ndata_dir = "{tmp_path}/d"\n[plugins]\nenabled = ["core", "signd"]\n')
    bad_secret = "/".join(SECRETS[:5] + ["ab" * 31])
    zero = "/".join(["00" * 32] + SECRETS[1:])
    for args, env, words in (
            (["--dev-force-bip32-seed", "abcd"], {}, "--dev-force-bip32-seed: expected 32 to 128 hex"),
            (["--dev-force-bip32-seed", "zz" * 32], {}, "--dev-force-bip32-seed: expected"),
            (["--dev-force-channel-secrets", "/".join(SECRETS[:5])], {}, "--dev-force-channel-secrets: expected six"),
            (["--dev-force-channel-secrets", bad_secret], {}, "--dev-force-channel-secrets: expected six"),
            (["--dev-force-channel-secrets", zero], {}, "valid secp256k1"),
            ([], {"LNP_DEV_FORCE_BIP32_SEED": "qq" * 32}, "LNP_DEV_FORCE_BIP32_SEED: expected"),
            ([], {"LNP_DEV_FORCE_CHANNEL_SECRETS": "x"}, "LNP_DEV_FORCE_CHANNEL_SECRETS: expected six")):
        out = subprocess.run([sys.executable, "-m", "lnp_host", "run", "--profile", str(prof), *args],
                             capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
        assert out.returncode == 2 and words in out.stderr, out.stderr
        assert SECRETS[1] not in out.stderr and "qq" * 32 not in out.stderr and "abcd" not in out.stderr
    main = tmp_path / "main.toml"
    main.write_text(prof.read_text().replace("regtest", "mainnet"))
    for args in (["--dev-force-bip32-seed", SEED], ["--dev-force-channel-secrets", "/".join(SECRETS)]):
        out = subprocess.run([sys.executable, "-m", "lnp_host", "run", "--profile", str(main), *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and f"{args[0]}: refused on mainnet" in out.stderr, out.stderr
    assert not (tmp_path / "d").exists()  # nothing was started or written


def test_forced_channel_secrets_need_signd(tmp_path: Path) -> None:
    prof = tmp_path / "p.toml"
    prof.write_text(f'[node]\nnetwork = "regtest"\ndata_dir = "{tmp_path}/d"\n[plugins]\nenabled = ["core"]\n')
    out = subprocess.run([sys.executable, "-m", "lnp_host", "run", "--profile", str(prof),
                          "--dev-force-channel-secrets", "/".join(SECRETS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "need signd" in out.stderr, out.stderr
    assert SECRETS[0] not in out.stderr
