"""Human-readable logs to stderr and to DATA_DIR/lnp-host.log, with a level per service."""
from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

from .profile import Profile

LOG_FILE = "lnp-host.log"
FORMAT = "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"


def setup(profile: Profile, services: list[str], verbosity: int = 0) -> None:
    """Send the `lnp` loggers to stderr and the data dir's log file.

    `verbosity` > 0 (-v) forces debug everywhere, < 0 (-q) warnings only; otherwise each service logs
    at its `[services.NAME] log_level`, or `[node] log_level`.
    """
    root = logging.getLogger("lnp")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    path: Path = profile.data_dir / LOG_FILE
    file = logging.FileHandler(path, encoding="utf-8")
    file.setFormatter(formatter)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:  # a log file from before the node ran under umask 077
        os.chmod(path, 0o600)
    root.addHandler(stderr)
    root.addHandler(file)
    root.propagate = False
    default = _level(profile.section("node")["log_level"], verbosity)
    root.setLevel(default)
    for service in services:
        own = profile.service_settings(service)["log_level"] or profile.section("node")["log_level"]
        logging.getLogger(f"lnp.{service}").setLevel(_level(own, verbosity))


def _level(name: str, verbosity: int) -> int:
    if verbosity > 0:
        return logging.DEBUG
    if verbosity < 0:
        return logging.WARNING
    return getattr(logging, name.upper())
