"""signd's table: the signer's state of each channel (docs/keys.md, "Channel operations and policy").

One row per channel index, its state as JSON (parameters, the holder and counterparty commitments
signed, validated and revoked); written and committed before the answer that depends on it leaves.
"""
from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, Table, Text

from lnp_plugin_api import StorageModels

metadata = MetaData()

channels = Table(
    "signd_channels", metadata,
    Column("idx", Integer, primary_key=True),  # the channel index of its keys (m/1017'/C'/F'/0/idx)
    Column("state", Text, nullable=False),     # JSON: channel.ChannelState
)

MODELS = StorageModels(metadata)
