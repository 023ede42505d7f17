"""tk_limit: a spending-limit policy on signd: refuses PSBTs paying more than `max_sat` out of the wallet."""
from lnp_plugin_api import Decision, Field, Subscription, hookimpl


def check(ctx, body):
    if body.get("kind") != "psbt":
        return True
    paid = sum(o["value_sat"] for o in body["outputs"] if not o["change"])
    if paid > ctx.config["max_sat"]:
        return Decision(False, f"pays {paid} sat, over the limit of {ctx.config['max_sat']} sat")
    return True


@hookimpl
def lnp_service():
    return "tklimit"


@hookimpl
def lnp_config_schema():
    return {"max_sat": Field(int, 1_000_000_000, "largest payment allowed")}


@hookimpl
def lnp_subscriptions():
    return [Subscription.decision("sign_request", check)]
