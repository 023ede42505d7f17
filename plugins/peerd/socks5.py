"""A SOCKS5 client (RFC 1928) for outgoing peer connections through Tor or another proxy.

Host names and onion addresses are passed to the proxy as names, so it resolves them: nothing
about the destination leaks to the local resolver.
"""
from __future__ import annotations

import asyncio
import ipaddress

from lnp_host.transport import Connection, connect
from lnp_plugin_api.addresses import IPV4, IPV6, Address

_REPLIES = {
    1: "general SOCKS server failure", 2: "connection not allowed by ruleset", 3: "network unreachable",
    4: "host unreachable", 5: "connection refused", 6: "TTL expired", 7: "command not supported",
    8: "address type not supported",
}


class Socks5Error(OSError):
    """The proxy refused or broke the protocol."""


def _target(addr: Address) -> bytes:
    port = addr.port.to_bytes(2, "big")
    if addr.kind == IPV4:
        return b"\x01" + ipaddress.IPv4Address(addr.host).packed + port
    if addr.kind == IPV6:
        return b"\x04" + ipaddress.IPv6Address(addr.host).packed + port
    name = addr.host.encode("ascii")
    return b"\x03" + len(name).to_bytes(1, "big") + name + port


async def open_connection(proxy: Address, target: Address, timeout: float) -> Connection:
    """A connection to `target` through the SOCKS5 proxy at `proxy` (no authentication)."""
    async with asyncio.timeout(timeout):
        conn = await connect(proxy.host, proxy.port, timeout)
        try:
            conn.write(b"\x05\x01\x00")  # version 5, one method: no authentication
            version, method = await conn.readexactly(2)
            if version != 5 or method != 0:
                raise Socks5Error(f"proxy {proxy} refused unauthenticated SOCKS5")
            conn.write(b"\x05\x01\x00" + _target(target))  # CONNECT
            version, reply, _, atyp = await conn.readexactly(4)
            if version != 5:
                raise Socks5Error(f"proxy {proxy} does not speak SOCKS5")
            if reply != 0:
                raise Socks5Error(f"proxy {proxy}: {_REPLIES.get(reply, f'error {reply}')} for {target}")
            if atyp == 1:
                await conn.readexactly(4 + 2)
            elif atyp == 4:
                await conn.readexactly(16 + 2)
            elif atyp == 3:
                await conn.readexactly((await conn.readexactly(1))[0] + 2)
            else:
                raise Socks5Error(f"proxy {proxy} answered with unknown address type {atyp}")
        except BaseException:
            conn.close()
            raise
    return conn
