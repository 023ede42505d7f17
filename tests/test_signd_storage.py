"""signd's table: the holder commitment's HTLC transactions live in their own column (schema 2), written
only when a holder commitment is validated; a database of schema 1 moves them there and loses nothing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, Text, event, insert, select, text

from lnp_host.storage import Database, schema_versions
from lnp_plugin_api.tx import SIGHASH_SINGLE_ANYONECANPAY
from lnp_plugins.signd import storage
from signer_tools import Channel
from test_signd_channel import ask, make_signer, ready

OLD = MetaData()
OLD_CHANNELS = Table("signd_channels", OLD, Column("idx", Integer, primary_key=True),
                     Column("state", Text, nullable=False))  # schema 1: the HTLCs inside the state


def validate_with_htlc(s: Any, ch: Channel, n: int) -> None:
    """Validate our commitment `n` of channel 0 (anchors), holding one HTLC."""
    script = ch.our_htlc_script(n)
    tx = ch.commitment(n, ch.our_outputs(n, script))
    htlc = ch.htlc_tx(tx, 2, ch.our_to_local(n), 9_000)
    sig = ch.their_sig(htlc, ch.their_htlc_secret(n), script, 10_000, SIGHASH_SINGLE_ANYONECANPAY)
    ask(s, "validate_holder_commitment", index=0, commitment_number=n, tx=tx.serialize().hex(),
        signature=ch.their_sig(tx).hex(),
        htlcs=[{"tx": htlc.serialize().hex(), "witness_script": script.hex(), "signature": sig.hex()}])


def schema_1_database(path: Path, state: dict) -> Database:
    """A database as signd of schema 1 left it, holding `state` (its `holder_htlcs` inside)."""
    db = Database(f"sqlite:///{path}", path.parent)
    db.migrate({})
    with db.begin() as conn:
        OLD.create_all(conn)
        conn.execute(insert(OLD_CHANNELS).values(idx=0, state=json.dumps(state)))
        conn.execute(insert(schema_versions).values(plugin="signd", version=1))
    return db


def test_schema_2_moves_the_holder_htlcs_to_their_column(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = make_signer(tmp_path / "a", tmp_path / "a.sqlite")
    try:
        validate_with_htlc(first, ready(first, "anchors"), 0)
        with first.engine.begin() as conn:
            row = conn.execute(select(storage.channels)).one()
        htlcs = json.loads(row.holder_htlcs)
        assert len(htlcs) == 1 and "holder_htlcs" not in json.loads(row.state)
        old_state = {**json.loads(row.state), "holder_htlcs": htlcs}
        expected = ask(first, "sign_holder_commitment", index=0, commitment_number=0)
    finally:
        first.engine.dispose()
    db = schema_1_database(tmp_path / "b.sqlite", old_state)
    try:
        assert db.migrate({"signd": storage.MODELS}) == {"signd": (1, 2)}
        with db.begin() as conn:
            moved = conn.execute(select(storage.channels)).one()
        assert json.loads(moved.holder_htlcs) == htlcs and "holder_htlcs" not in json.loads(moved.state)
        (tmp_path / "b").mkdir()
        second = make_signer(tmp_path / "b", tmp_path / "b.sqlite")
        try:
            assert ask(second, "sign_holder_commitment", index=0, commitment_number=0) == expected
        finally:
            second.engine.dispose()
    finally:
        db.close()


def test_schema_2_again_after_an_interrupted_run(tmp_path: Path) -> None:
    """SQLite commits the ALTER TABLE at once: a run killed before its commit leaves the column with the
    HTLCs still in the state; the next run moves them, and a run after one that went through changes nothing."""
    state = {"index": 0, "params": {}, "holder_validated": 0, "holder_tx": "00", "holder_signature": "11",
             "holder_htlcs": [{"tx": "22", "witness_script": "33", "amount_sat": 5, "signature": "44"}]}
    db = schema_1_database(tmp_path / "c.sqlite", state)
    try:
        with db.begin() as conn:
            conn.execute(text("ALTER TABLE signd_channels ADD COLUMN holder_htlcs TEXT NOT NULL DEFAULT '[]'"))
        for _ in range(2):
            with db.begin() as conn:
                storage.MODELS.migrations[2](conn)
            with db.begin() as conn:
                row = conn.execute(select(storage.channels)).one()
            assert json.loads(row.holder_htlcs) == state["holder_htlcs"]
            assert json.loads(row.state) == {k: v for k, v in state.items() if k != "holder_htlcs"}
    finally:
        db.close()


def test_only_validating_a_holder_commitment_writes_its_htlcs(tmp_path: Path) -> None:
    """Validating writes the state and the HTLCs in one statement; every other operation writes the
    short state alone, in one statement (no read first)."""
    s = make_signer(tmp_path)
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        statements.append((statement, parameters))
    try:
        ch = ready(s, "anchors")
        validate_with_htlc(s, ch, 0)
        event.listen(s.engine, "before_cursor_execute", seen)
        validate_with_htlc(s, ch, 1)
        [(update, parameters)] = statements
        assert update.startswith("UPDATE signd_channels SET state=") and "holder_htlcs=" in update
        assert "witness_script" in str(parameters)
        statements.clear()
        ask(s, "revoke_holder_commitment", index=0, commitment_number=0)
        [(update, parameters)] = statements
        assert update.startswith("UPDATE signd_channels SET state=") and "holder_htlcs" not in update
        assert "witness_script" not in str(parameters)
    finally:
        event.remove(s.engine, "before_cursor_execute", seen)
        s.engine.dispose()
