"""watchd's stored notifications: their numbers only go up, also once all are acknowledged (an
owner skips numbers it has applied, so a number given twice is a notification lost)."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from lnp_host.storage import Database
from lnp_plugins.watchd import storage
from lnp_plugins.watchd.scanner import _log


def notify(db: Database, owner: str = "wallet") -> int:
    body = {"owner": owner}
    with db.begin() as conn:
        _log(conn, [("tx_depth", body)])
    return body["seq"]


def acknowledge_all(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(storage.notifications.delete())


def test_numbers_are_never_given_twice(tmp_path: Path) -> None:
    db = Database("", tmp_path)
    db.migrate({"watchd": storage.MODELS})
    first = notify(db)
    acknowledge_all(db)  # the owner applied everything: the table is empty
    assert notify(db) > first
    db.close()


def test_a_version_2_table_is_made_again_with_its_rows(tmp_path: Path) -> None:
    db = Database("", tmp_path)
    db.migrate({})
    with db.begin() as conn:  # watchd's tables as version 2 made them
        conn.execute(text("CREATE TABLE watchd_notifications (seq INTEGER NOT NULL PRIMARY KEY, "
                          "owner VARCHAR(64) NOT NULL, name VARCHAR(32) NOT NULL, body TEXT NOT NULL)"))
        conn.execute(text("CREATE INDEX ix_watchd_notifications_owner ON watchd_notifications (owner)"))
        for table in ("watchd_blocks", "watchd_watches", "watchd_payments"):
            storage.metadata.tables[table].create(conn)
        conn.execute(text("INSERT INTO lnp_schema_versions (plugin, version) VALUES ('watchd', 2)"))
        conn.execute(text("INSERT INTO watchd_notifications VALUES (7, 'wallet', 'tx_depth', '{}')"))
    assert db.migrate({"watchd": storage.MODELS}) == {"watchd": (2, 3)}
    with db.begin() as conn:
        assert conn.execute(text("SELECT seq, owner FROM watchd_notifications")).all() == [(7, "wallet")]
    acknowledge_all(db)
    assert notify(db) == 8
    db.close()
