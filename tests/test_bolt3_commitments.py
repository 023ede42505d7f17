"""BOLT-3 Appendix C and F: every commitment and HTLC transaction, byte for byte, and every signature.

The transactions are built by the extension pipeline (`bolt_extensions.extensions_for`), signed here with the
vectors' private keys (coincurve: RFC6979, low-S, DER), and compared with the spec's bytes.
"""
from __future__ import annotations

import hashlib
import json

import coincurve
import pytest

from conftest import VECTORS
from lnp_plugin_api.bolt3 import derive_privkey, point
from lnp_plugin_api.bolt_extensions import extensions_for
from lnp_plugin_api.channel import (ANCHORS, STATIC_REMOTEKEY, Basepoints, ChannelParams, ChannelType,
                                    CommitmentSpec, Htlc, Side, SideConfig)
from lnp_plugin_api.commitment import BuiltCommitment, build_commitment, signed_commitment, signed_second_stage
from lnp_plugin_api.tx import SIGHASH_SINGLE_ANYONECANPAY, Tx, p2wsh

APP_C = json.loads((VECTORS / "bolt03-appC-commitment-htlc-txs.json").read_text())
APP_B = json.loads((VECTORS / "bolt03-appB-funding-tx.json").read_text())
APP_F = json.loads((VECTORS / "bolt03-appF-anchors-commitment-htlc-txs.json").read_text())
P = APP_C["params"]
INTERNAL = APP_C["internal_derivation_inputs"]


def key(hex33: str) -> bytes:
    """A vector private key without its trailing 01."""
    return bytes.fromhex(hex33)[:32]


def sign(secret: bytes, digest: bytes) -> bytes:
    return coincurve.PrivateKey(secret).sign(digest, hasher=None)


PCP = bytes.fromhex(INTERNAL["local_per_commitment_point"])
LOCAL_FUNDING = key(P["local_funding_privkey"])
REMOTE_FUNDING = key(INTERNAL["remote_funding_privkey"])
LOCAL_HTLC = key(P["local_privkey"])           # the local htlc basepoint is the payment basepoint here
REMOTE_HTLC = key(INTERNAL["remote_privkey"])


def params(channel_type: ChannelType, dust_limit: int) -> ChannelParams:
    """Appendix C's channel: local opens; HTLC basepoints equal the payment basepoints."""
    unused = point(b"\x07" * 32)  # a basepoint the local commitment never uses
    local = SideConfig(bytes.fromhex(P["local_funding_pubkey"]),
                       Basepoints(unused, bytes.fromhex(P["local_payment_basepoint"]),
                                  bytes.fromhex(INTERNAL["local_delayed_payment_basepoint"]),
                                  bytes.fromhex(P["local_htlc_basepoint"])),
                       dust_limit_sat=dust_limit, to_self_delay=6, channel_reserve_sat=0)
    remote = SideConfig(bytes.fromhex(P["remote_funding_pubkey"]),
                        Basepoints(bytes.fromhex(INTERNAL["remote_revocation_basepoint"]),
                                   bytes.fromhex(P["remote_payment_basepoint"]), unused,
                                   bytes.fromhex(P["remote_htlc_basepoint"])),
                        dust_limit_sat=546, to_self_delay=P["local_delay"], channel_reserve_sat=0)
    return ChannelParams(local, remote, P["funding_tx_id"], P["funding_output_index"], P["funding_amount_satoshi"],
                         Side.LOCAL, channel_type)


def test_vector_keys_match_the_derivation() -> None:
    assert point(LOCAL_FUNDING).hex() == P["local_funding_pubkey"]
    assert derive_privkey(key(INTERNAL["local_payment_basepoint_secret"]), PCP) == LOCAL_HTLC
    assert derive_privkey(key(INTERNAL["remote_payment_basepoint_secret"]), PCP) == REMOTE_HTLC


