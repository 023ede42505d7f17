"""A hostile peer against channeld on a real node: malformed messages get a warning, broken limits and bad
signatures an error, nothing is stored and the node goes on serving."""
from __future__ import annotations

import hashlib

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from channel_tools import Party, profile
from lnp_plugin_api.bolt3 import point
from lnp_plugin_api.chains import chain_hash
from lnp_plugin_api.channel import ANCHORS
from lnp_plugin_api.features import encode
from lnp_plugin_api.messages import ErrorMessage, FundingCreated, OpenChannel, UpdateAddHtlc, WarningMessage
from peer_tools import RawPeer, free_port


def open_channel(temp: bytes, **changes) -> OpenChannel:
    keys = [point(hashlib.sha256(bytes([i])).digest()) for i in range(6)]
    fields = dict(chain_hash=chain_hash("regtest"), temporary_channel_id=temp, funding_satoshis=500_000, push_msat=0,
                  dust_limit_satoshis=546, max_htlc_value_in_flight_msat=500_000_000, channel_reserve_satoshis=5000,
                  htlc_minimum_msat=1, feerate_per_kw=2500, to_self_delay=144, max_accepted_htlcs=30,
                  funding_pubkey=keys[0], revocation_basepoint=keys[1], payment_basepoint=keys[2],
                  delayed_payment_basepoint=keys[3], htlc_basepoint=keys[4], first_per_commitment_point=keys[5],
                  channel_flags=1, channel_type=ANCHORS.to_bytes())
    return OpenChannel(**{**fields, **changes})


def test_a_hostile_peer_gets_warnings_and_errors_and_nothing_is_stored(nodes, external_chain) -> None:
    port, _ = external_chain
    peer_port = free_port()
    node = nodes(profile(port, peer_port, "threads"), name="target").start()
    target = Party(node, peer_port)
    node_id = bytes.fromhex(target.call("info")["node_id"])
    with RawPeer(peer_port) as peer:
        peer.connect(node_id, encode({13, 23, 45}))   # static_remotekey, anchors, channel_type (optional)
        # malformed: a warning, the connection stays
        peer.send(open_channel(b"\x01" * 32).encode()[:100])
        assert b"malformed" in WarningMessage.decode_payload(peer.read_type(1)).data
        # limits broken: an error naming the rule, for that temporary channel id
        for temp, changes, why in ((b"\x02" * 32, {"to_self_delay": 5000}, b"to_self_delay 5000"),
                                   (b"\x03" * 32, {"chain_hash": bytes(32)}, b"another chain"),
                                   (b"\x04" * 32, {"push_msat": 600_000_000}, b"push_msat"),
                                   (b"\x05" * 32, {"feerate_per_kw": 100}, b"feerate 100"),
                                   (b"\x06" * 32, {"max_accepted_htlcs": 500}, b"max_accepted_htlcs")):
            peer.send(open_channel(temp, **changes).encode())
            err = ErrorMessage.decode_payload(peer.read_type(17))
            assert err.channel_id == temp and why in err.data, err.data
        # an update for no channel of ours: a warning
        peer.send(UpdateAddHtlc(b"\x07" * 32, 0, 1000, bytes(32), 500, bytes(1366)).encode())
        assert b"no channel" in WarningMessage.decode_payload(peer.read_type(1)).data
        # a good open_channel is accepted; a funding_created with a bad signature is refused
        temp = b"\x08" * 32
        peer.send(open_channel(temp).encode())
        accept = peer.read_type(33)
        assert accept[:32] == temp
        peer.send(FundingCreated(temp, b"\x09" * 32, 0, b"\x01" * 64).encode())
        err = ErrorMessage.decode_payload(peer.read_type(17))
        assert err.channel_id == temp and b"signature" in err.data, err.data
    assert target.channels() == []
    assert target.call("info")["node_id"] == node_id.hex()
