"""BOLT-3 key material against the official vectors (Appendix D and E)."""
from __future__ import annotations

import json

import pytest

from conftest import VECTORS
from lnp_plugin_api.bolt3 import (Shachain, ShachainError, derive_privkey, derive_pubkey, derive_revocation_privkey,
                              derive_revocation_pubkey, per_commitment_secret, point)

SECRETS = json.loads((VECTORS / "bolt03-appD-per-commitment-secrets.json").read_text())
KEYS = json.loads((VECTORS / "bolt03-appE-key-derivation.json").read_text())


@pytest.mark.parametrize("case", SECRETS["generation"], ids=lambda c: c["name"])
def test_per_commitment_secret_generation(case: dict) -> None:
    assert per_commitment_secret(bytes.fromhex(case["seed"]), case["I"]).hex() == case["output"]


@pytest.mark.parametrize("case", SECRETS["storage"], ids=lambda c: c["name"])
def test_revealed_secret_storage(case: dict) -> None:
    chain = Shachain()
    for step in case["steps"]:
        secret = bytes.fromhex(step["secret"])
        if step["output"] == "OK":
            chain.insert(secret, step["I"])
            assert chain.get(step["I"]) == secret
        else:
            with pytest.raises(ShachainError):
                chain.insert(secret, step["I"])
    assert Shachain.from_json(json.loads(json.dumps(chain.to_json()))) == chain


def test_storage_answers_every_revealed_index() -> None:
    seed = bytes(range(32))
    chain = Shachain()
    top = (1 << 48) - 1
    for i in range(top, top - 200, -1):
        chain.insert(per_commitment_secret(seed, i), i)
    assert len(chain.known) <= 49
    for i in range(top, top - 200, -1):
        assert chain.get(i) == per_commitment_secret(seed, i)
    assert chain.get(top - 200) is None


def test_key_derivation_vectors() -> None:
    base_secret = bytes.fromhex(KEYS["base_secret"])
    pc_secret = bytes.fromhex(KEYS["per_commitment_secret"])
    base_point, pc_point = bytes.fromhex(KEYS["base_point"]), bytes.fromhex(KEYS["per_commitment_point"])
    assert point(base_secret) == base_point and point(pc_secret) == pc_point
    expected = {k: v for t in KEYS["tests"] for k, v in t.items() if k not in ("name", "comments")}
    assert derive_pubkey(base_point, pc_point).hex() == expected["localpubkey"]
    assert derive_privkey(base_secret, pc_point).hex() == expected["localprivkey"]
    assert derive_revocation_pubkey(base_point, pc_point).hex() == expected["revocationpubkey"]
    assert derive_revocation_privkey(base_secret, pc_secret).hex() == expected["revocationprivkey"]
    assert point(derive_privkey(base_secret, pc_point)) == derive_pubkey(base_point, pc_point)


@pytest.mark.parametrize("anchors", [False, True])
def test_is_htlc_script_reads_and_rebuilds_both_htlc_scripts(anchors: bool) -> None:
    from lnp_plugin_api.bolt3 import is_htlc_script, offered_htlc_script, received_htlc_script
    rev, local, remote = (point(bytes([i]) * 32) for i in (1, 2, 3))
    scripts = [offered_htlc_script(rev, local, remote, b"\x05" * 32, anchors)]
    scripts += [received_htlc_script(rev, local, remote, b"\x05" * 32, cltv, anchors)
                for cltv in (0, 1, 16, 17, 127, 128, 255, 256, 500_000, 0x800000, 499_999_999)]
    for script in scripts:
        assert is_htlc_script(script, rev, local, remote, anchors)
        assert not is_htlc_script(script, rev, remote, local, anchors)  # the owner's key where the other's is
        assert not is_htlc_script(script, local, local, remote, anchors)
        assert not is_htlc_script(script, rev, local, remote, not anchors)
        assert not any(is_htlc_script(script[:n], rev, local, remote, anchors) for n in range(len(script)))
        assert not is_htlc_script(script + b"\x00", rev, local, remote, anchors)
