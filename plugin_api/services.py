"""Typed clients of the node's services: `Signer`, `ChainWatch`, `Funding` and `PeerTransport`.

Each wraps the control requests of one service (signd, watchd, the wallet, peerd) in methods with
typed arguments. No client names the service it reaches: `ctx.request(name, body)` goes to whichever
plugin answers `name` in this node, so a profile may run that plugin in any service
(`[plugins.NAME] service = "..."`). Errors are `RpcError`s from the answering plugin, or
SERVICE_UNAVAILABLE / TIMEOUT when it does not answer. (`ChainClient` in `chain.py` is the chain
backend's client.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .types import ServiceContext, WireMessage

if TYPE_CHECKING:
    from .onchain_tx import SignRequest

# The signer's request names, in one place (a signer answering other names is one edit here).
SIGNER_REQUESTS = {
    "wallet": "signd.wallet",
    "sign_wallet_psbt": "signd.sign_wallet_psbt",
    "sign_node_message": "signd.sign_node_message",
    "basepoints": "signd.basepoints",
    "per_commitment_point": "signd.per_commitment_point",
    "channel_keys": "signd.channel_keys",
    "ready_channel": "signd.ready_channel",
    "sign_counterparty_commitment": "signd.sign_counterparty_commitment",
    "validate_counterparty_revocation": "signd.validate_counterparty_revocation",
    "validate_holder_commitment": "signd.validate_holder_commitment",
    "revoke_holder_commitment": "signd.revoke_holder_commitment",
    "sign_holder_commitment": "signd.sign_holder_commitment",
    "sign_holder_htlc": "signd.sign_holder_htlc",
    "sign_mutual_close": "signd.sign_mutual_close",
    "sign_sweep": "signd.sign_sweep",
    "sign_penalty": "signd.sign_penalty",
    "sign_invoice": "signd.sign_invoice",
    "onion_ecdh": "signd.onion_ecdh",
}


@dataclass(frozen=True)
class ChannelSetup:
    """A negotiated channel as the signer needs it (`Signer.ready_channel`). `holder_to_self_delay`
    delays OUR to_local (the counterparty chose it); `counterparty_to_self_delay` delays theirs."""

    funding_txid: str                  # hex, as explorers show it
    funding_vout: int
    funding_sat: int
    counterparty_funding_pubkey: bytes
    counterparty_basepoints: dict[str, bytes]  # revocation_basepoint, payment_basepoint,
                                               # delayed_payment_basepoint, htlc_basepoint
    holder_to_self_delay: int
    counterparty_to_self_delay: int
    channel_type: str                  # "static_remotekey" | "anchors"
    opener: str                        # "holder" | "counterparty"
    holder_shutdown_script: bytes | None = None  # option_upfront_shutdown_script: a close may pay us there

    def to_json(self) -> dict[str, Any]:
        """The request's form (hex keys)."""
        body: dict[str, Any] = {
            "funding_txid": self.funding_txid, "funding_vout": self.funding_vout, "funding_sat": self.funding_sat,
            "counterparty_funding_pubkey": self.counterparty_funding_pubkey.hex(),
            "counterparty_basepoints": {k: v.hex() for k, v in self.counterparty_basepoints.items()},
            "holder_to_self_delay": self.holder_to_self_delay,
            "counterparty_to_self_delay": self.counterparty_to_self_delay,
            "channel_type": self.channel_type, "opener": self.opener}
        if self.holder_shutdown_script is not None:
            body["holder_shutdown_script"] = self.holder_shutdown_script.hex()
        return body


@dataclass(frozen=True)
class HtlcTx:
    """A second-stage HTLC transaction, the witness script of the commitment output it spends, and
    (for our own commitment) the counterparty's 64-byte signature of it."""

    tx: bytes
    witness_script: bytes
    signature: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        body = {"tx": self.tx.hex(), "witness_script": self.witness_script.hex()}
        return body if self.signature is None else {**body, "signature": self.signature.hex()}


@dataclass(frozen=True)
class InputSignature:
    """A sweep's or penalty's signature (DER with the sighash byte, as it goes in a witness), the
    public key it verifies with, and the witness script (None for a P2WPKH spend)."""

    signature: bytes
    pubkey: bytes
    witness_script: bytes | None


