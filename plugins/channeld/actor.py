"""One worker per peer: the inputs concerning a peer's channels are handled one at a time, in order.

A channel's protocol is sequential (a `revoke_and_ack` must be handled after the `commitment_signed`
before it), and its steps wait on signd, the wallet and the database. Those waits happen on the
peer's worker thread, never on channeld's service thread, so one slow peer or signer holds up only
its own channels (the host's rule: no I/O loop waits on another service).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

Handler = Callable[[list[Any]], None]
STOP = object()
BATCH = 500        # inputs handled in one go at most (one storage commit: batch.py)


class PeerWorker:
    """A queue and a thread; `put` never blocks, `handle(items)` runs on the thread with every item queued
    (up to BATCH), in order."""

    def __init__(self, name: str, handle: Handler, log: logging.Logger,
                 linger: Callable[[Any], bool] = lambda item: False, linger_s: float = 0.0) -> None:
        self.name = name
        self._handle = handle
        self._linger, self._linger_s = linger, linger_s
        self._log = log
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"channeld-{name[:16]}", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        """Queue `item` for the worker."""
        self._inbox.put(item)

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then end the thread (waiting up to `timeout` s)."""
        self._inbox.put(STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            items = [self._inbox.get()]
            deadline = time.monotonic() + self._linger_s
            while items[-1] is not STOP and len(items) < BATCH:
                try:
                    items.append(self._inbox.get_nowait())
                    continue
                except queue.Empty:
                    pass
                # inputs that only lead to our own updates (an HTLC's outcome) wait a little for the next
                # ones, to share one commit: they come one at a time, each after its own decision's commit
                left = deadline - time.monotonic()
                if left <= 0 or not all(self._linger(i) for i in items):
                    break
                try:
                    items.append(self._inbox.get(timeout=left))
                except queue.Empty:
                    break
            stop = items[-1] is STOP
            if stop:
                items.pop()
            if items:
                try:
                    self._handle(items)
                except Exception:  # the handler decides what an error means for the channel; never end the worker
                    self._log.exception("peer %s: unexpected failure handling %d inputs", self.name, len(items))
            if stop:
                return
