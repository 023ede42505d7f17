"""watchd's storage: the notifications versions 2 and 3 kept for their owners move to the host's outbox."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text

from lnp_host.outbox import HOST_TABLES, MODELS as HOST_MODELS
from lnp_host.storage import Database
from lnp_plugins.watchd import storage
from test_storage import db_url, postgres  # noqa: F401 (fixtures: SQLite and PostgreSQL)


def test_version_3_notifications_move_to_the_outbox_in_order(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    db = Database(db_url, tmp_path)
    db.migrate({HOST_TABLES: HOST_MODELS})
    with db.begin() as conn:  # watchd's tables as version 3 made them, two notifications not acknowledged
        for table in storage.metadata.tables.values():
            table.create(conn)
        storage.notifications.create(conn)
        conn.execute(text("INSERT INTO lnp_schema_versions (plugin, version) VALUES ('watchd', 3)"))
        conn.execute(storage.notifications.insert(), [{"seq": 7, "owner": "wallet", "name": "tx_depth", "body": '{"a":1}'},
                                                      {"seq": 9, "owner": "wallet", "name": "script_paid",
                                                       "body": '{"b":2}'}])
    assert db.migrate({HOST_TABLES: HOST_MODELS, "watchd": storage.MODELS}) == {"watchd": (3, 4)}
    with db.begin() as conn:
        rows = conn.execute(text("SELECT source, dest, kind, name, body FROM lnp_outbox ORDER BY id")).all()
        assert not inspect(conn).has_table("watchd_notifications")
    assert rows == [("watchd", "wallet", "E", "tx_depth", '{"a":1}'), ("watchd", "wallet", "E", "script_paid", '{"b":2}')]
    db.close()


def test_a_new_database_has_no_notifications_table(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    db = Database(db_url, tmp_path)
    db.migrate({HOST_TABLES: HOST_MODELS, "watchd": storage.MODELS})
    with db.begin() as conn:
        assert not inspect(conn).has_table("watchd_notifications")
    db.close()
