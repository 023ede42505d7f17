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
from typing import Any

from .types import ServiceContext, WireMessage

# The signer's request names, in one place (a signer answering other names is one edit here).
SIGNER_REQUESTS = {
    "wallet": "signd.wallet",
    "sign_wallet_psbt": "signd.sign_wallet_psbt",
    "sign_node_message": "signd.sign_node_message",
    "basepoints": "signd.basepoints",
    "per_commitment_point": "signd.per_commitment_point",
}


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


class ChainWatch:
    """watchd: watches on outpoints, txids and scripts, and the notifications they cause.

    Events (`outpoint_spent`, `tx_depth`, `script_paid`, ...) carry the watch's `owner`; an owner that
    was down reads what it missed with `notifications` and forgets it with `acknowledge`.
    """

    def __init__(self, ctx: ServiceContext, owner: str, timeout: float = 30.0) -> None:
        self._ctx, self.owner, self._timeout = ctx, owner, timeout

    def _ask(self, name: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        return self._ctx.request(name, body, timeout=timeout or self._timeout)

    def watch(self, kind: str, key: str, depths: list[int] | None = None) -> dict[str, Any]:
        """Watch an `outpoint` ("txid:vout"), a `txid` (at `depths`) or a `script` (hex); the watch."""
        body: dict[str, Any] = {"kind": kind, "key": key, "owner": self.owner}
        if depths is not None:
            body["depths"] = list(depths)
        return dict(self._ask("watchd.watch", body))

    def watch_outpoint(self, txid: str, vout: int) -> dict[str, Any]:
        """Be told when `txid:vout` is spent (and unspent by a reorg)."""
        return self.watch("outpoint", f"{txid}:{vout}")

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
class Funded:
    """A transaction the wallet funded and signed but did not send; its inputs are reserved."""

    reservation: str
    txid: str
    tx: str                  # hex
    fee_sat: int
    change_vout: int | None
    feerate: float = 0.0     # sat/vB
    vbytes: int = 0


class Funding:
    """The wallet's funding operations, for channel opening: fund, then broadcast or release."""

    def __init__(self, ctx: ServiceContext, timeout: float = 60.0) -> None:
        self._ctx, self._timeout = ctx, timeout

    def new_address(self) -> str:
        """A fresh receive address of the wallet."""
        return str(self._ctx.request("wallet.newaddr", {}, timeout=self._timeout)["address"])

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

    def send(self, node_id: bytes, msg_type: int, payload: bytes) -> None:
        """Send a wire message to a connected peer (through the message bus)."""
        self._ctx.send_wire(WireMessage(node_id, msg_type, payload))
