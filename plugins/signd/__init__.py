"""signd: the only service that holds secrets. Others ask it for typed operations; no private key
ever leaves it, and it signs no arbitrary digest.

Control requests (service `signd`), each open only to the services with its capability (policy.py):
    host.keys.node_id                          anyone
    host.keys.ecdh        {pubkey}             ecdh (peerd): BOLT-8 handshakes
    signd.wallet          -> {xpub, fingerprint, descriptors}                       wallet
    signd.sign_wallet_psbt {psbt (base64), purpose} -> {psbt, signed_inputs}        wallet
    signd.sign_node_message {kind, message (hex)} -> {signature}                    node_message
    signd.basepoints      {index} -> BOLT-3 basepoints of channel INDEX             channel
    signd.per_commitment_point {index, commitment_number} -> {point}                channel
    signd.channel_keys, ready_channel, sign_counterparty_commitment,                channel
      validate_counterparty_revocation, validate_holder_commitment,
      revoke_holder_commitment, sign_holder_commitment, sign_holder_htlc,
      sign_mutual_close, sign_sweep, sign_penalty                                  (channel.py, sweeps.py)
    signd.sign_invoice    {hrp, data} -> {signature (65 bytes, recoverable)}        invoice
    signd.onion_ecdh      {point} -> {secret}: ECDH with the node key (BOLT-4)     onion
Every signature is first put to the decision `sign_request`; any plugin may refuse it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import coincurve
from embit.psbt import PSBT

from lnp_plugin_api import (DecisionSpec, Field, PerContext, RemoteCustody, RpcError, ServiceContext, Subscription, hookimpl)
from lnp_plugin_api import bolt11
from lnp_plugin_api.chains import embit_network
from lnp_host.caller import current_caller
from lnp_host.keys import FORCED_KEY_ENV, DevSecrets, dev_secrets

from . import invoice, policy, seed, storage, sweeps
from .channel import ChannelSigner
from .keys import Keychain

SERVICE = "signd"
REFUSED = RpcError.REFUSED


def _keychain_for(data_dir: Path, network: str, passphrase: str, dev: DevSecrets = DevSecrets()) -> Keychain:
    """The keychain of the seed, or of the developers' forced secrets (a forced BIP32 seed replaces
    the mnemonic's, which is then not read)."""
    words = seed.load(data_dir, passphrase) if dev.bip32_seed is None else ""
    return Keychain(words, network, dev.node_key, dev.bip32_seed, dev.channel_secrets)


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
        dev = dev_secrets(ctx.node.data_dir)
        self.keys = _keychain_for(ctx.node.data_dir, ctx.node.network, passphrase, dev)
        if self.keys.node_id() != ctx.node.node_id:
            raise RuntimeError("the seed's node key is not the node id the node runs with (a node started with "
                               f"--dev-force-privkey needs the same key in signd's {FORCED_KEY_ENV})")
        if dev.node_key is not None:
            ctx.log.warning("the node key is forced (--dev-force-privkey, developers only); the other keys "
                            "come from the seed")
        if dev.bip32_seed is not None:
            ctx.log.warning("the BIP32 seed is forced (--dev-force-bip32-seed, developers only)")
        if dev.channel_secrets is not None:
            ctx.log.warning("every channel's secrets are forced (--dev-force-channel-secrets, developers only)")
        self.channels = ChannelSigner(self.keys, ctx.storage.begin, self.allowed)
        self.table = self.handlers()
        self.grants = _grants(ctx.config.get("grant", {}))

    def allowed(self, kind: str, detail: dict[str, Any]) -> None:
        """Put a signing request to the `sign_request` decision; raise if refused."""
        verdict = self.ctx.decide("sign_request", {"kind": kind, **detail})
        if not verdict.allowed:
            raise RpcError(REFUSED, f"signing refused by {verdict.by}: {verdict.reason}")

    def sign_wallet_psbt(self, body: dict[str, Any]) -> dict[str, Any]:
        """Sign the wallet's own inputs of a PSBT that passes the wallet policy (policy.check_wallet_psbt)."""
        try:
            psbt = PSBT.from_string(str(body["psbt"]))
        except Exception:
            raise RpcError(RpcError.INVALID_PARAMS, "not a valid PSBT") from None
        checked = policy.check_wallet_psbt(self.keys, psbt, embit_network(self.keys.network))
        change = sum(o["value_sat"] for o in checked.outputs if o["change"])
        self.allowed("psbt", {"purpose": str(body.get("purpose", "")), "inputs": checked.inputs,
                              "outputs": checked.outputs, "change_sat": change, "fee_sat": checked.fee_sat})
        signed = policy.sign_wallet_inputs(self.keys, checked)
        return {"psbt": psbt.to_string(), "signed_inputs": signed}

    def sign_node_message(self, body: dict[str, Any]) -> dict[str, Any]:
        """The node key's signature of a typed BOLT-7 message (policy.node_message_digest)."""
        kind, message = str(body["kind"]), bytes.fromhex(str(body["message"]))
        digest, slot = policy.node_message_digest(self.keys, kind, message)
        self.allowed("message", {"purpose": kind, "size": len(message)})
        signature = self.keys.node_key.sign_recoverable(digest, hasher=None)[:64].hex()
        return {"signature": signature, **({"node": slot} if slot else {})}

    def sign_invoice(self, body: dict[str, Any]) -> dict[str, Any]:
        """The node key's recoverable signature (65 bytes: r, s, recovery id) of a BOLT-11 invoice."""
        hrp, data = str(body["hrp"]), invoice.words(str(body["data"]))
        invoice.check_invoice(self.keys.network, hrp, data, self.keys.node_id())
        self.allowed("invoice", {"purpose": "invoice", "hrp": hrp, "size": len(data)})
        digest = bolt11.signing_hash(hrp, data)
        return {"signature": self.keys.node_key.sign_recoverable(digest, hasher=None).hex()}

    def handlers(self) -> dict[str, Any]:
        keys, ch = self.keys, self.channels
        return {
            "host.keys.node_id": lambda body: {"node_id": keys.node_id().hex()},
            "host.keys.ecdh": lambda body: {"secret": keys.node_key.ecdh(bytes.fromhex(body["pubkey"])).hex()},
            "signd.wallet": lambda body: {"xpub": keys.account_xpub(), "fingerprint": keys.fingerprint,
                                          "descriptors": keys.descriptors()},
            "signd.sign_wallet_psbt": self.sign_wallet_psbt,
            "signd.sign_node_message": self.sign_node_message,
            "signd.basepoints": lambda body: keys.basepoints(_index(body.get("index"))),
            "signd.per_commitment_point": lambda body: {"point": keys.per_commitment_point(
                _index(body.get("index")), _index(body.get("commitment_number"))).hex()},
            "signd.channel_keys": lambda body: ch.channel_keys(_index(body.get("index"))),
            "signd.ready_channel": ch.ready_channel,
            "signd.sign_counterparty_commitment": ch.sign_counterparty_commitment,
            "signd.validate_counterparty_revocation": ch.validate_counterparty_revocation,
            "signd.validate_holder_commitment": ch.validate_holder_commitment,
            "signd.revoke_holder_commitment": ch.revoke_holder_commitment,
            "signd.sign_holder_commitment": ch.sign_holder_commitment,
            "signd.sign_holder_htlc": ch.sign_holder_htlc,
            "signd.sign_mutual_close": ch.sign_mutual_close,
            "signd.sign_sweep": lambda body: sweeps.sign_sweep(ch, body),
            "signd.sign_penalty": lambda body: sweeps.sign_penalty(ch, body),
            "signd.sign_invoice": self.sign_invoice,
            "signd.onion_ecdh": lambda body: {"secret": keys.node_key.ecdh(_point(body.get("point"))).hex()},
        }

    def check_caller(self, name: str) -> None:
        """Refuse (and log) a request from a service without the capability `name` needs."""
        caller = current_caller()
        if not policy.may(caller, name, self.ctx.service, self.grants, self.ctx.plugins_in(caller or "")):
            self.ctx.log.warning("refused %s to service %s: it lacks the capability %r", name,
                                 caller or "(unknown)", policy.OPERATIONS[name])
            raise RpcError(REFUSED, f"service {caller or '(unknown)'!r} may not ask signd for {name}")


