"""`lnp-host`: run a node (or one service of it), list plugins, check a profile, create RPC clients."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import coincurve

from . import node
from .keys import FORCED_CHANNEL_ENV, FORCED_KEY_ENV, FORCED_SEED_ENV, DevSecrets, create_client, write_secret
from .plugins import PluginLoadError, discover, load_registry
from .profile import Profile, ProfileError, load_profile

EXIT_BAD_INPUT = 2
DATA_DIR_ENV = "LNP_DATA_DIR"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lnp-host", description="An extensible Lightning node host.")
    sub = p.add_subparsers(dest="command", required=True)

    def profile_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--profile", metavar="FILE", help="TOML profile (default: the embedded default.toml)")
        sp.add_argument("--data-dir", metavar="DIR", help=f"overrides the profile's [node] data_dir "
                        f"(default: ${DATA_DIR_ENV} when set)")
        sp.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override one profile key, e.g. plugins.peerd.listen='[\"127.0.0.1:9000\"]' "
                        "(VALUE is a TOML value, else a string); repeatable")

    run = sub.add_parser("run", help="run the node, or one of its services")
    profile_args(run)
    run.add_argument("--service", metavar="NAME", help="run only this service, connected over the bus endpoints")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logs from every service")
    run.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    forced = run.add_mutually_exclusive_group()
    forced.add_argument("--dev-force-privkey", metavar="HEX", help="developers only: use this 32-byte secret as "
                        "the node key (never stored), e.g. for conformance suites that expect a given node id; "
                        f"refused on mainnet. Keep it out of `ps`: --dev-force-privkey-file or ${FORCED_KEY_ENV}")
    forced.add_argument("--dev-force-privkey-file", metavar="PATH", help="the same, read from a file (hex)")
    run.add_argument("--dev-force-bip32-seed", metavar="HEX", help="developers only: the BIP32 root's seed "
                     "(16 to 64 bytes) instead of the mnemonic's: every key derived from the root (wallet, "
                     f"channels, node key) comes from it; never stored, refused on mainnet (or ${FORCED_SEED_ENV})")
    run.add_argument("--dev-force-channel-secrets", metavar="F/R/P/D/H/S", help="developers only: six "
                     "32-byte secrets (hex, '/'-separated, Core Lightning's order: funding, revocation, payment, "
                     "delayed payment, HTLC, shachain seed) every channel uses; never stored, refused on mainnet "
                     f"(or ${FORCED_CHANNEL_ENV})"),

    init = sub.add_parser("init", help="create the node's persistent state (the seed) before the first run")
    profile_args(init)
    init.add_argument("--show-mnemonic", action="store_true", help="print the seed's words, to write them down")

    plugins = sub.add_parser("plugins", help="list the discovered plugins")
    profile_args(plugins)

    check = sub.add_parser("check", help="validate a profile and its plugins' tables, start nothing")
    profile_args(check)

    client = sub.add_parser("rpc-client", help="create CURVE keys for a client of the TCP RPC endpoint")
    profile_args(client)
    client.add_argument("name", help="a name for the client (its public key goes to DATA_DIR/rpc/clients/NAME.pub)")
    client.add_argument("--output", metavar="FILE", help="write the client's credentials here (mode 0600) "
                        "instead of standard output")
    return p


def _profile(args: argparse.Namespace) -> Profile:
    """The profile of the command line: --profile, --set overrides, and --data-dir or $LNP_DATA_DIR."""
    return load_profile(args.profile, args.data_dir or os.environ.get(DATA_DIR_ENV) or None, args.overrides)


def _load(args: argparse.Namespace) -> tuple[Profile, Any]:
    profile = _profile(args)
    return profile, load_registry(profile)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lnp-host`; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "plugins":
            profile = _profile(args)
            enabled = set(profile.enabled)
            print(json.dumps([d.describe(n in enabled) for n, d in sorted(discover().items())], indent=2))
            return 0
        profile, registry = _load(args)
        if args.command == "check":
            print(json.dumps({"profile": str(profile.path), "plugins": list(registry.plugins),
                              "services": registry.services}, indent=2))
            return 0
        if args.command == "rpc-client":
            return _rpc_client(profile, args)
        if args.command == "init":
            return _init(profile, registry, args.show_mnemonic)
        verbosity = 1 if args.verbose else -1 if args.quiet else 0
        forced = DevSecrets(_forced_key(profile, args), _forced_seed(profile, args), _forced_channel(profile, args))
        if args.service:
            if args.service not in registry.services:
                raise ProfileError(profile.path, "--service", f"unknown service {args.service!r} "
                                   f"(services: {', '.join(registry.services)})")
            return node.run_service(profile, registry, args.service, verbosity, dev=forced)
        child_args = ["--profile", str(profile.path), "--data-dir", str(profile.data_dir)]
        child_args += [f"--set={item}" for item in args.overrides]  # children see the same profile
        child_args += ["-v"] if args.verbose else ["-q"] if args.quiet else []
        return node.run_node(profile, registry, verbosity, child_args, dev=forced)
    except (ProfileError, PluginLoadError) as e:
        print(f"lnp-host: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except node.NodeError as e:
        print(f"lnp-host: {e}", file=sys.stderr)
        return 1


def _init(profile: Profile, registry: Any, show_mnemonic: bool) -> int:
    """Call every enabled plugin's `lnp_init`; secrets (the mnemonic) only when asked for."""
    node.prepare_data_dir(profile)
    done: dict[str, Any] = {}
    for name in registry.plugins:
        try:
            result = registry.call("lnp_init", name, node=profile)
        except Exception as e:
            print(f"lnp-host: init of {name}: {e}", file=sys.stderr)
            return 1
        if result is not None:
            if not show_mnemonic and "mnemonic" in result:
                result = {**result, "mnemonic": "(hidden: use --show-mnemonic to write it down)"}
            done[name] = result
    print(json.dumps(done or {"init": "nothing to initialise"}, indent=2))
    return 0


