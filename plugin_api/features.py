"""BOLT-9 feature bits: the known table, the bit-vector encoding, and the checks on a peer's `init`.

Plugins declare what they support with `FeatureSpec` (hook `lnp_features`); the node advertises
exactly the union of those, so a feature appears on the wire only when a plugin implements it.
"""
from __future__ import annotations

from dataclasses import dataclass

# Even bit of each pair -> name, from BOLT-9's table (ASSUMED features included so they can be named).
KNOWN: dict[int, str] = {
    0: "option_data_loss_protect", 4: "option_upfront_shutdown_script", 6: "gossip_queries",
    8: "var_onion_optin", 10: "gossip_queries_ex", 12: "option_static_remotekey", 14: "payment_secret",
    16: "basic_mpp", 18: "option_support_large_channel", 22: "option_anchors", 24: "option_route_blinding",
    26: "option_shutdown_anysegwit", 28: "option_dual_fund", 34: "option_quiesce",
    36: "option_attribution_data", 38: "option_onion_messages", 42: "option_provide_storage",
    44: "option_channel_type", 46: "option_scid_alias", 48: "option_payment_metadata", 50: "option_zeroconf",
    60: "option_simple_close", 62: "option_splice",
}
# Feature -> the features it depends on (BOLT-9's Dependencies column), by even bit.
DEPENDENCIES: dict[int, tuple[int, ...]] = {16: (14,), 50: (46,), 60: (26,)}
BY_NAME = {name: bit for bit, name in KNOWN.items()}


@dataclass(frozen=True)
class FeatureSpec:
    """A feature a plugin implements: `bit` is either bit of the pair; `required` sets the even bit.

    `contexts` follows BOLT-9's Context column: I (init), N (node_announcement), 9 (invoices).
    """

    bit: int
    required: bool = False
    contexts: str = "IN"

    @property
    def pair(self) -> int:
        """The even bit of the pair."""
        return self.bit & ~1

    @property
    def wire_bit(self) -> int:
        """The bit set on the wire: even when required, odd when optional."""
        return self.pair if self.required else self.pair | 1

    @property
    def name(self) -> str:
        """BOLT-9's name, or `feature_N` for an unassigned pair."""
        return KNOWN.get(self.pair, f"feature_{self.pair}")


def encode(bits: set[int] | frozenset[int]) -> bytes:
    """A feature bit set as BOLT's big-endian bit vector of minimal length."""
    value = 0
    for b in bits:
        value |= 1 << b
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode(data: bytes) -> set[int]:
    """The bits set in a big-endian feature vector (in linear time: a peer may send 65,535 bytes)."""
    last = len(data) - 1
    return {(last - pos) * 8 + i for pos, byte in enumerate(data) if byte for i in range(8) if byte >> i & 1}


def names(bits: set[int]) -> list[str]:
    """Readable names, `/required` or `/optional` after each, sorted by bit."""
    out = []
    for b in sorted(bits):
        name = KNOWN.get(b & ~1, f"feature_{b & ~1}")
        out.append(f"{name}/{'required' if b % 2 == 0 else 'optional'}")
    return out


def for_context(specs: list[FeatureSpec], context: str) -> set[int]:
    """The bits to advertise in one context (`I`, `N`, `9`)."""
    return {s.wire_bit for s in specs if context in s.contexts}


def check_peer(peer_bits: set[int], ours: list[FeatureSpec]) -> str | None:
    """Why a peer's combined `init` features are unacceptable, or None when they are fine.

    BOLT-1: an unknown even bit closes the connection, unknown odd bits are ignored, and the
    vector must set every known transitive dependency. Beyond that, a feature we require must be
    offered by the peer (optional or required).
    """
    supported = {s.pair for s in ours}
    unknown_even = sorted(b for b in peer_bits if b % 2 == 0 and b not in supported)
    if unknown_even:
        return "peer requires features we do not support: " + ", ".join(
            f"{KNOWN.get(b, 'unknown')} (bit {b})" for b in unknown_even)
    pairs = {b & ~1 for b in peer_bits}
    for pair in sorted(pairs):
        missing = [d for d in DEPENDENCIES.get(pair, ()) if d not in pairs]
        if missing:
            return (f"peer sets {KNOWN[pair]} without its dependency "
                    + ", ".join(KNOWN[d] for d in missing))
    lacking = sorted(s.pair for s in ours if s.required and "I" in s.contexts and s.pair not in pairs)
    if lacking:
        return "peer lacks features we require: " + ", ".join(
            f"{KNOWN.get(b, 'unknown')} (bit {b})" for b in lacking)
    return None