def _grants(table: dict[str, Any]) -> dict[str, frozenset[str]]:
    return {str(service): frozenset(caps) for service, caps in table.items()}


def _check_grants(table: dict[str, Any]) -> str | None:
    known = {c for c in policy.OPERATIONS.values() if c}
    for service, caps in table.items():
        if not isinstance(caps, list) or not all(isinstance(c, str) and c in known for c in caps):
            return f"{service}: expected a list of capabilities among {', '.join(sorted(known))}"
    return None


def _point(value: Any) -> bytes:
    try:
        data = bytes.fromhex(str(value))
        coincurve.PublicKey(data)
    except (ValueError, TypeError):
        raise RpcError(RpcError.INVALID_PARAMS, "point must be a public key (hex)") from None
    return data


def _index(value: Any) -> int:
    if not isinstance(value, int) or not 0 <= value < 2**31:
        raise RpcError(RpcError.INVALID_PARAMS, "index must be an integer 0..2^31-1")
    return value


_signers: PerContext[Signer] = PerContext("signd")


def dispatch(signer: Signer, name: str, body: Any) -> Any:
    """Answer request `name` (its caller already checked); a malformed body is INVALID_PARAMS."""
    if not isinstance(body, dict):
        raise RpcError(RpcError.INVALID_PARAMS, "expected an object")
    try:
        return signer.table[name](body)
    except KeyError as e:  # say what was wrong, as the host's checks of other requests do
        raise RpcError(RpcError.INVALID_PARAMS, f"{name}: missing parameter {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:  # bad hex, a number where text belongs, ...; never a secret
        raise RpcError(RpcError.INVALID_PARAMS, f"{name}: a parameter is malformed ({type(e).__name__})") from None


def _handler(name: str) -> Any:
    def handle(ctx: ServiceContext, body: dict[str, Any]) -> Any:
        signer = _signers.get(ctx)
        signer.check_caller(name)
        return dispatch(signer, name, body)
    return handle


HANDLED = tuple(policy.OPERATIONS)


@hookimpl
def lnp_service() -> str:
    return SERVICE


@hookimpl
def lnp_config_schema() -> dict:
    return {"passphrase_file": Field(str, "", "a file holding the seed's passphrase (or set "
                                     f"{seed.PASSPHRASE_ENV}); relative to the data dir unless absolute"),
            "grant": Field(dict, {}, "capabilities for plugins (or services) signd does not know: {NAME = [CAPABILITY, ...]}"
                           f"; capabilities: {', '.join(sorted({c for c in policy.OPERATIONS.values() if c}))}",
                           check=_check_grants)}


@hookimpl
def lnp_storage_models() -> Any:
    return storage.MODELS


@hookimpl
def lnp_subscriptions() -> list:
    return [Subscription.control(name, _handler(name)) for name in HANDLED]


@hookimpl
def lnp_decisions() -> list:
    return [DecisionSpec("sign_request", "may signd sign this? body: {kind: psbt|message|channel|invoice, purpose, "
                                         "...}; for psbt: inputs [{txid, vout, value_sat, ours, path}], outputs "
                                         "[{value_sat, script, address, change}], change_sat, fee_sat; for message: "
                                         "size; for channel: index, commitment_number or input/amount_sat, "
                                         "outputs [{value_sat, script}]; for invoice: hrp, size")]


@hookimpl
def lnp_key_custody(node: Any) -> RemoteCustody:
    """The node key lives in signd; every process reaches it over the control bus. With a forced
    BIP32 seed (developers), the node key is derived from that seed (unless forced itself)."""
    network = node.section("node")["network"]
    table = node.plugin_table("signd")
    try:
        node_id = public_node_id(node.data_dir, network, table.get("passphrase_file", ""))
        forced_seed = dev_secrets(node.data_dir).bip32_seed
        if forced_seed is not None:
            node_id = Keychain("", network, bip32_seed=forced_seed).node_id()
        return RemoteCustody(SERVICE, node_id)
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
