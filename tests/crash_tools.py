"""Helpers for crash tests: two real nodes whose channeld can be killed (SIGKILL) at a named crash point
(`LNP_DEV_CRASH_FILE`, docs/channels.md "Crash points"), then restarted, in both bus modes: in threads
mode the whole node dies and the test starts it again; in processes mode channeld's process dies and
the supervisor restarts it (peerd drops the peer's connection, which is redialled)."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from channel_tools import Party, channel_of, profile
from conftest import wait_for
from peer_tools import free_port
from lnp_plugin_api.onion import HopPayload, build_onion

CRASH_FILE_ENV = "LNP_DEV_CRASH_FILE"
RESTARTS = "[services.channeld]\nmax_restarts = 1000\n"   # processes mode: the supervisor restarts channeld each time


@dataclass
class Crashy(Party):
    """A node of a crash test: its crash file, its bus mode, and channeld's restarts seen so far."""

    mode: str = "threads"
    crash_file: Path = Path()
    restarts: int = 0
    kills: list[str] = field(default_factory=list)

    def start(self) -> None:
        """Start (or restart) the node, its crash file in its environment."""
        os.environ[CRASH_FILE_ENV] = str(self.crash_file)
        try:
            self.node.start(wait=False)
        finally:
            del os.environ[CRASH_FILE_ENV]
        self.node.wait_ready(timeout=120)   # processes mode on a loaded machine: a few seconds per service

    def arm(self, point: str) -> None:
        """channeld dies the next time it reaches POINT (once)."""
        self.crash_file.write_text(f"channeld:{point}")

    def disarm(self) -> None:
        """No crash point."""
        self.crash_file.unlink(missing_ok=True)

    def killed(self, point: str, timeout: float = 60) -> None:
        """Wait until channeld died at the point armed, and have it back: the node started again (threads
        mode), or channeld restarted by the supervisor (processes mode)."""
        if self.mode == "threads":
            assert self.node.proc.wait(timeout) == -9, f"{point}: not killed"
            assert not self.crash_file.exists()
            self.start()
        else:
            wait_for(lambda: self.node.service("channeld")["restarts"] > self.restarts, timeout=timeout)
            assert self.node.proc.poll() is None, "the node died with channeld"
            self.restarts = self.node.service("channeld")["restarts"]
            wait_for(lambda: self.node.service("channeld")["state"] == "running", timeout=30)
        self.kills.append(point)


def crash_pair(nodes, chain_port: int, mode: str, root: Path, plugins: tuple[str, ...] = ("tk_htlcs", "tk_signer"),
               extra: str = "") -> tuple[Crashy, Crashy]:
    """Alice and Bob, each with a crash file of its own, started and connected (Alice dials Bob)."""
    parties = []
    for name in ("alice", "bob"):
        port = free_port()
        text = profile(chain_port, port, mode, extra, plugins).replace(
            "[plugins.peerd]\n", "[plugins.peerd]\nreconnect_min_delay = 0.2\n") + RESTARTS
        node = nodes(text, name=f"{name}{mode[0]}")
        p = Crashy(node, port, mode=mode, crash_file=root / f"{name}-{mode}.crash")
        p.start()
        p.node_id = p.call("info")["node_id"]
        parties.append(p)
    alice, bob = parties
    alice.call("connect", f"{bob.node_id}@127.0.0.1:{bob.port}")
    wait_for(lambda: bool(bob.call("peers")["peers"]))
    return alice, bob


def in_background(fn: Callable[[], Any]) -> threading.Thread:
    """Run FN on a thread (a call to a node that dies on the way never answers); errors are ignored."""
    def run() -> None:
        try:
            fn()
        except Exception:
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def offer(payer: Party, payee: Party, amount: int, payment_hash: bytes, onion: bytes | None = None,
          channel_id: str | None = None, timeout: float = 30) -> None:
    """PAYER offers an HTLC to PAYEE (on CHANNEL_ID), retrying while the channel is being re-established;
    on a thread, since the payer may die before it answers."""
    def attempt() -> None:
        height = payer.call("chaininfo")["watchd"]["height"]
        payload = HopPayload.final(amount, height + 40, b"\x07" * 32)
        packet = onion or build_onion(os.urandom(32), [bytes.fromhex(payee.node_id)], [payload], payment_hash)[0]
        body = {"peer_id": payee.node_id, "amount_msat": amount, "payment_hash": payment_hash.hex(),
                "cltv_expiry": height + 40, "onion": packet.hex(), "channel_id": channel_id}
        deadline = time.monotonic() + timeout
        while True:
            try:
                payer.call("tk_signer_request", "channeld.add_htlc", body)
                return
            except Exception as e:
                if "no usable channel" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    in_background(attempt)


def outcome(payer: Party, payment_hash: bytes, timeout: float = 60) -> dict:
    """The payer's htlc_resolved for PAYMENT_HASH (waits for it): the payment's definite outcome."""
    found: list[dict] = []

    def seen() -> bool:
        found[:] = [e for e in payer.call("tk_htlc_events", "htlc_resolved") if e["payment_hash"] == payment_hash.hex()]
        return bool(found)
    wait_for(seen, timeout=timeout)
    return found[-1]


def agreed(alice: Party, bob: Party, cid: str, alice_msat: int, total_msat: int) -> None:
    """Both sides' channel normal, nothing in flight, Alice holding ALICE_MSAT: the same balances on both
    sides, to the msat."""
    for p in (alice, bob):
        wait_for(lambda: (lambda c: c["state"] == "normal" and c["htlcs_in_flight"] == 0)(channel_of(p, cid)),
                 timeout=60)
    a, b = channel_of(alice, cid), channel_of(bob, cid)
    assert (a["local_msat"], a["remote_msat"]) == (alice_msat, total_msat - alice_msat), a
    assert (b["local_msat"], b["remote_msat"]) == (total_msat - alice_msat, alice_msat), b


def funding_unspent(btc, channel: dict) -> None:
    """No commitment (revoked or not) was broadcast: the funding output is unspent, mempool included."""
    txid, vout = channel["funding_outpoint"].split(":")
    assert btc.call("gettxout", txid, int(vout), True) is not None, f"funding output of {channel['channel_id']} spent"


def show_logs(*parties: Party, lines: int = 80) -> None:
    """Print the end of each node's log (shown with a failing test)."""
    for p in parties:
        text = p.node.log.read_text(errors="replace").splitlines()
        print(f"--- {p.node.data_dir.name}: the last {lines} lines of its log ---")
        print("\n".join(text[-lines:]))
