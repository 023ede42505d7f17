"""tk_broken: a plugin whose startup fails, to show a service that cannot start."""
from lnp_plugin_api import hookimpl


@hookimpl
def lnp_startup(ctx):
    raise RuntimeError("this plugin never starts")
