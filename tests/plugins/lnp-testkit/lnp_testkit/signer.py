"""tk_signer: asks signd for channel keys and signatures over the control bus, as channeld will."""
from lnp_plugin_api import hookimpl, rpc_method


@rpc_method
def tk_signer_basepoints(ctx, index: int) -> dict:
    """BOLT-3 basepoints of channel INDEX."""
    return ctx.request("signd", "signd.basepoints", {"index": index})


@rpc_method
def tk_signer_point(ctx, index: int, commitment_number: int) -> dict:
    """The per-commitment point of channel INDEX for COMMITMENT_NUMBER."""
    return ctx.request("signd", "signd.per_commitment_point", {"index": index, "commitment_number": commitment_number})


@rpc_method
def tk_signer_message(ctx, message: str) -> dict:
    """A node-key signature over SHA256d(MESSAGE), as for gossip."""
    return ctx.request("signd", "signd.sign_message", {"message": message, "purpose": "gossip"})


@hookimpl
def lnp_service():
    return "tksigner"


@hookimpl
def lnp_rpc_methods():
    return [tk_signer_basepoints, tk_signer_point, tk_signer_message]
