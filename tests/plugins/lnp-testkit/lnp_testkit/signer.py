"""tk_signer: asks signd for channel keys and signatures over the control bus, as channeld will.

Its service `tksigner` is one signd does not know: a profile grants it capabilities
(`[plugins.signd] grant`), and the tests check that what is not granted is refused.
"""
from lnp_plugin_api import hookimpl, rpc_method
from lnp_plugin_api.services import Signer


@rpc_method
def tk_signer_basepoints(ctx, index: int) -> dict:
    """BOLT-3 basepoints of channel INDEX."""
    return Signer(ctx).basepoints(index)


@rpc_method
def tk_signer_point(ctx, index: int, commitment_number: int) -> dict:
    """The per-commitment point of channel INDEX for COMMITMENT_NUMBER."""
    return {"point": Signer(ctx).per_commitment_point(index, commitment_number).hex()}


@rpc_method
def tk_signer_message(ctx, kind: str, message: str) -> dict:
    """A node-key signature of a BOLT-7 MESSAGE (hex) of KIND, as for gossip."""
    return {"signature": Signer(ctx).sign_node_message(kind, bytes.fromhex(message)).hex()}


@rpc_method
def tk_signer_psbt(ctx, psbt: str) -> dict:
    """Ask signd to sign a wallet PSBT (base64)."""
    return {"psbt": Signer(ctx).sign_wallet_psbt(psbt, "test")}


@rpc_method
def tk_signer_request(ctx, name: str, body: dict) -> dict:
    """Send any control request NAME with BODY to signd (to try what a service may not do)."""
    return {"reply": ctx.request(name, body)}


@hookimpl
def lnp_service():
    return "tksigner"


@hookimpl
def lnp_rpc_methods():
    return [tk_signer_basepoints, tk_signer_point, tk_signer_message, tk_signer_psbt, tk_signer_request]
