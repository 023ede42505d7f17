"""tk_peer: talks to peers through peerd over the message bus, and records what peerd notifies.

tk_needs_feature: requires a BOLT-9 feature, so peers that lack it are refused.
"""
from lnp_plugin_api import FeatureSpec, Subscription, hookimpl, rpc_method
from lnp_plugin_api.services import PeerTransport

received: list = []


def on_wire(ctx, msg):
    received.append({"wire": msg.type, "payload": msg.payload.hex(), "id": msg.peer_id.hex()})


def on_event(ctx, event):
    received.append({"event": event.name, "body": event.body})


@rpc_method
def tk_peer_received(ctx) -> list:
    """Wire messages of type 32771 and peerd's events, in arrival order."""
    return received


@rpc_method
def tk_peer_send(ctx, id: str, msg_type: int, payload_hex: str = "") -> dict:
    """Send a wire message to peer ID through the message bus (ctx.send_wire)."""
    PeerTransport(ctx).send(bytes.fromhex(id), msg_type, bytes.fromhex(payload_hex))
    return {"queued": True}


@rpc_method
def tk_peer_persist(ctx, id: str, address: str) -> dict:
    """Mark peer ID at ADDRESS persistent, as channeld will: a control request to peerd."""
    return PeerTransport(ctx).set_persistent(id, True, address)


@rpc_method
def tk_peer_lookup(ctx, id: str) -> dict:
    """peerd's view of one peer (None when not connected), over the control bus."""
    return {"peer": PeerTransport(ctx).peer(id)}


@hookimpl
def lnp_service():
    return "tkpeer"


@hookimpl
def lnp_rpc_methods():
    return [tk_peer_received, tk_peer_send, tk_peer_persist, tk_peer_lookup]


@hookimpl
def lnp_features():
    return [FeatureSpec(19)]  # option_support_large_channel, optional: shows up in the peer's init


@hookimpl
def lnp_subscriptions():
    return [Subscription.wire(32771, on_wire)] + [
        Subscription.event(name, on_event) for name in ("peer_connected", "peer_disconnected", "custommsg")]