def htlcs(ids: list[int]) -> tuple[Htlc, ...]:
    out = []
    for h in APP_C["htlcs"]:
        if h["id"] in ids:
            offerer = Side.LOCAL if h["direction"] == "local->remote" else Side.REMOTE
            preimage = bytes.fromhex(h["payment_preimage"])
            out.append(Htlc(offerer, h["id"], h["amount_msat"], hashlib.sha256(preimage).digest(), h["expiry"]))
    return tuple(out)


def preimage_of(htlc_id: int) -> bytes:
    return bytes.fromhex(APP_C["htlcs"][htlc_id]["payment_preimage"])


def build(channel_type: ChannelType, dust: int, to_local: int, to_remote: int, feerate: int,
          ids: list[int]) -> BuiltCommitment:
    p = params(channel_type, dust)
    spec = CommitmentSpec(feerate, to_local, to_remote, htlcs(ids))
    return build_commitment(p, spec, Side.LOCAL, P["commitment_number"], PCP, extensions_for(channel_type))


def check_commitment(built: BuiltCommitment, channel_type: ChannelType, expected_tx: str, remote_sig: str) -> Tx:
    """Both funding signatures and the signed commitment, byte for byte."""
    ours = sign(LOCAL_FUNDING, built.funding_sighash)
    theirs = sign(REMOTE_FUNDING, built.funding_sighash)
    assert theirs.hex() == remote_sig
    signed = signed_commitment(built, ours, theirs, params(channel_type, 546))
    assert signed.serialize().hex() == expected_tx
    assert Tx.parse(built.tx.serialize()).txid() == signed.txid() == built.txid
    return signed


def c_ids(case: dict) -> list[int]:
    if case["name"].startswith("simple"):
        return []
    return [1, 5, 6] if "same amount" in case["name"] else [0, 1, 2, 3, 4]


@pytest.mark.parametrize("case", APP_C["vectors"], ids=lambda c: c["name"])
def test_appendix_c(case: dict) -> None:
    built = build(STATIC_REMOTEKEY, P["local_dust_limit_satoshi"], case["to_local_msat"], case["to_remote_msat"],
                  case["local_feerate_per_kw"], c_ids(case))
    ours = sign(LOCAL_FUNDING, built.funding_sighash)
    assert ours.hex() == case["local_signature"]
    check_commitment(built, STATIC_REMOTEKEY, case["commit_tx"], case["remote_signature"])
    assert len(built.second_stages) == case["num_htlcs"] == len(case["htlc_txs"])
    if "base_fee_sat" in case:
        assert built.fee_sat == case["actual_fee_sat"]
    for stage, expected in zip(built.second_stages, case["htlc_txs"]):
        assert stage.output_index == expected["output_index"]
        assert stage.stage.kind == expected["type"].replace("-", "_")
        assert built.outputs[stage.output_index].descriptor.htlc.id == expected["htlc_id"]
        remote_sig = sign(REMOTE_HTLC, stage.remote_sighash)
        local_sig = sign(LOCAL_HTLC, stage.owner_sighash)
        assert remote_sig.hex() == expected["remote_htlc_signature"]
        assert local_sig.hex() == expected["local_htlc_signature"]
        preimage = preimage_of(expected["htlc_id"]) if stage.stage.kind == "htlc_success" else None
        assert signed_second_stage(stage, remote_sig, local_sig, preimage).serialize().hex() == expected["tx"]


def f_ids(case: dict) -> list[int]:
    if not case["UseTestHtlcs"]:
        return []
    return [1, 5, 6] if "same amount" in case["Name"] else [0, 1, 2, 3, 4]


