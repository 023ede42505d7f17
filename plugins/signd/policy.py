"""What signd agrees to do, and for whom: capabilities per service, and the checks of each typed operation.

Every check here runs before any signature is made; a refusal raises RpcError(REFUSED) and signs nothing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from embit.psbt import PSBT
from embit.script import Script, p2wpkh
from embit.transaction import SIGHASH

from lnp_plugin_api import RpcError

from .keys import Keychain

REFUSED = RpcError.REFUSED
HARDENED = 0x80000000

# plugin -> the capabilities signd grants it (hsmd's per-client capabilities). A requesting service
# gets those of the plugins it runs, so moving a plugin to another service is still a profile change
# only. `[plugins.signd] grant` adds to this table (by plugin or service name) for plugins it does not know.
CAPABILITIES: dict[str, frozenset[str]] = {
    "peerd": frozenset({"ecdh"}),                     # BOLT-8 handshakes
    "wallet": frozenset({"wallet"}),                  # the account xpub, and its own PSBTs
    "core": frozenset(),                              # reads the node id like everyone
    "channeld": frozenset({"channel", "node_message", "onion", "invoice"}),  # channels, gossip, BOLT-4, BOLT-11
    "invoices": frozenset({"invoice"}),               # BOLT-11 invoices of this node
}
# control request -> the capability it needs (None: anyone in the node may ask)
OPERATIONS: dict[str, str | None] = {
    "host.keys.node_id": None,
    "host.keys.ecdh": "ecdh",
    "signd.wallet": "wallet",
    "signd.sign_wallet_psbt": "wallet",
    "signd.sign_node_message": "node_message",
    "signd.basepoints": "channel",
    "signd.per_commitment_point": "channel",
    "signd.channel_keys": "channel",
    "signd.ready_channel": "channel",
    "signd.sign_counterparty_commitment": "channel",
    "signd.validate_counterparty_revocation": "channel",
    "signd.validate_holder_commitment": "channel",
    "signd.revoke_holder_commitment": "channel",
    "signd.sign_holder_commitment": "channel",
    "signd.sign_sweep": "channel",
    "signd.sign_penalty": "channel",
    "signd.sign_holder_htlc": "channel",
    "signd.sign_mutual_close": "channel",
    "signd.sign_invoice": "invoice",
    "signd.onion_ecdh": "onion",
}


def may(caller: str | None, operation: str, own_service: str, grants: dict[str, Any],
        plugins: list[str]) -> bool:
    """Whether service `caller`, running `plugins`, may ask for `operation`; signd's own service may
    ask for anything."""
    needed = OPERATIONS[operation]
    if needed is None or caller == own_service:
        return True
    if caller is None:
        return False
    granted = set(grants.get(caller, ()))
    for plugin in plugins:
        granted |= CAPABILITIES.get(plugin, frozenset()) | set(grants.get(plugin, ()))
    return needed in granted


# --- wallet PSBTs ---------------------------------------------------------------------------------

@dataclass
class WalletPsbt:
    """A PSBT that passed the wallet policy: which inputs to sign, and what it does, for `sign_request`."""

    psbt: PSBT
    to_sign: list[tuple[int, list[int]]]  # input index, derivation
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    fee_sat: int


def _path_text(der: list[int]) -> str:
    return "m/" + "/".join(f"{i - HARDENED}h" if i >= HARDENED else str(i) for i in der)


def _wallet_branch(keys: Keychain, der: list[int]) -> int | None:
    """0 (receive) or 1 (change) for a path m/84'/C'/0'/{0,1}/i, else None."""
    account = [84 + HARDENED, keys.coin + HARDENED, HARDENED]
    if len(der) == 5 and der[:3] == account and der[3] in (0, 1) and der[4] < HARDENED:
        return der[3]
    return None


def _ours(keys: Keychain, derivations: dict) -> list[tuple[Any, list[int]]]:
    return [(pub, d.derivation) for pub, d in derivations.items() if d.fingerprint == keys.root.my_fingerprint]


