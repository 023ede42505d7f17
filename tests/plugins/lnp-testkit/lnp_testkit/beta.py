"""tk_beta: answers `echo`, takes part in `tk_spend`, receives wire type 32769 and `greeted` events."""
import time

from lnp_plugin_api import Decision, Field, Subscription, control_method, hookimpl, rpc_method

received: list = []


def echo(ctx, body):
    return body


@control_method("tk.add")
def add(ctx, a: int, b: int = 0, note: str | None = None) -> dict:
    """A typed control request: the host checks the body before this runs."""
    return {"sum": a + b, "note": note, "service": ctx.service}


@control_method("tk.crash")
def crash(ctx) -> dict:
    """A handler that fails unexpectedly: its callers get INTERNAL_ERROR, wherever they run."""
    raise ZeroDivisionError("a detail that stays in the log")


@control_method("tk.sleep")
def nap(ctx, seconds: float) -> dict:
    """Hold beta's thread for SECONDS: a request still being handled when its service dies."""
    time.sleep(seconds)
    return {"slept": seconds}


def spend_limit(ctx, body):
    if body["amount"] > ctx.config["limit"]:
        return Decision(False, f"over the limit of {ctx.config['limit']}")
    return True


def on_custom(ctx, msg):
    received.append({"type": msg.type, "payload": msg.payload.hex(), "peer": msg.peer_id.hex()})


def on_greeted(ctx, event):
    received.append({"event": event.name, "source": event.source, "body": event.body})


@rpc_method
def tk_received(ctx) -> list:
    """What beta received: wire messages and events."""
    return received


@hookimpl
def lnp_service():
    return "beta"


@hookimpl
def lnp_config_schema():
    return {"limit": Field(int, help="the largest amount tk_spend allows")}


@hookimpl
def lnp_rpc_methods():
    return [tk_received]


@hookimpl
def lnp_subscriptions():
    return [Subscription.control("echo", echo), add, crash, nap, Subscription.decision("tk_spend", spend_limit),
            Subscription.wire(32769, on_custom), Subscription.event("greeted", on_greeted)]