@pytest.mark.parametrize("case", APP_F["vectors"], ids=lambda c: c["Name"])
def test_appendix_f_anchors(case: dict) -> None:
    built = build(ANCHORS, case["DustLimitSatoshis"], case["LocalBalance"], case["RemoteBalance"], case["FeePerKw"],
                  f_ids(case))
    check_commitment(built, ANCHORS, case["ExpectedCommitmentTxHex"], case["RemoteSigHex"])
    assert len(built.second_stages) == len(case["HtlcDescs"])
    for stage, expected in zip(built.second_stages, case["HtlcDescs"]):
        assert stage.stage.remote_sighash == SIGHASH_SINGLE_ANYONECANPAY
        remote_sig = sign(REMOTE_HTLC, stage.remote_sighash)
        local_sig = sign(LOCAL_HTLC, stage.owner_sighash)
        assert remote_sig.hex() == expected["RemoteSigHex"]
        htlc = built.outputs[stage.output_index].descriptor.htlc
        preimage = preimage_of(htlc.id) if stage.stage.kind == "htlc_success" else None
        assert signed_second_stage(stage, remote_sig, local_sig, preimage).serialize().hex() == \
            expected["ResolutionTxHex"]


def test_appendix_b_funding_output() -> None:
    """The funding output both commitments spend: P2WSH of the sorted 2-of-2 (Appendix B)."""
    from lnp_plugin_api.commitment import funding_script
    script = funding_script(params(STATIC_REMOTEKEY, 546))
    assert script.hex() in APP_B["comments"][2]
    funding = Tx.parse(bytes.fromhex(APP_B["funding_tx"]))
    assert funding.txid() == P["funding_tx_id"] and funding.serialize().hex() == APP_B["funding_tx"]
    out = funding.outputs[int(APP_B["funding_output"])]
    assert (out.amount_sat, out.script_pubkey) == (int(APP_B["funding_satoshis"]), p2wsh(script))


def test_closing_transaction() -> None:
    """BOLT-3 closing: rounded down, fee from the payer, own dust removed, OP_RETURN worth 0, BIP69 order."""
    from lnp_plugin_api.commitment import build_closing, funding_witness
    p = params(STATIC_REMOTEKEY, 546)
    a, b = bytes.fromhex("0014") + b"\x01" * 20, bytes.fromhex("0014") + b"\x02" * 20
    c = build_closing(p, 7_000_000_999, 2_999_999_001, a, b, 1000, Side.LOCAL, 546)
    assert [o.amount_sat for o in c.tx.outputs] == [2_999_999, 6_999_000]
    assert c.output_sides == (Side.REMOTE, Side.LOCAL)
    assert (c.tx.locktime, c.tx.inputs[0].sequence, c.tx.inputs[0].txid) == (0, 0xFFFFFFFF, P["funding_tx_id"])
    dusty = build_closing(p, 9_999_500_000, 500_000, a, b, 1000, Side.LOCAL, 546)
    assert dusty.output_sides == (Side.LOCAL,)
    simple = build_closing(p, 9_999_500_000, 500_000, a, b"\x6a", 1000, Side.LOCAL, 546, locktime=7,
                           sequence=0xFFFFFFFD)
    assert [o.amount_sat for o in simple.tx.outputs] == [0, 9_998_500]
    with pytest.raises(ValueError, match="payer"):
        build_closing(p, 500_000, 9_999_500_000, a, b, 1000, Side.LOCAL, 546)
    # Both sides sign the same digest; the witness puts the lesser funding key's signature first.
    sig_l, sig_r = sign(LOCAL_FUNDING, c.sighash), sign(REMOTE_FUNDING, c.sighash)
    witness = funding_witness(p, sig_l, sig_r)
    assert witness[1][:-1] == sig_l and witness[2][:-1] == sig_r  # 023da0... < 030e9f...
    assert coincurve.PublicKey(bytes.fromhex(P["remote_funding_pubkey"])).verify(sig_r, c.sighash, hasher=None)


