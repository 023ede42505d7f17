"""FAKE chain backend for unit tests: answers `chain.info` with a height the test sets, nothing else."""
from lnp_plugin_api import control_method, hookimpl, rpc_method

state = {"height": 500}


@control_method("chain.info")
def info(ctx) -> dict:
    return {"network": ctx.node.network, "height": state["height"], "best_hash": "00" * 32, "syncing": False}


@rpc_method
def fake_chain_set_height(ctx, height: int) -> dict:
    """Set the height `chain.info` answers."""
    state["height"] = height
    return {"height": height}


@hookimpl
def lnp_service():
    return "fakechain"


@hookimpl
def lnp_rpc_methods():
    return [fake_chain_set_height]


@hookimpl
def lnp_subscriptions():
    return [info]
