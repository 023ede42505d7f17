"""channeld's tables: channels, their HTLCs' data, and the counterparty's past commitments (for penalties).

A channel's state (parameters, the update log, commitment numbers, the counterparty's revealed secrets
in shachain form, each extension's versioned state) is one JSON document in `channeld_channels.data`;
what it keeps per HTLC beside the log (`Channel.htlcs`: the 1366-byte onion, a failure) is one row per
HTLC in `channeld_htlcs`, written when it changes and deleted once the HTLC is gone from both
commitments. Both are written in the same storage transaction as the messages that follow from them
(the host's outbox). The columns beside the document are copies for listing and lookups.
"""
from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import (BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, bindparam,
                        func, select)

from lnp_plugin_api import StorageModels

from .document import DOC_VERSION, Channel

metadata = MetaData()

channels = Table(
    "channeld_channels", metadata,
    Column("channel_id", String(64), primary_key=True),   # temporary id until funding_created/signed
    Column("dbid", Integer, nullable=False, unique=True),  # signd's channel index: keys derive from it
    Column("peer_id", String(66), nullable=False),
    Column("state", String(24), nullable=False),
    Column("opener", Boolean, nullable=False),
    Column("short_channel_id", String(32), nullable=True),
    Column("funding_txid", String(64), nullable=True),
    Column("funding_vout", Integer, nullable=True),
    Column("capacity_sat", BigInteger, nullable=False),
    Column("channel_type", String(40), nullable=False),
    Column("data", Text, nullable=False),                 # the channel document (JSON)
    Column("version", Integer, nullable=False),           # of the document's layout
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("channeld_channels_peer", channels.c.peer_id)

remote_commitments = Table(
    "channeld_remote_commitments", metadata,
    # What a penalty needs once the counterparty broadcasts a commitment it has revoked: the txid
    # finds it, the HTLCs rebuild the scripts of its HTLC outputs.
    Column("channel_id", String(64), primary_key=True),
    Column("number", BigInteger, primary_key=True),
    Column("txid", String(64), nullable=False),
    Column("htlcs", Text, nullable=False),                # JSON: [{direction, amount_msat, payment_hash, cltv_expiry}]
    Column("feerate_per_kw", Integer, nullable=False),
)
Index("channeld_remote_commitments_txid", remote_commitments.c.txid)

htlcs = Table(
    # Channel.htlcs, one row per key ("in:ID" received, "out:ID" offered): an HTLC's onion is written
    # once, not with every change of the channel
    "channeld_htlcs", metadata,
    Column("channel_id", String(64), primary_key=True),
    Column("key", String(32), primary_key=True),
    Column("data", Text, nullable=False),                 # JSON
)

funding_confirmed = Table(
    # watchd's tx_depth for a funding transaction, written when the (durable) event is received, so a
    # channel whose channel_ready was not sent yet finds it again after a restart
    "channeld_funding_confirmed", metadata,
    Column("channel_id", String(64), primary_key=True),
    Column("height", Integer, nullable=False),            # the block that confirmed the funding
)



def _htlcs_apart(conn: Any) -> None:
    """Schema 2: each document's `htlcs` moves to rows of channeld_htlcs (document version 2)."""
    # checkfirst: SQLite commits a CREATE TABLE at once, so an interrupted run leaves the table behind
    htlcs.create(conn, checkfirst=True)
    for r in conn.execute(select(channels.c.channel_id, channels.c.data)).all():
        doc = json.loads(r.data)
        if "htlcs" not in doc:  # moved by an earlier run whose commit went through
            continue
        rows = [{"channel_id": r.channel_id, "key": k, "data": json.dumps(v)} for k, v in doc.pop("htlcs").items()]
        conn.execute(htlcs.delete().where(htlcs.c.channel_id == r.channel_id))
        if rows:
            conn.execute(htlcs.insert(), rows)
        doc["version"] = DOC_VERSION
        conn.execute(channels.update().where(channels.c.channel_id == r.channel_id)
                     .values(data=json.dumps(doc), version=DOC_VERSION))


MODELS = StorageModels(metadata, version=2, migrations={2: _htlcs_apart})


# Built once: the channel row is written with every batch, and SQLAlchemy's statement building costs more than
# the write itself.
_COPIED = ("peer_id", "state", "opener", "short_channel_id", "funding_txid", "funding_vout", "capacity_sat",
           "channel_type", "data", "version", "updated_at")
_UPDATE_CHANNEL = (channels.update().where(channels.c.channel_id == bindparam("b_channel_id"))
                   .values({name: bindparam(name) for name in _COPIED}))
_INSERT_CHANNEL = channels.insert()
_DELETE_HTLCS = htlcs.delete().where(htlcs.c.channel_id == bindparam("b_channel_id"))
_DELETE_HTLC = htlcs.delete().where(htlcs.c.channel_id == bindparam("b_channel_id"), htlcs.c.key == bindparam("b_key"))
_INSERT_HTLC = htlcs.insert()


def save(conn: Any, ch: "Channel", before: "Channel | None" = None) -> None:
    """Insert or update a channel's row (the document and the columns copied from it) and its HTLC rows.

    `before` is the channel as stored (None: unknown, every HTLC row is rewritten): only the HTLC rows
    that changed since are written.
    """
    p = ch.params
    cid = ch.channel_id.hex()
    cols = {"peer_id": ch.peer_id.hex(), "state": ch.state, "opener": ch.opener, "short_channel_id": ch.scid,
            "funding_txid": p.funding_txid, "funding_vout": p.funding_output_index, "capacity_sat": p.funding_sat,
            "channel_type": p.channel_type.name, "data": ch.to_text(),
            "version": DOC_VERSION, "updated_at": time.time()}
    done = conn.execute(_UPDATE_CHANNEL, {"b_channel_id": cid, **cols})
    if done.rowcount == 0:
        conn.execute(_INSERT_CHANNEL, {"channel_id": cid, "dbid": ch.dbid, "created_at": time.time(), **cols})
    old: Any = before.htlcs if before is not None and before.channel_id == ch.channel_id else None
    if old is None:
        conn.execute(_DELETE_HTLCS, {"b_channel_id": cid})
        old = {}
    gone = [k for k in old if k not in ch.htlcs]
    changed = [k for k, v in ch.htlcs.items() if k in old and old[k] is not v and old[k] != v]
    added = [k for k in ch.htlcs if k not in old]
    if gone or changed:
        conn.execute(_DELETE_HTLC, [{"b_channel_id": cid, "b_key": k} for k in gone + changed])
    if changed or added:
        conn.execute(_INSERT_HTLC, [{"channel_id": cid, "key": k, "data": json.dumps(ch.htlcs[k])}
                                    for k in changed + added])


def load_all(conn: Any) -> list["Channel"]:
    """Every stored channel, oldest first."""
    by_channel: dict[str, dict[str, Any]] = {}
    for r in conn.execute(select(htlcs)).all():
        by_channel.setdefault(r.channel_id, {})[r.key] = json.loads(r.data)
    rows = conn.execute(select(channels.c.channel_id, channels.c.data).order_by(channels.c.dbid)).all()
    return [Channel.from_json({**json.loads(r.data), "htlcs": by_channel.get(r.channel_id, {})}) for r in rows]


def max_dbid(conn: Any) -> int:
    """The highest channel index used (0 when none)."""
    return int(conn.execute(select(func.max(channels.c.dbid))).scalar() or 0)


def note_confirmed(conn: Any, channel_id: str, height: int) -> None:
    """Remember that a channel's funding is deep enough (idempotent: events come at least once)."""
    done = conn.execute(funding_confirmed.update().where(funding_confirmed.c.channel_id == channel_id)
                        .values(height=height))
    if done.rowcount == 0:
        conn.execute(funding_confirmed.insert().values(channel_id=channel_id, height=height))


def confirmed(conn: Any) -> dict[str, int]:
    """Funding confirmation heights by channel id."""
    return {r.channel_id: int(r.height) for r in conn.execute(select(funding_confirmed)).all()}
