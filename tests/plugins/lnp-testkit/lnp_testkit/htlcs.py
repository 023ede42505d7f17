"""tk_htlcs: a participant in channeld's decisions, for channel tests. `htlc_accepted`: resolves an HTLC
whose payment hash has a preimage registered with `tk_htlc_preimage`, fails those registered with
`tk_htlc_fail`, holds those registered with `tk_htlc_hold` until their preimage is given (or channeld's
decision times out), continues otherwise. `open_channel`: refuses a channel of `refuse_sat`. Records
channeld's durable events (`tk_htlc_events NAME`), kept in its data dir across restarts."""
import hashlib
import json
import threading
from concurrent.futures import Future

from lnp_plugin_api import Continue, Fail, Field, Resolve, Subscription, hookimpl, rpc_method
from lnp_plugin_api.onion_errors import failure

_lock = threading.Lock()
_preimages: dict[str, str] = {}
_failing: set[str] = set()
_events: dict[str, list] = {}
_asked: list = []
_held: dict[str, Future | None] = {}   # payment hash -> the pending decision (None until asked)


@rpc_method
def tk_htlc_preimage(ctx, preimage: str) -> dict:
    """Resolve HTLCs paying sha256(PREIMAGE) (kept in the plugin's data dir: a restart keeps them)."""
    h = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    with _lock:
        _preimages[h] = preimage
        with open(ctx.data_dir / "preimages", "a") as f:
            f.write(preimage + "\n")
        held = _held.pop(h, None)
    if held is not None:
        held.set_result(Resolve({"preimage": preimage}))
    return {"payment_hash": h}


@rpc_method
def tk_htlc_hold(ctx, payment_hash: str) -> dict:
    """Hold HTLCs paying PAYMENT_HASH (the decision stays pending) until tk_htlc_preimage gives its preimage."""
    with _lock:
        _held[payment_hash] = None
    return {}


@hookimpl
def lnp_startup(ctx):
    path = ctx.data_dir / "preimages"
    if path.exists():
        with _lock:
            for line in path.read_text().split():
                _preimages[hashlib.sha256(bytes.fromhex(line)).hexdigest()] = line
    path = ctx.data_dir / "events"
    if path.exists():
        with _lock:
            for line in path.read_text().splitlines():
                if line.strip():   # a line cut by a kill is incomplete: skipped
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    _events.setdefault(event["name"], []).append(event["body"])


@rpc_method
def tk_htlc_fail(ctx, payment_hash: str) -> dict:
    """Fail HTLCs paying PAYMENT_HASH with temporary_channel_failure."""
    with _lock:
        _failing.add(payment_hash)
    return {}


@rpc_method
def tk_htlc_events(ctx, name: str) -> list:
    """The bodies of channeld's events NAME received (htlc_accepted: the decisions asked)."""
    with _lock:
        return list(_asked if name == "htlc_accepted" else _events.get(name, []))


def on_htlc(ctx, body):
    with _lock:
        _asked.append(body)
        preimage = _preimages.get(body["payment_hash"])
        fail = body["payment_hash"] in _failing
        if preimage is None and body["payment_hash"] in _held:
            held: Future = Future()
            _held[body["payment_hash"]] = held
            return held
    if preimage is not None:
        return Resolve({"preimage": preimage})
    if fail:
        return Fail("test says no", {"failure": failure("temporary_channel_failure").encode().hex()})
    return Continue()


def on_open(ctx, body):
    if body["funding_sat"] == ctx.config["refuse_sat"]:
        return Fail(f"no channels of {body['funding_sat']} sat here")
    return Continue()


def on_event(ctx, event):
    with _lock:
        _events.setdefault(event.name, []).append(event.body)
        with open(ctx.data_dir / "events", "a") as f:   # a node killed and restarted still shows them
            f.write(json.dumps({"name": event.name, "body": event.body}) + "\n")


@hookimpl
def lnp_service():
    return "tkhtlcs"


@hookimpl
def lnp_config_schema():
    return {"refuse_sat": Field(int, 77_777, "open_channel refuses channels of this size")}


@hookimpl
def lnp_rpc_methods():
    return [tk_htlc_preimage, tk_htlc_fail, tk_htlc_events, tk_htlc_hold]


@hookimpl
def lnp_subscriptions():
    return [Subscription.decision("htlc_accepted", on_htlc), Subscription.decision("open_channel", on_open),
            Subscription.event("htlc_resolved", on_event), Subscription.event("channel_state_changed", on_event)]
