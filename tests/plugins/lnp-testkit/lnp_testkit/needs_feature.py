"""tk_needs_feature: requires option_splice (bit 62) of every peer."""
from lnp_plugin_api import FeatureSpec, hookimpl


@hookimpl
def lnp_service():
    return "lnpd"


@hookimpl
def lnp_features():
    return [FeatureSpec(62, required=True)]
