"""peerd's profile table (`[plugins.peerd]`) and its parsed form."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lnp_plugin_api import Field
from lnp_plugin_api.addresses import IPV4, IPV6, TORV3, Address, AddressError, parse_address


def listen_problem(value: str) -> str | None:
    """Why `value` cannot be listened on (not IP:PORT or [IPv6]:PORT), or None."""
    problem = _address_check(value)
    if problem:
        return f"{value!r}: {problem}"
    kind = parse_address(value).kind
    if kind == TORV3:
        return f"{value!r}: listen on a local address; Tor publishes the onion service itself"
    if kind not in (IPV4, IPV6):
        return f"{value!r}: listen on an IP address, HOST:PORT or [IPv6]:PORT (e.g. 0.0.0.0:9735), not a name"
    return None


def _listen_check(values: list[str]) -> str | None:
    for v in values:
        problem = listen_problem(v)
        if problem:
            return problem
    return None


def _address_check(value: str) -> str | None:
    try:
        parse_address(value)
    except AddressError as e:
        return str(e)
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than zero"


SCHEMA: dict[str, Field] = {
    "listen": Field(list[str], ["0.0.0.0:9735"], "addresses to accept peers on, HOST:PORT or [IPv6]:PORT",
                    check=_listen_check),
    "proxy": Field(str, "", "SOCKS5 proxy HOST:PORT for outgoing connections (Tor); needed for .onion peers",
                   check=lambda v: _address_check(v) if v else None),
    "proxy_all": Field(bool, False, "send every outgoing connection through the proxy, not only .onion ones"),
    "connect_timeout": Field(float, 30.0, "seconds to open a TCP (or proxied) connection", check=_positive),
    "handshake_timeout": Field(float, 30.0, "seconds for the BOLT-8 handshake and the init exchange",
                               check=_positive),
    "act_one_timeout": Field(float, 5.0, "seconds an inbound connection has to send act one of the handshake",
                             check=_positive),
    "max_handshakes": Field(int, 64, "inbound handshakes at once from peers not yet known", check=_positive),
    "handshakes_per_address": Field(int, 8, "of those, from one IP address (IPv6: one /64)", check=_positive),
    "reserved_handshakes": Field(int, 16, "more handshakes at once, only for outbound connections and known peers",
                                 check=_positive),
    "max_peers": Field(int, 1000, "connected peers allowed at once", check=_positive),
    "max_queue_bytes": Field(int, 4_000_000, "bytes queued to one peer before it is disconnected as not reading",
                             check=_positive),
    "ping_interval": Field(float, 60.0, "seconds of silence before a keep-alive ping", check=_positive),
    "ping_timeout": Field(float, 30.0, "seconds to wait for a keep-alive pong", check=_positive),
    "reconnect_min_delay": Field(float, 1.0, "first delay before reconnecting a persistent peer",
                                 check=_positive),
    "reconnect_max_delay": Field(float, 300.0, "longest delay between reconnection attempts", check=_positive),
}


@dataclass(frozen=True)
class Options:
    """The validated table, parsed."""

    listen: tuple[Address, ...]
    proxy: Address | None
    proxy_all: bool
    connect_timeout: float
    handshake_timeout: float
    act_one_timeout: float
    max_handshakes: int
    handshakes_per_address: int
    reserved_handshakes: int
    max_peers: int
    max_queue_bytes: int
    ping_interval: float
    ping_timeout: float
    reconnect_min_delay: float
    reconnect_max_delay: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Options":
        """Parse `ctx.config` (already type-checked by the host)."""
        return cls(listen=tuple(parse_address(a) for a in cfg["listen"]),
                   proxy=parse_address(cfg["proxy"]) if cfg["proxy"] else None,
                   proxy_all=cfg["proxy_all"], connect_timeout=cfg["connect_timeout"],
                   handshake_timeout=cfg["handshake_timeout"], act_one_timeout=cfg["act_one_timeout"],
                   max_handshakes=cfg["max_handshakes"], handshakes_per_address=cfg["handshakes_per_address"],
                   reserved_handshakes=cfg["reserved_handshakes"],
                   max_peers=cfg["max_peers"], max_queue_bytes=cfg["max_queue_bytes"],
                   ping_interval=cfg["ping_interval"], ping_timeout=cfg["ping_timeout"],
                   reconnect_min_delay=cfg["reconnect_min_delay"],
                   reconnect_max_delay=cfg["reconnect_max_delay"])
