"""Peer addresses: `NODE_ID@HOST[:PORT]` parsing and BOLT-7 address descriptors.

Hosts are IPv4, IPv6 (in brackets when a port follows), Tor v3 `.onion` names, or DNS names.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass

import coincurve

from .wire import Reader, WireError

DEFAULT_PORT = 9735
IPV4, IPV6, TORV3, DNS = 1, 2, 4, 5
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$")


class AddressError(ValueError):
    """A node id or address that cannot be used; the message says why."""


@dataclass(frozen=True)
class Address:
    """A reachable address: `kind` is IPV4, IPV6, TORV3 or DNS."""

    kind: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.kind == IPV6 else f"{self.host}:{self.port}"

    @property
    def is_onion(self) -> bool:
        """True for a Tor onion service (needs a SOCKS5 proxy)."""
        return self.kind == TORV3


def parse_node_id(text: str) -> bytes:
    """A 33-byte node id from 66 hex characters, checked to be a point on secp256k1."""
    text = text.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{66}", text):
        raise AddressError(f"a node id is 66 hex characters (a compressed public key), not {text[:80]!r}")
    raw = bytes.fromhex(text)
    if raw[0] not in (2, 3):
        raise AddressError("a node id must start with 02 or 03")
    try:
        coincurve.PublicKey(raw)
    except ValueError:
        raise AddressError("node id is not a valid secp256k1 public key") from None
    return raw


def _onion_v3_ok(name: str) -> bool:
    try:
        raw = base64.b32decode(name.upper())
    except ValueError:
        return False
    if len(raw) != 35 or raw[34] != 3:
        return False
    pubkey, checksum = raw[:32], raw[32:34]
    return hashlib.sha3_256(b".onion checksum" + pubkey + b"\x03").digest()[:2] == checksum


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> Address:
    """HOST[:PORT] with HOST an IPv4 address, [IPv6] (or bare IPv6 without port), NAME.onion or DNS."""
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    port: int | str = default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise AddressError(f"missing ']' in {text!r}")
        if rest:
            if not rest.startswith(":"):
                raise AddressError(f"expected ':PORT' after ']' in {text!r}")
            port = rest[1:]
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address, default port
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    else:
        host = text
    try:
        port = int(port)
    except ValueError:
        raise AddressError(f"port {port!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise AddressError(f"port {port} is out of range")
    try:
        ip = ipaddress.ip_address(host)
        return Address(IPV4 if ip.version == 4 else IPV6, str(ip), port)
    except ValueError:
        pass
    lower = host.lower()
    if lower.endswith(".onion"):
        name = lower[:-len(".onion")]
        if len(name) == 16:
            raise AddressError("Tor v2 onion addresses are no longer supported; use a v3 address")
        if len(name) != 56 or not _onion_v3_ok(name):
            raise AddressError(f"{host!r} is not a valid Tor v3 onion address")
        return Address(TORV3, lower, port)
    if not _HOSTNAME.match(host) or not host.isascii():
        raise AddressError(f"{host!r} is not an IP address, an onion address or a host name")
    return Address(DNS, host, port)


def parse_peer(text: str, default_port: int = DEFAULT_PORT) -> tuple[bytes, Address | None]:
    """`NODE_ID@HOST[:PORT]` or a bare `NODE_ID` (address then comes from elsewhere)."""
    node, sep, addr = text.strip().partition("@")
    node_id = parse_node_id(node)
    return node_id, (parse_address(addr, default_port) if sep else None)


def encode_descriptor(addr: Address) -> bytes:
    """The BOLT-7 address descriptor (type byte, address, port)."""
    port = addr.port.to_bytes(2, "big")
    if addr.kind == IPV4:
        return b"\x01" + ipaddress.IPv4Address(addr.host).packed + port
    if addr.kind == IPV6:
        return b"\x02" + ipaddress.IPv6Address(addr.host).packed + port
    if addr.kind == TORV3:
        return b"\x04" + base64.b32decode(addr.host[:-len(".onion")].upper()) + port
    host = addr.host.encode("ascii")
    return b"\x05" + len(host).to_bytes(1, "big") + host + port


def read_descriptor(r: Reader) -> Address | None:
    """One address descriptor from `r`; None for an unknown type (whose length cannot be known)."""
    kind = r.uint(1)
    if kind == IPV4:
        return Address(IPV4, str(ipaddress.IPv4Address(r.take(4))), r.uint(2))
    if kind == IPV6:
        return Address(IPV6, str(ipaddress.IPv6Address(r.take(16))), r.uint(2))
    if kind == TORV3:
        raw = r.take(35)
        return Address(TORV3, base64.b32encode(raw).decode().lower() + ".onion", r.uint(2))
    if kind == DNS:
        host = r.take(r.uint(1))
        if not host.isascii():
            raise WireError("DNS host name is not ASCII")
        return Address(DNS, host.decode(), r.uint(2))
    return None


def decode_descriptor(data: bytes) -> Address | None:
    """Exactly one descriptor (as in `init`'s `remote_addr`)."""
    r = Reader(data)
    addr = read_descriptor(r)
    if addr is not None and r.remaining:
        raise WireError("trailing bytes after the address descriptor")
    return addr
