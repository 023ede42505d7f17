"""What plugin authors import: the hook marker, hook specs and stable types.

A plugin is a module (or object) with functions marked `@hookimpl`, registered in the entry-point
group `lnp_host.plugins` of its package. The smallest useful plugin:

    from lnp_plugin_api import hookimpl, rpc_method

    @rpc_method
    def hello(ctx, name: str = "world") -> dict:
        \"\"\"Greet NAME.\"\"\"
        return {"greeting": f"hello {name}"}

    @hookimpl
    def lnp_rpc_methods():
        return [hello]
"""
import pluggy

from .channel import ChannelExtension, TxDraft, TxOutDraft
from .features import FeatureSpec
from .types import (REQUIRED, Continue, Decision, DecisionResult, DecisionSpec, Event, EventSpec, Fail, Field,
                    KeyCustody, NodeInfo, Param, PerContext, RemoteCustody, Resolve, RpcError, RpcMethod,
                    ServiceContext, SettingError, Storage, StorageModels, Subscription, WireMessage, as_result, result_from_json,
                    result_to_json, control_method, rpc_method)

PROJECT = "lnp_host"
ENTRY_POINT_GROUP = "lnp_host.plugins"
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "ENTRY_POINT_GROUP", "PROJECT", "REQUIRED", "ChannelExtension", "Continue", "Decision", "DecisionResult",
    "DecisionSpec", "Event", "EventSpec", "Fail", "FeatureSpec", "Field", "KeyCustody", "NodeInfo", "Param",
    "PerContext", "RemoteCustody", "Resolve", "RpcError", "RpcMethod", "ServiceContext", "SettingError", "Storage",
    "StorageModels", "Subscription", "TxDraft", "TxOutDraft", "WireMessage", "as_result", "control_method", "hookimpl",
    "result_from_json", "result_to_json", "rpc_method",
]
