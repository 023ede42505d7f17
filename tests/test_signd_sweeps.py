"""signd's sweeps and penalties (plugins/signd/sweeps.py) on a channel built by hand, with signd's real
handlers and a real SQLite table: each spend path, the wallet-only outputs, CSV and expiry, and the
revocation key only with a secret signd recorded. On the regtest chain: test_onchain_signd.py."""
from __future__ import annotations

from typing import Any

import pytest
from embit.script import Script

from lnp_plugin_api.bolt3 import (anchor_script, derive_pubkey, derive_revocation_pubkey, point,
                                  received_htlc_script)
from lnp_plugin_api.tx import SIGHASH_ALL, p2wpkh, p2wsh
from lnp_plugins import signd
from signer_tools import HOLDER_DELAY, PAYMENT_HASH, PREIMAGE, Channel, parse, spend
from lnp_plugin_api.channel import KeyRef, Side
from lnp_plugin_api.onchain_tx import SignRequest
from lnp_plugin_api.services import Signer
from test_signd_channel import (DirectContext, ask, ready, refused, signer, validate,  # noqa: F401 (a fixture)
                                verify_der)


def test_sweeps_pay_the_wallet_only(signer) -> None:
    ch = ready(signer)
    validate(signer, ch, 0)
    commitment = ch.commitment(0, ch.our_outputs(0))
    wallet = signer.channels.wallet_script(1, 3)
    body = dict(index=0, kind="delayed", commitment_number=0, input_index=0, amount_sat=390_000,
                wallet_outputs=[[1, 3]],
                tx=spend(commitment.txid(), 0, [(wallet, 389_000)], sequence=HOLDER_DELAY).serialize().hex())
    got = ask(signer, "sign_sweep", **body)
    sweep = parse(body["tx"])
    digest = sweep.sighash_segwit(0, Script(ch.our_to_local(0)), 390_000, SIGHASH_ALL)
    assert verify_der(bytes.fromhex(got["pubkey"]), bytes.fromhex(got["signature"]), digest)
    assert got["pubkey"] == derive_pubkey(ch.bp["delayed_payment_basepoint"], ch.holder_point(0)).hex()
    foreign = p2wpkh(point(b"\x33" * 32))
    refused(signer, "sign_sweep", "does not pay the wallet key", **{
        **body, "tx": spend(commitment.txid(), 0, [(foreign, 389_000)], sequence=HOLDER_DELAY).serialize().hex()})
    refused(signer, "sign_sweep", "CSV delay", **{
        **body, "tx": spend(commitment.txid(), 0, [(wallet, 389_000)], sequence=1).serialize().hex()})
    refused(signer, "sign_sweep", "never validated", **{**body, "commitment_number": 1})
    # to_remote of their commitment (static_remotekey: P2WPKH of our payment basepoint) and our anchor
    theirs = ch.commitment(0, ch.their_outputs(0))
    got = ask(signer, "sign_sweep", **{**body, "kind": "payment", "amount_sat": 390_000,
                                       "tx": spend(theirs.txid(), 1, [(wallet, 389_000)]).serialize().hex()})
    assert got["pubkey"] == ch.bp["payment_basepoint"].hex() and got["witness_script"] is None
    got = ask(signer, "sign_sweep", **{**body, "kind": "anchor", "amount_sat": 330,
                                       "tx": spend(theirs.txid(), 3, [(wallet, 300)]).serialize().hex()})
    assert bytes.fromhex(got["witness_script"]) == anchor_script(ch.bp["funding_pubkey"])


def revoke_theirs(s: signd.Signer, ch: Channel, n: int, htlc_script: bytes | None = None) -> Any:
    """Sign their commitments up to n + 1 (with the HTLC transactions of `htlc_script` outputs) and
    record the revocation of 0..n; their commitment n."""
    txs = []
    for k in range(n + 2):
        tx = ch.commitment(k, ch.their_outputs(k, htlc_script and ch.their_htlc_script(k)))
        htlcs = [{"tx": ch.htlc_tx(tx, 2, ch.their_to_local(k), 9_000).serialize().hex(),
                  "witness_script": ch.their_htlc_script(k).hex()}] if htlc_script else []
        ask(s, "sign_counterparty_commitment", index=0, commitment_number=k, tx=tx.serialize().hex(),
            per_commitment_point=ch.them.point(k).hex(), htlcs=htlcs)
        if k <= n:
            ask(s, "validate_counterparty_revocation", index=0, commitment_number=k, secret=ch.them.secret(k).hex())
        txs.append(tx)
    return txs[n]


