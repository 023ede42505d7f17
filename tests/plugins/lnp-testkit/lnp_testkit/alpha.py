"""tk_alpha: drives requests, decisions, wire messages and failures from the alpha service."""
import time
from typing import Any

from lnp_plugin_api import DecisionSpec, RpcError, WireMessage, hookimpl, rpc_method


@rpc_method
def tk_roundtrips(ctx, n: int = 1000) -> dict:
    """Make N control requests `echo` (answered by tk_beta, wherever it runs) and time them."""
    start = time.perf_counter()
    for i in range(n):
        reply = ctx.request("echo", {"i": i})
        if reply["i"] != i:
            raise RpcError(RpcError.INTERNAL_ERROR, "echo answered the wrong request")
    elapsed = time.perf_counter() - start
    return {"n": n, "seconds": elapsed, "per_second": n / elapsed if elapsed else None}


@rpc_method
def tk_ask(ctx, name: str, body: Any = None) -> dict:
    """Send control request NAME with BODY; its reply, or the RpcError it raised (code and message)."""
    try:
        return {"reply": ctx.request(name, body)}
    except RpcError as e:
        return {"error": {"code": e.code, "message": e.message}}


@rpc_method
def tk_spend(ctx, amount: int) -> dict:
    """Ask the `tk_spend` decision for AMOUNT."""
    d = ctx.decide("tk_spend", {"amount": amount})
    return {"allowed": d.allowed, "reason": d.reason, "by": d.by}


@rpc_method
def tk_deliver(ctx, msg_type: int, payload_hex: str) -> dict:
    """Hand a wire message 'from a peer' to whoever handles its type."""
    msg = WireMessage(bytes(33), msg_type, bytes.fromhex(payload_hex))
    return {"delivered": ctx.deliver_wire(msg)}


@rpc_method
def tk_fail(ctx, reason: str = "asked to") -> dict:
    """Declare the alpha service broken."""
    ctx.fail(reason)
    return {"failing": True}


@rpc_method
def tk_crash(ctx) -> dict:
    """Raise an unexpected exception in a handler (the service must survive it)."""
    raise ZeroDivisionError("secret-looking detail that must not reach the client")


@hookimpl
def lnp_service():
    return "alpha"


@hookimpl
def lnp_rpc_methods():
    return [tk_roundtrips, tk_ask, tk_spend, tk_deliver, tk_fail, tk_crash]


@hookimpl
def lnp_decisions():
    return [DecisionSpec("tk_spend", "may AMOUNT be spent?")]
