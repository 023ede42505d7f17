"""watchd's tables: the last processed block, recent block hashes, the watch list and what it matched."""
from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, BigInteger

from lnp_plugin_api import StorageModels

metadata = MetaData()

# the chain as watchd has processed it: a row per recent block, the highest is the tip
blocks = Table(
    "watchd_blocks", metadata,
    Column("height", Integer, primary_key=True),
    Column("hash", String(64), nullable=False),
)

watches = Table(
    "watchd_watches", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),            # outpoint | txid | script
    Column("key", String(200), nullable=False),           # "txid:vout" | txid | script hex
    Column("owner", String(64), nullable=False),          # who asked (a plugin name), echoed in events
    Column("depths", Text, nullable=False, default="[]"), # txid: depths to notify at, as JSON
    Column("confirmed_height", Integer, nullable=True),   # txid: the block it confirmed in
    Column("notified_depth", Integer, nullable=False, default=0),
    Column("spent_txid", String(64), nullable=True),      # outpoint: the spending transaction
    Column("spent_height", Integer, nullable=True),
)

# script payments found, kept so a reorg can take them back
payments = Table(
    "watchd_payments", metadata,
    Column("watch_id", Integer, primary_key=True),
    Column("txid", String(64), primary_key=True),
    Column("vout", Integer, primary_key=True),
    Column("value_sat", BigInteger, nullable=False),
    Column("height", Integer, nullable=False),
)

# every watch notification, in order, until its owner acknowledges it: an owner that was down when
# it was emitted (a restarting service) reads what it missed
notifications = Table(
    "watchd_notifications", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("name", String(32), nullable=False),
    Column("body", Text, nullable=False),
)


def _add_notifications(conn: object) -> None:
    notifications.create(conn)  # type: ignore[arg-type]


MODELS = StorageModels(metadata, version=2, migrations={2: _add_notifications})
KEEP_BLOCKS = 1000  # block hashes kept for finding where a reorg forked
