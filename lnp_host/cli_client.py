"""`lnp-cli`: call the node's RPC and print JSON.

    lnp-cli [--data-dir DIR] [--rpc ENDPOINT [--keys FILE]] COMMAND [ARGS]

ARGS are positional values, NAME=VALUE pairs or `--NAME VALUE` / `--NAME=VALUE` options (a bare
`--NAME` is true), in any mix; values that are not strings are given as JSON (`5`, `true`,
`["a","b"]`) and checked against the command's declared types by the node before the command
runs. The data dir is DIR, else $LNP_DATA_DIR, else ~/.lnp-host.

Exit status: 0 done; 1 the command failed, or no node answers; 2 bad usage (an unknown command, a
missing, unknown or mistyped parameter): refused before the command ran.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lnp_plugin_api import RpcError

from .client import DEFAULT_DATA_DIR, Client

EXIT_ERROR = 1
EXIT_USAGE = 2
DATA_DIR_ENV = "LNP_DATA_DIR"
# errors that mean the call itself was wrong (refused before the command ran), or never got anywhere
USAGE_ERRORS = (RpcError.INVALID_PARAMS, RpcError.METHOD_NOT_FOUND, RpcError.INVALID_REQUEST)


def _split(args: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Positional values, and named ones from NAME=VALUE and --NAME [VALUE]."""
    positional: list[Any] = []
    named: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        option, eq, value = arg[2:].partition("=")
        if arg.startswith("--") and eq and option.replace("-", "_").isidentifier():
            named[option.replace("-", "_")] = value  # --NAME=VALUE
        elif arg.startswith("--") and arg[2:].replace("-", "_").isidentifier():
            name = arg[2:].replace("-", "_")
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                named[name] = args[i + 1]
                i += 1
            else:
                named[name] = "true"
        elif "=" in arg and arg.split("=", 1)[0].isidentifier():
            name, value = arg.split("=", 1)
            named[name] = value
        else:
            positional.append(arg)
        i += 1
    return positional, named


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lnp-cli`; prints the result or a JSON error, returns the exit status."""
    p = argparse.ArgumentParser(prog="lnp-cli", description="Talk to an lnp-host node.")
    p.add_argument("--data-dir", metavar="DIR", help=f"the node's data dir (default: ${DATA_DIR_ENV}, "
                   f"else {DEFAULT_DATA_DIR})")
    p.add_argument("--rpc", metavar="ENDPOINT", help="an RPC endpoint, e.g. tcp://HOST:PORT")
    p.add_argument("--keys", metavar="FILE", help="CURVE credentials for a tcp:// endpoint")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")
    p.add_argument("command", help="a command; `help` lists them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="positional values or NAME=VALUE")
    args = p.parse_args(argv)
    data_dir, source = _data_dir(args.data_dir)
    try:
        positional, named = _split(args.args)
        keys = Client.load_keys(args.keys) if args.keys else None
        try:
            client = Client(args.rpc, keys, data_dir=data_dir, timeout=args.timeout)
        except RpcError as e:  # no node there: say where we looked, and how to look elsewhere
            socket = Path(data_dir).expanduser().absolute() / "rpc.sock"
            raise RpcError(e.code, f"{e.message}; tried {socket} (data dir from {source}; "
                           f"choose another with --data-dir DIR or ${DATA_DIR_ENV})") from None
        with client:
            result = client.call(args.command, *positional, **named)
    except RpcError as e:
        print(json.dumps({"error": e.to_json()}, indent=2))
        return EXIT_USAGE if e.code in USAGE_ERRORS else EXIT_ERROR
    except (ValueError, OSError, KeyError) as e:
        print(json.dumps({"error": {"code": RpcError.INVALID_REQUEST, "message": str(e)}}, indent=2))
        return EXIT_USAGE
    try:
        print(json.dumps(result, indent=2))
        sys.stdout.flush()
    except BrokenPipeError:  # `lnp-cli ... | head`: the reader left, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _data_dir(given: str | None) -> tuple[str, str]:
    """The data dir to use, and where it came from (for the message when no node answers)."""
    if given:
        return given, "--data-dir"
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV], f"${DATA_DIR_ENV}"
    return DEFAULT_DATA_DIR, "the default"


if __name__ == "__main__":
    sys.exit(main())
