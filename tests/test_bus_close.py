"""Closing the bus while other threads still wait on their sockets: never under them (libzmq aborts the
whole process when a socket is closed under a thread using it). Each case runs in its own process,
so that such an abort fails the test instead of ending the test run."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PRELUDE = """
import threading, time, zmq
from lnp_host.bus import Bus, Endpoints, ServiceUnavailable
zctx = zmq.Context()
silent = zctx.socket(zmq.ROUTER)              # a service that takes requests and never answers
silent.bind("ipc://{tmp}/beta.control")
bus = Bus(zctx, Endpoints({{"beta": "ipc://{tmp}/beta.control"}}, {{"beta": "ipc://{tmp}/beta.message"}}), "alpha")
"""


def run(tmp: Path, body: str) -> str:
    """Run PRELUDE + BODY in a fresh interpreter; its output, after checking it exited with 0."""
    script = PRELUDE.format(tmp=tmp) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_thread_waiting_for_a_reply_gives_up_and_closes_its_own_socket(short_tmp: Path) -> None:
    out = run(short_tmp, """
        outcome = []
        def ask():
            started = time.monotonic()
            try:
                bus.request("beta", "never.answered", timeout=30)
            except ServiceUnavailable as e:
                outcome.append((e.message, time.monotonic() - started))
            finally:
                bus.close_thread()
        t = threading.Thread(target=ask, daemon=True)
        t.start()
        time.sleep(0.5)                            # it waits on its DEALER
        started = time.monotonic()
        clean = bus.close()
        took = time.monotonic() - started
        t.join(5)
        silent.close(0)
        zctx.destroy(linger=0)
        message, waited = outcome[0]
        print(clean, round(took, 1) <= 1.0, "closed" in message, waited < 5)
    """)
    assert out.split() == ["True", "True", "True", "True"]


def test_a_thread_that_keeps_its_socket_has_it_left_open(short_tmp: Path) -> None:
    out = run(short_tmp, """
        go_on, opened = threading.Event(), threading.Event()
        def hold():
            bus.connect_ahead("beta")              # a DEALER of this thread
            opened.set()
            go_on.wait()                           # busy elsewhere, not in a bus wait
            sock = bus._dealer(bus.endpoints.message["beta"])
            sock.send_multipart([b"still usable"])  # its socket was not closed under it
        t = threading.Thread(target=hold, daemon=True)
        t.start()
        opened.wait(5)
        clean = bus.close()
        go_on.set()
        t.join(5)
        print(clean, t.is_alive())
    """)
    assert out.split() == ["False", "False"]


def test_cancelled_waits_end_at_once_and_only_for_that_thread(short_tmp: Path) -> None:
    """A stopping outbox courier (lnp_host.outbox) does not wait out a delivery to a stopped service."""
    out = run(short_tmp, """
        outcome = {}
        def ask(name):
            started = time.monotonic()
            try:
                bus.request("beta", "never.answered", timeout=3)
            except ServiceUnavailable as e:
                outcome[name] = (e.message, round(time.monotonic() - started))
            finally:
                bus.close_thread()
        stopping = threading.Thread(target=ask, args=("stopping",))
        other = threading.Thread(target=ask, args=("other",))
        stopping.start(); other.start()
        time.sleep(0.3)
        bus.cancel_waits(stopping)
        stopping.join(5); other.join(5)
        print(outcome["stopping"][1], "stopping" in outcome["stopping"][0], outcome["other"][1])
        print(bus.close())
        silent.close(0)
        zctx.destroy(linger=0)
    """)
    assert out.split() == ["0", "True", "3", "True"]
