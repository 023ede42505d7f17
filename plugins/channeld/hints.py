"""BOLT-11 route hints (`r`) for our private channels: how a payer reaches us through the peer.

A hint names the peer's end of the channel: its node id, the short channel id the peer knows the channel by
(its alias when it gave one; with option_scid_alias in the channel type never the real one, BOLT-2), and the
fee and CLTV delta the peer charges to forward into it. We do not keep the peer's channel_update (no gossip
here), so those are the usual defaults: BOLT-2's advice of a cltv_expiry_delta of at least 34 ("if in doubt"),
the 1000 msat base fee and 1 millionth proportional fee most implementations announce.
"""
from __future__ import annotations

from typing import Any, Iterable

from lnp_plugin_api.channel import SCID_ALIAS_BIT, Side

from .document import NORMAL, Channel

DEFAULT_FEE_BASE_MSAT = 1000
DEFAULT_FEE_PROPORTIONAL_MILLIONTHS = 1
DEFAULT_CLTV_EXPIRY_DELTA = 34


def hint_scid(ch: Channel) -> str | None:
    """The short channel id for a hint: the peer's alias, else the real one unless the type forbids it."""
    alias = ch.aliases.get("remote")
    if alias:
        return alias
    if SCID_ALIAS_BIT in ch.params.channel_type.bits:
        return None
    return ch.scid


def usable(ch: Channel) -> bool:
    """A private channel in use whose peer can send us something (its balance above its reserve)."""
    spendable = ch.log.local.remote_msat - ch.params.reserve_of(Side.REMOTE) * 1000
    return ch.private and ch.state == NORMAL and spendable > 0


def route_hints(channels: Iterable[Channel]) -> list[dict[str, Any]]:
    """One single-hop hint per usable private channel, largest peer balance first."""
    out = []
    for ch in sorted(channels, key=lambda c: -c.log.local.remote_msat):
        scid = hint_scid(ch)
        if scid is not None and usable(ch):
            out.append({"node_id": ch.peer_id.hex(), "short_channel_id": scid,
                        "fee_base_msat": DEFAULT_FEE_BASE_MSAT,
                        "fee_proportional_millionths": DEFAULT_FEE_PROPORTIONAL_MILLIONTHS,
                        "cltv_expiry_delta": DEFAULT_CLTV_EXPIRY_DELTA})
    return out
