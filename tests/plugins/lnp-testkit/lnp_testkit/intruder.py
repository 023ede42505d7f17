"""tk_intruder_peerd / tk_intruder_wallet: plugins living in the peerd and wallet services that ask
signd for what those services may not have (a PSBT signature from peerd, ECDH from the wallet)."""
from lnp_plugin_api import hookimpl, rpc_method


@rpc_method
def tk_peerd_asks(ctx, name: str, body: dict) -> dict:
    """From the peerd service: send control request NAME with BODY to signd."""
    return {"reply": ctx.request(name, body)}


@rpc_method
def tk_wallet_ecdh(ctx, pubkey: str) -> dict:
    """From the wallet service: ECDH with the node key through ctx.keys."""
    return {"secret": ctx.keys.ecdh(bytes.fromhex(pubkey)).hex()}


class InPeerd:
    @staticmethod
    @hookimpl
    def lnp_service():
        return "peerd"

    @staticmethod
    @hookimpl
    def lnp_rpc_methods():
        return [tk_peerd_asks]


class InWallet:
    @staticmethod
    @hookimpl
    def lnp_service():
        return "wallet"

    @staticmethod
    @hookimpl
    def lnp_rpc_methods():
        return [tk_wallet_ecdh]