def check_wallet_psbt(keys: Keychain, psbt: PSBT, network: dict) -> WalletPsbt:
    """The wallet policy: every input carrying our fingerprint is on a wallet path and pays to that key;
    an output is change only if its derivation is on the change path and its script is that key's."""
    to_sign, inputs = [], []
    for i, inp in enumerate(psbt.inputs):
        if _ours(keys, {pub: d for pub, (_, d) in inp.taproot_bip32_derivations.items()}):
            raise RpcError(REFUSED, f"input {i}: a taproot key of this node is not a wallet key")
        ours = _ours(keys, inp.bip32_derivations)
        if inp.utxo is None:
            raise RpcError(RpcError.INVALID_PARAMS, "every input needs its UTXO (witness_utxo)")
        path = None
        for pub, der in ours:
            if _wallet_branch(keys, der) is None:
                raise RpcError(REFUSED, f"input {i} is on {_path_text(der)}, not a wallet path: refused")
            key = keys.root.derive(der)
            if key.get_public_key().sec() != pub.sec() or inp.utxo.script_pubkey != p2wpkh(key):
                raise RpcError(REFUSED, f"input {i}: its script is not the wallet key of {_path_text(der)}")
            if inp.sighash_type not in (None, SIGHASH.ALL):
                raise RpcError(REFUSED, f"input {i}: only SIGHASH_ALL is signed")
            path = der
        if len(ours) > 1:
            raise RpcError(REFUSED, f"input {i}: more than one key of this node")
        if path is not None:
            to_sign.append((i, path))
        inputs.append({"txid": inp.txid.hex(), "vout": inp.vout, "value_sat": inp.utxo.value,
                       "ours": path is not None, "path": _path_text(path) if path else None})
    if not to_sign:
        raise RpcError(RpcError.INVALID_PARAMS, "none of the inputs belongs to this node's wallet")
    outputs = []
    for j, (out, info) in enumerate(zip(psbt.tx.vout, psbt.outputs)):
        change = False
        for pub, der in _ours(keys, info.bip32_derivations):
            branch = _wallet_branch(keys, der)
            key = keys.root.derive(der) if branch is not None else None
            if key is None or key.get_public_key().sec() != pub.sec() or out.script_pubkey != p2wpkh(key):
                raise RpcError(REFUSED, f"output {j} claims a key of this node ({_path_text(der)}) that its "
                               "script does not pay to: refused")
            change = change or branch == 1
        outputs.append({"value_sat": out.value, "script": out.script_pubkey.data.hex(), "change": change,
                        "address": _address(out.script_pubkey, network)})
    fee = sum(inp.utxo.value for inp in psbt.inputs) - sum(o.value for o in psbt.tx.vout)
    if fee < 0:
        raise RpcError(RpcError.INVALID_PARAMS, "the outputs spend more than the inputs")
    return WalletPsbt(psbt, to_sign, inputs, outputs, fee)


def sign_wallet_inputs(keys: Keychain, checked: WalletPsbt) -> int:
    """Sign the checked inputs (P2WPKH, SIGHASH_ALL) with their wallet keys; returns how many."""
    for i, der in checked.to_sign:
        key = keys.root.derive(der)
        digest = checked.psbt.sighash(i, sighash=SIGHASH.ALL)
        checked.psbt.inputs[i].partial_sigs[key.get_public_key()] = key.key.sign(digest).serialize() + bytes(
            [SIGHASH.ALL])
    return len(checked.to_sign)


def _address(script: Script, network: dict) -> str | None:
    try:
        return script.address(network)
    except Exception:
        return None


# --- node messages (gossip) -------------------------------------------------------------------------

# kind -> (BOLT-7 type, offset of the signed part, minimum length)
NODE_MESSAGES = {
    "channel_announcement": (256, 2 + 4 * 64, 2 + 4 * 64 + 2 + 32 + 8 + 4 * 33),
    "node_announcement": (257, 2 + 64, 2 + 64 + 2 + 4 + 33 + 3 + 32 + 2),
    "channel_update": (258, 2 + 64, 2 + 64 + 32 + 8 + 4 + 1 + 1 + 2 + 8 + 4 + 4),
}


def node_message_digest(keys: Keychain, kind: str, message: bytes) -> tuple[bytes, int | None]:
    """SHA256d of the signed part of a BOLT-7 message of `kind` (its signature fields zero or not),
    after checking its type, its length and that it is this node's; also which node signature
    (1 or 2) of a channel announcement is ours."""
    if kind not in NODE_MESSAGES:
        raise RpcError(REFUSED, f"signd signs no node message of kind {kind!r}; kinds: {', '.join(NODE_MESSAGES)}")
    msg_type, start, minimum = NODE_MESSAGES[kind]
    if len(message) < minimum or int.from_bytes(message[:2], "big") != msg_type:
        raise RpcError(REFUSED, f"not a {kind} (type {msg_type}, at least {minimum} bytes)")
    our_id, slot = keys.node_id(), None
    if kind == "node_announcement":
        flen = int.from_bytes(message[66:68], "big")
        node_id = message[68 + flen + 4:68 + flen + 4 + 33]
        if node_id != our_id:
            raise RpcError(REFUSED, "a node_announcement of another node")
    elif kind == "channel_announcement":
        flen = int.from_bytes(message[start:start + 2], "big")
        at = start + 2 + flen + 32 + 8
        ids = message[at:at + 33], message[at + 33:at + 66]
        if our_id not in ids:
            raise RpcError(REFUSED, "a channel_announcement of a channel that is not this node's")
        slot = 1 if ids[0] == our_id else 2
    return hashlib.sha256(hashlib.sha256(message[start:]).digest()).digest(), slot
