"""Cooperative close: shutdown script forms and the closing_signed fee negotiation (BOLT-2), pure."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from lnp_plugin_api.closing import (ClosingNegotiation, ClosingStep, check_shutdown, closing_fee, closing_weight,
                                    valid_shutdown_script)

P2WPKH = bytes([0, 20]) + b"\x01" * 20
P2WSH = bytes([0, 32]) + b"\x02" * 32
P2TR = bytes([0x51, 32]) + b"\x03" * 32


def test_shutdown_script_forms() -> None:
    assert valid_shutdown_script(P2WPKH, False) and valid_shutdown_script(P2WSH, False)
    assert not valid_shutdown_script(P2TR, False)              # only with option_shutdown_anysegwit
    assert valid_shutdown_script(P2TR, True)
    assert valid_shutdown_script(bytes([0x60, 2]) + b"\x00\x00", True)      # v16, 2 bytes
    assert not valid_shutdown_script(bytes([0x60, 41]) + b"\x00" * 41, True)  # 41 bytes: too long
    assert not valid_shutdown_script(bytes([0x51, 1]) + b"\x00", True)      # 1 byte: too short
    assert not valid_shutdown_script(bytes([0x51, 32]) + b"\x00" * 31, True)  # length lies
    assert not valid_shutdown_script(bytes([0, 20]) + b"\x01" * 19, False)
    p2pkh = bytes.fromhex("76a914") + b"\x01" * 20 + bytes.fromhex("88ac")
    assert not valid_shutdown_script(p2pkh, True)
    op_return = bytes([0x6A, 6]) + b"\x00" * 6
    assert not valid_shutdown_script(op_return, True) and valid_shutdown_script(op_return, True, simple_close=True)
    assert valid_shutdown_script(bytes([0x6A, 0x4C, 80]) + b"\x00" * 80, False, simple_close=True)
    assert not valid_shutdown_script(bytes([0x6A, 0x4C, 75]) + b"\x00" * 75, False, simple_close=True)
    assert not valid_shutdown_script(b"", True)


def test_check_shutdown_with_upfront_script() -> None:
    assert check_shutdown(P2WPKH, False) is None
    assert check_shutdown(P2WPKH, False, upfront=b"") is None       # empty: nothing committed
    assert "upfront" in check_shutdown(P2WSH, False, upfront=P2WPKH)
    assert "standard" in check_shutdown(P2TR, False)


def test_closing_fee_is_the_weight_of_the_transaction() -> None:
    # 2 P2WPKH outputs: 4*(4+1+41+1+2*31+4) + 224
    assert closing_weight(P2WPKH, P2WPKH) == 4 * 113 + 224
    assert closing_weight(P2WPKH, None) == 4 * 82 + 224
    assert closing_fee(1000, P2WPKH, P2WSH) == closing_weight(P2WPKH, P2WSH)


def run(a: ClosingNegotiation, b: ClosingNegotiation, limit: int = 100) -> tuple[int | None, int | None, str | None]:
    """Exchange closing_signed until both agree or one fails: (a's agreed fee, b's, error)."""
    step = a.first_offer()
    a = step.state
    msg = (step.send, step.fee_range)
    sender_is_a = True
    for _ in range(limit):
        receiver = b if sender_is_a else a
        step: ClosingStep = receiver.receive(*msg)
        if step.error:
            return None, None, step.error
        if sender_is_a:
            b = step.state
        else:
            a = step.state
        if step.send is None:
            break
        msg = (step.send, step.fee_range)
        sender_is_a = not sender_is_a
    return a.agreed, b.agreed, None


def test_fee_range_their_fee_in_our_range_is_accepted_in_two_messages() -> None:
    a = ClosingNegotiation(opener=True, preferred=200, our_range=(100, 300))
    b = ClosingNegotiation(opener=False, preferred=150, our_range=(150, 250))
    step = a.first_offer()
    assert (step.send, step.fee_range) == (200, (100, 300))
    reply = b.receive(200, (100, 300))
    assert (reply.send, reply.agreed) == (200, 200)
    assert step.state.receive(200, reply.fee_range).agreed == 200


def test_fee_range_non_opener_picks_in_the_overlap_and_the_opener_echoes() -> None:
    a = ClosingNegotiation(opener=True, preferred=200, our_range=(100, 300))
    b = ClosingNegotiation(opener=False, preferred=260, our_range=(250, 400))
    step = a.first_offer()
    reply = b.receive(200, (100, 300))
    assert reply.send == 250 and reply.agreed is None
    assert reply.fee_range == (250, 400)        # at least the opener's max
    echo = step.state.receive(250, reply.fee_range)
    assert (echo.send, echo.agreed) == (250, 250)
    assert reply.state.receive(250, echo.fee_range).agreed == 250
    assert run(a, b) == (250, 250, None)


def test_fee_range_refusals() -> None:
    a = ClosingNegotiation(opener=True, preferred=200, our_range=(100, 300))
    # No overlap: a warning, no agreement.
    b = ClosingNegotiation(opener=False, preferred=500, our_range=(400, 500))
    assert "no overlap" in b.receive(200, (100, 300)).error
    # The opener refuses a fee outside the overlap.
    sent = a.first_offer().state
    assert "outside the overlap" in sent.receive(350, (150, 400)).error
    # A fee outside the sender's own range.
    assert "outside its own fee_range" in sent.receive(99, (100, 300)).error
    # The non-opener refuses a second, different fee.
    b = ClosingNegotiation(opener=False, preferred=260, our_range=(250, 400))
    replied = b.receive(200, (100, 300)).state
    assert "differs" in replied.receive(270, (100, 300)).error
    assert "invalid fee_range" in b.receive(200, (300, 100)).error


def test_legacy_negotiation_moves_strictly_between() -> None:
    a = ClosingNegotiation(opener=True, preferred=100, our_range=(100, 200), use_range=False)
    step = a.first_offer()
    assert step.fee_range is None
    s = step.state.receive(1000, None)       # a peer halving from far away
    assert s.send == 200                     # the midpoint, within our range
    assert "strictly between" in s.state.receive(1000, None).error      # no progress
    assert "no fee in our range" in s.state.receive(600, None).error    # cannot move further
    assert "strictly between" in s.state.receive(150, None).error       # below our own last offer
    done = s.state.receive(200, None)                                    # they accept ours
    assert (done.agreed, done.send) == (200, None)
    b = ClosingNegotiation(opener=False, preferred=0, our_range=(0, 500), use_range=False)
    first = b.receive(1000, None)                                        # out of range: our max
    assert first.send == 500
    assert "no fee in our range" in first.state.receive(700, None).error  # we are at our max already
    assert "strictly between" in first.state.receive(400, None).error    # below our own offer
    wide = ClosingNegotiation(opener=False, preferred=0, our_range=(0, 900), use_range=False)
    step = wide.receive(1000, None).state.receive(920, None)             # first reply 900, then 920 comes
    assert "no fee" in step.error
    mid = ClosingNegotiation(opener=False, preferred=0, our_range=(0, 900), use_range=False)
    s1 = mid.receive(1200, None)
    assert s1.send == 900
    s2 = s1.state.receive(1000, None)                                    # midpoint 950 is above our max
    assert "no fee" in s2.error
    s3 = s1.state.receive(850, None)                                     # below our offer: not allowed
    assert "strictly between" in s3.error


def test_legacy_counter_offer_is_the_midpoint() -> None:
    a = ClosingNegotiation(opener=True, preferred=100, our_range=(100, 1000), use_range=False)
    s = a.first_offer().state.receive(1500, None)
    assert s.send == 800
    assert s.state.receive(900, None).agreed == 900          # strictly between, and in our range


def test_legacy_both_sides_converge() -> None:
    a = ClosingNegotiation(opener=True, preferred=300, our_range=(100, 400), use_range=False)
    b = ClosingNegotiation(opener=False, preferred=500, our_range=(350, 10_000), use_range=False)
    fa, fb, err = run(a, b)
    assert err is None and fa == fb and 350 <= fa <= 400


@given(st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000),
       st.booleans(), st.booleans())
def test_negotiations_end_agreed_on_a_fee_both_accept_or_fail(a1, a2, b1, b2, a_range, b_range) -> None:
    alo, ahi = sorted((a1, a2))
    blo, bhi = sorted((b1, b2))
    a = ClosingNegotiation(True, (alo + ahi) // 2, (alo, ahi), use_range=a_range)
    b = ClosingNegotiation(False, (blo + bhi) // 2, (blo, bhi), use_range=b_range)
    fa, fb, err = run(a, b)
    if err is None:
        assert fa == fb is not None
        assert alo <= fa <= ahi          # the opener never pays more than its maximum
    if a_range and b_range and alo <= bhi and blo <= ahi:
        assert err is None              # overlapping ranges always agree
    elif a_range and b_range and bhi < alo:
        assert err is None              # the non-opener raises its max to the opener's
    with pytest.raises(ValueError):
        ClosingNegotiation(True, 1, (5, 2))


def test_signed_variant_finds_the_transaction_the_peer_signed() -> None:
    from onchain_tools import L, channel
    from lnp_plugin_api.channel import STATIC_REMOTEKEY
    from lnp_plugin_api.closing import signed_variant
    from lnp_plugin_api.commitment import build_closing
    from lnp_plugin_api.tx import der_to_compact
    params, a, b = channel(STATIC_REMOTEKEY)
    local, remote = 1_999_000_000, 1_000_000
    both = build_closing(params, local, remote, P2WPKH, P2WSH, 500, L, 0)
    mine_only = build_closing(params, local, remote, P2WPKH, P2WSH, 500, L, 0, omit=L.other)
    for built in (both, mine_only):   # the peer kept, or eliminated, its own output
        sig = der_to_compact(b.sign_funding_digest(built.sighash))
        found = signed_variant(params, local, remote, P2WPKH, P2WSH, 500, sig)
        assert found is not None and found.tx == built.tx
    sig = der_to_compact(a.sign_funding_digest(both.sighash))      # not the peer's key
    assert signed_variant(params, local, remote, P2WPKH, P2WSH, 500, sig) is None
    assert signed_variant(params, local, remote, P2WPKH, P2WSH, 10**7, sig) is None   # fee above the payer's
