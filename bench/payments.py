"""Payments over one channel between two nodes on loopback: payments per second and latency, per bus mode.

Two real nodes (signd, wallet, peerd, channeld, invoices, pay) on the real regtest chain (Alice's `regtest`
plugin runs bcoin; Bob uses it too), durable storage (SQLite WAL with synchronous=FULL: each commit is on disk
before the message that depends on it leaves). Alice opens one channel to Bob; Bob creates the invoices
beforehand (concurrent `invoice` calls); Alice pays them with up to --inflight `pay` calls at once (one
connection, answers matched by their JSON-RPC ids). A payment's latency is its `pay` call's duration (complete:
the preimage is back). The watchd poll interval is the default (2 s).

Run: python bench/payments.py [--payments 10000] [--inflight 100] [--mode threads|processes|both]
                              [--py-spy DIR]   # sample both nodes with py-spy; top functions printed
In threads mode each node runs on a CPU of its own (Alice on the first, Bob on the second).
"CPU a payment" is each node's processes' user+system time over the measured run, divided by the payments:
unlike payments/s, the machine's other load hardly moves it. LNP_BENCH_WRAP=SCRIPT runs each node as
`python SCRIPT run ...` instead of `python -m lnp_host run ...` (a profiler's wrapper, e.g. one naming threads).
Floor: 150 payments/s on a 2-core machine (issue 11). Published on other hardware: Eclair with SQLite 89/s
and Core Lightning 61/s on 8 vCPU; Eclair 34/s and LND 22/s on 2 vCPU.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lnp_host.client import Client  # noqa: E402
from lnp_plugin_api import RpcError  # noqa: E402

FLOOR = 150.0
PUBLISHED = "Eclair+SQLite 89/s, Core Lightning 61/s (8 vCPU); Eclair 34/s, LND 22/s (2 vCPU)"
FUNDING_SAT = 16_000_000
AMOUNT_MSAT = 1_000_000          # above the dust limit: each HTLC is an output with its own signatures

PROFILE = """
[node]
network = "regtest"
data_dir = "{data_dir}"
log_level = "warning"
[storage]
sqlite_synchronous = "full"
[bus]
mode = "{mode}"
[plugins]
enabled = {enabled}
[plugins.regtest]
rpc_port = {rpc_port}
wallet_port = {wallet_port}
[plugins.bitcoind]
url = "http://127.0.0.1:{rpc_port}"
cookie_file = "{cookie}"
[plugins.peerd]
listen = ["127.0.0.1:{peer_port}"]
[plugins.channeld]
min_depth = 1
max_accepted_htlcs = 483
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `lnp-host run` process (under py-spy when asked)."""

    def __init__(self, name: str, workdir: Path, mode: str, rpc_port: int, chain_owner: Path | None,
                 cpu: int | None, spy: Path | None) -> None:
        self.name, self.data_dir, self.peer_port = name, workdir / name, free_port()
        enabled = ["core", "signd", "bitcoind", "watchd", "wallet", "peerd", "channeld", "invoices", "pay"]
        if chain_owner is None:
            enabled.insert(2, "regtest")
        cookie = (chain_owner or self.data_dir) / "regtest" / ".cookie"
        profile = workdir / f"{name}.toml"
        profile.write_text(PROFILE.format(data_dir=self.data_dir, mode=mode, enabled=str(enabled).replace("'", '"'),
                                          rpc_port=rpc_port, wallet_port=free_port(), cookie=cookie,
                                          peer_port=self.peer_port))
        cmd = [sys.executable, *([os.environ["LNP_BENCH_WRAP"]] if os.environ.get("LNP_BENCH_WRAP") else ["-m", "lnp_host"]), "run", "--profile", str(profile)]
        self.spy_out = None
        if spy is not None:
            self.spy_out = spy / f"{name}-{mode}.txt"
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "-r", "50", "--gil",
                   "--subprocesses", "-o", str(self.spy_out), "--", *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        affinity = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.log = open(workdir / f"{name}.stderr", "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log,
                                     preexec_fn=affinity)
        self.client = self._wait_ready()
        self.node_id = self.client.info()["node_id"]

    def _wait_ready(self) -> Client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited: see {self.log.name}")
            c = None
            try:
                c = Client(data_dir=self.data_dir, timeout=300)
                c.info()
                return c
            except RpcError:
                if c is not None:
                    c.close()
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not start")

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.client.call(method, *args, **kwargs)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the node's processes so far: the node and its service children."""
        tick = os.sysconf("SC_CLK_TCK")
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:   # ended meanwhile
                    continue
                parents[int(entry.name)] = int(fields[1])
                times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
        tree, grew = {self.proc.pid}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree |= more
            grew = bool(more)
        return sum(times.get(pid, 0.0) for pid in tree)

    def stop(self) -> None:
        self.client.close()
        target = self.proc.pid
        if self.spy_out is not None:  # py-spy's child is the node: stop it, py-spy then writes its samples
            children = Path(f"/proc/{target}/task/{target}/children")
            kids = children.read_text().split() if children.exists() else []
            target = int(kids[0]) if kids else target
        os.kill(target, signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def wait(cond, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def channel(node: Node) -> dict:
    return node.call("channels")["channels"][0]


def setup(workdir: Path, mode: str, spy: Path | None) -> tuple[Node, Node]:
    """Alice (with the regtest chain) and Bob, connected, with a channel in normal state."""
    rpc_port = free_port()
    two_cpus = mode == "threads" and len(os.sched_getaffinity(0)) >= 2
    cpus = sorted(os.sched_getaffinity(0))
    alice = Node("alice", workdir, mode, rpc_port, None, cpus[0] if two_cpus else None, spy)
    bob = Node("bob", workdir, mode, rpc_port, alice.data_dir, cpus[1] if two_cpus else None, spy)
    alice.call("connect", f"{bob.node_id}@127.0.0.1:{bob.peer_port}")
    alice.call("mine", 101)
    wait(lambda: alice.call("funds")["confirmed_sat"] > FUNDING_SAT, what="Alice's funds")
    alice.call("open", bob.node_id, FUNDING_SAT)
    alice.call("mine", 3)
    wait(lambda: all(n.call("channels")["channels"] and channel(n)["state"] == "normal" for n in (alice, bob)),
         what="the channel")
    return alice, bob


def make_invoices(bob: Node, n: int, prefix: str) -> list[str]:
    """N invoices of Bob's, created by concurrent `invoice` calls (8 connections)."""
    local = threading.local()

    def one(i: int) -> str:
        if not hasattr(local, "c"):
            local.c = Client(data_dir=bob.data_dir, timeout=120)
            opened.append(local.c)
        return local.c.invoice(AMOUNT_MSAT, f"{prefix}{i}")["bolt11"]
    opened: list[Client] = []
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(n)))
    for c in opened:
        c.close()
    return texts


