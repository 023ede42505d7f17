"""channeld's profile table (`[plugins.channeld]`) and its parsed form.

The limits are what we accept from a peer's `open_channel` (and offer in our own), the BOLT-2
defaults other implementations use unless a profile says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from lnp_plugin_api import Field

MAX_ACCEPTED_HTLCS = 483          # BOLT-2: a peer MUST NOT ask for more
MAX_TO_SELF_DELAY = 2016          # a week of blocks: longer locks our funds unreasonably


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than zero"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _htlc_count(value: int) -> str | None:
    return None if 1 <= value <= MAX_ACCEPTED_HTLCS else f"must be 1..{MAX_ACCEPTED_HTLCS} (BOLT-2)"


def _to_self_delay(value: int) -> str | None:
    return None if 1 <= value <= MAX_TO_SELF_DELAY else f"must be 1..{MAX_TO_SELF_DELAY} blocks"


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


SCHEMA: dict[str, Field] = {
    "min_funding_sat": Field(int, 20_000, "smallest channel a peer may open with us", check=_positive),
    "max_funding_sat": Field(int, 16_777_215, "largest channel a peer may open with us (2^24-1 unless both "
                             "sides support option_support_large_channel)", check=_positive),
    "reserve_percent": Field(float, 1.0, "channel_reserve we ask of the peer, as a percent of the capacity",
                             check=lambda v: None if 0 <= v <= 20 else "must be 0..20"),
    "dust_limit_sat": Field(int, 546, "our dust limit: outputs below it are left out of our commitments",
                            check=lambda v: None if 354 <= v <= 100_000 else "must be 354..100000 (BOLT-2)"),
    "to_self_delay": Field(int, 144, "blocks the peer must wait to spend its own output after a force close",
                           check=_to_self_delay),
    "max_to_self_delay": Field(int, MAX_TO_SELF_DELAY, "longest delay a peer may impose on our funds",
                               check=_to_self_delay),
    "max_accepted_htlcs": Field(int, 30, "HTLCs the peer may have pending towards us", check=_htlc_count),
    "htlc_minimum_msat": Field(int, 1, "smallest HTLC we accept", check=_positive),
    "max_htlc_value_in_flight_percent": Field(float, 100.0, "HTLC value the peer may have pending towards us, "
                                              "as a percent of the capacity",
                                              check=lambda v: None if 0 < v <= 100 else "must be in (0, 100]"),
    "max_dust_htlc_exposure_msat": Field(int, 5_000_000, "total of dust HTLCs we accept at once (their value "
                                         "goes to fees on a force close)", check=_not_negative),
    "min_depth": Field(int, 3, "confirmations before a channel we accept is used", check=_positive),
    "max_min_depth": Field(int, 144, "most confirmations a peer may make us wait for", check=_positive),
    "max_fee_ratio": Field(float, 10.0, "a peer's feerate may be at most this many times our estimate",
                           check=lambda v: None if v >= 1 else "must be at least 1"),
    "min_fee_ratio": Field(float, 0.1, "and at least this fraction of it (test networks often use fixed "
                           "rates far from any estimate: widen both there)", check=_fraction),
    "commit_interval_ms": Field(int, 10, "milliseconds updates may wait to share one commitment_signed (and HTLC "
                                "outcomes one commit)",
                                check=_not_negative),
    "anchors": Field(bool, True, "prefer option_anchors (zero-fee HTLC transactions) when the peer supports it"),
    "upfront_shutdown_script": Field(bool, True, "commit at open to a wallet address as where a cooperative close "
                                     "pays us (option_upfront_shutdown_script); false: commit to none, so "
                                     "`close --destination` stays possible"),
    "onchain_feerate_per_kw": Field(int, 0, "least feerate (sat per 1000 weight) our commitment on chain must pay "
                                    "with its child: below it, our anchor bumps it (CPFP); 0: our estimate",
                                    check=_not_negative),
}


@dataclass(frozen=True)
class Options:
    """The validated table, parsed."""

    min_funding_sat: int
    max_funding_sat: int
    reserve_percent: float
    dust_limit_sat: int
    to_self_delay: int
    max_to_self_delay: int
    max_accepted_htlcs: int
    htlc_minimum_msat: int
    max_htlc_value_in_flight_percent: float
    max_dust_htlc_exposure_msat: int
    min_depth: int
    max_min_depth: int
    max_fee_ratio: float
    min_fee_ratio: float
    commit_interval_ms: int
    anchors: bool
    upfront_shutdown_script: bool
    onchain_feerate_per_kw: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Options":
        """Options from the validated `[plugins.channeld]` table (defaults filled in)."""
        return cls(**{f.name: config[f.name] for f in fields(cls)})

    def reserve_sat(self, capacity_sat: int) -> int:
        """The channel_reserve_satoshis we ask of the peer: a percent of the capacity, never below
        our dust limit (BOLT-2: the reserve must not be below the dust limit)."""
        return max(int(capacity_sat * self.reserve_percent / 100), self.dust_limit_sat)

    def max_in_flight_msat(self, capacity_sat: int) -> int:
        """max_htlc_value_in_flight_msat we offer for a channel of `capacity_sat`."""
        return int(capacity_sat * 1000 * self.max_htlc_value_in_flight_percent / 100)

    def feerate_problem(self, theirs: int, ours: int) -> str | None:
        """Why a peer's feerate (sat per 1000 weight) is out of our bounds around our estimate, or None."""
        if theirs < 253:
            return f"feerate {theirs} sat/kw is below the relay minimum 253"
        if theirs > ours * self.max_fee_ratio:
            return f"feerate {theirs} sat/kw is over {self.max_fee_ratio}x our estimate {ours}"
        if theirs < ours * self.min_fee_ratio:
            return f"feerate {theirs} sat/kw is under {self.min_fee_ratio}x our estimate {ours}"
        return None
