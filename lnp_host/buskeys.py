"""CURVE for bus endpoints over tcp://: one key pair per service per node, and an allow-list.

A tcp:// bus endpoint is always CURVE-encrypted: there is no plaintext TCP bus. Every service has a
key pair in DATA_DIR/bus/SERVICE.key (0600) and its public key in DATA_DIR/bus/SERVICE.pub; lnpd
creates the missing ones when the profile has a tcp:// bus endpoint. A service's inboxes over
tcp:// are CURVE servers; ZeroMQ's ZAP handshake (one authenticator per process, shared with the
RPC endpoint) lets in only the node's service keys (the *.pub files), and the key a peer
authenticated with names the service that sends each request (lnp_host.caller). A service on
another host needs its own SERVICE.key and every *.pub, copied by the operator (docs/architecture.md).
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from .keys import read_secret, write_secret

BUS_DIR = "bus"
ZAP_DOMAIN = "lnp-bus"
log = logging.getLogger("lnp.host.bus")


class BusKeyError(Exception):
    """A key a tcp:// bus endpoint needs is missing or unreadable; the message names the file."""


def uses_tcp(endpoints: Any) -> bool:
    """Whether any bus endpoint of the node is tcp://."""
    return any(e.startswith("tcp://") for table in (endpoints.control, endpoints.message) for e in table.values())


def key_dir(data_dir: Path) -> Path:
    """Where the services' bus keys are."""
    return data_dir / BUS_DIR


def create_keys(data_dir: Path, services: list[str]) -> None:
    """Create the key pair of each service that has none yet (lnpd, on a node with tcp:// endpoints)."""
    folder = key_dir(data_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for service in services:
        if (folder / f"{service}.key").exists():
            continue
        public, secret = zmq.curve_keypair()
        write_secret(folder / f"{service}.key", json.dumps({"public": public.decode(), "secret": secret.decode()}).encode())
        (folder / f"{service}.pub").write_text(public.decode() + "\n")
        log.info("created the bus key of service %s in %s", service, folder)


@dataclass
class BusCurve:
    """The node's service public keys, and the key pairs of the services this process runs."""

    publics: dict[str, bytes]          # service -> public key (z85)
    pairs: dict[str, tuple[bytes, bytes]]  # service -> (public, secret), the ones readable here

    @classmethod
    def load(cls, data_dir: Path, services: list[str], own: list[str]) -> "BusCurve":
        """Every service's public key, and the key pairs of `own`; BusKeyError names a missing file."""
        folder = key_dir(data_dir)
        publics, pairs = {}, {}
        for service in services:
            path = folder / f"{service}.pub"
            try:
                publics[service] = path.read_text().strip().encode()
            except OSError:
                raise BusKeyError(f"the bus key {path} is missing (tcp:// bus endpoints need every service's "
                                  "public key: copy DATA_DIR/bus/*.pub from the node)") from None
        for service in own:
            path = folder / f"{service}.key"
            try:
                keys = json.loads(read_secret(path))
                pairs[service] = keys["public"].encode(), keys["secret"].encode()
            except (OSError, ValueError, KeyError):
                raise BusKeyError(f"the bus key {path} is missing or damaged (service {service} needs it for "
                                  "the tcp:// bus endpoints: copy it from the node's DATA_DIR/bus)") from None
        return cls(publics, pairs)

    def service_of(self, user_id: str | None) -> str | None:
        """The service whose public key a peer authenticated with (ZAP's User-Id is its z85 key)."""
        for service, public in self.publics.items():
            if user_id is not None and public == user_id.encode():
                return service
        return None

    def allowed(self, domain: str, key: bytes) -> bool:
        """ZAP callback (`key` in z85): only the node's service keys get through."""
        if key in self.publics.values():
            return True
        log.warning("refused a bus connection with an unknown CURVE key")
        return False

    def server(self, sock: zmq.Socket, service: str) -> None:
        """Make `sock` (an inbox of `service`) a CURVE server checked by the ZAP allow-list."""
        public, secret = self.pairs[service]
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.zap_domain = ZAP_DOMAIN.encode()

    def client(self, sock: zmq.Socket, source: str, target: str) -> None:
        """Make `sock` a CURVE client of service `target`, authenticating as `source`."""
        public, secret = self.pairs.get(source) or next(iter(self.pairs.values()))
        sock.curve_serverkey = self.publics[target]
        sock.curve_publickey, sock.curve_secretkey = public, secret


# --- one ZAP authenticator per ZeroMQ context (the bus and the RPC endpoint share it) ---------------

_zap_lock = threading.Lock()
_zaps: dict[int, list[Any]] = {}  # id(context) -> [authenticator, users]


def zap_start(zctx: zmq.Context, domain: str, callback: Callable[[str, bytes], bool]) -> None:
    """Check CURVE clients of `domain` with `callback(domain, key)`; starts the context's authenticator."""
    with _zap_lock:
        entry = _zaps.get(id(zctx))
        if entry is None:
            auth = ThreadAuthenticator(zctx, log=logging.getLogger("lnp.host.zap"))
            auth.start()
            entry = _zaps[id(zctx)] = [auth, 0]
        entry[1] += 1
        entry[0].configure_curve_callback(domain, credentials_provider=_Provider(callback))


def zap_stop(zctx: zmq.Context) -> None:
    """One user of the context's authenticator is done; the last one stops it."""
    with _zap_lock:
        entry = _zaps.get(id(zctx))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].stop()
            del _zaps[id(zctx)]


class _Provider:
    """What ThreadAuthenticator calls: `callback(domain, z85 key)`."""

    def __init__(self, check: Callable[[str, bytes], bool]) -> None:
        self.check = check

    def callback(self, domain: str, key: bytes) -> bool:
        return self.check(domain, key)
