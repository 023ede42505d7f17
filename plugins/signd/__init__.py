"""signd: the only service that holds secrets. Others ask it for signatures and ECDH; no private key
ever leaves it.

Control requests (service `signd`):
    host.keys.node_id / host.keys.ecdh / host.keys.sign_digest   the node key (key custody)
    signd.wallet          -> {xpub, fingerprint, descriptors}
    signd.sign_psbt       {psbt (base64), purpose} -> {psbt}       signs the inputs that are ours
    signd.sign_message    {message (hex), purpose} -> {signature}  node key over SHA256d (gossip)
    signd.basepoints      {index} -> BOLT-3 basepoints of channel INDEX
    signd.per_commitment_point {index, commitment_number} -> {point}
Every signature except ECDH is first put to the decision `sign_request`; any plugin may refuse it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from embit.psbt import PSBT
from embit.script import Script

from lnp_plugin_api import (DecisionSpec, Field, PerContext, RemoteCustody, RpcError, ServiceContext, Subscription, hookimpl)
from lnp_plugin_api.chains import embit_network
from lnp_host.keys import FORCED_KEY_ENV, forced_node_key

from . import seed
from .keys import Keychain

SERVICE = "signd"
REFUSED = RpcError.REFUSED


def _keychain_for(data_dir: Path, network: str, passphrase: str, node_secret: bytes | None = None) -> Keychain:
    return Keychain(seed.load(data_dir, passphrase), network, node_secret)


def create_seed(data_dir: Path, network: str, passphrase: str) -> str:
    """Create the seed and, beside it, the public node id file; returns the mnemonic.

    The node id comes from the new words in memory: creating a seed never decrypts one."""
    words = seed.create(data_dir, passphrase)
    _write_node_id(data_dir, Keychain(words, network).node_id())
    return words


def _write_node_id(data_dir: Path, node_id: bytes) -> None:
    (seed.folder(data_dir) / seed.NODE_ID_FILE).write_text(node_id.hex() + "\n")


def public_node_id(data_dir: Path, network: str, passphrase_file: str) -> bytes:
    """The node id for lnpd, from the public node id file: the seed is created on first run (encrypted
    with the passphrase when one is set) but never decrypted here; only signd reads it."""
    public = seed.folder(data_dir) / seed.NODE_ID_FILE
    if not (seed.folder(data_dir) / seed.SEED_FILE).exists():
        create_seed(data_dir, network, seed.passphrase_from(passphrase_file, data_dir))
    if not public.exists():
        raise seed.SeedError(f"{public} (the public node id) is missing: run `lnp-host init` to write it "
                             "again from the seed")
    return bytes.fromhex(public.read_text().strip())


def ensure_seed(data_dir: Path, network: str, passphrase: str) -> bytes:
    """signd's own start (and offline tools): create the seed if needed, and rewrite a missing public
    node id file by reading the seed (signd holds the passphrase). Returns the node id."""
    public = seed.folder(data_dir) / seed.NODE_ID_FILE
    if not (seed.folder(data_dir) / seed.SEED_FILE).exists():
        create_seed(data_dir, network, passphrase)
    if not public.exists():
        _write_node_id(data_dir, _keychain_for(data_dir, network, passphrase).node_id())
    return bytes.fromhex(public.read_text().strip())


class Signer:
    """The keychain and the handlers that use it."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        passphrase = seed.passphrase_from(ctx.config["passphrase_file"], ctx.node.data_dir)
        forced = forced_node_key(ctx.node.data_dir)
        self.keys = _keychain_for(ctx.node.data_dir, ctx.node.network, passphrase, forced)
        if self.keys.node_id() != ctx.node.node_id:
            raise RuntimeError("the seed's node key is not the node id the node runs with (a node started with "
                               f"--dev-force-privkey needs the same key in signd's {FORCED_KEY_ENV})")
        if forced is not None:
            ctx.log.warning("the node key is forced (--dev-force-privkey, developers only); the other keys "
                            "come from the seed")
        self.table = self.handlers()

    def allowed(self, kind: str, detail: dict[str, Any]) -> None:
        """Put a signing request to the `sign_request` decision; raise if refused."""
        verdict = self.ctx.decide("sign_request", {"kind": kind, **detail})
        if not verdict.allowed:
            raise RpcError(REFUSED, f"signing refused by {verdict.by}: {verdict.reason}")

    def sign_psbt(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            psbt = PSBT.from_string(str(body["psbt"]))
        except Exception:
            raise RpcError(RpcError.INVALID_PARAMS, "not a valid PSBT") from None
        network = embit_network(self.keys.network)
        ours = self.keys.root.my_fingerprint
        outputs = []
        for out, info in zip(psbt.tx.vout, psbt.outputs):
            mine = any(d.fingerprint == ours for d in info.bip32_derivations.values())
            outputs.append({"value_sat": out.value, "script": out.script_pubkey.data.hex(), "change": mine,
                            "address": _address(out.script_pubkey, network)})
        try:
            fee = sum(inp.utxo.value for inp in psbt.inputs) - sum(o.value for o in psbt.tx.vout)
        except AttributeError:
            raise RpcError(RpcError.INVALID_PARAMS, "every input needs its UTXO (witness_utxo)") from None
        self.allowed("psbt", {"purpose": str(body.get("purpose", "")), "outputs": outputs, "fee_sat": fee})
        signed = psbt.sign_with(self.keys.root)
        if signed == 0:
            raise RpcError(RpcError.INVALID_PARAMS, "none of the inputs belongs to this node's wallet")
        return {"psbt": psbt.to_string(), "signed_inputs": signed}

    def sign_message(self, body: dict[str, Any]) -> dict[str, str]:
        message = bytes.fromhex(str(body["message"]))
        self.allowed("message", {"purpose": str(body.get("purpose", "")), "size": len(message)})
        digest = hashlib.sha256(hashlib.sha256(message).digest()).digest()
        return {"signature": self.keys.node_key.sign_recoverable(digest, hasher=None)[:64].hex()}

    def handlers(self) -> dict[str, Any]:
        keys = self.keys

        def sign_digest(body: dict[str, Any]) -> dict[str, str]:
            digest = bytes.fromhex(body["digest"])
            if len(digest) != 32:
                raise RpcError(RpcError.INVALID_PARAMS, "digest must be 32 bytes")
            self.allowed("digest", {"purpose": str(body.get("purpose", ""))})
            return {"signature": keys.node_key.sign_recoverable(digest, hasher=None)[:64].hex()}

        return {
            "host.keys.node_id": lambda body: {"node_id": keys.node_id().hex()},
            "host.keys.ecdh": lambda body: {"secret": keys.node_key.ecdh(bytes.fromhex(body["pubkey"])).hex()},
            "host.keys.sign_digest": sign_digest,
            "signd.wallet": lambda body: {"xpub": keys.account_xpub(), "fingerprint": keys.fingerprint,
                                          "descriptors": keys.descriptors()},
            "signd.sign_psbt": self.sign_psbt,
            "signd.sign_message": self.sign_message,
            "signd.basepoints": lambda body: keys.basepoints(_index(body.get("index"))),
            "signd.per_commitment_point": lambda body: {"point": keys.per_commitment_point(
                _index(body.get("index")), _index(body.get("commitment_number"))).hex()},
        }


def _index(value: Any) -> int:
    if not isinstance(value, int) or not 0 <= value < 2**31:
        raise RpcError(RpcError.INVALID_PARAMS, "index must be an integer 0..2^31-1")
    return value


def _address(script: Script, network: dict) -> str | None:
    try:
        return script.address(network)
    except Exception:
        return None


_signers: PerContext[Signer] = PerContext("signd")


def _handler(name: str) -> Any:
    def handle(ctx: ServiceContext, body: dict[str, Any]) -> Any:
        signer = _signers.get(ctx)
        if not isinstance(body, dict):
            raise RpcError(RpcError.INVALID_PARAMS, "expected an object")
        try:
            return signer.table[name](body)
        except (KeyError, ValueError) as e:
            raise RpcError(RpcError.INVALID_PARAMS, f"{name}: bad request ({type(e).__name__})") from None
    return handle


HANDLED = ("host.keys.node_id", "host.keys.ecdh", "host.keys.sign_digest", "signd.wallet", "signd.sign_psbt",
           "signd.sign_message", "signd.basepoints", "signd.per_commitment_point")


@hookimpl
def lnp_service() -> str:
    return SERVICE


@hookimpl
def lnp_config_schema() -> dict:
    return {"passphrase_file": Field(str, "", "a file holding the seed's passphrase (or set "
                                     f"{seed.PASSPHRASE_ENV}); relative to the data dir unless absolute")}


@hookimpl
def lnp_subscriptions() -> list:
    return [Subscription.control(name, _handler(name)) for name in HANDLED]


@hookimpl
def lnp_decisions() -> list:
    return [DecisionSpec("sign_request", "may signd sign this? body: {kind: psbt|message|digest, purpose, ...}; "
                                         "for psbt: outputs [{value_sat, script, address, change}], fee_sat")]


@hookimpl
def lnp_key_custody(node: Any) -> RemoteCustody:
    """The node key lives in signd; every process reaches it over the control bus."""
    network = node.section("node")["network"]
    table = node.plugin_table("signd")
    try:
        return RemoteCustody(SERVICE, public_node_id(node.data_dir, network, table.get("passphrase_file", "")))
    except seed.SeedError as e:
        raise RuntimeError(str(e)) from None


@hookimpl
def lnp_init(node: Any) -> dict[str, Any]:
    """`lnp-host init`: create the seed (encrypted when a passphrase is set)."""
    network = node.section("node")["network"]
    passphrase = seed.passphrase_from(node.plugin_table("signd").get("passphrase_file", ""), node.data_dir)
    if (seed.folder(node.data_dir) / seed.SEED_FILE).exists() and not (
            seed.folder(node.data_dir) / seed.NODE_ID_FILE).exists():  # repair: an offline tool, like signd
        node_id = ensure_seed(node.data_dir, network, passphrase)
        return {"node_id": node_id.hex(), "seed_file": str(seed.folder(node.data_dir) / seed.SEED_FILE),
                "rewrote": seed.NODE_ID_FILE}
    mnemonic = create_seed(node.data_dir, network, passphrase)
    return {"node_id": Keychain(mnemonic, network).node_id().hex(), "seed_file": str(seed.folder(node.data_dir) / seed.SEED_FILE),
            "encrypted": bool(passphrase), "mnemonic": mnemonic}


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    try:
        _signers.set(ctx, Signer(ctx))
    except seed.SeedError as e:
        raise RuntimeError(str(e)) from None


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    _signers.pop(ctx)