def test_penalty_uses_the_revocation_key(signer) -> None:
    ch = ready(signer)
    wallet = signer.channels.wallet_script(0, 7)
    secret = ch.them.secret(0)
    revoked = ch.commitment(0, ch.their_outputs(0))
    body = dict(index=0, commitment_number=0, per_commitment_secret=secret.hex(), input_index=0,
                amount_sat=600_000, wallet_outputs=[[0, 7]], witness_script=ch.their_to_local(0).hex(),
                tx=spend(revoked.txid(), 0, [(wallet, 599_000)]).serialize().hex())
    refused(signer, "sign_penalty", "counterparty commitment 0 is not revoked", **body)
    assert revoke_theirs(signer, ch, 0).txid() == revoked.txid()
    got = ask(signer, "sign_penalty", **body)
    assert got["pubkey"] == derive_revocation_pubkey(ch.bp["revocation_basepoint"], point(secret)).hex()
    tx = parse(body["tx"])
    digest = tx.sighash_segwit(0, Script(bytes.fromhex(got["witness_script"])), 600_000, SIGHASH_ALL)
    assert verify_der(bytes.fromhex(got["pubkey"]), bytes.fromhex(got["signature"]), digest)
    assert p2wsh(bytes.fromhex(got["witness_script"])) == revoked.vout[0].script_pubkey.data
    refused(signer, "sign_penalty", "does not pay the wallet key", **{**body, "wallet_outputs": [[0, 8]]})
    refused(signer, "sign_penalty", "neither the to_local nor an HTLC of this revoked commitment",
            **{**body, "witness_script": ch.htlc_script(b"\x02" * 33, b"\x03" * 33).hex()})
    refused(signer, "sign_penalty", "not the one the counterparty revealed", **{
        **body, "per_commitment_secret": ch.them.secret(1).hex()})  # a secret it never revealed
    refused(signer, "sign_penalty", "commitment 1 is not revoked", **{**body, "commitment_number": 1})


@pytest.mark.parametrize("channel_type", ["static_remotekey", "anchors"])
def test_htlc_sweeps_and_penalties_take_bolt3_htlc_scripts(signer, channel_type: str) -> None:
    ch = ready(signer, channel_type)
    pcp, script = ch.them.point(0), ch.their_htlc_script(0)
    theirs = ch.commitment(0, ch.their_outputs(0, script))
    wallet = signer.channels.wallet_script(0, 7)
    seq = 1 if channel_type == "anchors" else 0
    refused(signer, "sign_sweep", "timeout path does not spend an HTLC the counterparty offered", **dict(
        index=0, kind="timeout", per_commitment_point=pcp.hex(), witness_script=script.hex(), input_index=0,
        amount_sat=10_000, wallet_outputs=[[0, 7]],
        tx=spend(theirs.txid(), 2, [(wallet, 9_000)], sequence=seq).serialize().hex()))
    body = dict(index=0, kind="preimage", per_commitment_point=pcp.hex(), witness_script=script.hex(),
                input_index=0, amount_sat=10_000, wallet_outputs=[[0, 7]],
                tx=spend(theirs.txid(), 2, [(wallet, 9_000)], sequence=seq).serialize().hex())
    # a claim by preimage only with the HTLC's preimage
    refused(signer, "sign_sweep", "needs the preimage", **body)
    refused(signer, "sign_sweep", "not the one of this HTLC", **{**body, "preimage": (b"\x01" * 32).hex()})
    body["preimage"] = PREIMAGE.hex()
    got = ask(signer, "sign_sweep", **body)
    assert got["pubkey"] == derive_pubkey(ch.bp["htlc_basepoint"], pcp).hex()
    lookalike = ch.htlc_script(derive_pubkey(ch.bp["htlc_basepoint"], pcp), derive_pubkey(point(ch.them.htlc), pcp),
                               derive_revocation_pubkey(ch.bp["revocation_basepoint"], pcp))
    refused(signer, "sign_sweep", "not an HTLC", **{**body, "witness_script": lookalike.hex()})
    # once commitment 0 is revoked, the revocation key takes the same output
    assert revoke_theirs(signer, ch, 0, script).txid() == theirs.txid()
    penalty = dict(body, commitment_number=0, per_commitment_secret=ch.them.secret(0).hex())
    del penalty["per_commitment_point"], penalty["kind"], penalty["preimage"]
    got = ask(signer, "sign_penalty", **penalty)
    assert got["pubkey"] == derive_revocation_pubkey(ch.bp["revocation_basepoint"], pcp).hex()
    refused(signer, "sign_penalty", "neither the to_local nor an HTLC of this revoked commitment",
            **{**penalty, "witness_script": lookalike.hex()})


