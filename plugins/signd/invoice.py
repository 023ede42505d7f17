"""BOLT-11 invoice signatures: signd signs a whole, well-formed invoice of this node's network only.

The invoice is read with the BOLT-11 decoder of the plugin API (`bolt11.decode_unsigned`), and its
signature is BOLT-11's (`bolt11.signing_hash`, recoverable: 64 bytes and a recovery id).
"""
from __future__ import annotations

from lnp_plugin_api import RpcError, bolt11
from lnp_plugin_api.bech32 import words_of


def words(data: str) -> bytes:
    """The 5-bit words of a bech32 data part (lowercase, no checksum); ValueError otherwise."""
    if not data:
        raise ValueError("not bech32")
    return words_of(data)


def check_invoice(network: str, hrp: str, data: bytes, node_id: bytes) -> bolt11.Invoice:
    """The invoice `(hrp, data)` describes; refused (RpcError REFUSED) when it is not a well-formed
    BOLT-11 invoice of `network` or when it names another payee (`n`) than `node_id`. This is the one
    place that decides what signd signs as an invoice."""
    try:
        inv = bolt11.decode_unsigned(hrp, data)
    except bolt11.InvoiceError as e:
        raise RpcError(RpcError.REFUSED, f"not a valid invoice ({e}): refused") from None
    prefix = bolt11.currency_for(network)
    if inv.currency != prefix:
        raise RpcError(RpcError.REFUSED, f"not an invoice of this node's network (ln{prefix}...): refused")
    # readers skip an `n` field they cannot use (wrong length, not a point, a duplicate): refuse any all the same
    if (inv.payee_in_invoice and inv.payee != node_id) or any(f.tag == bolt11.N for f in inv.extra):
        raise RpcError(RpcError.REFUSED, "the invoice names another payee (n): refused")
    return inv

