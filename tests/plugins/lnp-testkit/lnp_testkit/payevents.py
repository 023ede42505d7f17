"""tk_payevents: records the durable events of a payment (invoice_paid, payment_succeeded, payment_failed,
channel_state_changed) in memory, for the end-to-end payment tests (`tk_pay_events NAME`)."""
import threading

from lnp_plugin_api import Subscription, hookimpl, rpc_method

NAMES = ("invoice_paid", "payment_succeeded", "payment_failed", "channel_state_changed")
_lock = threading.Lock()
_events: dict[str, list] = {}


@rpc_method
def tk_pay_events(ctx, name: str) -> list:
    """The bodies of the events NAME received, in arrival order."""
    with _lock:
        return list(_events.get(name, []))


def on_event(ctx, event):
    with _lock:
        _events.setdefault(event.name, []).append(event.body)


@hookimpl
def lnp_service():
    return "tkpayev"


@hookimpl
def lnp_rpc_methods():
    return [tk_pay_events]


@hookimpl
def lnp_subscriptions():
    return [Subscription.event(n, on_event) for n in NAMES]
