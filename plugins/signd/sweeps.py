"""Sweeps and penalties: signd signs one input spending a channel output to the wallet.

The request is what `onchain_tx.SignRequest` carries (`Signer.sign_input` sends it): the spend path
(`kind`), the unsigned transaction, the input, its amount, the witness script, the commitment number,
the per-commitment point or revealed secret, and the wallet key each output pays. signd rebuilds the
script of the output from the channel's parameters and its own keys (or, for an HTLC output, checks
the caller's script is BOLT-3's HTLC script of this channel's keys, of the kind the path spends),
checks the input's sequence and the locktime the path needs, that every output pays a wallet key
(docs/keys.md), and computes the digest itself: it never signs a digest it is given.
"""
from __future__ import annotations

from typing import Any, Callable

from lnp_plugin_api import RpcError
from lnp_plugin_api.bolt3 import (MAX_INDEX, Shachain, anchor_script, derive_privkey, derive_revocation_privkey,
                                  htlc_script_kind, point, to_remote_anchor_script)
from lnp_plugin_api.tx import SIGHASH_ALL, Tx

from .channel import (BAD, DELAYED, FUNDING, HARDENED, HTLC, PAYMENT, REVOCATION, ChannelSigner, ChannelState, _hex,
                      _int, _key, _tx, bad, check_preimage, outputs_detail, refuse)
from .sigs import p2wpkh_script_code, sign, witness_signature

# the spend paths of `onchain_tx` (SpendPath.name) signd signs with sign_sweep; sign_penalty is `revocation`
SWEEPS = ("delayed", "payment", "preimage", "timeout", "anchor")
FINAL = 0xFFFFFFFF
KeyAndScript = Callable[[ChannelState, Tx, int], "tuple[bytes, bytes | None, int]"]


def _spend(signer: ChannelSigner, body: dict[str, Any], kind: str, key_and_script: KeyAndScript) -> dict[str, Any]:
    index, tx = _int(body, "index", 0, HARDENED - 1), _tx(body)
    i, amount = _int(body, "input_index", 0, len(tx.inputs) - 1), _int(body, "amount_sat", 1, 21_000_000 * 10**8)
    with signer.lock:
        state = signer.ready(index)
        secret, script, min_sequence = key_and_script(state, tx, i)
        if body.get("witness_script") is not None and script is not None and _hex(body, "witness_script") != script:
            raise refuse(f"the witness script is not the one of this channel's {kind} output: refused")
        signer.check_wallet_outputs(tx, body.get("wallet_outputs"))
        if tx.inputs[i].sequence < min_sequence or min_sequence and tx.version < 2:
            raise refuse(f"the input's sequence must be at least {min_sequence} (its CSV delay): refused")
        signer.allowed("channel", {"purpose": kind, "index": index, "input": i, "amount_sat": amount,
                                   "outputs": outputs_detail(tx)})
    wsh = script is not None
    code = script if wsh else p2wpkh_script_code(point(secret))
    sig = sign(secret, tx.sighash(i, code, amount, SIGHASH_ALL))
    return {"signature": witness_signature(sig, SIGHASH_ALL).hex(), "pubkey": point(secret).hex(),
            "witness_script": script.hex() if wsh else None}


def _htlc_kind(signer: ChannelSigner, state: ChannelState, script: bytes, pcp: bytes) -> tuple[str, int] | None:
    """What HTLC of the counterparty's commitment at point `pcp` `script` is (BOLT-3's, this channel's keys)."""
    anchors = state.params["channel_type"] == "anchors"
    return htlc_script_kind(script, *signer.counterparty_htlc_keys(state, pcp), anchors)


