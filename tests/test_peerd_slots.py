"""peerd's handshake slots: per-address limits, idle handshakes making room, reserved slots (no sockets)."""
from __future__ import annotations

from lnp_plugins.peerd.slots import Slots, source_of


class FakeConn:
    """A connection as the slots see it: bytes received so far, and whether it was closed."""

    def __init__(self, received: int = 0) -> None:
        self.received = received
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_source_addresses() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")


def test_one_address_evicts_its_own_idle_handshakes() -> None:
    slots = Slots(max_handshakes=10, reserved=2, per_address=2)
    first, second = FakeConn(), FakeConn()
    slots.inbound("10.0.0.1", first)
    slots.inbound("10.0.0.1", second)
    third = FakeConn()
    slot, _ = slots.inbound("10.0.0.1", third)
    assert slot is not None and first.closed and not second.closed and len(slots) == 2
    second.received = third.received = 50  # both sent act one: busy, not idle
    slot, why = slots.inbound("10.0.0.1", FakeConn())
    assert slot is None and "2 handshakes from 10.0.0.1" in why and "handshakes_per_address" in why
    slot, _ = slots.inbound("10.0.0.2", FakeConn())  # another address is not affected
    assert slot is not None and len(slots) == 3


def test_full_slots_evict_the_oldest_idle_of_the_most_crowded_address() -> None:
    slots = Slots(max_handshakes=4, reserved=1, per_address=3)
    lone = FakeConn()
    slots.inbound("10.0.0.9", lone)  # the oldest, but alone from its address
    crowd = [FakeConn(), FakeConn(), FakeConn()]
    for conn in crowd:
        slots.inbound("10.0.0.1", conn)
    slot, _ = slots.inbound("10.0.0.2", FakeConn())
    assert slot is not None and crowd[0].closed and not lone.closed and len(slots) == 4
    for conn in (lone, *crowd[1:]):
        conn.received = 50
    newest = slots.strangers()[-1]
    assert newest.conn is not None
    newest.conn.received = 50
    slot, why = slots.inbound("10.0.0.3", FakeConn())
    assert slot is None and "max_handshakes = 4" in why


def test_outbound_and_known_peers_use_the_reserved_slots() -> None:
    slots = Slots(max_handshakes=2, reserved=1, per_address=8)
    busy = [FakeConn(50), FakeConn(50)]
    held = [slots.inbound("10.0.0.1", conn)[0] for conn in busy]
    assert slots.inbound("10.0.0.1", FakeConn())[0] is None  # strangers have had their share
    out = slots.outbound()
    assert out is not None and len(slots) == 3
    assert slots.outbound() is None  # every slot taken
    slots.release(out)
    slots.release(out)  # twice: harmless
    assert len(slots) == 2
    known = held[0]
    assert known is not None
    slots.trust(known)  # act three named a known peer: its stranger slot is free again
    assert len(slots.strangers()) == 1 and len(slots) == 2
    assert slots.inbound("10.0.0.2", FakeConn())[0] is not None  # a stranger may take that one
    assert slots.outbound() is None
    slots.release(known)
    assert slots.outbound() is not None
