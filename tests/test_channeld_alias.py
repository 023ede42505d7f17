"""option_scid_alias and BOLT-11 route hints: the channel type of private channels, the alias in
channel_ready both ways, the hint an invoice carries for each usable private channel (unit tests with fakes,
then two real nodes on the real regtest chain)."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import channel_of, fund, mine, two_nodes
from conftest import wait_for
from lnp_plugin_api import bolt11
from lnp_plugin_api.channel import SCID_ALIAS_BIT, STATIC_REMOTEKEY, ChannelType, Side
from lnp_plugin_api.messages import ChannelReady, OpenChannel
from lnp_plugin_api.wire import format_scid, parse_scid
from lnp_plugins.channeld import hints, opening
from lnp_plugins.channeld.errors import ChannelError

G = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
ALIAS_TYPE = ChannelType(STATIC_REMOTEKEY.bits | {SCID_ALIAS_BIT})
PEER = bytes.fromhex("03" + "ab" * 32)


def ch(private: bool = True, state: str = "normal", routing: dict | None = None, scid: str | None = "103x1x0",
       channel_type: ChannelType = STATIC_REMOTEKEY, remote_msat: int = 500_000_000, peer: bytes = PEER):
    params = SimpleNamespace(channel_type=channel_type, reserve_of=lambda side: 10_000)
    return SimpleNamespace(channel_id=b"\x01" * 32, peer_id=peer, private=private, state=state,
                           routing=routing or {}, scid=scid, params=params,
                           log=SimpleNamespace(local=SimpleNamespace(remote_msat=remote_msat)))


@dataclass(frozen=True)
class Doc:
    """The part of a channel document `their_alias` changes."""

    routing: dict


# --- unit ---------------------------------------------------------------------------------------------------

def test_scid_text_round_trips_and_bad_ones_are_refused() -> None:
    n = 16_000_001 << 40 | 5 << 16 | 1
    assert parse_scid(format_scid(n)) == n and parse_scid("103x1x0") == 103 << 40 | 1 << 16
    for bad in ("", "1x2", "1x2x3x4", "ax1x0", "16777216x0x0", "1x0x65536", "-1x0x0"):
        with pytest.raises(ValueError):
            parse_scid(bad)


def test_our_alias_travels_in_channel_ready_and_theirs_is_kept() -> None:
    mgr = SimpleNamespace(channels={})
    alias = opening.new_alias(mgr)  # type: ignore[arg-type]
    assert parse_scid(alias) >> 40 >= opening.ALIAS_BLOCKS[0]       # unrelated to any real block
    ready = opening.channel_ready(ch(routing={"local_alias": alias}), G)  # type: ignore[arg-type]
    got = ChannelReady.decode(ready.encode())
    assert format_scid(got.short_channel_id) == alias
    assert opening.channel_ready(ch(), G).short_channel_id is None  # type: ignore[arg-type]
    theirs = ChannelReady(b"\x01" * 32, G, short_channel_id=parse_scid("16000123x4x5"))
    kept = opening.their_alias(Doc({"local_alias": alias}), theirs)  # type: ignore[arg-type]
    assert kept.routing == {"local_alias": alias, "remote_alias": "16000123x4x5"}


def test_aliases_are_not_reused_across_our_channels(monkeypatch) -> None:
    taken = SimpleNamespace(routing={"local_alias": "16000000x0x0"})
    draws = iter([0, 0, 0, 7, 0, 0])        # the first draw collides with the taken alias
    monkeypatch.setattr(opening.secrets, "randbelow", lambda n: next(draws))
    assert opening.new_alias(SimpleNamespace(channels={1: taken})) == "16000007x0x0"  # type: ignore[arg-type]


def open_channel(channel_type: bytes, flags: int) -> OpenChannel:
    return OpenChannel(bytes(32), bytes(32), 100_000, 0, 546, 10**9, 1000, 1, 253, 144, 30, G, G, G, G, G, G, flags,
                       upfront_shutdown_script=b"", channel_type=channel_type)


def test_scid_alias_channel_type_only_for_unannounced_channels() -> None:
    mgr = SimpleNamespace(options=SimpleNamespace(anchors=True))
    assert opening._their_type(mgr, open_channel(ALIAS_TYPE.to_bytes(), 0), set()) == ALIAS_TYPE
    with pytest.raises(ChannelError, match="announced"):
        opening._their_type(mgr, open_channel(ALIAS_TYPE.to_bytes(), 1), set())


def test_a_private_opening_asks_for_scid_alias_when_the_peer_supports_it() -> None:
    keys = {k: G.hex() for k in ("revocation_basepoint", "payment_basepoint", "delayed_payment_basepoint",
                                 "htlc_basepoint", "funding_pubkey", "first_per_commitment_point")}
    opts = SimpleNamespace(dust_limit_sat=546, to_self_delay=144, reserve_sat=lambda f: 1000, htlc_minimum_msat=1,
                           max_in_flight_msat=lambda f: f * 1000, max_accepted_htlcs=30,
                           upfront_shutdown_script=False)

    def typed(bits: set[int], private: bool) -> ChannelType:
        mgr = SimpleNamespace(options=opts, next_dbid=lambda: 1, signer=SimpleNamespace(channel_keys=lambda i: keys),
                              peer_bits=lambda p: bits)
        return opening.new_opening(mgr, PEER, 100_000, 0, 253, STATIC_REMOTEKEY, private).channel_type  # type: ignore
    assert typed({13, 47}, True) == ALIAS_TYPE
    assert typed({13, 47}, False) == STATIC_REMOTEKEY      # announced: never (BOLT-2)
    assert typed({13}, True) == STATIC_REMOTEKEY           # the peer does not support it


def test_route_hints_name_the_peers_alias_and_only_usable_private_channels() -> None:
    other = bytes.fromhex("02" + "cd" * 32)
    found = hints.route_hints([
        ch(routing={"local_alias": "16000001x1x1", "remote_alias": "16000002x2x2"}, channel_type=ALIAS_TYPE),
        ch(peer=other, remote_msat=900_000_000),                      # no alias: the real scid
        ch(channel_type=ALIAS_TYPE),                                   # scid_alias, no alias yet: none
        ch(private=False), ch(state="shutdown"), ch(scid=None),
        ch(remote_msat=10_000_000),                                    # the peer has only its reserve
    ])  # type: ignore[list-item]
    assert found == [
        {"node_id": other.hex(), "short_channel_id": "103x1x0", "fee_base_msat": 1000,
         "fee_proportional_millionths": 1, "cltv_expiry_delta": 34},
        {"node_id": PEER.hex(), "short_channel_id": "16000002x2x2", "fee_base_msat": 1000,
         "fee_proportional_millionths": 1, "cltv_expiry_delta": 34}]


def test_channeld_advertises_option_scid_alias() -> None:
    from lnp_plugins.channeld import lnp_features
    assert 46 in {f.pair for f in lnp_features()}


# --- two real nodes -------------------------------------------------------------------------------------------

FUNDING = 500_000


@pytest.mark.slow
def test_private_channel_with_aliases_and_the_invoice_hint(nodes, external_chain) -> None:
    """Alice opens a private channel to Bob: the type has option_scid_alias, each side's channel_ready
    carried its alias, and Bob's invoice hints at the channel by the alias Alice gave (never the real scid),
    from Alice's node id, with the default fees."""
    port, btc = external_chain
    alice, bob = two_nodes(nodes, port, "threads", plugins=("invoices",))
    fund(alice, btc)
    cid = alice.call("open", bob.node_id, FUNDING, private=True)["channel_id"]
    mine(btc, [alice, bob], 3)
    for p in (alice, bob):
        wait_for(lambda: channel_of(p, cid)["state"] == "normal", timeout=30)
    wait_for(lambda: channel_of(alice, cid)["alias"]["remote"] is not None, timeout=30)
    a, b = channel_of(alice, cid), channel_of(bob, cid)
    assert a["channel_type"] == b["channel_type"] == "anchors+scid_alias" and a["private"] and b["private"]
    assert a["alias"]["local"] == b["alias"]["remote"] and b["alias"]["local"] == a["alias"]["remote"]
    assert a["alias"]["local"] != b["alias"]["local"] and a["short_channel_id"] not in (
        a["alias"]["local"], b["alias"]["local"])
    made = bob.call("invoice", 10_000, "hinted", description="via a private channel")
    inv = bolt11.decode(made["bolt11"])
    assert inv.route_hints == ((bolt11.RouteHintHop(bytes.fromhex(alice.node_id), parse_scid(a["alias"]["local"]),
                                                    1000, 1, 34),),)
    # Alice's own invoice: Bob has nothing to send her yet (he pushed nothing): no hint
    assert bolt11.decode(alice.call("invoice", 10_000, "none")["bolt11"]).route_hints == ()


