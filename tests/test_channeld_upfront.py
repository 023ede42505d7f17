"""option_upfront_shutdown_script without nodes: what open_channel/accept_channel carry, the peer's script
checked, a shutdown breaking it refused (BOLT-2: fail the connection), our `close --destination` refused
when we committed, and our close paying the committed script."""
from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from lnp_plugin_api import RpcError
from lnp_plugin_api.messages import AcceptChannel, Shutdown, WarningMessage
from lnp_plugin_api.channel import Side
from lnp_plugins.channeld import closing, opening

P2WPKH = bytes.fromhex("0014" + "11" * 20)
OTHER = bytes.fromhex("0014" + "22" * 20)
WALLET = bytes.fromhex("0014" + "33" * 20)
P2TR = bytes.fromhex("5120" + "44" * 32)
POINT = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")  # G


class FakeManager:
    """What closing.py and opening.py read of the manager."""

    def __init__(self, *channels, bits: set[int] = frozenset({5}), upfront: bool = True) -> None:
        self.channels = {c.channel_id: c for c in channels}
        self.sent: list = []
        self.disconnected: list[str] = []
        self.live: set = set()
        self.bits = set(bits)
        self.options = SimpleNamespace(upfront_shutdown_script=upfront)
        self.funding = SimpleNamespace(new_destination=lambda: SimpleNamespace(script=WALLET, key=(0, 7)))
        self.transport = SimpleNamespace(disconnect=self.disconnected.append)
        self.ctx = SimpleNamespace(node=SimpleNamespace(network="regtest"),
                                   log=SimpleNamespace(warning=lambda *a: None, info=lambda *a: None))

    def peer_bits(self, peer_id: bytes) -> set[int]:
        return self.bits

    def send(self, peer_id: bytes, msg, tx=None) -> None:
        self.sent.append(msg)

    def send_at_once(self, peer_id: bytes, msg) -> None:
        self.sent.append(msg)


def channel(ours: bytes = b"", theirs: bytes = b"", state: str = "normal"):
    return SimpleNamespace(channel_id=b"\x01" * 32, peer_id=b"\x02" * 33, state=state, scid=None,
                           closing={"upfront_ours": ours.hex(), "upfront_theirs": theirs.hex()})


def accept(script: bytes | None) -> AcceptChannel:
    return AcceptChannel(bytes(32), 546, 10**9, 1000, 1, 3, 144, 30, POINT, POINT, POINT, POINT, POINT, POINT,
                         upfront_shutdown_script=script, channel_type=b"\x10\x00")


def test_a_shutdown_to_another_script_than_the_upfront_one_fails_the_connection() -> None:
    ch = channel(theirs=P2WPKH)
    mgr = FakeManager(ch)
    closing.on_shutdown(mgr, ch.peer_id, Shutdown(ch.channel_id, OTHER))
    assert [type(m) for m in mgr.sent] == [WarningMessage] and b"upfront_shutdown_script" in mgr.sent[0].data
    assert mgr.disconnected == [ch.peer_id.hex()]
    assert mgr.channels[ch.channel_id] is ch and ch.state == "normal"   # nothing changed, nothing stored


def test_our_close_pays_the_committed_script_and_refuses_another_destination() -> None:
    ch = channel(ours=P2WPKH)
    mgr = FakeManager(ch)
    # no wallet key: signd accepts the output as its holder_shutdown_script
    assert closing._our_destination(mgr, ch) == {"our_script": P2WPKH.hex()}
    reply: Future = Future()
    with pytest.raises(RpcError, match="committed to an upfront_shutdown_script"):
        closing.close(mgr, ch.channel_id.hex(), "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", reply, 1.0)
    assert mgr.channels[ch.channel_id] is ch
    # without a commitment: a fresh wallet key
    free = channel()
    assert closing._our_destination(FakeManager(free), free) == {"our_script": WALLET.hex(), "our_key": [0, 7]}


def test_our_upfront_script_follows_the_feature_and_the_option() -> None:
    def chosen(bits: set[int], upfront: bool) -> tuple[bytes, object]:
        op = SimpleNamespace(upfront=b"", upfront_key=None)
        opening.choose_upfront(FakeManager(bits=bits, upfront=upfront), op, bits)  # type: ignore[arg-type]
        return op.upfront, op.upfront_key
    assert chosen({5, 13}, True) == (WALLET, (0, 7))
    assert chosen({4}, True) == (WALLET, (0, 7))
    assert chosen({13}, True) == (b"", None)          # the peer does not advertise it: nothing committed
    assert chosen({5}, False) == (b"", None)          # the profile commits to none (0x0000 on the wire)


def test_the_peers_upfront_script_is_kept_only_when_negotiated_and_valid() -> None:
    assert opening.their_upfront(accept(P2WPKH), {5}) == P2WPKH
    assert opening.their_upfront(accept(b""), {5}) == b""
    assert opening.their_upfront(accept(None), {5}) == b""
    assert opening.their_upfront(accept(P2WPKH), {13}) == b""      # not negotiated: not binding
    assert opening.their_upfront(accept(P2TR), {5, 27}) == P2TR    # with option_shutdown_anysegwit
    with pytest.raises(Exception, match="upfront_shutdown_script"):
        opening.their_upfront(accept(P2TR), {5})
    with pytest.raises(Exception, match="upfront_shutdown_script"):
        opening.their_upfront(accept(bytes.fromhex("76a914" + "11" * 20 + "88ac")), {5})


def test_upfront_scripts_travel_in_the_opening_messages() -> None:
    sent = accept(P2WPKH)
    assert AcceptChannel.decode(sent.encode()).upfront_shutdown_script == P2WPKH
    assert AcceptChannel.decode(accept(b"").encode()).upfront_shutdown_script == b""   # 0x0000: none
    assert closing.upfront(channel(ours=P2WPKH, theirs=OTHER), Side.REMOTE) == OTHER


def test_channeld_advertises_option_upfront_shutdown_script() -> None:
    from lnp_plugins.channeld import lnp_features
    assert 4 in {f.pair for f in lnp_features()}
