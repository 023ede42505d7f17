"""Control-bus round trips between two services (threads vs processes), `info` calls per second, and
durable events per second (outbox: committed, delivered, acknowledged; floor 10,000/s in processes mode).

Run: python bench/bus.py [--n 20000] [--k 5] [--durable 20000]
Prints each figure next to a bare pyzmq DEALER/ROUTER round trip over ipc between two processes,
which is what the host's bus is built on, and next to the bare floors of the paths the host takes
on one machine: two Python processes writing to each other over an AF_UNIX socket pair (processes
mode: the direct channel, lnp_host.bus_direct) and two threads of one process on one CPU waking
each other through eventfds (threads mode: a request to a service of the same process). Each figure
is the best of K runs, the runs of all figures interleaved, so that a moment of load from elsewhere
on the machine spoils one run, not a figure; the load average is printed with them.
Floors: threads <= 40 us, processes <= 120 us a round trip.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lnp_host.client import Client  # noqa: E402
from lnp_plugin_api import RpcError  # noqa: E402

FLOOR_US = {"threads": 40.0, "processes": 120.0}  # issue 10, part 6

PROFILE = """
[node]
data_dir = "{data_dir}"
log_level = "warning"
[bus]
mode = "{mode}"
[plugins]
enabled = ["core", "tk_alpha", "tk_beta", "tk_durable", "tk_sink"]
[plugins.tk_beta]
limit = 1
"""


def _echo_server(endpoint: str, n: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    for _ in range(n):
        sock.send_multipart(sock.recv_multipart())
    sock.close(0)
    ctx.term()


def bare_pyzmq(n: int, workdir: Path) -> float:
    """Round trips per second of a bare DEALER/ROUTER pair over ipc, two processes."""
    endpoint = f"ipc://{workdir / 'bare.sock'}"
    server = multiprocessing.Process(target=_echo_server, args=(endpoint, n + 100))
    server.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    for _ in range(100):
        sock.send(b"warm")
        sock.recv()
    start = time.perf_counter()
    for i in range(n):
        sock.send(b"x" * 32)
        sock.recv()
    elapsed = time.perf_counter() - start
    sock.close(0)
    ctx.term()
    server.join()
    return n / elapsed


def _unix_echo(sock: socket.socket, n: int) -> None:
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    for _ in range(n):
        poll.poll()
        sock.send(sock.recv(65536))


def bare_unix(n: int) -> float:
    """Round trips per second of two processes over an AF_UNIX socket pair: the service polls and
    answers, the caller writes and polls for the answer (what the direct channel does, without it)."""
    mine, theirs = socket.socketpair()
    server = multiprocessing.Process(target=_unix_echo, args=(theirs, n + 100))
    server.start()
    theirs.close()
    poll = select.poll()
    poll.register(mine, select.POLLIN)
    for i in range(n + 100):
        if i == 100:
            start = time.perf_counter()
        mine.send(b"x" * 32)
        poll.poll()
        mine.recv(65536)
    elapsed = time.perf_counter() - start
    mine.close()
    server.join()
    return n / elapsed


def bare_threads(n: int) -> float:
    """Round trips per second of two threads of this process on one CPU, each waking the other through
    an eventfd it polls (what a request to a service of the same process does, without it)."""
    if not hasattr(os, "eventfd") or not hasattr(os, "sched_setaffinity"):
        return float("nan")
    to_server, to_client = os.eventfd(0), os.eventfd(0)
    cpus = os.sched_getaffinity(0)

    def serve() -> None:
        os.sched_setaffinity(0, {min(cpus)})
        poll = select.poll()
        poll.register(to_server, select.POLLIN)
        for _ in range(n + 100):
            poll.poll()
            os.eventfd_read(to_server)
            os.eventfd_write(to_client, 1)

    thread = threading.Thread(target=serve)
    thread.start()
    os.sched_setaffinity(0, {min(cpus)})
    poll = select.poll()
    poll.register(to_client, select.POLLIN)
    try:
        for i in range(n + 100):
            if i == 100:
                start = time.perf_counter()
            os.eventfd_write(to_server, 1)
            poll.poll()
            os.eventfd_read(to_client)
        elapsed = time.perf_counter() - start
    finally:
        thread.join()
        os.sched_setaffinity(0, cpus)
        os.close(to_server)
        os.close(to_client)
    return n / elapsed


def run_node(mode: str, workdir: Path, site: Path) -> tuple[subprocess.Popen, Path]:
    data_dir = workdir / mode
    profile = workdir / f"{mode}.toml"
    profile.write_text(PROFILE.format(data_dir=data_dir, mode=mode))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "lnp_host", "run", "--profile", str(profile)], env=env, cwd=ROOT,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with Client(data_dir=data_dir, timeout=2) as c:
                c.info()
                return proc, data_dir
        except RpcError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the {mode} node did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000, help="round trips per measurement")
    parser.add_argument("--k", type=int, default=5, help="measurements of each figure: the best is printed")
    parser.add_argument("--info", type=int, default=3000, help="info calls through the client library")
    parser.add_argument("--durable", type=int, default=20000, help="durable events per measurement")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lnp-bench-", dir="/tmp"))
    site = workdir / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site),
                    str(ROOT / "tests" / "plugins" / "lnp-testkit")], check=True)
    modes = ("threads", "processes")
    try:
        with contextlib.ExitStack() as stack:
            clients = {}
            for mode in modes:
                proc, data_dir = run_node(mode, workdir, site)
                stack.callback(lambda p=proc: (p.send_signal(signal.SIGTERM), p.wait(30)))
                clients[mode] = stack.enter_context(Client(data_dir=data_dir, timeout=600))
                clients[mode].tk_roundtrips(n=200)
            best: dict[str, float] = {}  # figure -> best rate
            for _ in range(args.k):  # interleaved: bare, threads, processes, bare, ...
                best["bare"] = max(best.get("bare", 0.0), bare_pyzmq(args.n, workdir))
                best["unix"] = max(best.get("unix", 0.0), bare_unix(args.n))
                best["eventfd"] = max(best.get("eventfd", 0.0), bare_threads(args.n))
                for mode in modes:
                    r = clients[mode].tk_roundtrips(n=args.n)["per_second"]
                    best[mode] = max(best.get(mode, 0.0), r)
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            bare = best["bare"]
            print(f"best of {args.k} runs of {args.n} round trips, load average {load}")
            print(f"bare pyzmq DEALER/ROUTER over ipc, 2 processes: {bare:10.0f} round trips/s "
                  f"({1e6 / bare:6.1f} us each)")
            floor = {"threads": ("eventfd", "bare eventfds"), "processes": ("unix", "bare AF_UNIX")}
            print(f"bare AF_UNIX socket pair, 2 processes:          {best['unix']:10.0f} round trips/s "
                  f"({1e6 / best['unix']:6.1f} us each)")
            print(f"bare eventfds, 2 threads on one CPU:            {best['eventfd']:10.0f} round trips/s "
                  f"({1e6 / best['eventfd']:6.1f} us each)")
            for mode in modes:
                r, us = best[mode], 1e6 / best[mode]
                verdict = "meets" if us <= FLOOR_US[mode] else "ABOVE"
                key, what = floor[mode]
                print(f"control bus alpha -> beta, {mode:9}:         {r:10.0f} round trips/s "
                      f"({us:6.1f} us each, {us - 1e6 / bare:+6.1f} us vs bare pyzmq, "
                      f"{us - 1e6 / best[key]:+6.1f} us vs {what}; {verdict} the {FLOOR_US[mode]:g} us floor)")
            for mode in modes:  # durable events: committed in batches, delivered, acknowledged
                c = clients[mode]
                c.tk_durable_bench(n=1000)
                d = max(c.tk_durable_bench(n=args.durable, per_tx=500)["per_second"] for _ in range(min(args.k, 3)))
                print(f"durable events, acknowledged, {mode:9}:  {d:10.0f} events/s "
                      f"(500 per transaction, SQLite; {'meets' if d >= 10_000 else 'BELOW'} the 10,000/s floor)")
            for mode in modes:
                c = clients[mode]
                start = time.perf_counter()
                for _ in range(args.info):
                    c.info()
                rate = args.info / (time.perf_counter() - start)
                print(f"info via the client library, {mode:9}:   {rate:10.0f} calls/s")
            k = 20
            start = time.perf_counter()
            for _ in range(k):
                subprocess.run([sys.executable, "-m", "lnp_host.cli_client", "--data-dir",
                                str(workdir / "threads"), "info"], check=True, stdout=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
            cli_rate = k / (time.perf_counter() - start)
            print(f"`lnp-cli info` as a new process each time:     {cli_rate:10.1f} calls/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