# --- the peer's channel_update ---------------------------------------------------------------------------------

import contextlib  # noqa: E402
import hashlib  # noqa: E402

import coincurve  # noqa: E402

from lnp_plugin_api.chains import chain_hash  # noqa: E402
from lnp_plugin_api.messages import ChannelUpdate  # noqa: E402

PEER_KEY = coincurve.PrivateKey(b"\x42" * 32)


@dataclass(frozen=True)
class Stored:
    """A channel as on_channel_update reads and replaces it."""

    channel_id: bytes
    peer_id: bytes
    scid: str | None
    routing: dict


class UpdateManager:
    def __init__(self, our_id: bytes, *channels: Stored) -> None:
        self.channels = {c.channel_id: c for c in channels}
        self.ctx = SimpleNamespace(node=SimpleNamespace(network="regtest", node_id=our_id),
                                   transaction=contextlib.nullcontext)

    def store(self, tx, ch) -> None:
        self.channels[ch.channel_id] = ch

    def transaction(self):
        return contextlib.nullcontext()


def signed_update(scid: str, direction: int, timestamp: int = 100, flags: int = 0, key=PEER_KEY,
                  network: str = "regtest") -> ChannelUpdate:
    unsigned = ChannelUpdate(bytes(64), chain_hash(network), parse_scid(scid), timestamp, 1, direction | flags,
                             40, 1, 2000, 7, 10**9)
    digest = hashlib.sha256(hashlib.sha256(unsigned.signed_part()).digest()).digest()
    sig = key.sign_recoverable(digest, hasher=None)[:64]
    return ChannelUpdate(sig, *(getattr(unsigned, f) for f in (
        "chain_hash", "short_channel_id", "timestamp", "message_flags", "channel_flags", "cltv_expiry_delta",
        "htlc_minimum_msat", "fee_base_msat", "fee_proportional_millionths", "htlc_maximum_msat")))


