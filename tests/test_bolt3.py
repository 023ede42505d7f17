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


def _rebuilt_kind(script: bytes, rev: bytes, local: bytes, remote: bytes, anchors: bool) -> tuple[str, int] | None:
    """The reference `HtlcScripts.kind` must agree with: read the payment hash (and the expiry) where the
    script would hold them, rebuild the whole script from them, and compare."""
    from lnp_plugin_api.bolt3 import OP_0, OP_1, OP_16, _htlc_head, _offered, _received
    head = len(_htlc_head(rev, remote))
    at = head + 4 + 34 + 4 + 1
    if script == _offered(rev, local, remote, script[at:at + 20], anchors):
        return "offered", 0
    at = head + 23 + 3 + 34 + 4
    op = script[at] if at < len(script) else OP_0
    if OP_1 <= op <= OP_16:
        cltv = op - OP_1 + 1
    else:
        cltv = int.from_bytes(script[at + 1:at + 1 + op], "little") if op <= 5 else 0
    if script == _received(rev, local, remote, script[head + 3:head + 23], cltv, anchors):
        return "received", cltv
    return None


@pytest.mark.parametrize("anchors", [False, True])
def test_htlc_scripts_agree_with_rebuilding_on_every_byte_changed(anchors: bool) -> None:
    """HtlcScripts compares the parts around the payment hash and the expiry: every script one byte away
    from an HTLC script (changed, dropped, added), and every expiry, gets the answer rebuilding gives."""
    from lnp_plugin_api.bolt3 import HtlcScripts, offered_htlc_script, received_htlc_script
    rev, local, remote = (point(bytes([i]) * 32) for i in (1, 2, 3))
    scripts = HtlcScripts(rev, local, remote, anchors)
    bases = [offered_htlc_script(rev, local, remote, b"\x05" * 32, anchors)]
    bases += [received_htlc_script(rev, local, remote, b"\x05" * 32, cltv, anchors)
              for cltv in (0, 1, 16, 17, 128, 0x7FFF, 0x8000, 500_000, 0x7FFFFFFF, 0xFFFFFFFF, 2**39 - 1)]
    found = set()
    for base in bases:
        variants = [base[:i] + bytes([v]) + base[i + 1:] for i in range(len(base)) for v in (0, 0x51, 0x60, 5, 0xFF)]
        variants += [base[:i] + base[i + 1:] for i in range(len(base))] + [base[:i] for i in range(len(base))]
        variants += [base[:i] + bytes([v]) + base[i:] for i in range(len(base) + 1) for v in (0, 5)]
        for script in [base] + variants:
            got = scripts.kind(script)
            assert got == _rebuilt_kind(script, rev, local, remote, anchors), script.hex()
            found.add(got[0] if got else None)
    assert found == {"offered", "received", None}
    assert scripts.kind(bases[1]) == ("received", 0) and scripts.kind(bases[-2]) == ("received", 0xFFFFFFFF)
