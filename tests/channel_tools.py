"""Helpers for channel tests: two real lnp-host nodes (wallet, peerd, channeld) on one regtest chain the
test runs itself, connected to each other, and a funded wallet."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chain_tools import BTC, external_profile
from conftest import wait_for
from peer_tools import free_port

UNSPENDABLE = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"   # mines blocks paying no node of the test


@dataclass
class Party:
    """A node of a channel test, with its node id and peerd port."""

    node: Any
    port: int
    node_id: str = ""

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self.node.client(timeout=60) as c:
            return c.call(method, *args, **kwargs)

    def channels(self) -> list[dict]:
        return self.call("channels")["channels"]


def profile(chain_port: int, peer_port: int, mode: str, extra: str = "", plugins: tuple[str, ...] = ()) -> str:
    """A node with its wallet, peerd listening on PEER_PORT and channeld, in bus MODE."""
    text = external_profile(chain_port, ["wallet", "peerd", "channeld", *plugins], bus=f'mode = "{mode}"')
    return (text + f'[plugins.peerd]\nlisten = ["127.0.0.1:{peer_port}"]\n'
            + "[plugins.channeld]\nmin_depth = 3\n" + extra)


def two_nodes(nodes, chain_port: int, mode: str, extra: str = "", plugins: tuple[str, ...] = (),
              bob_extra: str = "") -> tuple[Party, Party]:
    """Alice and Bob, started and connected (Alice dials Bob); EXTRA goes in both [plugins.channeld]
    tables, BOB_EXTRA in Bob's."""
    parties = []
    for name in ("alice", "bob"):
        port = free_port()
        mine = extra + (bob_extra if name == "bob" else "")
        node = nodes(profile(chain_port, port, mode, mine, plugins), name=f"{name}{mode[0]}").start()
        p = Party(node, port)
        p.node_id = p.call("info")["node_id"]
        parties.append(p)
    alice, bob = parties
    alice.call("connect", f"{bob.node_id}@127.0.0.1:{bob.port}")
    wait_for(lambda: bool(bob.call("peers")["peers"]))
    return alice, bob


def fund(party: Party, btc, blocks_after: int = 100) -> int:
    """Mine a block paying PARTY's wallet and make it spendable; the sats it holds."""
    address = party.call("newaddr")["address"]
    btc.call("generatetoaddress", 1, address)
    btc.call("generatetoaddress", blocks_after, UNSPENDABLE)
    wait_for(lambda: party.call("funds")["confirmed_sat"] >= 50 * BTC, timeout=60)
    return party.call("funds")["confirmed_sat"]


def mine(btc, parties: list[Party], blocks: int) -> None:
    """Mine BLOCKS and wait until every party's watchd has seen them."""
    height = btc.call("getblockcount") + blocks
    btc.call("generatetoaddress", blocks, UNSPENDABLE)
    for p in parties:
        wait_for(lambda: p.call("chaininfo")["watchd"]["height"] >= height, timeout=30)


def channel_of(party: Party, channel_id: str) -> dict:
    """PARTY's listing of one channel."""
    return next(c for c in party.channels() if c["channel_id"] == channel_id)
