"""The wallet's tables: its addresses, its outputs (with reservations), and its transactions."""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Integer, MetaData, String, Table, Text, text

from lnp_plugin_api import StorageModels

metadata = MetaData()

addresses = Table(
    "wallet_addresses", metadata,
    Column("script", String(200), primary_key=True),
    Column("branch", Integer, nullable=False),     # 0 receive, 1 change
    Column("idx", Integer, nullable=False),
    Column("address", String(100), nullable=False),
    Column("used", Boolean, nullable=False, default=False),
)

utxos = Table(
    "wallet_utxos", metadata,
    Column("txid", String(64), primary_key=True),
    Column("vout", Integer, primary_key=True),
    Column("value_sat", BigInteger, nullable=False),
    Column("script", String(200), nullable=False),
    Column("height", Integer, nullable=True),         # None while unconfirmed
    Column("coinbase", Boolean, nullable=False, default=False),
    Column("spent_by", String(64), nullable=True),    # the spending txid, confirmed or ours in flight
    Column("reserved_by", String(64), nullable=True), # a funding reservation holding it
)

transactions = Table(
    "wallet_transactions", metadata,
    Column("txid", String(64), primary_key=True),
    Column("raw", Text, nullable=False),
    Column("height", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("net_sat", BigInteger, nullable=False, default=0),   # a reserved transaction's effect (once
                                                                # sent, it follows from wallet_utxos)
    Column("fee_sat", BigInteger, nullable=True),               # known for transactions we made
    Column("state", String(12), nullable=False),                # reserved | broadcast | seen | released |
                                                                # abandoned | conflicted
    Column("label", String(100), nullable=False, default=""),
    Column("conflict", String(64), nullable=True),              # the txid that replaced it (in the mempool,
                                                                # while broadcast) or took an input (conflicted)
)

state = Table(
    "wallet_state", metadata,
    Column("key", String(32), primary_key=True),
    Column("value", String(200), nullable=False),
)

def _add_conflict(conn: object) -> None:
    conn.execute(text("ALTER TABLE wallet_transactions ADD COLUMN conflict VARCHAR(64)"))  # type: ignore[attr-defined]


MODELS = StorageModels(metadata, version=2, migrations={2: _add_conflict})
