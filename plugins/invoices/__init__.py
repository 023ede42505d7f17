"""invoices: the node's BOLT-11 invoices, and the `htlc_accepted` participant that settles them.

RPC: invoice MSAT|any LABEL [--description D] [--expiry S] [--preimage HEX], decode BOLT11, listinvoices [LABEL] [--payment-hash H],
waitinvoice LABEL, delinvoice LABEL.
Decision participant: `htlc_accepted` (asked by channeld for each HTLC received): a final-hop HTLC paying one
of our invoices is checked as BOLT-4 says and resolved with the preimage, or failed with the onion failure to
return; any other HTLC is left to the next participant (Continue).
Event (durable): invoice_paid {label, payment_hash, amount_msat, received_msat, pay_index}.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from lnp_plugin_api import (EventSpec, Field, PerContext, RpcError, ServiceContext, Subscription, hookimpl,
                            rpc_method)
from lnp_plugin_api import bolt11 as _bolt11
from lnp_plugin_api.services import SIGNER_REQUESTS

from . import storage
from lnp_plugin_api.wire import parse_scid as scid_int

from .describe import describe
from .ledger import Ledger

_ledgers: PerContext[Ledger] = PerContext("the invoices plugin")


@rpc_method
def invoice(ctx: ServiceContext, amount_msat: int | str, label: str, description: str = "",
            expiry: int | None = None, preimage: str | None = None) -> dict[str, Any]:
    """A BOLT-11 invoice for AMOUNT_MSAT (or `any`) under LABEL (unique), with DESCRIPTION, valid EXPIRY
    seconds (default: the plugin's `expiry`), signed with the node key. PREIMAGE (32 bytes hex, default
    random) is the payment's secret: never logged nor shown. A route hint (`r`) is added per usable
    private channel (channeld's `channeld.route_hints`)."""
    return _ledgers.get(ctx).create(amount_msat, label, description, expiry, preimage, route_hints(ctx))


def route_hints(ctx: ServiceContext) -> tuple:
    """One single-hop BOLT-11 route per usable private channel, as channeld gives them; none without channeld."""
    try:
        found = ctx.request("channeld.route_hints", {}, timeout=10.0)
    except RpcError as e:
        ctx.log.info("no route hints: %s", e.message)
        return ()
    return tuple((_bolt11.RouteHintHop(bytes.fromhex(h["node_id"]), scid_int(h["short_channel_id"]),
                                       int(h["fee_base_msat"]), int(h["fee_proportional_millionths"]),
                                       int(h["cltv_expiry_delta"])),) for h in found["hints"])


@rpc_method
def decode(ctx: ServiceContext, bolt11: str) -> dict[str, Any]:
    """Every field of a BOLT-11 invoice (of any network), checked as the spec says."""
    try:
        return describe(_bolt11.decode(bolt11))
    except _bolt11.InvoiceError as e:
        raise RpcError(RpcError.INVALID_PARAMS, f"not a valid invoice: {e}") from None


@rpc_method
def listinvoices(ctx: ServiceContext, label: str | None = None, payment_hash: str | None = None
                 ) -> list[dict[str, Any]]:
    """The invoices (or the one with LABEL, or PAYMENT_HASH): status unpaid, paid or expired."""
    return _ledgers.get(ctx).listing(label, payment_hash)


@rpc_method
def waitinvoice(ctx: ServiceContext, label: str) -> dict[str, Any] | Future:
    """Wait until the invoice LABEL is paid and return it; an error if it expires (or is deleted) first."""
    return _ledgers.get(ctx).wait(label)


@rpc_method
def delinvoice(ctx: ServiceContext, label: str) -> dict[str, Any]:
    """Delete the unpaid or expired invoice LABEL (paid ones are kept)."""
    return _ledgers.get(ctx).delete(label)


def _on_htlc_accepted(ctx: ServiceContext, body: dict[str, Any]) -> Any:
    return _ledgers.get(ctx).on_htlc(body)


@hookimpl
def lnp_requires() -> list[str]:
    return [SIGNER_REQUESTS["sign_invoice"]]


@hookimpl
def lnp_config_schema() -> dict:
    positive = lambda v: None if v > 0 else "must be greater than zero"  # noqa: E731
    return {"expiry": Field(int, 3600, "seconds an invoice is valid unless `invoice --expiry` says", check=positive),
            "min_final_cltv_expiry_delta": Field(int, 18, "blocks an HTLC paying our invoice must leave us",
                                                 check=positive)}


@hookimpl
def lnp_events() -> list[EventSpec]:
    return [EventSpec("invoice_paid", "an invoice was paid; body: {label, payment_hash, amount_msat, received_msat, "
                                      "pay_index}", durable=True)]


@hookimpl
def lnp_storage_models() -> Any:
    return storage.MODELS


@hookimpl
def lnp_rpc_methods() -> list:
    return [invoice, decode, listinvoices, waitinvoice, delinvoice]


@hookimpl
def lnp_subscriptions() -> list:
    return [Subscription.decision("htlc_accepted", _on_htlc_accepted)]


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    _ledgers.set(ctx, Ledger(ctx))


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    ledger = _ledgers.pop(ctx)
    if ledger is not None:
        ledger.close()
