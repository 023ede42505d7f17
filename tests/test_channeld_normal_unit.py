"""channeld's handling of the peer's updates without nodes: an update delivered twice (at least once, after a
reconnection) is ignored, while a different update reusing its id is refused."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from lnp_plugin_api.messages import UpdateAddHtlc, UpdateFee
from lnp_plugins.channeld import normal
from lnp_plugin_api.timers import Timers
from lnp_plugins.channeld.document import Channel
from lnp_plugins.channeld.errors import ChannelError
from test_channel_dance import open_channel

PEER = b"\x02" * 33
CID = b"\x11" * 32


class FakeManager:
    """What normal.on_update reads and writes of the manager."""

    def __init__(self, ch: Channel) -> None:
        self.channels = {ch.channel_id: ch}
        self.live = {ch.channel_id}
        self.ctx = SimpleNamespace(log=logging.getLogger("test"), node=SimpleNamespace(network="regtest"))
        self.options = SimpleNamespace(max_dust_htlc_exposure_msat=10**12, feerate_problem=lambda rate, ours: None)
        self.stored = 0

    def feerate_per_kw(self) -> int:
        return 2500

    @contextmanager
    def transaction(self, batched: bool = False):
        yield SimpleNamespace(emit=lambda *a: None)

    def store(self, tx, ch: Channel) -> None:
        self.channels[ch.channel_id] = ch
        self.stored += 1

    def after_commit(self, fn) -> None:
        pass


def bob() -> FakeManager:
    """Bob's side of a channel Alice opened, in normal state."""
    _, b = open_channel()
    return FakeManager(Channel(CID, PEER, 1, "normal", b.params, b.log, 3, dict(b.their_points)))


def test_an_update_received_twice_is_ignored_and_a_different_one_with_its_id_refused() -> None:
    mgr = bob()
    add = UpdateAddHtlc(CID, 0, 2_000_000, b"\x05" * 32, 500, b"\x00" * 1366)
    normal.on_update(mgr, PEER, add)
    assert mgr.stored == 1 and len(mgr.channels[CID].log.entries) == 1
    normal.on_update(mgr, PEER, add)   # the same again: nothing changes, no error
    assert mgr.stored == 1 and len(mgr.channels[CID].log.entries) == 1
    with pytest.raises(ChannelError, match="id 0, expected 1"):
        normal.on_update(mgr, PEER, UpdateAddHtlc(CID, 0, 3_000_000, b"\x05" * 32, 500, b"\x00" * 1366))
    fee = UpdateFee(CID, 3000)
    normal.on_update(mgr, PEER, fee)
    normal.on_update(mgr, PEER, fee)   # accepted by the log's rules, yet a copy: ignored too
    assert mgr.stored == 2 and [e.update.kind for e in mgr.channels[CID].log.entries] == ["add_htlc", "update_fee"]


def test_delayed_calls_run_in_due_order_on_one_thread_that_ends_when_idle() -> None:
    """The signing rounds' scheduler: each call runs once, in due order, a failing one does not stop the
    others, and no thread is left once nothing is due."""
    ran: list[tuple[str, str]] = []
    delayed = Timers("test-delayed", idle_s=0.05)
    delayed.at(0.03, lambda: ran.append(("late", threading.current_thread().name)))
    delayed.at(0.0, lambda: 1 / 0)
    delayed.at(0.01, lambda: ran.append(("early", threading.current_thread().name)))
    deadline = time.monotonic() + 5
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ran == [("early", "test-delayed"), ("late", "test-delayed")]
    while any(t.name == "test-delayed" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "test-delayed" for t in threading.enumerate())
    delayed.at(0.0, lambda: ran.append(("again", threading.current_thread().name)))
    while len(ran) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ran[-1] == ("again", "test-delayed")