def _forced_key(profile: Profile, args: argparse.Namespace) -> bytes | None:
    """The secret of --dev-force-privkey, --dev-force-privkey-file or $LNP_DEV_FORCE_PRIVKEY, checked;
    refused on mainnet where it would risk funds. The variable leaves our environment: no child inherits it."""
    source, text = FORCED_KEY_ENV, os.environ.pop(FORCED_KEY_ENV, None) or None
    if args.dev_force_privkey:
        source, text = "--dev-force-privkey", args.dev_force_privkey
    elif args.dev_force_privkey_file:
        source = "--dev-force-privkey-file"
        try:
            text = Path(args.dev_force_privkey_file).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ProfileError(profile.path, source, f"cannot read {args.dev_force_privkey_file}: "
                               f"{getattr(e, 'strerror', None) or 'not text'}") from None
    if text is None:
        return None
    if profile.section("node")["network"] == "mainnet":
        raise ProfileError(profile.path, source, "refused on mainnet")
    try:
        secret = bytes.fromhex(text.strip())
        if len(secret) != 32:
            raise ValueError
        coincurve.PrivateKey(secret)
    except ValueError:
        raise ProfileError(profile.path, source, "expected 64 hex characters of a valid "
                           "secp256k1 secret") from None
    return secret


def _dev_option(profile: Profile, flag: str, value: str | None, env: str) -> tuple[str, str] | None:
    """The text of a forced-secret option (the flag, else its variable, which leaves our environment
    so no child inherits it), refused on mainnet."""
    text = os.environ.pop(env, None) or None
    source = env
    if value:
        source, text = flag, value
    if text is None:
        return None
    if profile.section("node")["network"] == "mainnet":
        raise ProfileError(profile.path, source, "refused on mainnet")
    return source, text.strip()


def _hex(text: str, sizes: range) -> bytes:
    data = bytes.fromhex(text)
    if len(data) not in sizes:
        raise ValueError
    return data


def _forced_seed(profile: Profile, args: argparse.Namespace) -> bytes | None:
    """The seed of --dev-force-bip32-seed or its variable, checked (never echoed)."""
    found = _dev_option(profile, "--dev-force-bip32-seed", args.dev_force_bip32_seed, FORCED_SEED_ENV)
    if found is None:
        return None
    try:
        return _hex(found[1], range(16, 65))
    except ValueError:
        raise ProfileError(profile.path, found[0], "expected 32 to 128 hex characters (a BIP32 seed of "
                           "16 to 64 bytes)") from None


def _forced_channel(profile: Profile, args: argparse.Namespace) -> tuple[bytes, ...] | None:
    """The six secrets of --dev-force-channel-secrets or its variable, checked (never echoed)."""
    found = _dev_option(profile, "--dev-force-channel-secrets", args.dev_force_channel_secrets, FORCED_CHANNEL_ENV)
    if found is None:
        return None
    try:
        secrets = tuple(_hex(part, range(32, 33)) for part in found[1].split("/"))
        if len(secrets) != 6:
            raise ValueError
        for secret in secrets[:5]:  # keys; the shachain seed is any 32 bytes
            coincurve.PrivateKey(secret)
    except ValueError:
        raise ProfileError(profile.path, found[0], "expected six secrets of 64 hex characters separated by '/' "
                           "(funding/revocation/payment/delayed_payment/htlc/shachain_seed), the first five "
                           "valid secp256k1 secrets") from None
    return secrets


def _rpc_client(profile: Profile, args: argparse.Namespace) -> int:
    tcp = profile.section("rpc")["tcp"]
    if not tcp:
        raise ProfileError(profile.path, "[rpc] tcp", "set a tcp:// endpoint before creating TCP clients")
    try:
        creds = create_client(node.prepare_data_dir(profile), args.name, tcp)
    except ValueError as e:
        print(f"lnp-host: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    text = json.dumps(creds, indent=2) + "\n"
    if args.output:
        write_secret(Path(args.output), text.encode())
    else:
        sys.stdout.write(text)
    return 0
