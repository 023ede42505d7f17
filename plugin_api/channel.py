"""The Bifrost extension point: channel transactions composed from extensions.

Specified now so channeld and third-party extensions can be written against it; channeld will drive it.
A channel's commitment (and closing) transactions are not hard-coded: channeld builds a `TxDraft`
and hands it to each extension the channel negotiated, in order. Each extension adds or changes
outputs (HTLC, PTLC, anchors, custom outputs), may claim feature bits and negotiate its own TLVs,
and checks the updates that concern it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class TxOutDraft:
    """An output being composed: amount, script, and which extension owns it."""

    amount_sat: int
    script_pubkey: bytes
    owner: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class TxDraft:
    """A channel transaction being composed by the extensions in turn."""

    kind: str                      # "commitment_local", "commitment_remote", "closing", ...
    commitment_number: int
    feerate_per_kw: int
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[TxOutDraft] = field(default_factory=list)
    locktime: int = 0
    version: int = 2


class ChannelExtension(Protocol):
    """One composable piece of a channel's transactions.

    `name` is unique; `feature_bits` are the BOLT-9 bits the extension needs the peer to support;
    `depends_on` names extensions that must run before this one.
    """

    name: str
    feature_bits: tuple[int, ...]
    depends_on: tuple[str, ...]

    def negotiate(self, local_params: dict[str, Any], remote_params: dict[str, Any]) -> dict[str, Any]:
        """Agree this extension's parameters at channel open; raise ValueError to refuse the channel."""

    def apply_update(self, state: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
        """Check an update (an add/settle/fail of this extension's kind) and return the new state."""

    def build(self, state: dict[str, Any], draft: TxDraft) -> None:
        """Add or change this extension's outputs in `draft`."""
