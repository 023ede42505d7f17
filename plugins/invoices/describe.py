"""`decode`: every field of a BOLT-11 invoice, readable (any network's invoice)."""
from __future__ import annotations

import datetime
import time
from typing import Any

from lnp_plugin_api import bolt11, features
from lnp_plugin_api.bech32 import CHARSET


def _iso(t: int) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _scid(n: int) -> str:
    return f"{n >> 40}x{n >> 16 & 0xFFFFFF}x{n & 0xFFFF}"


def _fallback(fb: bolt11.Fallback, network: str) -> dict[str, Any]:
    out: dict[str, Any] = {"version": fb.version, "program": fb.program.hex(), "script": fb.script_pubkey.hex()}
    try:
        out["address"] = fb.address(network)
    except Exception:  # a witness version embit cannot write as an address: the script says it all
        pass
    return out


def describe(inv: bolt11.Invoice, now: float | None = None) -> dict[str, Any]:
    """The invoice as JSON: amounts in msat, times as Unix seconds and ISO 8601, keys and hashes in hex."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {
        "currency": inv.currency, "network": inv.network,
        "amount_msat": inv.amount_msat,
        "payee": inv.payee.hex() if inv.payee else None,
        "payee_in_invoice": inv.payee_in_invoice,
        "created_at": inv.timestamp, "created": _iso(inv.timestamp),
        "expiry": inv.expiry, "expires_at": inv.expires_at, "expires": _iso(min(inv.expires_at, 253402300799)),
        "expired": inv.is_expired(now),
        "payment_hash": inv.payment_hash.hex(), "payment_secret": inv.payment_secret.hex(),
        "min_final_cltv_expiry_delta": inv.min_final_cltv_expiry_delta,
        "features": features.names(set(inv.features)),
        "feature_bits": sorted(inv.features),
    }
    if inv.description is not None:
        out["description"] = inv.description
    else:
        out["description_hash"] = inv.description_hash.hex()
    if inv.metadata is not None:
        out["payment_metadata"] = inv.metadata.hex()
    if inv.fallbacks:
        out["fallbacks"] = [_fallback(fb, inv.network) for fb in inv.fallbacks]
    if inv.route_hints:
        out["route_hints"] = [[{"pubkey": h.pubkey.hex(), "short_channel_id": _scid(h.short_channel_id),
                                "fee_base_msat": h.fee_base_msat,
                                "fee_proportional_millionths": h.fee_proportional_millionths,
                                "cltv_expiry_delta": h.cltv_expiry_delta} for h in route]
                              for route in inv.route_hints]
    if inv.extra:
        out["unknown_fields"] = [{"type": CHARSET[f.tag], "tag": f.tag, "data": "".join(CHARSET[w] for w in f.data)}
                                 for f in inv.extra]
    if inv.signature is not None:
        out["signature"] = inv.signature.hex()
    return out
