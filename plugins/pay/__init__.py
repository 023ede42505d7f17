"""pay: pay a BOLT-11 invoice of a direct peer (one hop) through channeld.

RPC: pay BOLT11 [--amount-msat M] [--wait S], listpayments [BOLT11] [--payment-hash H].
Uses channeld's control request `channeld.add_htlcs` and its durable event `htlc_resolved`, and the chain
backend's `chain.info` (the height the HTLC's CLTV starts from). Multi-hop routing is a later step.
Events (durable): payment_succeeded {payment_hash, preimage, amount_msat, fee_msat, destination},
payment_failed {payment_hash, reason, failure_code, destination, amount_msat}.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from lnp_plugin_api import EventSpec, PerContext, ServiceContext, Subscription, hookimpl, rpc_method

from . import storage
from .payer import Payer

_payers: PerContext[Payer] = PerContext("the pay plugin")


@rpc_method
def pay(ctx: ServiceContext, bolt11: str, amount_msat: int | None = None, wait: float = 30.0
        ) -> dict[str, Any] | Future:
    """Pay the invoice BOLT11 to a peer we have a channel with (AMOUNT_MSAT for an invoice without an amount);
    waits up to WAIT seconds for the outcome, after which the payment stays pending. Paying the same invoice
    again sends nothing new: it waits for the pending payment or returns the completed one."""
    return _payers.get(ctx).pay(bolt11, amount_msat, wait)


@rpc_method
def listpayments(ctx: ServiceContext, bolt11: str | None = None, payment_hash: str | None = None
                 ) -> list[dict[str, Any]]:
    """Our payments (of the invoice BOLT11, or PAYMENT_HASH): status pending, complete or failed."""
    return _payers.get(ctx).listing(bolt11, payment_hash)


def _on_htlc_resolved(ctx: ServiceContext, events: list[Any]) -> None:
    # durable, a window at a time: raising leaves them unacknowledged, and they come again
    _payers.get(ctx).on_resolved([e.body for e in events])


@hookimpl
def lnp_requires() -> list[str]:
    # channeld.add_htlcs is not required here so that a profile without channeld stays valid: `pay` says so
    return ["chain.info"]


@hookimpl
def lnp_events() -> list[EventSpec]:
    return [EventSpec("payment_succeeded", "a payment completed; body: {payment_hash, preimage, amount_msat, "
                                           "fee_msat, destination}", durable=True),
            EventSpec("payment_failed", "a payment failed; body: {payment_hash, reason, failure_code, destination, "
                                        "amount_msat}", durable=True)]


@hookimpl
def lnp_storage_models() -> Any:
    return storage.MODELS


@hookimpl
def lnp_rpc_methods() -> list:
    return [pay, listpayments]


@hookimpl
def lnp_subscriptions() -> list:
    return [Subscription.events("htlc_resolved", _on_htlc_resolved)]


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    _payers.set(ctx, Payer(ctx))


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    payer = _payers.pop(ctx)
    if payer is not None:
        payer.close()
