"""The channel document: everything channeld persists about one channel, as one JSON value.

A `Channel` is immutable; each step of the protocol returns a new one, written (`storage.save`) in the
same transaction as the messages that follow from it. `to_json`/`from_json` are the only place that
knows the layout; `DOC_VERSION` changes with it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from lnp_plugin_api.bolt3 import Shachain
from lnp_plugin_api.bolt_extensions import extensions_for
from lnp_plugin_api.channel import (Basepoints, ChannelExtension, ChannelParams, ChannelType, Side, SideConfig)
from lnp_plugin_api.channel_updates import UpdateLog

DOC_VERSION = 2    # 2: `htlcs` stored apart (storage.htlcs), not in the document

# The named states (docs/channels.md, "The channel state machine"). Opening states before
# awaiting_lock live in memory only.
AWAITING_LOCK = "awaiting_lock"      # funding signed both ways; waiting for depth and channel_ready
NORMAL = "normal"
FAILED = "failed"                    # the peer sent an error, or broke the protocol: not used any more
# cooperative close (closing.py)
SHUTDOWN = "shutdown"                # a shutdown sent or received: no new HTLC; waiting for none to be left
NEGOTIATING = "negotiating"          # closing_signed exchanged
CLOSING = "closing"                  # the mutual close is agreed and broadcast
# going to chain (onchain.py)
FORCE_CLOSING = "force_closing"      # we are putting our commitment on chain
ONCHAIN = "onchain"                  # the funding output is spent: its outputs are being resolved
CLOSED = "closed"                    # the mutual close, or every resolution, is deep: nothing left to do
STATES = (AWAITING_LOCK, NORMAL, FAILED, SHUTDOWN, NEGOTIATING, CLOSING, FORCE_CLOSING, ONCHAIN, CLOSED)
IN_USE = (AWAITING_LOCK, NORMAL, SHUTDOWN, NEGOTIATING)   # an error or a violation fails these, and so to chain
ON_CHAIN = (FORCE_CLOSING, ONCHAIN, CLOSED)               # a reestablish gets an error


_EXTENSIONS: dict[ChannelType, list[ChannelExtension]] = {}   # by channel type (Channel.extensions)


def channel_id_of(funding_txid: str, funding_vout: int) -> bytes:
    """BOLT-2's channel_id: the funding txid (wire order) XOR the output index in its last two bytes."""
    raw = bytearray(bytes.fromhex(funding_txid)[::-1])
    raw[30] ^= funding_vout >> 8
    raw[31] ^= funding_vout & 0xFF
    return bytes(raw)


def side_to_json(s: SideConfig) -> dict[str, Any]:
    """A `SideConfig` as JSON (points hex)."""
    bp = s.basepoints
    return {"funding_pubkey": s.funding_pubkey.hex(), "revocation": bp.revocation.hex(), "payment": bp.payment.hex(),
            "delayed_payment": bp.delayed_payment.hex(), "htlc": bp.htlc.hex(), "dust_limit_sat": s.dust_limit_sat,
            "to_self_delay": s.to_self_delay, "channel_reserve_sat": s.channel_reserve_sat,
            "htlc_minimum_msat": s.htlc_minimum_msat,
            "max_htlc_value_in_flight_msat": s.max_htlc_value_in_flight_msat,
            "max_accepted_htlcs": s.max_accepted_htlcs}


def side_from_json(d: Mapping[str, Any]) -> SideConfig:
    """Inverse of `side_to_json`."""
    bp = Basepoints(*(bytes.fromhex(d[k]) for k in ("revocation", "payment", "delayed_payment", "htlc")))
    return SideConfig(bytes.fromhex(d["funding_pubkey"]), bp, int(d["dust_limit_sat"]), int(d["to_self_delay"]),
                      int(d["channel_reserve_sat"]), int(d["htlc_minimum_msat"]),
                      int(d["max_htlc_value_in_flight_msat"]), int(d["max_accepted_htlcs"]))


def params_to_json(p: ChannelParams) -> dict[str, Any]:
    """`ChannelParams` as JSON."""
    return {"local": side_to_json(p.local), "remote": side_to_json(p.remote), "funding_txid": p.funding_txid,
            "funding_output_index": p.funding_output_index, "funding_sat": p.funding_sat, "opener": p.opener.value,
            "channel_type": p.channel_type.to_bytes().hex(), "extensions": list(p.extensions)}


def params_from_json(d: Mapping[str, Any]) -> ChannelParams:
    """Inverse of `params_to_json`."""
    return ChannelParams(side_from_json(d["local"]), side_from_json(d["remote"]), d["funding_txid"],
                         int(d["funding_output_index"]), int(d["funding_sat"]), Side(d["opener"]),
                         ChannelType.from_bytes(bytes.fromhex(d["channel_type"])), tuple(d["extensions"]))


