"""lnp-host: a small host of buses, storage and transport; everything else is a plugin."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lnp-host")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
