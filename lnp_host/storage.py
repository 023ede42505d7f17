"""The node's database: SQLAlchemy 2.x over SQLite (default, WAL mode) or PostgreSQL.

Each plugin owns its tables and a schema version; `migrate` brings every enabled plugin's tables
to the version the installed plugin declares, so a node upgraded later keeps its data.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy import (Column, Integer, MetaData, String, Table, create_engine, event, inspect, select)
from sqlalchemy.engine import Connection, Engine

from lnp_plugin_api import StorageModels

log = logging.getLogger("lnp.host.storage")

_host_metadata = MetaData()
schema_versions = Table(
    "lnp_schema_versions", _host_metadata,
    Column("plugin", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
)


class StorageError(Exception):
    """The database cannot be used by this node (unreachable, or newer than the installed plugins)."""


class Database:
    """The node's database, shared by the services of one process (engines are thread-safe)."""

    def __init__(self, url: str, data_dir: Path, synchronous: str = "full") -> None:
        self.url = url or f"sqlite:///{data_dir / 'lnp.sqlite3'}"
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        elif self.url.startswith("postgresql"):
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            sync = {"normal": "NORMAL", "full": "FULL"}[synchronous]
            event.listen(self.engine, "connect", lambda conn, record: _sqlite_pragmas(conn, record, sync))
            _private_files(self.engine.url.database)

    def begin(self) -> Any:
        """A connection in a transaction: `with db.begin() as conn: ...` commits on success."""
        return self.engine.begin()

    def versions(self) -> dict[str, int]:
        """The stored schema version of each plugin's tables."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table(schema_versions.name):
                return {}
            return {row.plugin: row.version for row in conn.execute(select(schema_versions))}

    def migrate(self, models: Mapping[str, StorageModels]) -> dict[str, tuple[int, int]]:
        """Create or upgrade each plugin's tables; returns {plugin: (from_version, to_version)}."""
        try:
            _host_metadata.create_all(self.engine)
        except Exception as e:
            raise StorageError(f"cannot open the database {self.safe_url}: {type(e).__name__}: {e}") from None
        done: dict[str, tuple[int, int]] = {}
        stored = self.versions()
        for plugin, m in models.items():
            have = stored.get(plugin, 0)
            if have > m.version:
                raise StorageError(f"the database holds plugin {plugin!r}'s tables at schema version {have}, "
                                   f"newer than the installed plugin's {m.version}")
            if have == m.version:
                continue
            with self.engine.begin() as conn:
                _upgrade(conn, plugin, m, have)
            log.info("storage of %s: schema version %d -> %d", plugin, have, m.version)
            done[plugin] = (have, m.version)
        return done

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()


def _upgrade(conn: Connection, plugin: str, m: StorageModels, have: int) -> None:
    if have == 0:
        m.metadata.create_all(conn)
    else:
        for v in range(have + 1, m.version + 1):
            step = m.migrations.get(v)
            if step is None:
                raise StorageError(f"plugin {plugin!r} has no migration to schema version {v}")
            step(conn)
    if have == 0:
        conn.execute(schema_versions.insert().values(plugin=plugin, version=m.version))
    else:
        conn.execute(schema_versions.update().where(schema_versions.c.plugin == plugin)
                     .values(version=m.version))


def _private_files(database: str | None) -> None:
    """Restrict an existing SQLite database (made before the node ran under umask 077) to its owner;
    SQLite gives its -wal and -shm files the database file's mode."""
    if not database or database == ":memory:":
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = Path(database + suffix)
        try:
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                os.chmod(path, 0o600)
        except FileNotFoundError:
            pass


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, synchronous: str = "NORMAL") -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA synchronous={synchronous}")  # one of two constants (Database)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
