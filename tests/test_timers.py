"""plugin_api.timers: many timers on one thread, in deadline order; cancelled ones never fire."""
from __future__ import annotations

import threading
import time

from lnp_plugin_api.timers import Timers


def test_timers_fire_in_deadline_order_on_one_thread_and_cancelled_ones_never() -> None:
    fired: list[tuple[str, str]] = []
    done = threading.Event()
    timers = Timers("test-timers")
    try:
        before = threading.active_count()
        timers.at(0.15, lambda: fired.append(("late", threading.current_thread().name)))
        gone = timers.at(0.05, lambda: fired.append(("cancelled", "")))
        timers.at(0.02, lambda: fired.append(("early", threading.current_thread().name)))
        timers.at(0.10, lambda: 1 / 0)   # a failing one does not stop the others
        timers.at(0.20, done.set)
        assert threading.active_count() == before   # no thread per timer
        gone.cancel()
        assert done.wait(2)
        assert fired == [("early", "test-timers"), ("late", "test-timers")]
    finally:
        timers.close()


def test_closed_timers_never_fire() -> None:
    fired: list[int] = []
    timers = Timers()
    timers.at(0.05, lambda: fired.append(1))
    timers.close()
    time.sleep(0.1)
    assert fired == []
