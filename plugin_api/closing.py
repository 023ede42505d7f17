"""Cooperative close (BOLT-2 "Channel Close"): `shutdown` script checks and the legacy `closing_signed` fee
negotiation, with and without the `fee_range` TLV, as a pure state machine.

The closing transaction itself is `commitment.build_closing` (BOLT-3 "Legacy Closing Transaction"). channeld
keeps a `ClosingNegotiation` per channel: the opener calls `first_offer()`, each side calls `receive(fee,
fee_range)` for every `closing_signed`; the `ClosingStep` returned says what to send (a fee to sign and send,
with its range), whether the fee is agreed (sign, send if `send` is set, and broadcast), or why to fail.

Where the spec leaves room we do what other implementations do: the non-opener's range reaches at least the
opener's maximum (it does not pay), a fee in our range is accepted at once, a proposal outside the overlap
is answered with the nearest fee inside it, and without `fee_range` the counter-offer is the midpoint
between the two last offers (as Eclair and Core Lightning's default step do), within our range.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .channel import ChannelParams, Side
from .commitment import BuiltClosing, build_closing
from .tx import verify

OP_0, OP_1, OP_16, OP_RETURN, OP_PUSHDATA1 = 0x00, 0x51, 0x60, 0x6A, 0x4C


def valid_shutdown_script(script: bytes, anysegwit: bool, simple_close: bool = False) -> bool:
    """Whether `script` is one of BOLT-2's `shutdown` forms: P2WPKH, P2WSH, with
    `option_shutdown_anysegwit` a witness program of version 1 to 16 (2 to 40 bytes), with
    `option_simple_close` an OP_RETURN of one push of 6 to 80 bytes."""
    n = len(script)
    if n == 22 and script[0] == OP_0 and script[1] == 20:
        return True
    if n == 34 and script[0] == OP_0 and script[1] == 32:
        return True
    if anysegwit and n >= 4 and OP_1 <= script[0] <= OP_16 and 2 <= script[1] <= 40 and n == script[1] + 2:
        return True
    if simple_close and n >= 2 and script[0] == OP_RETURN:
        if 6 <= script[1] <= 75:
            return n == script[1] + 2
        if script[1] == OP_PUSHDATA1 and n >= 3 and 76 <= script[2] <= 80:
            return n == script[2] + 3
    return False


def check_shutdown(script: bytes, anysegwit: bool, upfront: bytes | None = None,
                   simple_close: bool = False) -> str | None:
    """BOLT-2's checks of a received (or to be sent) `shutdown` script: None if fine, else the reason
    (a warning to the peer). `upfront` is the `upfront_shutdown_script` the peer gave at open, when both
    sides advertised option_upfront_shutdown_script (empty or None: none committed)."""
    if upfront and script != upfront:
        return "shutdown scriptpubkey differs from the upfront_shutdown_script"
    if not valid_shutdown_script(script, anysegwit, simple_close):
        return f"shutdown scriptpubkey {script.hex()} is not a standard form"
    return None


def closing_weight(local_script: bytes | None, remote_script: bytes | None) -> int:
    """Expected weight of a closing transaction with those outputs (None: omitted), both signatures at
    their maximum size."""
    outs = [s for s in (local_script, remote_script) if s is not None]
    base = 4 + 1 + 41 + 1 + sum(8 + 1 + len(s) for s in outs) + 4
    witness = 2 + 1 + 1 + 2 * (1 + 73) + 1 + 71   # marker, flag, count, empty, two sigs, 2-of-2 script
    return 4 * base + witness


def closing_fee(feerate_per_kw: int, local_script: bytes | None, remote_script: bytes | None) -> int:
    """The fee of a closing transaction at `feerate_per_kw`."""
    return feerate_per_kw * closing_weight(local_script, remote_script) // 1000


def signed_variant(params: ChannelParams, local_msat: int, remote_msat: int, local_script: bytes,
                   remote_script: bytes, fee_sat: int, signature: bytes) -> BuiltClosing | None:
    """The closing transaction the peer's `closing_signed` signature (64 bytes) is for (BOLT-3 "Legacy
    Closing Transaction"): its outputs below THEIR dust limit removed, and either both outputs or theirs
    eliminated (a node may drop its own output). None if it signs neither: fail the channel. We sign the
    same transaction (`sighash`), so both signatures are for one transaction."""
    dust = params.remote.dust_limit_sat
    for omit in (None, Side.REMOTE):
        try:
            built = build_closing(params, local_msat, remote_msat, local_script, remote_script, fee_sat,
                                  params.opener, dust, omit=omit)
        except ValueError:
            return None
        if built.tx.outputs and verify(params.remote.funding_pubkey, signature, built.sighash):
            return built
    return None


@dataclass(frozen=True)
class ClosingStep:
    """The outcome of one negotiation step: the new state; `send`, a fee to sign and send in
    `closing_signed` (with `fee_range` when the state has one); `agreed`, the fee both signed (broadcast
    the closing transaction with it); `error`, why to fail the channel (safe to send the peer)."""

    state: "ClosingNegotiation"
    send: int | None = None
    agreed: int | None = None
    error: str | None = None

    @property
    def fee_range(self) -> tuple[int, int] | None:
        """The fee_range TLV to send with `send`."""
        return self.state.our_range if self.state.use_range else None


@dataclass(frozen=True)
class ClosingNegotiation:
    """One side's view of a `closing_signed` negotiation (restarted from scratch after a reconnection).

    `our_range` is (min, max) fee in satoshis we accept; `preferred` is the fee we offer first; `opener` says
    whether we opened (and pay). `use_range`: whether we send fee_range (the modern method).
    """

    opener: bool
    preferred: int
    our_range: tuple[int, int]
    use_range: bool = True
    last_sent: int | None = None
    last_received: int | None = None
    their_range: tuple[int, int] | None = None
    agreed: int | None = None

    def __post_init__(self) -> None:
        lo, hi = self.our_range
        if not 0 <= lo <= hi:
            raise ValueError("fee range must be 0 <= min <= max")

    def first_offer(self) -> ClosingStep:
        """Our first `closing_signed` (the opener SHOULD send first): the preferred fee within our range."""
        fee = min(max(self.preferred, self.our_range[0]), self.our_range[1])
        return ClosingStep(replace(self, last_sent=fee), send=fee)

    def receive(self, fee: int, fee_range: tuple[int, int] | None) -> ClosingStep:
        """A `closing_signed` with `fee` (its signature already checked) and its `fee_range`, if any."""
        if self.agreed is not None:
            return ClosingStep(self, agreed=self.agreed)
        if fee_range is not None and not 0 <= fee_range[0] <= fee_range[1]:
            return ClosingStep(self, error=f"invalid fee_range {fee_range}")
        if fee_range is not None and not fee_range[0] <= fee <= fee_range[1]:
            return ClosingStep(self, error=f"fee_satoshis {fee} outside its own fee_range {fee_range}")
        state = replace(self, last_received=fee, their_range=fee_range or self.their_range)
        if fee == self.last_sent:
            return ClosingStep(replace(state, agreed=fee), agreed=fee)
        if fee_range is not None:
            return state._with_range(fee, fee_range)
        return state._legacy(fee, self.last_received)

    def _agree(self, fee: int) -> ClosingStep:
        send = fee if fee != self.last_sent else None
        return ClosingStep(replace(self, agreed=fee, last_sent=fee), send=send, agreed=fee)

    def _with_range(self, fee: int, theirs: tuple[int, int]) -> ClosingStep:
        ours = self.our_range
        if not self.opener:
            # We do not pay: any maximum the opener is ready to pay is fine with us.
            ours = (ours[0], max(ours[1], theirs[1]))
        lo, hi = max(ours[0], theirs[0]), min(ours[1], theirs[1])
        state = replace(self, our_range=ours, use_range=True)
        if lo > hi:
            return ClosingStep(state, error=f"no overlap between fee ranges {ours} and {theirs}")
        if self.opener:
            if not lo <= fee <= hi:
                return ClosingStep(state, error=f"fee_satoshis {fee} is outside the overlap [{lo}, {hi}]")
            return state._agree(fee)
        if self.last_sent is not None:
            return ClosingStep(state, error=f"fee_satoshis {fee} differs from the {self.last_sent} we sent")
        if lo <= fee <= hi:
            return state._agree(fee)
        pick = min(max(fee, lo), hi)
        return ClosingStep(replace(state, last_sent=pick), send=pick)

    def _legacy(self, fee: int, previous: int | None) -> ClosingStep:
        lo, hi = self.our_range
        if self.last_sent is not None and previous is not None:
            a, b = sorted((self.last_sent, previous))
            if not a < fee < b:
                return ClosingStep(self, error=f"fee_satoshis {fee} is not strictly between {a} and {b}")
        if lo <= fee <= hi:
            return self._agree(fee)
        if self.last_sent is None:
            pick = min(max(fee, lo), hi)
            return ClosingStep(replace(self, last_sent=pick), send=pick)
        pick = min(max((self.last_sent + fee) // 2, lo), hi)
        a, b = sorted((self.last_sent, fee))
        if not a < pick < b:
            return ClosingStep(self, error=f"no fee in our range [{lo}, {hi}] strictly between {a} and {b}")
        return ClosingStep(replace(self, last_sent=pick), send=pick)