def pay_all(alice: Node, texts: list[str], inflight: int) -> tuple[float, list[float], collections.Counter]:
    """Pay every invoice, INFLIGHT at a time; (elapsed seconds, latencies, outcomes). One thread and one RPC
    connection with up to INFLIGHT `pay` requests outstanding (JSON-RPC ids match the answers): the load
    generator itself costs little of the machine the nodes share."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{Path(alice.data_dir).absolute() / 'rpc.sock'}")
    started: dict[int, float] = {}
    latencies: list[float] = []
    outcomes: collections.Counter = collections.Counter()
    todo = list(enumerate(texts))[::-1]

    def send_next() -> None:
        rid, text = todo.pop()
        started[rid] = time.perf_counter()
        sock.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "pay",
                              "params": {"bolt11": text, "wait": 55}}).encode())   # under the RPC's 60 s
    start = time.perf_counter()
    try:
        while todo and len(started) < inflight:
            send_next()
        while started:
            if not sock.poll(300_000):
                raise SystemExit("no answer to a pay within 300 s")
            reply = json.loads(sock.recv())
            latencies.append(time.perf_counter() - started.pop(reply["id"]))
            outcomes[reply["result"]["status"] if "result" in reply
                     else f"error: {reply['error'].get('message', '')[:80]}"] += 1
            if todo:
                send_next()
        return time.perf_counter() - start, latencies, outcomes
    finally:
        sock.close(0)


def messages(node: Node) -> int:
    peers = node.call("peers")["peers"]
    return sum(int(p.get("msgs_out", 0)) for p in peers)


def run(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    spy = Path(args.py_spy) if args.py_spy else None
    (workdir / mode).mkdir()
    alice, bob = setup(workdir / mode, mode, spy)
    try:
        warm = make_invoices(bob, 20, "warm")
        pay_all(alice, warm, 10)
        t0 = time.perf_counter()
        texts = make_invoices(bob, args.payments, "bench")
        invoice_s = time.perf_counter() - t0
        before = (messages(alice), messages(bob))
        cpu_before = (alice.cpu_seconds(), bob.cpu_seconds())
        elapsed, lat, outcomes = pay_all(alice, texts, args.inflight)
        cpu = (alice.cpu_seconds() - cpu_before[0], bob.cpu_seconds() - cpu_before[1])
        load = os.getloadavg()
        wait(lambda: channel(alice)["htlcs_in_flight"] == 0 and channel(bob)["htlcs_in_flight"] == 0, 60,
             "the HTLCs to settle")
        msgs = (messages(alice) - before[0], messages(bob) - before[1])
        a, b = channel(alice), channel(bob)
        paid = (len(warm) + outcomes["complete"]) * AMOUNT_MSAT
        balances_ok = b["local_msat"] == paid and a["remote_msat"] == paid
        lat.sort()
        return {"mode": mode, "n": len(texts), "elapsed": elapsed, "rate": outcomes["complete"] / elapsed,
                "p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "outcomes": dict(outcomes), "load": load, "invoices_per_s": len(texts) / invoice_s,
                "msgs_per_payment": (msgs[0] + msgs[1]) / max(1, len(texts)), "balances_ok": balances_ok,
                "cpu_ms": [1000 * c / max(1, len(texts)) for c in cpu]}
    finally:
        alice.stop()
        bob.stop()


def summarize(raw: Path, top: int = 30) -> None:
    """py-spy's raw samples: the functions with the most samples (inclusive), the project's and the libraries'."""
    if not raw.exists():
        print(f"  (no samples in {raw})")
        return
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";")]
        if not frames or any(k in frames[-1] for k in ("select (", "poll (", "wait (", "_wait_for_tstate_lock",
                                                       "recv_multipart", "epoll", "sleep")):
            continue  # idle: a thread waiting
        total += n
        for f in set(frames[1:]):
            inclusive[f] += n
        own[frames[-1]] += n
    print(f"  {raw.name}: {total} busy samples")
    for f, n in inclusive.most_common(top):
        print(f"    {100 * n / total:5.1f}% incl  {100 * own[f] / total:5.1f}% self  {f[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=10_000, help="payments measured (distinct invoices)")
    parser.add_argument("--inflight", type=int, default=100, help="pay calls at once")
    parser.add_argument("--mode", choices=("threads", "processes", "both"), default="both")
    parser.add_argument("--py-spy", metavar="DIR", help="sample the nodes with py-spy into DIR; print the top")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data dirs (printed)")
    args = parser.parse_args()
    if args.py_spy:
        Path(args.py_spy).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lnp-paybench-", dir="/tmp"))
    modes = ("threads", "processes") if args.mode == "both" else (args.mode,)
    try:
        results = [run(mode, args, workdir) for mode in modes]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"data dirs kept in {workdir}")
    print(f"{args.payments} payments of {AMOUNT_MSAT} msat, up to {args.inflight} in flight, one channel, "
          f"SQLite WAL synchronous=FULL, {os.cpu_count()} CPUs")
    for r in results:
        verdict = "meets" if r["rate"] >= FLOOR else "BELOW"
        print(f"{r['mode']:9}: {r['rate']:7.1f} payments/s ({r['elapsed']:.1f} s), "
              f"latency p50 {r['p50'] * 1000:.0f} ms "
              f"p99 {r['p99'] * 1000:.0f} ms; {verdict} the {FLOOR:g}/s floor; outcomes {r['outcomes']}; "
              f"balances {'right' if r['balances_ok'] else 'WRONG'}; {r['msgs_per_payment']:.1f} peer messages "
              f"a payment; CPU a payment: Alice {r['cpu_ms'][0]:.1f} ms, Bob {r['cpu_ms'][1]:.1f} ms; "
              f"invoices created at {r['invoices_per_s']:.0f}/s; load average "
              + " ".join(f"{x:.2f}" for x in r["load"]))
    print(f"published (other hardware): {PUBLISHED}")
    if args.py_spy:
        for f in sorted(Path(args.py_spy).glob("*.txt")):
            summarize(f)


if __name__ == "__main__":
    main()
