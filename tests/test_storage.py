"""Storage: schema versions and migrations per plugin, on SQLite (WAL) and on a real PostgreSQL server."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, text

from lnp_host.storage import Database, StorageError
from lnp_plugin_api import StorageModels

PG_PASSWORD = "pg-test-secret"


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server on loopback, started for the test session. Yields an admin URL base."""
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("LNP_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required (LNP_REQUIRE_POSTGRES) but not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="lnp-pg-"))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "lnp", "--auth=scram-sha-256",
                                 f"--pwfile={pwfile}"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                                 f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://lnp:{PG_PASSWORD}@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_pg_database(base: str) -> str:
    """A fresh, empty database on the test server."""
    import psycopg
    name = f"t_{uuid.uuid4().hex[:12]}"
    plain = base.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return ""
    return new_pg_database(request.getfixturevalue("postgres"))


def models(version: int) -> StorageModels:
    """The same plugin's tables at versions 1, 2 and 3."""
    md = MetaData()
    cols = [Column("name", String(50), primary_key=True), Column("count", Integer, nullable=False)]
    if version >= 2:
        cols.append(Column("note", String(50), nullable=True))
    Table("demo_items", md, *cols)

    def add_note(conn) -> None:
        conn.execute(text("ALTER TABLE demo_items ADD COLUMN note VARCHAR(50)"))
        conn.execute(text("UPDATE demo_items SET note = 'migrated'"))

    return StorageModels(md, version, {2: add_note} if version >= 2 else {})


def test_migrations_keep_data(db_url: str, tmp_path: Path) -> None:
    db = Database(db_url, tmp_path)
    assert db.migrate({"demo": models(1)}) == {"demo": (0, 1)}
    with db.begin() as conn:
        conn.execute(text("INSERT INTO demo_items (name, count) VALUES ('a', 3)"))
    assert db.migrate({"demo": models(1)}) == {}  # nothing to do the second time
    db.close()

    upgraded = Database(db_url, tmp_path)
    assert upgraded.migrate({"demo": models(2)}) == {"demo": (1, 2)}
    with upgraded.begin() as conn:
        row = conn.execute(text("SELECT name, count, note FROM demo_items")).one()
    assert tuple(row) == ("a", 3, "migrated")
    assert upgraded.versions() == {"demo": 2}

    with pytest.raises(StorageError, match="no migration to schema version 3"):
        upgraded.migrate({"demo": models(3)})
    assert upgraded.versions() == {"demo": 2}  # the failed upgrade changed nothing
    with pytest.raises(StorageError, match="newer than the installed plugin"):
        upgraded.migrate({"demo": models(1)})
    upgraded.close()


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    db = Database("", tmp_path)
    db.migrate({})
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert (tmp_path / "lnp.sqlite3").exists()


@pytest.mark.postgres
def test_node_on_postgresql(postgres: str, nodes) -> None:
    url = new_pg_database(postgres)
    profile = f"""
[node]
data_dir = "DATA_DIR"
[storage]
url = "{url}"
[bus]
mode = "processes"
[plugins]
enabled = ["core", "hello"]
"""
    node = nodes(profile).start()
    with node.client() as c:
        assert c.hello("pg")["times"] == 1
    assert node.stop() == 0
    assert not (node.data_dir / "lnp.sqlite3").exists()
    node.start()
    with node.client() as c:
        assert c.hello("pg")["times"] == 2
    assert node.stop() == 0
    log = (node.data_dir / "lnp-host.log").read_text()
    assert PG_PASSWORD not in log and PG_PASSWORD not in node.log.read_text()
    check = Database(url, node.data_dir)
    with check.engine.connect() as conn:
        assert conn.execute(text("SELECT count FROM hello_greetings WHERE name = 'pg'")).scalar() == 2
    assert check.versions() == {"hello": 1, "lnp_host": 1}  # the host's own tables (the outbox) too
    check.close()


@pytest.mark.postgres
def test_unreachable_database_is_a_clear_error(nodes, postgres: str) -> None:
    bad = postgres.replace(PG_PASSWORD, "wrong-password") + "/postgres"
    node = nodes(f'[node]\ndata_dir = "DATA_DIR"\n[storage]\nurl = "{bad}"\n').start(wait=False)
    assert node.proc.wait(30) == 1
    err = node.log.read_text()
    assert "cannot open the database" in err and "wrong-password" not in err


def test_sqlite_synchronous_follows_the_profile(tmp_path: Path) -> None:
    """WAL with synchronous FULL (each commit on disk before the node goes on) by default; NORMAL when the
    profile's [storage] sqlite_synchronous says so."""
    for setting, expected in (("normal", 1), ("full", 2)):
        (tmp_path / setting).mkdir()
        db = Database("", tmp_path / setting, setting) if setting != "full" else Database("", tmp_path / setting)
        with db.begin() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == expected
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        db.close()
    from lnp_host.profile import ProfileError, load_profile
    with pytest.raises(ProfileError, match="sqlite_synchronous"):
        load_profile(overrides=["storage.sqlite_synchronous=off"])
    assert load_profile().section("storage")["sqlite_synchronous"] == "full"
    assert load_profile(overrides=["storage.sqlite_synchronous=normal"]).section("storage")["sqlite_synchronous"] \
        == "normal"
