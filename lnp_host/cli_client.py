"""`lnp-cli`: call the node's RPC and print JSON.

    lnp-cli [--data-dir DIR] [--rpc ENDPOINT [--keys FILE]] COMMAND [ARGS]

ARGS are positional values, NAME=VALUE pairs or `--NAME VALUE` options (a bare `--NAME` is true), in
any mix; values that are not strings are given as JSON (`5`, `true`, `["a","b"]`) and checked
against the command's declared types by the node.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lnp_plugin_api import RpcError

from .client import DEFAULT_DATA_DIR, Client

EXIT_ERROR = 1
EXIT_USAGE = 2


def _split(args: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Positional values, and named ones from NAME=VALUE and --NAME [VALUE]."""
    positional: list[Any] = []
    named: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and arg[2:].replace("-", "_").isidentifier():
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
    p.add_argument("--data-dir", metavar="DIR", default=DEFAULT_DATA_DIR, help="the node's data dir")
    p.add_argument("--rpc", metavar="ENDPOINT", help="an RPC endpoint, e.g. tcp://HOST:PORT")
    p.add_argument("--keys", metavar="FILE", help="CURVE credentials for a tcp:// endpoint")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")
    p.add_argument("command", help="a command; `help` lists them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="positional values or NAME=VALUE")
    args = p.parse_args(argv)
    try:
        positional, named = _split(args.args)
        keys = Client.load_keys(args.keys) if args.keys else None
        with Client(args.rpc, keys, data_dir=args.data_dir, timeout=args.timeout) as client:
            result = client.call(args.command, *positional, **named)
    except RpcError as e:
        print(json.dumps({"error": e.to_json()}, indent=2))
        return EXIT_ERROR
    except (ValueError, OSError, KeyError) as e:
        print(json.dumps({"error": {"code": RpcError.INVALID_REQUEST, "message": str(e)}}, indent=2))
        return EXIT_USAGE
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