@pytest.mark.parametrize("channel_type", [STATIC_REMOTEKEY, ANCHORS], ids=lambda t: t.name)
def test_descriptors_name_keys_the_spender_can_derive(channel_type: ChannelType) -> None:
    """BOLT-5's view of Appendix C's commitment: each path's key is the one its spender's secrets give."""
    from lnp_plugin_api.bolt3 import derive_revocation_privkey
    from lnp_plugin_api.commitment import spend_witness
    built = build(channel_type, 546, 6_988_000_000, 3_000_000_000, 0, [0, 1, 2, 3, 4])
    revocation = derive_revocation_privkey(key(INTERNAL["remote_revocation_basepoint_secret"]),
                                           key(INTERNAL["x_local_per_commitment_secret"]))
    secrets = {("local", "delayed_payment"): key(INTERNAL["local_delayed_privkey"]),
               ("remote", "revocation"): revocation,
               ("remote", "htlc"): REMOTE_HTLC,
               ("remote", "payment"): key(INTERNAL["remote_payment_basepoint_secret"]),
               ("local", "funding"): LOCAL_FUNDING, ("remote", "funding"): REMOTE_FUNDING}
    kinds = set()
    for out in built.outputs:
        desc = out.descriptor
        kinds.add(desc.kind)
        stage_paths = desc.second_stage.paths if desc.second_stage else ()
        for path in desc.paths + stage_paths:
            if path.key is None:
                assert desc.kind == "anchor" and (path.spender, path.csv, path.witness) == (None, 16, (b"",))
                continue
            assert point(secrets[(path.key.side.value, path.key.basepoint)]) == path.key.pubkey, (desc.kind, path)
        if desc.kind == "to_local":
            delayed, revoke = desc.paths
            assert (delayed.spender, delayed.csv, revoke.spender) == (Side.LOCAL, P["local_delay"], Side.REMOTE)
            assert spend_witness(desc, delayed, {"sig": b"S"}) == [b"S", b"", desc.witness_script]
            assert spend_witness(desc, revoke, {"sig": b"S"}) == [b"S", b"\x01", desc.witness_script]
        if desc.kind == "received_htlc":
            timeout = desc.paths[1]
            assert (timeout.spender, timeout.cltv) == (Side.REMOTE, desc.htlc.cltv_expiry)
            assert desc.second_stage.kind == "htlc_success"
        if desc.kind == "offered_htlc":
            assert desc.paths[1].name == "preimage" and desc.second_stage.locktime == desc.htlc.cltv_expiry
            assert desc.paths[1].csv == (1 if channel_type.anchors else 0)
        if desc.kind == "to_remote" and not channel_type.anchors:
            assert desc.witness_script is None
            assert spend_witness(desc, desc.paths[0], {"sig": b"S"}) == [b"S", desc.paths[0].key.pubkey]
        if desc.kind == "to_remote" and channel_type.anchors:
            assert desc.paths[0].csv == 1 and spend_witness(desc, desc.paths[0], {"sig": b"S"}) == \
                [b"S", desc.witness_script]
    assert kinds == {"to_local", "to_remote", "offered_htlc", "received_htlc"} | \
        ({"anchor"} if channel_type.anchors else set())


def test_received_commitment_signed_is_checked() -> None:
    """Our commitment with the peer's signatures from Appendix F: valid; high-S, wrong count or a swapped
    HTLC signature refused."""
    from lnp_plugin_api.commitment import check_signatures
    from lnp_plugin_api.tx import SECP256K1_ORDER, compact_to_der, der_to_compact
    case = next(c for c in APP_F["vectors"] if c["Name"] == "commitment tx with seven outputs untrimmed")
    built = build(ANCHORS, case["DustLimitSatoshis"], case["LocalBalance"], case["RemoteBalance"], case["FeePerKw"],
                  f_ids(case))
    sig = der_to_compact(bytes.fromhex(case["RemoteSigHex"]))
    htlc_sigs = [der_to_compact(bytes.fromhex(d["RemoteSigHex"])) for d in case["HtlcDescs"]]
    assert compact_to_der(sig).hex() == case["RemoteSigHex"]
    assert check_signatures(built, sig, htlc_sigs) is None
    high_s = sig[:32] + (SECP256K1_ORDER - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    assert "commitment signature" in check_signatures(built, high_s, htlc_sigs)
    assert "htlc_signatures for" in check_signatures(built, sig, htlc_sigs[:-1])
    assert "htlc_signature 0" in check_signatures(built, sig, [htlc_sigs[1], htlc_sigs[0]] + htlc_sigs[2:])