def sign_sweep(signer: ChannelSigner, body: dict[str, Any]) -> dict[str, Any]:
    """Sign input `input_index` of `tx` spending one of our channel outputs, to the wallet, by the path
    `kind`: `delayed` (our to_local, or our HTLC transaction's output, of our commitment
    `commitment_number`, after the delay), `payment` (to_remote of the counterparty's commitment),
    `preimage` or `timeout` (an HTLC of the counterparty's commitment: `per_commitment_point`,
    `witness_script`; the timeout only with a locktime at its expiry), `anchor` (ours)."""
    kind = body.get("kind")
    if kind not in SWEEPS:
        raise bad(f"kind must be one of {', '.join(SWEEPS)}")

    def key_and_script(state: ChannelState, tx: Tx, i: int) -> tuple[bytes, bytes | None, int]:
        index, p = state.index, state.params
        anchors = p["channel_type"] == "anchors"
        if kind == "delayed":
            n = _int(body, "commitment_number")
            if n > state.holder_validated:
                raise refuse(f"holder commitment {n} was never validated: refused")
            pcp = signer.holder_point(index, n)
            if body.get("per_commitment_point") is not None and _key(body, "per_commitment_point") != pcp:
                raise refuse(f"the per-commitment point is not the one of holder commitment {n}: refused")
            return (derive_privkey(signer.secret(DELAYED, index), pcp), signer.holder_to_local(state, pcp),
                    p["holder_to_self_delay"])
        if kind == "payment":
            payment = signer.secret(PAYMENT, index)
            return (payment, to_remote_anchor_script(point(payment)), 1) if anchors else (payment, None, 0)
        if kind == "anchor":
            funding = signer.secret(FUNDING, index)
            return funding, anchor_script(point(funding)), 0
        pcp, script = _key(body, "per_commitment_point"), _hex(body, "witness_script")
        found = _htlc_kind(signer, state, script, pcp)
        if found is None:
            raise refuse("the witness script is not an HTLC of the counterparty's commitment with this "
                         "channel's keys: refused")
        # our claim by preimage takes an HTLC they offered; by timeout, one they received, at its expiry
        htlc, expiry = found
        if (kind == "preimage") != (htlc == "offered"):
            raise refuse(f"the {kind} path does not spend an HTLC the counterparty {htlc}: refused")
        if kind == "preimage":
            check_preimage(body, script)
        if kind == "timeout" and (tx.locktime < expiry or tx.inputs[i].sequence == FINAL):
            raise refuse(f"the HTLC expires at {expiry}: the locktime must be at least that (non-final "
                         "input): refused")
        return derive_privkey(signer.secret(HTLC, index), pcp), script, 1 if anchors else 0
    return _spend(signer, body, kind, key_and_script)


def sign_penalty(signer: ChannelSigner, body: dict[str, Any]) -> dict[str, Any]:
    """Sign input `input_index` of `tx` taking an output of the counterparty's revoked commitment
    `commitment_number` (its to_local, an HTLC output, or its HTLC transactions' output: the
    `witness_script`) with the revocation key, from `per_commitment_secret`: the secret the counterparty
    revealed for that commitment, as signd recorded it (`validate_counterparty_revocation`)."""
    def key_and_script(state: ChannelState, tx: Tx, i: int) -> tuple[bytes, bytes | None, int]:
        n, revealed = _int(body, "commitment_number"), _hex(body, "per_commitment_secret", 32)
        if n > state.counterparty_revoked:
            raise refuse(f"counterparty commitment {n} is not revoked: refused")
        if Shachain.from_json(state.counterparty_secrets).get(MAX_INDEX - n) != revealed:
            raise refuse(f"the secret is not the one the counterparty revealed for commitment {n}: refused")
        try:
            pcp = point(revealed)
        except ValueError:
            raise RpcError(BAD, "per_commitment_secret is not a valid secret") from None
        secret = derive_revocation_privkey(signer.secret(REVOCATION, state.index), revealed)
        script = _hex(body, "witness_script")
        if script != signer.counterparty_to_local(state, pcp) and _htlc_kind(signer, state, script, pcp) is None:
            raise refuse("the witness script is neither the to_local nor an HTLC of this revoked commitment: "
                         "refused")
        return secret, script, 0
    return _spend(signer, body, "revocation", key_and_script)