def test_the_peers_channel_update_sets_the_hints_fees() -> None:
    peer = PEER_KEY.public_key.format()
    ours = G                                   # BOLT-7: node_id_1 is the lesser id, its updates direction 0
    direction = int(peer > ours)
    stored = Stored(b"\x01" * 32, peer, "103x1x0", {"local_alias": "16000001x0x0"})
    mgr = UpdateManager(ours, stored)
    hints.on_channel_update(mgr, peer, signed_update("16000001x0x0", direction))   # named by our alias
    kept = mgr.channels[stored.channel_id].routing["their_update"]
    assert (kept["fee_base_msat"], kept["fee_proportional_millionths"], kept["cltv_expiry_delta"]) == (2000, 7, 40)
    hints.on_channel_update(mgr, peer, signed_update("103x1x0", direction, timestamp=99, flags=2))  # older
    assert mgr.channels[stored.channel_id].routing["their_update"]["timestamp"] == 100
    for ignored in (signed_update("103x1x0", 1 - direction, timestamp=200),      # our direction
                    signed_update("104x1x0", direction, timestamp=200),          # not our channel
                    signed_update("103x1x0", direction, timestamp=200, network="mainnet")):
        hints.on_channel_update(mgr, peer, ignored)
        assert mgr.channels[stored.channel_id].routing["their_update"]["timestamp"] == 100
    with pytest.raises(ChannelError, match="bad signature"):
        hints.on_channel_update(mgr, peer, signed_update("103x1x0", direction, timestamp=300,
                                                         key=coincurve.PrivateKey(b"\x43" * 32)))
    hints.on_channel_update(mgr, peer, signed_update("103x1x0", direction, timestamp=400, flags=2))
    assert mgr.channels[stored.channel_id].routing["their_update"]["disabled"] is True
    found = hints.route_hints([ch(routing={"their_update": {"fee_base_msat": 2000, "fee_proportional_millionths": 7,
                                                            "cltv_expiry_delta": 40}})])  # type: ignore[list-item]
    assert found[0]["short_channel_id"] == "103x1x0" and (found[0]["fee_base_msat"], found[0]["cltv_expiry_delta"]) \
        == (2000, 40)
    assert hints.route_hints([ch(routing={"their_update": {"disabled": True}})]) == []  # type: ignore[list-item]
