"""tk_chain: asks watchd for watches over the control bus and records watchd's events."""
from dataclasses import asdict

from lnp_plugin_api import Subscription, hookimpl, rpc_method
from lnp_plugin_api.services import ChainWatch, Funding

EVENTS = ("block_connected", "block_disconnected", "outpoint_spent", "outpoint_unspent", "tx_depth",
          "tx_unconfirmed", "script_paid", "script_unpaid")
received: list = []
applied = {"seq": 0}  # watchd's events are durable (at least once): a number seen already is skipped


def on_event(ctx, event):
    if event.seq is not None and event.seq <= applied["seq"]:
        return
    applied["seq"] = event.seq or applied["seq"]
    if event.body.get("owner", "tk_chain") != "tk_chain":
        return  # another plugin's watch (the wallet's)
    received.append({"event": event.name, **{k: v for k, v in event.body.items() if k not in ("tx", "spending_tx")}})


@rpc_method
def tk_chain_events(ctx, name: str | None = None) -> list:
    """watchd events received (of one NAME, or all)."""
    return [e for e in received if name is None or e["event"] == name]


@rpc_method
def tk_chain_watch(ctx, kind: str, key: str, depths: list[int] | None = None, since: int | None = None) -> dict:
    """Ask watchd to watch an outpoint, a txid or a script (looking back from height SINCE)."""
    return ChainWatch(ctx, "tk_chain").watch(kind, key, depths, since)


@hookimpl
def lnp_service():
    return "tkchain"


@hookimpl
def lnp_requires():
    return ["watchd.watch"]  # a third-party plugin's dependency: whoever answers watchd.watch


@hookimpl
def lnp_rpc_methods():
    return [tk_chain_events, tk_chain_watch, tk_fund, tk_fund_finish, tk_destination, tk_fee_coin, tk_sign_fee_coin]


@hookimpl
def lnp_subscriptions():
    return [Subscription.event(name, on_event) for name in EVENTS]


@rpc_method
def tk_fund(ctx, address: str, value_sat: int) -> dict:
    """Fund (but do not send) a payment through the wallet's control API, as channel funding will."""
    return asdict(Funding(ctx).fund([{"address": address, "value_sat": value_sat}], purpose="tk_fund"))


@rpc_method
def tk_fund_finish(ctx, reservation: str, send: bool) -> dict:
    """Broadcast a funded transaction, or release its inputs."""
    funding = Funding(ctx)
    return {"txid": funding.broadcast(reservation)} if send else {"released": funding.release(reservation)}


@rpc_method
def tk_fee_coin(ctx, min_sat: int) -> dict:
    """A wallet coin reserved for a fee, through the wallet's control API, as channeld asks for one."""
    c = Funding(ctx).fee_coin(min_sat)
    return {"reservation": c.reservation, "txid": c.txid, "vout": c.vout, "value_sat": c.value_sat,
            "pubkey": c.pubkey.hex(), "key": list(c.key), "fingerprint": c.fingerprint.hex(), "account": list(c.account)}


@rpc_method
def tk_sign_fee_coin(ctx, reservation: str, psbt: str) -> dict:
    """The wallet's signature of a reserved fee coin in PSBT."""
    return {"psbt": Funding(ctx).sign_fee_coin(reservation, psbt)}


@rpc_method
def tk_destination(ctx) -> dict:
    """A fresh wallet key for a sweep, through the wallet's control API, as channeld asks for one."""
    found = Funding(ctx).new_destination()
    return {"address": found.address, "script": found.script.hex(), "key": list(found.key)}