@dataclass(frozen=True)
class WalletKeys:
    """The wallet account the signer holds: its xpub, the seed's fingerprint and output descriptors."""

    xpub: str
    fingerprint: str
    descriptors: dict[str, str]


class Signer:
    """signd's operations: wallet keys, PSBT and message signatures, and channel keys (BOLT 3).

    Every signature is first put to the `sign_request` decision; a refusal is RpcError(REFUSED).
    """

    def __init__(self, ctx: ServiceContext, timeout: float = 30.0) -> None:
        self._ctx, self._timeout = ctx, timeout

    def _ask(self, op: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        return self._ctx.request(SIGNER_REQUESTS[op], body, timeout=timeout or self._timeout)

    def wallet(self, timeout: float | None = None) -> WalletKeys:
        """The wallet account's xpub, fingerprint and descriptors (nothing secret)."""
        found = self._ask("wallet", {}, timeout)
        return WalletKeys(found["xpub"], found["fingerprint"], dict(found["descriptors"]))

    def sign_wallet_psbt(self, psbt: str, purpose: str) -> str:
        """Sign the inputs of a base64 PSBT that are on the wallet's own paths; the signed PSBT (base64).
        The signer refuses a PSBT with any other input of ours, or a change output it cannot derive."""
        return str(self._ask("sign_wallet_psbt", {"psbt": psbt, "purpose": purpose})["psbt"])

    def sign_node_message(self, kind: str, message: bytes) -> bytes:
        """The node key's 64-byte signature of a BOLT-7 message of `kind` (channel_announcement,
        node_announcement, channel_update), whose signature fields the signer checks and skips."""
        return bytes.fromhex(self._ask("sign_node_message", {"kind": kind, "message": message.hex()})["signature"])

    def basepoints(self, index: int) -> dict[str, str]:
        """The BOLT-3 basepoints (hex public keys) of channel `index`."""
        return dict(self._ask("basepoints", {"index": index}))

    def per_commitment_point(self, index: int, commitment_number: int) -> bytes:
        """The per-commitment point of channel `index` for `commitment_number`."""
        found = self._ask("per_commitment_point", {"index": index, "commitment_number": commitment_number})
        return bytes.fromhex(found["point"])

    # --- channels (docs/keys.md, "Channel operations and policy") -----------------------------------

    def channel_keys(self, index: int) -> dict[str, str]:
        """Funding pubkey, basepoints, first_ and second_per_commitment_point of channel `index` (hex)."""
        return dict(self._ask("channel_keys", {"index": index}))

    def ready_channel(self, index: int, setup: ChannelSetup) -> bytes:
        """Tell the signer the negotiated channel (before any signature); the funding witness script.
        Refused once commitments are signed with other parameters."""
        return bytes.fromhex(self._ask("ready_channel", {"index": index, "params": setup.to_json()})["funding_script"])

    def sign_counterparty_commitment(self, index: int, commitment_number: int, tx: bytes,
                                     per_commitment_point: bytes, htlcs: list[HtlcTx]) -> tuple[bytes, list[bytes]]:
        """Our 64-byte signature of the counterparty's commitment (its funding input) and of each
        HTLC transaction, in the order given (anchors: SIGHASH_SINGLE|ANYONECANPAY). Refused for a
        revoked number, a number two past the last revoked, another transaction under a number
        already signed, another outpoint or a wrong obscured number."""
        found = self._ask("sign_counterparty_commitment", {
            "index": index, "commitment_number": commitment_number, "tx": tx.hex(),
            "per_commitment_point": per_commitment_point.hex(), "htlcs": [h.to_json() for h in htlcs]})
        return bytes.fromhex(found["signature"]), [bytes.fromhex(s) for s in found["htlc_signatures"]]

    def validate_counterparty_revocation(self, index: int, commitment_number: int, secret: bytes) -> None:
        """The counterparty's revoke_and_ack: its secret must match the point of that commitment; the
        signer never signs that number again."""
        self._ask("validate_counterparty_revocation", {"index": index, "commitment_number": commitment_number,
                                                       "secret": secret.hex()})

    def validate_holder_commitment(self, index: int, commitment_number: int, tx: bytes, signature: bytes,
                                   htlcs: list[HtlcTx]) -> None:
        """The counterparty's commitment_signed: its signatures of our next commitment (and HTLC
        transactions, with `signature` set) must verify; it becomes our latest commitment."""
        self._ask("validate_holder_commitment", {"index": index, "commitment_number": commitment_number,
                                                 "tx": tx.hex(), "signature": signature.hex(),
                                                 "htlcs": [h.to_json() for h in htlcs]})

    def revoke_holder_commitment(self, index: int, commitment_number: int) -> tuple[bytes, bytes]:
        """Our revoke_and_ack: the per-commitment secret of `commitment_number` and the point of
        commitment_number + 2. Refused unless commitment_number + 1 is validated."""
        found = self._ask("revoke_holder_commitment", {"index": index, "commitment_number": commitment_number})
        return bytes.fromhex(found["secret"]), bytes.fromhex(found["next_point"])

    def sign_holder_commitment(self, index: int, commitment_number: int) -> dict[str, Any]:
        """Going to chain: {tx (hex, fully witnessed), txid, htlcs: [{tx, witness_script,
        holder_signature, counterparty_signature}]} (signatures DER + sighash byte, hex). Only the
        latest validated commitment; the signer then reveals no secret of it, ever."""
        return dict(self._ask("sign_holder_commitment", {"index": index, "commitment_number": commitment_number}))

    def sign_holder_htlc(self, index: int, commitment_number: int, tx: bytes, input_index: int,
                         wallet_outputs: list[tuple[int, int] | None], htlc: int | None = None,
                         preimage: bytes | None = None) -> dict[str, bytes]:
        """After `sign_holder_commitment`: our signature of one of its HTLC transactions as `tx` (the
        one whose input `input_index` spends; or number `htlc` in the order validated), which may add
        inputs (fees) and wallet outputs (change) when the counterparty signed SIGHASH_SINGLE|ANYONECANPAY:
        input and output `input_index` are the ones it signed; `wallet_outputs` names a wallet key per
        output (None for that one). An HTLC-success needs the `preimage` (signd signs only a claim it can
        complete). {holder_signature, counterparty_signature (DER + sighash byte), witness_script}."""
        body: dict[str, Any] = {"index": index, "commitment_number": commitment_number, "tx": tx.hex(),
                                "input_index": input_index, "wallet_outputs": _paths(wallet_outputs)}
        if htlc is not None:
            body["htlc"] = htlc
        if preimage is not None:
            body["preimage"] = preimage.hex()
        return {k: bytes.fromhex(v) for k, v in self._ask("sign_holder_htlc", body).items()}

    def sign_mutual_close(self, index: int, tx: bytes, holder_output: int | None,
                          wallet_output: tuple[int, int] | None = None, destination: bytes | None = None) -> bytes:
        """Our 64-byte signature of a cooperative close spending the funding outpoint alone; our output
        `holder_output` (None: nothing for us) pays the wallet key `wallet_output` (branch, index), the
        upfront shutdown script, or `destination` (a script the user named; `sign_request` sees it)."""
        body: dict[str, Any] = {"index": index, "tx": tx.hex(), "holder_output": holder_output}
        if wallet_output is not None:
            body["wallet_output"] = list(wallet_output)
        if destination is not None:
            body["destination"] = destination.hex()
        return bytes.fromhex(self._ask("sign_mutual_close", body)["signature"])

    def sign_sweep(self, index: int, kind: str, tx: bytes, input_index: int, amount_sat: int,
                   wallet_outputs: list[tuple[int, int] | None], commitment_number: int | None = None,
                   per_commitment_point: bytes | None = None, witness_script: bytes | None = None,
                   preimage: bytes | None = None) -> InputSignature:
        """Sign an input taking one of our channel outputs, by the spend path `kind`: `delayed` (our
        to_local or our HTLC transaction's output; commitment_number), `payment` (to_remote), `preimage`
        or `timeout` (an HTLC of the counterparty's commitment: per_commitment_point, witness_script) or
        `anchor`. Every output must pay the wallet key (branch, index) given for it in `wallet_outputs`.
        `preimage` needs the HTLC's preimage."""
        body: dict[str, Any] = {"index": index, "kind": kind, "tx": tx.hex(), "input_index": input_index,
                                "amount_sat": amount_sat, "wallet_outputs": _paths(wallet_outputs)}
        if commitment_number is not None:
            body["commitment_number"] = commitment_number
        if per_commitment_point is not None:
            body["per_commitment_point"] = per_commitment_point.hex()
        if witness_script is not None:
            body["witness_script"] = witness_script.hex()
        if preimage is not None:
            body["preimage"] = preimage.hex()
        return _input_signature(self._ask("sign_sweep", body))

    def sign_penalty(self, index: int, tx: bytes, input_index: int, amount_sat: int,
                     wallet_outputs: list[tuple[int, int] | None], commitment_number: int,
                     per_commitment_secret: bytes, witness_script: bytes) -> InputSignature:
        """Sign an input taking an output of the counterparty's revoked commitment `commitment_number`
        (its to_local, an HTLC output, or its HTLC transaction's output: `witness_script`) with the
        revocation key. The secret must be the one the counterparty revealed for that commitment
        (`validate_counterparty_revocation`). Outputs to the wallet only, as `sign_sweep`."""
        return _input_signature(self._ask("sign_penalty", {
            "index": index, "tx": tx.hex(), "input_index": input_index, "amount_sat": amount_sat,
            "wallet_outputs": _paths(wallet_outputs), "commitment_number": commitment_number,
            "per_commitment_secret": per_commitment_secret.hex(), "witness_script": witness_script.hex()}))

    def sign_input(self, index: int, request: "SignRequest") -> bytes:
        """Our DER signature (no sighash byte), as `onchain_tx.Sweep.finalize` takes it, for one
        `onchain_tx.SignRequest` of channel `index`: `revocation` goes to `sign_penalty`, our HTLC
        transactions (`htlc_success`, `htlc_timeout`) to `sign_holder_htlc`, every other path to
        `sign_sweep`; an anchor anyone may spend needs none (b""). A wallet input (`wallet`) is the
        wallet's: sign it with `Sweep.wallet_psbt` and `sign_wallet_psbt`."""
        r = request
        if r.path == "anyone":
            return b""
        if r.path == "wallet" or r.key is None:
            raise ValueError(f"input {r.index} is a wallet input: the wallet signs it (Sweep.wallet_psbt)")
        if r.key.side.value != "local":
            raise ValueError(f"input {r.index} is spent by the peer's key ({r.path}), not ours")
        paths = list(r.wallet_outputs)
        if r.path == "revocation":
            if r.revocation_secret is None or r.commitment_number is None or r.witness_script is None:
                raise ValueError("a revocation spend needs the revealed secret, its commitment number and script")
            found = self.sign_penalty(index, r.tx, r.index, r.amount_sat, paths, r.commitment_number,
                                      r.revocation_secret, r.witness_script)
        elif r.path in ("htlc_success", "htlc_timeout"):
            if r.commitment_number is None:
                raise ValueError("an HTLC transaction needs its commitment number")
            return self.sign_holder_htlc(index, r.commitment_number, r.tx, r.index, paths,
                                         preimage=r.preimage)["holder_signature"][:-1]
        else:
            found = self.sign_sweep(index, r.path, r.tx, r.index, r.amount_sat, paths, r.commitment_number,
                                    r.per_commitment_point, r.witness_script, r.preimage)
        return found.signature[:-1]

    def sign_invoice(self, hrp: str, data: str) -> bytes:
        """The node key's 65-byte recoverable signature (r, s, recovery id) of a BOLT-11 invoice:
        `hrp` and `data`, the bech32 characters of the data part before the signature."""
        return bytes.fromhex(self._ask("sign_invoice", {"hrp": hrp, "data": data})["signature"])

    def onion_ecdh(self, point: bytes) -> bytes:
        """SHA256 of the ECDH point of the node key and `point` (BOLT-4's shared secret)."""
        return bytes.fromhex(self._ask("onion_ecdh", {"point": point.hex()})["secret"])


def _paths(wallet_outputs: list[tuple[int, int] | None]) -> list[list[int] | None]:
    return [list(p) if p is not None else None for p in wallet_outputs]


def _input_signature(found: dict[str, Any]) -> InputSignature:
    script = found.get("witness_script")
    return InputSignature(bytes.fromhex(found["signature"]), bytes.fromhex(found["pubkey"]),
                          bytes.fromhex(script) if script else None)


class ChainWatch:
    """watchd: watches on outpoints, txids and scripts, and the notifications they cause.

    Events (`outpoint_spent`, `tx_depth`, `script_paid`, ...) carry the watch's `owner`; an owner that
    was down reads what it missed with `notifications` and forgets it with `acknowledge`.
    """

    def __init__(self, ctx: ServiceContext, owner: str, timeout: float = 30.0) -> None:
        self._ctx, self.owner, self._timeout = ctx, owner, timeout

    def _ask(self, name: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        return self._ctx.request(name, body, timeout=timeout or self._timeout)

    def watch(self, kind: str, key: str, depths: list[int] | None = None, since: int | None = None
              ) -> dict[str, Any]:
        """Watch an `outpoint` ("txid:vout"), a `txid` (at `depths`) or a `script` (hex); the watch.
        `since`: a height from which blocks already processed are looked at for it too (a watch made
        in answer to a block's event must not miss what the next blocks did before it existed)."""
        body: dict[str, Any] = {"kind": kind, "key": key, "owner": self.owner}
        if depths is not None:
            body["depths"] = list(depths)
        if since is not None:
            body["since"] = int(since)
        return dict(self._ask("watchd.watch", body))

    def watch_outpoint(self, txid: str, vout: int, since: int | None = None) -> dict[str, Any]:
        """Be told when `txid:vout` is spent (and unspent by a reorg); `since` as in `watch`."""
        return self.watch("outpoint", f"{txid}:{vout}", since=since)

    def watch_txid(self, txid: str, depths: list[int]) -> dict[str, Any]:
        """Be told when `txid` reaches each of `depths` confirmations."""
        return self.watch("txid", txid, depths)

    def watch_script(self, script: str) -> dict[str, Any]:
        """Be told of every payment to `script` (hex)."""
        return self.watch("script", script)

    def unwatch(self, watch_id: int) -> bool:
        """Remove a watch; whether it existed."""
        return bool(self._ask("watchd.unwatch", {"id": watch_id})["removed"])

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        """watchd's tip (`height`, `hash`) and its watch counts."""
        return dict(self._ask("watchd.status", {}, timeout))


@dataclass(frozen=True)
class WalletDestination:
    """A fresh receive key of the wallet: its address, scriptPubKey and (branch, index) in the wallet
    account, which signd derives to check that a sweep or a close pays the wallet."""

    address: str
    script: bytes
    key: tuple[int, int]


@dataclass(frozen=True)
class Funded:
    """A transaction the wallet funded and signed but did not send; its inputs are reserved."""

    reservation: str
    txid: str
    tx: str                  # hex
    fee_sat: int
    change_vout: int | None
    feerate: float = 0.0     # sat/vB
    vbytes: int = 0


@dataclass(frozen=True)
class FeeCoin:
    """A wallet coin reserved to pay a fee in a transaction another service builds (`Funding.fee_coin`):
    its outpoint, amount, public key and (branch, index) in the wallet account (for the wallet's PSBT)."""

    reservation: str
    txid: str
    vout: int
    value_sat: int
    pubkey: bytes
    key: tuple[int, int]
    fingerprint: bytes = b""
    account: tuple[int, ...] = ()


class Funding:
    """The wallet's funding operations, for channel opening: fund, then broadcast or release."""

    def __init__(self, ctx: ServiceContext, timeout: float = 60.0) -> None:
        self._ctx, self._timeout = ctx, timeout

    def new_address(self) -> str:
        """A fresh receive address of the wallet."""
        return str(self._ctx.request("wallet.newaddr", {}, timeout=self._timeout)["address"])

    def new_destination(self) -> WalletDestination:
        """A fresh receive key of the wallet, for a sweep's `destination` and `destination_path` (or a
        close's `wallet_output`): the wallet watches it, signd can check it."""
        found = self._ctx.request("wallet.newaddr", {}, timeout=self._timeout)
        branch, index = found["key"]
        return WalletDestination(str(found["address"]), bytes.fromhex(found["script"]), (int(branch), int(index)))

    def fund(self, outputs: list[dict[str, Any]], feerate: float | None = None, label: str = "",
             purpose: str = "fund") -> Funded:
        """Fund `outputs` ([{address or script (hex), value_sat}]) at `feerate` sat/vB (None: the
        wallet's estimate); inputs are chosen, signed and reserved, nothing is sent."""
        body: dict[str, Any] = {"outputs": outputs, "label": label, "purpose": purpose}
        if feerate is not None:
            body["feerate"] = feerate
        found = self._ctx.request("wallet.fund", body, timeout=self._timeout)
        return Funded(found["reservation"], found["txid"], found["tx"], found["fee_sat"], found.get("change_vout"),
                      float(found.get("feerate", 0.0)), int(found.get("vbytes", 0)))

    def fee_coin(self, min_sat: int) -> FeeCoin:
        """Reserve the smallest confirmed wallet coin worth at least `min_sat` (a fee input: sign it with
        `onchain_tx.Sweep.wallet_psbt` and `Signer.sign_wallet_psbt`); free again once a spend of it is
        seen, or by `release`."""
        c = self._ctx.request("wallet.fee_coin", {"min_sat": min_sat}, timeout=self._timeout)
        branch, index = c["key"]
        return FeeCoin(str(c["reservation"]), str(c["txid"]), int(c["vout"]), int(c["value_sat"]),
                       bytes.fromhex(c["pubkey"]), (int(branch), int(index)), bytes.fromhex(c["fingerprint"]),
                       tuple(int(i) for i in c["account"]))

    def sign_fee_coin(self, reservation: str, psbt: str) -> str:
        """The wallet's signature of the coin `reservation` holds, in `psbt` (base64, from
        `onchain_tx.Sweep.wallet_psbt(coin.fingerprint, coin.account)`): the signed PSBT."""
        return str(self._ctx.request("wallet.sign_fee_coin", {"reservation": reservation, "psbt": psbt},
                                     timeout=self._timeout)["psbt"])

    def broadcast(self, reservation: str) -> str:
        """Send a funded transaction; its txid."""
        return str(self._ctx.request("wallet.broadcast", {"reservation": reservation}, timeout=self._timeout)["txid"])

    def release(self, reservation: str) -> bool:
        """Give a funded transaction up: its inputs are free again."""
        return bool(self._ctx.request("wallet.release", {"reservation": reservation},
                                      timeout=self._timeout)["released"])


class PeerTransport:
    """peerd's control requests (wire messages go through `ctx.send_wire` and wire subscriptions)."""

    def __init__(self, ctx: ServiceContext, timeout: float = 30.0) -> None:
        self._ctx, self._timeout = ctx, timeout

    def set_persistent(self, node_id: str, persistent: bool = True, address: str | None = None) -> dict[str, Any]:
        """Keep (or stop keeping) a connection to `node_id` (hex), at `address` (HOST:PORT) if given."""
        body: dict[str, Any] = {"id": node_id, "persistent": persistent}
        if address is not None:
            body["address"] = address
        return dict(self._ctx.request("peerd.set_persistent", body, timeout=self._timeout))

    def peer(self, node_id: str) -> dict[str, Any] | None:
        """peerd's view of a connected peer, None when it is not connected."""
        return self._ctx.request("peerd.peer", {"id": node_id}, timeout=self._timeout)

    def disconnect(self, node_id: str) -> dict[str, Any]:
        """Close the connection to `node_id` (hex): BOLT-1's "fail the connection"; RpcError if not connected."""
        return dict(self._ctx.request("peerd.disconnect", {"id": node_id}, timeout=self._timeout))

    def send(self, node_id: bytes, msg_type: int, payload: bytes) -> None:
        """Send a wire message to a connected peer (through the message bus)."""
        self._ctx.send_wire(WireMessage(node_id, msg_type, payload))
