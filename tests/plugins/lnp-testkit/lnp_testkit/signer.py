"""tk_signer: asks signd for channel keys and signatures over the control bus, as channeld will."""
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
def tk_signer_message(ctx, message: str) -> dict:
    """A node-key signature over SHA256d(MESSAGE), as for gossip."""
    return {"signature": Signer(ctx).sign_message(bytes.fromhex(message), "gossip").hex()}


@hookimpl
def lnp_service():
    return "tksigner"


@hookimpl
def lnp_rpc_methods():
    return [tk_signer_basepoints, tk_signer_point, tk_signer_message]
