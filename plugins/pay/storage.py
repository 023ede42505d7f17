"""The pay plugin's tables: one payment per payment hash, and each attempt (an HTLC offered through channeld)
with the onion's shared secrets, needed to read a failure."""
from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text, text

from lnp_plugin_api import StorageModels

metadata = MetaData()

payments = Table(
    "pay_payments", metadata,
    Column("payment_hash", String(64), primary_key=True),
    Column("bolt11", Text, nullable=False),
    Column("destination", String(66), nullable=False),
    Column("amount_msat", BigInteger, nullable=False),
    Column("status", String(8), nullable=False),           # pending | complete | failed
    Column("preimage", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("completed_at", Float, nullable=True),
    Column("failure_reason", Text, nullable=True),
    Column("failure_code", Integer, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
)

attempts = Table(
    "pay_attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("payment_hash", String(64), nullable=False, index=True),
    Column("channel_id", String(64), nullable=True),        # None until channeld stored the HTLC
    Column("htlc_id", BigInteger, nullable=True),
    Column("shared_secrets", Text, nullable=False),         # hex, 32 bytes a hop
    Column("amount_msat", BigInteger, nullable=False),
    Column("cltv_expiry", Integer, nullable=False),
    Column("status", String(8), nullable=False),            # sending | pending | complete | failed
    Column("created_at", Float, nullable=False),
    # htlc_resolved finds its attempt by channel and HTLC: without the index each event scans every attempt
    Index("pay_attempts_htlc", "channel_id", "htlc_id"),
)


def _index_htlcs(conn: Any) -> None:
    conn.execute(text("CREATE INDEX IF NOT EXISTS pay_attempts_htlc ON pay_attempts (channel_id, htlc_id)"))


MODELS = StorageModels(metadata, version=2, migrations={2: _index_htlcs})
