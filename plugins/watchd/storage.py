"""watchd's tables: the last processed block, recent block hashes, the watch list and what it matched."""
from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, text

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

# Versions 2 and 3 kept watch notifications here until their owner acknowledged them; the host's
# outbox does that now. The table as it was, for the migrations that made it and the one that empties it.
_legacy = MetaData()
notifications = Table(
    "watchd_notifications", _legacy,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("name", String(32), nullable=False),
    Column("body", Text, nullable=False),
    sqlite_autoincrement=True,
)


def _add_notifications(conn: Any) -> None:
    notifications.create(conn)


def _never_reuse_numbers(conn: Any) -> None:
    """Version 2 made the table without AUTOINCREMENT: SQLite then numbered the next notification 1
    again once all were acknowledged, and owners ignored it as applied. Make it again, rows kept."""
    if conn.dialect.name != "sqlite":
        return  # PostgreSQL's sequences never go back
    conn.execute(text("DROP INDEX IF EXISTS ix_watchd_notifications_owner"))
    conn.execute(text("ALTER TABLE watchd_notifications RENAME TO watchd_notifications_v2"))
    notifications.create(conn)
    conn.execute(text("INSERT INTO watchd_notifications (seq, owner, name, body) "
                      "SELECT seq, owner, name, body FROM watchd_notifications_v2"))
    conn.execute(text("DROP TABLE watchd_notifications_v2"))


def _to_the_outbox(conn: Any) -> None:
    """Notifications not yet acknowledged become outbox rows for their owner (the host migrates its
    tables first), in their order; the table goes."""
    conn.execute(text("INSERT INTO lnp_outbox (source, dest, kind, name, body) "
                      "SELECT 'watchd', owner, 'E', name, body FROM watchd_notifications ORDER BY seq"))
    conn.execute(text("DROP INDEX IF EXISTS ix_watchd_notifications_owner"))
    conn.execute(text("DROP TABLE watchd_notifications"))


MODELS = StorageModels(metadata, version=4, migrations={2: _add_notifications, 3: _never_reuse_numbers,
                                                     4: _to_the_outbox})
KEEP_BLOCKS = 1000  # block hashes kept for finding where a reorg forked