def test_a_timeout_claim_waits_for_the_htlc_expiry(signer) -> None:
    """Our claim of an HTLC we offered, on their commitment: only by `timeout` (not `preimage`), with a
    locktime at the expiry read from the script, and a non-final input."""
    ch = ready(signer, "anchors")
    pcp = ch.them.point(0)
    script = received_htlc_script(derive_revocation_pubkey(ch.bp["revocation_basepoint"], pcp),
                                  derive_pubkey(point(ch.them.htlc), pcp), derive_pubkey(ch.bp["htlc_basepoint"], pcp),
                                  PAYMENT_HASH, 600_000, True)
    wallet = signer.channels.wallet_script(0, 7)

    def claim(locktime: int, sequence: int = 1) -> str:
        tx = spend(b"\x44" * 32, 2, [(wallet, 9_000)], sequence=sequence)
        tx.locktime = locktime
        return tx.serialize().hex()
    body = dict(index=0, kind="timeout", per_commitment_point=pcp.hex(), witness_script=script.hex(), input_index=0,
                amount_sat=10_000, wallet_outputs=[[0, 7]], tx=claim(600_000))
    ask(signer, "sign_sweep", **body)
    refused(signer, "sign_sweep", "expires at 600000", **{**body, "tx": claim(599_999)})
    refused(signer, "sign_sweep", "expires at 600000", **{**body, "tx": claim(600_000, 0xFFFFFFFF)})
    refused(signer, "sign_sweep", "CSV delay", **{**body, "tx": claim(600_000, 0)})
    refused(signer, "sign_sweep", "preimage path does not spend an HTLC the counterparty received",
            **{**body, "kind": "preimage"})


def test_a_delayed_sweep_names_its_commitment(signer) -> None:
    ch = ready(signer)
    validate(signer, ch, 0)
    commitment = ch.commitment(0, ch.our_outputs(0))
    body = dict(index=0, kind="delayed", commitment_number=0, per_commitment_point=ch.holder_point(0).hex(),
                input_index=0, amount_sat=390_000, wallet_outputs=[[1, 3]], witness_script=ch.our_to_local(0).hex(),
                tx=spend(commitment.txid(), 0, [(signer.channels.wallet_script(1, 3), 389_000)],
                         sequence=HOLDER_DELAY).serialize().hex())
    ask(signer, "sign_sweep", **body)
    refused(signer, "sign_sweep", "not the one of holder commitment 0",
            **{**body, "per_commitment_point": ch.holder_point(1).hex()})
    refused(signer, "sign_sweep", "not the one of this channel's delayed output",
            **{**body, "witness_script": ch.our_to_local(1).hex()})


def test_sign_input_refuses_what_is_not_ours_to_sign(signer) -> None:
    """Wallet inputs are the wallet's (by PSBT); a path of the peer's key is not signd's to sign."""
    client = Signer(DirectContext(signer))  # type: ignore[arg-type]
    ready(signer)
    wallet = SignRequest(1, b"\x00" * 32, 1, None, None, path="wallet")
    with pytest.raises(ValueError, match="the wallet signs it"):
        client.sign_input(0, wallet)
    theirs = SignRequest(0, b"\x00" * 32, 1, KeyRef(Side.REMOTE, "delayed_payment", "per_commitment", b"\x02" * 33),
                         b"\x02" * 33, path="delayed", commitment_number=0)
    with pytest.raises(ValueError, match="the peer's key"):
        client.sign_input(0, theirs)
    assert client.sign_input(0, SignRequest(0, b"", 1, None, None, path="anyone")) == b""
