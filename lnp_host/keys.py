"""Key custody: the node key, and the CURVE keys of the RPC endpoint.

The node key never leaves the process that holds it. Other processes reach it through
`BusKeyCustody`, which asks the lnpd service over the control bus; signd will replace the file
custody here with its own (hook `lnp_key_custody`), without changing any caller.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import coincurve
import zmq

from .bus import Bus

log = logging.getLogger("lnp.host.keys")
NODE_KEY_FILE = "node_key"
RPC_DIR = "rpc"
FORCED_KEY_ENV = "LNP_DEV_FORCE_PRIVKEY"
FORCED_SEED_ENV = "LNP_DEV_FORCE_BIP32_SEED"
FORCED_CHANNEL_ENV = "LNP_DEV_FORCE_CHANNEL_SECRETS"
SEED_PASSPHRASE_ENV = "LNP_SEED_PASSPHRASE"
# secrets no child but the custody service inherits
CUSTODY_ONLY_ENV = (FORCED_KEY_ENV, FORCED_SEED_ENV, FORCED_CHANNEL_ENV, SEED_PASSPHRASE_ENV)


@dataclass(frozen=True)
class DevSecrets:
    """Developers' forced secrets (conformance suites), never stored: `--dev-force-privkey` (the node
    key), `--dev-force-bip32-seed` (the BIP32 root's seed) and `--dev-force-channel-secrets` (six
    secrets every channel uses: funding, revocation, payment, delayed payment, HTLC, shachain seed)."""

    node_key: bytes | None = None
    bip32_seed: bytes | None = None
    channel_secrets: tuple[bytes, ...] | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.node_key, self.bip32_seed, self.channel_secrets))

    def environment(self) -> dict[str, str]:
        """The custody child's environment variables that carry these secrets."""
        env = {}
        if self.node_key is not None:
            env[FORCED_KEY_ENV] = self.node_key.hex()
        if self.bip32_seed is not None:
            env[FORCED_SEED_ENV] = self.bip32_seed.hex()
        if self.channel_secrets is not None:
            env[FORCED_CHANNEL_ENV] = "/".join(s.hex() for s in self.channel_secrets)
        return env


_forced: dict[Path, DevSecrets] = {}  # data dir -> the forced secrets of the node run here