@dataclass(frozen=True)
class Channel:
    """One channel past funding_signed.

    `their_points` are the peer's per-commitment points we know by commitment number (the current and
    the next); `their_secrets` the secrets it revealed, in shachain form; `ready_sent`/`ready_received`
    the two channel_ready messages; `scid` once the funding is deep enough.
    """

    channel_id: bytes
    peer_id: bytes
    dbid: int
    state: str
    params: ChannelParams
    log: UpdateLog
    min_depth: int
    their_points: Mapping[int, bytes]
    their_secrets: Shachain = field(default_factory=Shachain)
    ready_sent: bool = False
    ready_received: bool = False
    scid: str | None = None
    private: bool = False
    funding_tx: str | None = None        # hex, while we (the opener) may need to send it again
    failure: str | None = None
    # per HTLC, what the update log does not keep: "in:ID" (received) {onion}; "out:ID" (offered) {onion,
    # and once the peer removes it: failure_onion or failure_code, resolved}
    htlcs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    last_sent: str = ""                  # "commit" or "revoke": which we sent last (reestablish's order)
    closing: Mapping[str, Any] = field(default_factory=dict)   # the cooperative close's data (closing.py)
    onchain: Mapping[str, Any] = field(default_factory=dict)   # the close on chain (onchain.py's layout)
    # how payers reach us through the peer (hints.py): option_scid_alias's "local_alias" (ours) and
    # "remote_alias", and "their_update", the fees and CLTV delta of the peer's channel_update
    routing: Mapping[str, Any] = field(default_factory=dict)

    @property
    def extensions(self) -> list[ChannelExtension]:
        """The channel's extensions, in build order (shared by every channel of its type: extensions keep no
        state)."""
        found = _EXTENSIONS.get(self.params.channel_type)
        if found is None:
            found = _EXTENSIONS[self.params.channel_type] = extensions_for(self.params.channel_type)
        return found

    @property
    def opener(self) -> bool:
        """Whether we opened it."""
        return self.params.opener is Side.LOCAL

    def with_state(self, state: str, **changes: Any) -> "Channel":
        """A copy in `state` (and other fields changed)."""
        return replace(self, state=state, **changes)

    def to_json(self) -> dict[str, Any]:
        """The document stored in `channeld_channels.data` (`htlcs` apart: storage.save writes them)."""
        return {**self.to_json_without_log(), "log": self.log.to_json()}

    def to_json_without_log(self) -> dict[str, Any]:
        """`to_json` but the update log."""
        return {"version": DOC_VERSION, "channel_id": self.channel_id.hex(), "peer_id": self.peer_id.hex(),
                "dbid": self.dbid, "state": self.state, "params": params_to_json(self.params),
                "min_depth": self.min_depth,
                "their_points": {str(n): p.hex() for n, p in self.their_points.items()},
                "their_secrets": self.their_secrets.to_json(), "ready_sent": self.ready_sent,
                "ready_received": self.ready_received, "scid": self.scid, "private": self.private,
                "funding_tx": self.funding_tx, "failure": self.failure,
                "last_sent": self.last_sent, "closing": dict(self.closing), "onchain": dict(self.onchain),
                "routing": dict(self.routing)}

    def to_text(self) -> str:
        """`to_json` as compact JSON text, with the update log's own encoding spliced in (`UpdateLog.to_text`:
        most of the document, and mostly unchanged between two writes)."""
        doc = self.to_json_without_log()
        return f'{json.dumps(doc, separators=(",", ":"))[:-1]},"log":{self.log.to_text()}}}'

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Channel":
        """Inverse of `to_json` (`htlcs` given by storage.load_all)."""
        params = params_from_json(d["params"])
        return cls(bytes.fromhex(d["channel_id"]), bytes.fromhex(d["peer_id"]), int(d["dbid"]), d["state"], params,
                   UpdateLog.from_json(d["log"], params, extensions_for(params.channel_type)), int(d["min_depth"]),
                   {int(n): bytes.fromhex(p) for n, p in d["their_points"].items()},
                   Shachain.from_json(d["their_secrets"]), bool(d["ready_sent"]), bool(d["ready_received"]),
                   d.get("scid"), bool(d.get("private", False)), d.get("funding_tx"), d.get("failure"),
                   dict(d.get("htlcs", {})), d.get("last_sent", ""), dict(d.get("closing", {})),
                   dict(d.get("onchain", {})), dict(d.get("routing", {})))

    def summary(self) -> dict[str, Any]:
        """What `channels` lists (no secret: balances, limits, state)."""
        local, p = self.log.local, self.params
        htlcs: Sequence[Any] = local.htlcs
        return {"channel_id": self.channel_id.hex(), "short_channel_id": self.scid, "peer_id": self.peer_id.hex(),
                "state": self.state, "opener": "local" if self.opener else "remote",
                "funding_outpoint": f"{p.funding_txid}:{p.funding_output_index}", "capacity_sat": p.funding_sat,
                "local_msat": local.local_msat, "remote_msat": local.remote_msat,
                "our_reserve_sat": p.reserve_of(Side.LOCAL), "their_reserve_sat": p.reserve_of(Side.REMOTE),
                "feerate_per_kw": local.feerate_per_kw, "htlcs_in_flight": len(htlcs),
                "channel_type": p.channel_type.name, "private": self.private, "failure": self.failure,
                "closing_txid": self.closing.get("txid"),
                "alias": {"local": self.routing.get("local_alias"), "remote": self.routing.get("remote_alias")},
                "upfront_shutdown_script": {"local": self.closing.get("upfront_ours", ""),
                                            "remote": self.closing.get("upfront_theirs", "")},
                "onchain": {k: self.onchain[k] for k in ("reason", "commitment", "kind") if k in self.onchain}
                | ({"spend": self.onchain["spend"]["txid"]} if "spend" in self.onchain else {})
                | {"sent": {k: v["txid"] for k, v in self.onchain.get("sent", {}).items()}}}


def temporary_id(peer_id: bytes, dbid: int) -> bytes:
    """A temporary_channel_id unique per node (our channel index is never reused)."""
    return hashlib.sha256(b"lnp-temporary-channel-id" + peer_id + dbid.to_bytes(8, "big")).digest()
