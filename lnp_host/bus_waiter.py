"""Waking a thread of this process: a service's loop (`Wakeup`), a caller waiting for a reply (`Waiter`).

Both wake through a file descriptor (an eventfd, else a pipe) rather than a lock or a condition:
writing it is a system call made without the GIL, so the woken thread, which on a shared CPU runs
at once, takes the GIL and goes on. A lock released while holding the GIL wakes a thread that at
once blocks again on the GIL, and each round trip pays two or three more thread switches for it
(half of an in-process request's time, measured with bench/bus.py).
"""
from __future__ import annotations

import math
import os
import select
import threading
import time
from typing import Callable


class Wakeup:
    """A file descriptor that `set()` makes readable, from any thread, until `clear()`."""

    __slots__ = ("_read", "_write", "set", "__weakref__")

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):  # Linux: one descriptor, a counter
            self._read = self._write = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.set: Callable[[], None] = self._set_eventfd
        else:
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)
            os.set_blocking(self._write, False)
            self.set = self._set_pipe

    def fileno(self) -> int:
        """The descriptor to poll for reading."""
        return self._read

    def _set_eventfd(self) -> None:
        try:
            os.eventfd_write(self._write, 1)
        except OSError:
            pass  # closed: nobody waits any more

    def _set_pipe(self) -> None:
        try:
            os.write(self._write, b"!")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed

    def clear(self) -> None:
        """Take the pending wake-ups, so the descriptor polls as not readable."""
        try:
            os.read(self._read, 4096 if self._read != self._write else 8)
        except OSError:  # BlockingIOError: nothing pending
            pass

    def close(self) -> None:
        """Close the descriptors; a later `set()` does nothing."""
        os.close(self._read)
        if self._write != self._read:
            os.close(self._write)
        self._read = self._write = -1


class _ThreadWake:
    """A thread's own Wakeup and poll object, reused by its Waiters; closed when the last is gone."""

    __slots__ = ("wakeup", "poll")

    def __init__(self) -> None:
        self.wakeup = Wakeup()
        self.poll = select.poll()
        self.poll.register(self.wakeup.fileno(), select.POLLIN)

    def __del__(self) -> None:  # the thread ended and no service still holds one of its Waiters
        if self.wakeup.fileno() >= 0:
            self.wakeup.close()


_threads = threading.local()


class Waiter:
    """The reply slot of one in-process request: the service's thread answers it once, the caller waits.

    The caller's thread wakes through its own descriptor (see the module's docstring); a late
    answer to an earlier request of the thread only costs its next wait one more look."""

    __slots__ = ("_once", "_wake", "done", "reply", "error")

    def __init__(self) -> None:
        wake = getattr(_threads, "wake", None)
        if wake is None:
            wake = _threads.wake = _ThreadWake()
        self._wake = wake  # held until answered, so its descriptor is never closed under the service
        self._once = threading.Lock()  # the first answer stands, whichever thread gives it
        self.done = False
        self.reply: tuple[bytes, bytes] = (b"err", b"")  # (OK | ERR, JSON body)
        self.error: BaseException | None = None          # raised as is instead (the service has stopped)

    def set(self, status: bytes, raw: bytes) -> None:
        """Answer with a reply as the bus would carry it (status OK or ERR, JSON body)."""
        if self._once.acquire(False):
            self.reply = (status, raw)
            self._answered()

    def fail(self, error: BaseException) -> None:
        """Answer with an exception for the caller (the service could not take the request)."""
        if self._once.acquire(False):
            self.error = error
            self._answered()

    def _answered(self) -> None:
        self.done = True
        self._wake.wakeup.set()

    def wait(self, seconds: float) -> bool:
        """True once answered; False after `seconds` (only on the thread that made this Waiter)."""
        if self.done:
            return True
        deadline = time.monotonic() + seconds
        wake = self._wake
        while True:
            wake.poll.poll(max(math.ceil((deadline - time.monotonic()) * 1000), 0))
            wake.wakeup.clear()
            if self.done:
                return True
            if time.monotonic() >= deadline:
                return False
