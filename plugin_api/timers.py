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
    real work to a service thread with `ctx.call_soon`): every timer waits for the one before it. The
    thread ends once nothing has been due for `idle_s` seconds and starts again with the next timer, so
    nothing is left running when nothing is scheduled."""

    def __init__(self, name: str = "timers", idle_s: float = 1.0) -> None:
        self._name, self._idle_s = name, idle_s
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()   # ties keep their scheduling order
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        with self._cond:
            self._start()

    def at(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Call `fn()` in `delay` seconds (0 or less: at once, on the timers' thread)."""
        timer = Timer(fn)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(delay, 0.0), next(self._order), timer))
            if self._thread is None:
                self._start()
            elif self._heap[0][2] is timer:   # earlier than what the thread waits for
                self._cond.notify()
        return timer

    def close(self) -> None:
        """Stop: timers not fired yet never fire."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    def _start(self) -> None:
        if not self._closed:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                idle_until = time.monotonic() + self._idle_s
                while True:
                    now = time.monotonic()
                    if self._closed or (not self._heap and now >= idle_until):
                        self._thread = None
                        return
                    if self._heap and self._heap[0][0] <= now:
                        _, _, timer = heapq.heappop(self._heap)
                        break
                    self._cond.wait((self._heap[0][0] if self._heap else idle_until) - now)
            if not timer.cancelled:
                try:
                    timer.fn()
                except Exception:   # one failing timer must not stop the others
                    log.exception("%s: a timer's function failed", self._name)