def write_secret(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 and write `data`; fails if the file exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_secret(path: Path) -> bytes:
    """Read a secret file, first restricting it to its owner if it was readable by others."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o): restricting it to 0600", path, mode)
        os.chmod(path, 0o600)
    return path.read_bytes()


def force_dev_secrets(data_dir: Path, secrets: DevSecrets | None) -> None:
    """Developers only: the forced secrets of the node in `data_dir` (None: forget them again).

    Kept in this process's memory only; a key custody service reads them with `dev_secrets`.
    """
    if not secrets:
        _forced.pop(data_dir.resolve(), None)
    else:
        _forced[data_dir.resolve()] = secrets


def dev_secrets(data_dir: Path) -> DevSecrets:
    """The forced secrets of the node in `data_dir` (empty when none)."""
    return _forced.get(data_dir.resolve(), DevSecrets())


def force_node_key(data_dir: Path, secret: bytes | None) -> None:
    """Developers only: the node key of the node in `data_dir` is `secret` (None: forget it again)."""
    force_dev_secrets(data_dir, DevSecrets(node_key=secret) if secret is not None else None)


def forced_node_key(data_dir: Path) -> bytes | None:
    """The secret given to `--dev-force-privkey` for the node in `data_dir`, if any.

    A key custody service (signd) uses it as the node key instead of the one it derives itself.
    """
    return dev_secrets(data_dir).node_key


class FileKeyCustody:
    """The node key in `DATA_DIR/node_key` (hex, mode 0600), created on first use."""

    def __init__(self, data_dir: Path, forced_secret: bytes | None = None) -> None:
        path = data_dir / NODE_KEY_FILE
        if forced_secret is not None:
            secret = forced_secret
        elif path.exists():
            secret = bytes.fromhex(read_secret(path).decode().strip())
        else:
            secret = coincurve.PrivateKey().secret
            write_secret(path, secret.hex().encode() + b"\n")
            log.info("created a new node key in %s", path)
        self._key = coincurve.PrivateKey(secret)
        self._node_id = self._key.public_key.format(compressed=True)

    def node_id(self) -> bytes:
        """The 33-byte compressed public key."""
        return self._node_id

    def ecdh(self, pubkey: bytes) -> bytes:
        """SHA256 of the compressed shared point (BOLT-8's ECDH)."""
        return self._key.ecdh(pubkey)

    def control_handlers(self) -> dict[str, Callable[[Any], Any]]:
        """Control-bus requests that serve this custody to other processes (hex in, hex out)."""
        return {
            "host.keys.node_id": lambda _body: {"node_id": self.node_id().hex()},
            "host.keys.ecdh": lambda body: {"secret": self.ecdh(bytes.fromhex(body["pubkey"])).hex()},
        }


class BusKeyCustody:
    """Key custody held by another process, reached over the control bus."""

    def __init__(self, bus: Bus, service: str, node_id: bytes, source: str | None = None) -> None:
        self._bus, self._service, self._node_id, self._source = bus, service, node_id, source

    def for_service(self, source: str) -> "BusKeyCustody":
        """The same custody, asking as service `source` (the custodian checks what each service may do)."""
        return BusKeyCustody(self._bus, self._service, self._node_id, source)

    def node_id(self) -> bytes:
        """The 33-byte compressed public key."""
        return self._node_id

    def ecdh(self, pubkey: bytes) -> bytes:
        """ECDH with the node key, computed by the custodian."""
        return bytes.fromhex(self._bus.request(self._service, "host.keys.ecdh", {"pubkey": pubkey.hex()},
                                               source=self._source)["secret"])

    async def ecdh_async(self, pubkey: bytes, timeout: float = 30.0) -> bytes:
        """`ecdh` for an asyncio loop: the request goes out on the bus's I/O thread and the loop keeps
        running while the custodian answers (or is stopped). Raises RpcError as `ecdh` does."""
        reply = await asyncio.wrap_future(self._bus.request_async(self._service, "host.keys.ecdh",
                                                                  {"pubkey": pubkey.hex()}, timeout=timeout,
                                                                  source=self._source))
        return bytes.fromhex(reply["secret"])


# --- RPC CURVE keys ------------------------------------------------------------------------------

def rpc_dir(data_dir: Path) -> Path:
    """Where the RPC server key and the allowed client keys live."""
    return data_dir / RPC_DIR


def server_keys(data_dir: Path) -> tuple[bytes, bytes]:
    """The RPC server's CURVE key pair (public, secret), created on first use."""
    path = rpc_dir(data_dir) / "server.key"
    if not path.exists():
        public, secret = zmq.curve_keypair()
        write_secret(path, json.dumps({"public": public.decode(), "secret": secret.decode()}).encode())
    keys = json.loads(read_secret(path))
    return keys["public"].encode(), keys["secret"].encode()


def allowed_clients(data_dir: Path) -> set[bytes]:
    """The public keys allowed on the TCP endpoint: one `NAME.pub` file per client."""
    folder = rpc_dir(data_dir) / "clients"
    if not folder.is_dir():
        return set()
    return {p.read_text().strip().encode() for p in folder.glob("*.pub")}


def create_client(data_dir: Path, name: str, endpoint: str) -> dict[str, str]:
    """Create and allow a client key pair; returns the credentials a client needs (keep them secret)."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"bad client name {name!r}: use letters, digits, '-', '_' and '.'")
    folder = rpc_dir(data_dir) / "clients"
    pub_path = folder / f"{name}.pub"
    if pub_path.exists():
        raise ValueError(f"a client named {name!r} exists already")
    server_public, _ = server_keys(data_dir)
    public, secret = zmq.curve_keypair()
    folder.mkdir(parents=True, exist_ok=True)
    pub_path.write_text(public.decode() + "\n")
    return {"endpoint": endpoint, "public": public.decode(), "secret": secret.decode(),
            "server_public": server_public.decode()}
