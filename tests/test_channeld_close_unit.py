"""channeld's cooperative close without nodes: the destination address checks, which channel `close` names,
a peer's shutdown with a script BOLT-2 does not allow (a warning, nothing stored), and the fee range."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from lnp_plugin_api import RpcError
from lnp_plugin_api.messages import Shutdown, WarningMessage
from lnp_plugins.channeld import closing


def test_destination_must_be_an_address_of_the_network() -> None:
    script = closing.destination_script("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "regtest")
    assert script == bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6")
    for bad, network in (("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "regtest"),   # mainnet's
                         ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "mainnet"),
                         ("not-an-address", "regtest"), ("", "regtest")):
        with pytest.raises(RpcError, match="address"):
            closing.destination_script(bad, network)


class FakeManager:
    """What closing.py reads of the manager: channels, the peer's features, what is sent."""

    def __init__(self, *channels) -> None:
        self.channels = {c.channel_id: c for c in channels}
        self.sent: list = []
        self.live: set = set()
        self.bits: set[int] = set()

    def peer_bits(self, peer_id: bytes) -> set[int]:
        return self.bits

    def send(self, peer_id: bytes, msg, tx=None) -> None:
        self.sent.append(msg)


def channel(n: int, peer: bytes, state: str = "normal", scid: str | None = None):
    return SimpleNamespace(channel_id=bytes([n]) * 32, peer_id=peer, state=state, scid=scid, closing={})


def test_close_names_a_channel_by_id_scid_or_its_peer() -> None:
    p1, p2 = b"\x02" * 33, b"\x03" * 33
    a, b, c = channel(1, p1, scid="101x1x0"), channel(2, p2), channel(3, p2)
    mgr = FakeManager(a, b, c)
    assert closing.find(mgr, a.channel_id.hex()) is a
    assert closing.find(mgr, "101x1x0") is a
    assert closing.find(mgr, p1.hex()) is a
    with pytest.raises(RpcError, match="2 channels"):
        closing.find(mgr, p2.hex())
    with pytest.raises(RpcError, match="no channel"):
        closing.find(mgr, "202x1x0")


@pytest.mark.parametrize("script, anysegwit", [
    ("76a914" + "11" * 20 + "88ac", False),              # P2PKH: never
    ("5120" + "11" * 32, False),                         # taproot without option_shutdown_anysegwit
    ("0013" + "11" * 19, True),                          # a v0 program of the wrong size
])
def test_a_shutdown_with_a_script_bolt2_does_not_allow_gets_a_warning(script: str, anysegwit: bool) -> None:
    ch = channel(1, b"\x02" * 33)
    mgr = FakeManager(ch)
    mgr.bits = {27} if anysegwit else set()
    closing.on_shutdown(mgr, ch.peer_id, Shutdown(ch.channel_id, bytes.fromhex(script)))
    assert len(mgr.sent) == 1 and isinstance(mgr.sent[0], WarningMessage)
    assert b"not a standard form" in mgr.sent[0].data
    assert mgr.channels[ch.channel_id] is ch and ch.state == "normal"   # nothing changed, nothing stored


def test_a_closing_signed_before_reestablish_is_ignored_with_a_warning_not_fatal() -> None:
    """After a restart (processes mode: channeld alone), the peer's closing_signed may come before the
    channel is re-established on the new connection: the negotiation starts again after reestablish."""
    from lnp_plugin_api.messages import ClosingSigned
    from lnp_plugins.channeld.errors import ChannelError
    ch = channel(1, b"\x02" * 33, state="shutdown")
    mgr = FakeManager(ch)
    with pytest.raises(ChannelError, match="not reestablished") as raised:
        closing.on_closing_signed(mgr, ch.peer_id, ClosingSigned(ch.channel_id, 1000, bytes(64)))
    assert raised.value.warning and mgr.sent == []
