"""signd signs BOLT-3's test vectors byte for byte: playing the vectors' remote node (its secrets
forced as --dev-force-channel-secrets does), it signs the local node's commitment (for signd, the
counterparty's) and its HTLC transactions; Appendix C without anchors, Appendix F with them
(SIGHASH_SINGLE|ANYONECANPAY)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from embit.script import Witness

from lnp_plugin_api.bolt3 import point
from lnp_plugin_api.tx import SIGHASH_ALL, SIGHASH_SINGLE_ANYONECANPAY
from lnp_plugins import signd
from lnp_plugins.signd.keys import Keychain
from lnp_plugins.signd.sigs import witness_signature
from signer_tools import parse
from test_signd_channel import make_signer

VECTORS = Path(__file__).parent / "vectors"
APP_C = json.loads((VECTORS / "bolt03-appC-commitment-htlc-txs.json").read_text())
APP_F = json.loads((VECTORS / "bolt03-appF-anchors-commitment-htlc-txs.json").read_text())
P, D = APP_C["params"], APP_C["internal_derivation_inputs"]


def secret(text: str) -> bytes:
    return bytes.fromhex(text)[:32]  # the vectors add a compression byte


# the remote node's keys; its delayed key and per-commitment seed play no part in these signatures
REMOTE = (secret(D["remote_funding_privkey"]), secret(D["remote_revocation_basepoint_secret"]),
          secret(D["remote_payment_basepoint_secret"]), b"\x55" * 32, secret(D["remote_payment_basepoint_secret"]),
          b"\x66" * 32)


def unsigned(tx_hex: str) -> tuple[str, bytes]:
    """The transaction without its witness, and the witness script it carried."""
    tx = parse(tx_hex)
    script = tx.vin[0].witness.items[-1]
    tx.vin[0].witness = Witness([])
    return tx.serialize().hex(), script


def cases() -> list[tuple[str, str, str, str, list[tuple[str, str]]]]:
    """(name, channel type, commitment tx, remote signature, [(htlc tx, remote htlc signature)])."""
    out = [(v["name"], "static_remotekey", v["commit_tx"], v["remote_signature"],
            [(h["tx"], h["remote_htlc_signature"]) for h in v["htlc_txs"]]) for v in APP_C["vectors"]]
    out += [(v["Name"], "anchors", v["ExpectedCommitmentTxHex"], v["RemoteSigHex"],
             [(h["ResolutionTxHex"], h["RemoteSigHex"]) for h in v["HtlcDescs"]]) for v in APP_F["vectors"]]
    return out


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    signer = make_signer(tmp_path_factory.mktemp("remote"))
    signer.keys = signer.channels.keys = Keychain("", "regtest", bip32_seed=b"\x01" * 32, channel_secrets=REMOTE)
    assert point(REMOTE[2]).hex() == P["remote_payment_basepoint"] == P["remote_htlc_basepoint"]
    yield signer
    signer.engine.dispose()


@pytest.mark.parametrize("index,case", list(enumerate(cases())), ids=[c[0] + f" ({c[1]})" for c in cases()])
def test_bolt3_vectors_signed_as_the_remote_node(remote, index: int, case) -> None:
    name, channel_type, commit_hex, remote_sig, htlcs = case
    local = {"revocation_basepoint": P["local_payment_basepoint"], "payment_basepoint": P["local_payment_basepoint"],
             "delayed_payment_basepoint": D["local_delayed_payment_basepoint"], "htlc_basepoint": P["local_htlc_basepoint"]}
    params = {"funding_txid": P["funding_tx_id"], "funding_vout": P["funding_output_index"],
              "funding_sat": P["funding_amount_satoshi"], "counterparty_funding_pubkey": P["local_funding_pubkey"],
              "counterparty_basepoints": local, "holder_to_self_delay": 144,
              "counterparty_to_self_delay": P["local_delay"], "channel_type": channel_type, "opener": "counterparty"}
    signd.dispatch(remote, "signd.ready_channel", {"index": index, "params": params})
    state = remote.channels.load(index)
    state.counterparty_revoked = P["commitment_number"] - 1  # a channel at that point of its life
    remote.channels.save(state)
    tx, _ = unsigned(commit_hex)
    body = {"index": index, "commitment_number": P["commitment_number"], "tx": tx,
            "per_commitment_point": D["local_per_commitment_point"],
            "htlcs": [dict(zip(("tx", "witness_script"), (t, s.hex()))) for t, s in (unsigned(h) for h, _ in htlcs)]}
    got = signd.dispatch(remote, "signd.sign_counterparty_commitment", body)
    assert witness_signature(bytes.fromhex(got["signature"]), 1)[:-1].hex() == remote_sig
    flag = SIGHASH_SINGLE_ANYONECANPAY if channel_type == "anchors" else SIGHASH_ALL
    assert [witness_signature(bytes.fromhex(s), flag)[:-1].hex() for s in got["htlc_signatures"]] == [s for _, s in htlcs]
