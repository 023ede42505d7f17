"""BOLT-11 route hints (`r`) for our private channels: how a payer reaches us through the peer.

A hint names the peer's end of the channel: its node id, the short channel id the peer knows the channel by
(its alias when it gave one; with option_scid_alias in the channel type never the real one, BOLT-2), and the
fee and CLTV delta the peer charges to forward into it: from the `channel_update` the peer sent us for its
direction (BOLT-7: a node SHOULD accept those for its own channels, even private ones), else the usual
defaults: BOLT-2's advice of a cltv_expiry_delta of 34 ("if in doubt"), the 1000 msat base fee and 1
millionth proportional fee most implementations announce. There is no gossip here: a channel_update for
another channel is ignored.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterable

import coincurve

from lnp_plugin_api.chains import chain_hash
from lnp_plugin_api.channel import SCID_ALIAS_BIT, Side
from lnp_plugin_api.messages import ChannelUpdate
from lnp_plugin_api.tx import compact_to_der
from lnp_plugin_api.wire import format_scid

from .document import NORMAL, Channel
from .errors import ChannelError

if TYPE_CHECKING:
    from .manager import ChannelManager

DEFAULT_FEE_BASE_MSAT = 1000
DEFAULT_FEE_PROPORTIONAL_MILLIONTHS = 1
DEFAULT_CLTV_EXPIRY_DELTA = 34


def hint_scid(ch: Channel) -> str | None:
    """The short channel id for a hint: the peer's alias, else the real one unless the type forbids it."""
    alias = ch.routing.get("remote_alias")
    if alias:
        return alias
    if SCID_ALIAS_BIT in ch.params.channel_type.bits:
        return None
    return ch.scid


def usable(ch: Channel) -> bool:
    """A private channel in use whose peer can send us something (its balance above its reserve), and
    that the peer did not say is disabled."""
    spendable = ch.log.local.remote_msat - ch.params.reserve_of(Side.REMOTE) * 1000
    disabled = ch.routing.get("their_update", {}).get("disabled", False)
    return ch.private and ch.state == NORMAL and spendable > 0 and not disabled


def route_hints(channels: Iterable[Channel]) -> list[dict[str, Any]]:
    """One single-hop hint per usable private channel, largest peer balance first."""
    out = []
    for ch in sorted(channels, key=lambda c: -c.log.local.remote_msat):
        scid = hint_scid(ch)
        if scid is not None and usable(ch):
            update = ch.routing.get("their_update", {})
            out.append({"node_id": ch.peer_id.hex(), "short_channel_id": scid,
                        "fee_base_msat": update.get("fee_base_msat", DEFAULT_FEE_BASE_MSAT),
                        "fee_proportional_millionths": update.get("fee_proportional_millionths",
                                                                  DEFAULT_FEE_PROPORTIONAL_MILLIONTHS),
                        "cltv_expiry_delta": update.get("cltv_expiry_delta", DEFAULT_CLTV_EXPIRY_DELTA)})
    return out


def on_channel_update(mgr: "ChannelManager", peer_id: bytes, msg: ChannelUpdate) -> None:
    """The peer's channel_update for its direction of one of our channels with it (named by the real
    scid or the alias we gave): its signature checked (a warning otherwise), the newest kept."""
    if msg.chain_hash != chain_hash(mgr.ctx.node.network):
        return                                      # BOLT-7: MUST ignore
    scid = format_scid(msg.short_channel_id)
    ch = next((c for c in mgr.channels.values()
               if c.peer_id == peer_id and scid in (c.scid, c.routing.get("local_alias"))), None)
    if ch is None:
        return                                      # not one of ours: no gossip here
    peer_is_second = peer_id > bytes(mgr.ctx.node.node_id)   # node_id_1 is the lesser id (BOLT-7)
    if msg.channel_flags & 1 != int(peer_is_second):
        return                                      # our own direction: nothing to learn
    digest = hashlib.sha256(hashlib.sha256(msg.signed_part()).digest()).digest()
    try:
        valid = coincurve.PublicKey(peer_id).verify(compact_to_der(msg.signature), digest, hasher=None)
    except ValueError:
        valid = False
    if not valid:
        raise ChannelError(f"channel_update for {scid}: bad signature", warning=True)
    known = ch.routing.get("their_update", {})
    if msg.timestamp <= known.get("timestamp", 0):
        return                                      # older, or the same again
    update = {"timestamp": msg.timestamp, "fee_base_msat": msg.fee_base_msat,
              "fee_proportional_millionths": msg.fee_proportional_millionths,
              "cltv_expiry_delta": msg.cltv_expiry_delta, "htlc_minimum_msat": msg.htlc_minimum_msat,
              "htlc_maximum_msat": msg.htlc_maximum_msat, "disabled": bool(msg.channel_flags & 2)}
    with mgr.transaction() as tx:
        mgr.store(tx, replace(ch, routing={**ch.routing, "their_update": update}))
