"""Handshake slots: who may start a BOLT-8 handshake now, and which idle one makes room.

An inbound connection is anonymous until act three names the peer (act one carries only an
ephemeral key), so strangers are limited by source address and share `max_handshakes` slots.
`reserved_handshakes` more slots are theirs only once they are known, and are open to outbound
connections: a flood of inbound connections never blocks a `connect` or a reconnection.
A stranger that has not finished sending act one is idle; when there is no room, the oldest idle
one from the most crowded source address is closed to make room, so idle sockets cannot hold the
slots, while a peer that is already handshaking keeps its slot.
"""
from __future__ import annotations

import ipaddress
import time
from collections import Counter
from typing import Protocol

from lnp_host.noise import ACT_ONE_SIZE

STRANGER, TRUSTED, RELEASED = "stranger", "trusted", "released"


class Closable(Protocol):
    """What a slot needs of its connection (a `transport.Connection`)."""

    received: int

    def close(self) -> None: ...


def source_of(host: str) -> str:
    """The source address a per-address limit counts: an IPv4 address, or an IPv6 /64 (the block
    one host usually gets, so a host cannot escape the limit by changing its low bits)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class Slot:
    """One handshake in progress; `evicted` says why it was closed to make room, if it was."""

    def __init__(self, state: str, source: str = "", conn: Closable | None = None) -> None:
        self.state, self.source, self.conn = state, source, conn
        self.since = time.monotonic()
        self.evicted = ""

    def idle(self) -> bool:
        """True for a stranger that has not yet sent all of act one."""
        return self.state == STRANGER and self.conn is not None and self.conn.received < ACT_ONE_SIZE


class Slots:
    """The handshakes in progress, and the rules for starting one."""

    def __init__(self, max_handshakes: int, reserved: int, per_address: int) -> None:
        self.max_handshakes, self.reserved, self.per_address = max_handshakes, reserved, per_address
        self._strangers: dict[Slot, None] = {}  # oldest first
        self._trusted = 0

    def __len__(self) -> int:
        return len(self._strangers) + self._trusted

    def strangers(self) -> list[Slot]:
        """The inbound handshakes whose peer is not yet known, oldest first."""
        return list(self._strangers)

    def inbound(self, source: str, conn: Closable) -> tuple[Slot | None, str]:
        """A slot for a new inbound connection from `source`, closing an idle one to make room if
        need be; or None and why there is none."""
        same = [s for s in self._strangers if s.source == source]
        if len(same) >= self.per_address:
            victim = next((s for s in same if s.idle()), None)
            if victim is None:
                return None, (f"{len(same)} handshakes from {source} already in progress "
                              f"(handshakes_per_address = {self.per_address})")
            self._evict(victim, f"{len(same)} handshakes from {source}: the oldest idle one makes room")
        elif len(self._strangers) >= self.max_handshakes or len(self) >= self.max_handshakes + self.reserved:
            crowd = Counter(s.source for s in self._strangers)
            idle = [s for s in self._strangers if s.idle()]
            if not idle:
                return None, (f"all {len(self._strangers)} handshake slots are taken by peers handshaking "
                              f"(max_handshakes = {self.max_handshakes})")
            victim = min(idle, key=lambda s: (-crowd[s.source], s.since))
            self._evict(victim, f"all handshake slots taken: the oldest idle one from the most crowded "
                                f"address ({victim.source}) makes room")
        slot = Slot(STRANGER, source, conn)
        self._strangers[slot] = None
        return slot, ""

    def outbound(self) -> Slot | None:
        """A slot for an outbound connection: any free one, the reserved ones included; None if all are taken."""
        if len(self) >= self.max_handshakes + self.reserved:
            return None
        self._trusted += 1
        return Slot(TRUSTED)

    def trust(self, slot: Slot) -> None:
        """The stranger turned out to be a known peer: it goes on in a reserved slot, freeing its own."""
        if slot.state == STRANGER:
            del self._strangers[slot]
            slot.state = TRUSTED
            self._trusted += 1

    def release(self, slot: Slot) -> None:
        """The handshake ended (either way); releasing twice is harmless."""
        if slot.state == STRANGER:
            del self._strangers[slot]
        elif slot.state == TRUSTED:
            self._trusted -= 1
        slot.state = RELEASED

    def _evict(self, victim: Slot, reason: str) -> None:
        victim.evicted = reason
        self.release(victim)
        if victim.conn is not None:
            victim.conn.close()
