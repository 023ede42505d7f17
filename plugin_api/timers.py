"""Many timers on one thread: `threading.Timer` starts a thread per timer, which a plugin arming one per
payment (and keeping it until its deadline, long after the payment is done) cannot afford."""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("lnp.timers")


class Timer:
    """One scheduled call; `cancel()` before it fires and it never does."""

    __slots__ = ("fn", "cancelled")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn, self.cancelled = fn, False

    def cancel(self) -> None:
        """Do not call it (a no-op once it fired)."""
        self.cancelled = True


class Timers:
    """`at(delay, fn)` calls `fn()` on this object's thread after `delay` seconds. Keep `fn` short (hand
    real work to a service thread with `ctx.call_soon`): every timer waits for the one before it."""

    def __init__(self, name: str = "timers") -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def at(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Call `fn()` in `delay` seconds (0 or less: at once, on the timers' thread)."""
        timer = Timer(fn)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(delay, 0.0), next(self._order), timer))
            if self._heap[0][2] is timer:   # earlier than what the thread waits for
                self._cond.notify()
        return timer

    def close(self) -> None:
        """Stop: timers not fired yet never fire."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                try:
                    timer.fn()
                except Exception:   # one failing timer must not stop the others
                    log.exception("a timer's function failed")
