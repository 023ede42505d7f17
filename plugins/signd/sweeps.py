"""Sweeps and penalties: signd signs one input spending a channel output to the wallet.

signd rebuilds the script of the output from the channel's parameters and its own keys (or, for an
HTLC output, checks the caller's script is BOLT-3's HTLC script of this channel's keys), so it signs
only for this channel's outputs; and every output of the sweep must pay a wallet key (docs/keys.md).
"""
from __future__ import annotations

from typing import Any

from lnp_plugin_api import RpcError
from lnp_plugin_api.bolt3 import (anchor_script, derive_privkey, derive_revocation_privkey, is_htlc_script, point,
                                  to_remote_anchor_script)
from lnp_plugin_api.tx import SIGHASH_ALL

from .channel import (BAD, DELAYED, FUNDING, HARDENED, HTLC, PAYMENT, REVOCATION, ChannelSigner, _hex, _int, _key,
                      _tx, bad, outputs_detail, refuse)
from .sigs import p2wpkh_script_code, sign, witness_signature

SWEEPS = ("to_local", "to_remote", "counterparty_htlc", "anchor")
PENALTIES = ("revoked_to_local", "revoked_htlc")


def _spend(signer: ChannelSigner, body: dict[str, Any], kinds: tuple[str, ...],
           key_and_script: Any) -> dict[str, Any]:
    index, tx, kind = _int(body, "index", 0, HARDENED - 1), _tx(body), body["kind"]
    if kind not in kinds:
        raise bad(f"kind must be one of {', '.join(kinds)}")
    i, amount = _int(body, "input_index", 0, len(tx.inputs) - 1), _int(body, "amount_sat", 1, 21_000_000 * 10**8)
    with signer.lock:
        state = signer.ready(index)
        secret, script, min_sequence = key_and_script(state, kind)
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


def sign_sweep(signer: ChannelSigner, body: dict[str, Any]) -> dict[str, Any]:
    """Sign input `input_index` of `tx` spending one of our channel outputs, to the wallet:
    to_local (our commitment or HTLC transaction, after the delay; `commitment_number`), to_remote
    (the counterparty's commitment; `per_commitment_point` unused with static_remotekey), an HTLC
    of the counterparty's commitment (`per_commitment_point`, `witness_script`), our anchor."""
    def key_and_script(state: Any, kind: str) -> tuple[bytes, bytes | None, int]:
        index, p = state.index, state.params
        if kind == "to_local":
            n = _int(body, "commitment_number")
            if n > state.holder_validated:
                raise refuse(f"holder commitment {n} was never validated: refused")
            pcp = signer.holder_point(index, n)
            return (derive_privkey(signer.secret(DELAYED, index), pcp), signer.holder_to_local(state, pcp),
                    p["holder_to_self_delay"])
        if kind == "to_remote":
            payment = signer.secret(PAYMENT, index)
            if p["channel_type"] == "anchors":
                return payment, to_remote_anchor_script(point(payment)), 1
            return payment, None, 0
        if kind == "anchor":
            funding = signer.secret(FUNDING, index)
            return funding, anchor_script(point(funding)), 0
        pcp, script = _key(body, "per_commitment_point"), _hex(body, "witness_script")
        secret = derive_privkey(signer.secret(HTLC, index), pcp)
        if not is_htlc_script(script, *signer.counterparty_htlc_keys(state, pcp), p["channel_type"] == "anchors"):
            raise refuse("the witness script is not an HTLC of the counterparty's commitment with this "
                         "channel's keys: refused")
        return secret, script, 1 if p["channel_type"] == "anchors" else 0
    return _spend(signer, body, SWEEPS, key_and_script)


def sign_penalty(signer: ChannelSigner, body: dict[str, Any]) -> dict[str, Any]:
    """Sign input `input_index` of `tx` taking an output of a revoked counterparty commitment (its
    to_local or its HTLC transactions' outputs: `revoked_to_local`; an HTLC output: `revoked_htlc`
    with its `witness_script`) with the revocation key from the revealed `per_commitment_secret`."""
    def key_and_script(state: Any, kind: str) -> tuple[bytes, bytes | None, int]:
        revealed = _hex(body, "per_commitment_secret", 32)
        try:
            pcp = point(revealed)
        except ValueError:
            raise RpcError(BAD, "per_commitment_secret is not a valid secret") from None
        secret = derive_revocation_privkey(signer.secret(REVOCATION, state.index), revealed)
        if kind == "revoked_to_local":
            return secret, signer.counterparty_to_local(state, pcp), 0
        script = _hex(body, "witness_script")
        if not is_htlc_script(script, *signer.counterparty_htlc_keys(state, pcp),
                              state.params["channel_type"] == "anchors"):
            raise refuse("the witness script is not an HTLC of this revoked commitment: refused")
        return secret, script, 0
    return _spend(signer, body, PENALTIES, key_and_script)
