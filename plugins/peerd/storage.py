"""peerd's table: every peer we have met, its last dialable address, and whether to keep it connected."""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Boolean, Column, Float, MetaData, String, Table, select, update

from lnp_plugin_api import Storage, StorageModels

metadata = MetaData()
peers = Table(
    "peerd_peers", metadata,
    Column("node_id", String(66), primary_key=True),
    Column("address", String(300), nullable=True),      # last address we reached it on (dialable)
    Column("persistent", Boolean, nullable=False, default=False),
    Column("features", String(200), nullable=False, default=""),
    Column("last_connected", Float, nullable=True),
    Column("last_direction", String(3), nullable=True),
)
MODELS = StorageModels(metadata, version=1)


@dataclass(frozen=True)
class KnownPeer:
    """A stored peer."""

    node_id: str
    address: str | None
    persistent: bool
    features: str
    last_connected: float | None
    last_direction: str | None


def _row(r: object) -> KnownPeer:
    return KnownPeer(r.node_id, r.address, bool(r.persistent), r.features, r.last_connected, r.last_direction)


def record_connection(storage: Storage, node_id: str, address: str | None, direction: str,
                      features: str) -> None:
    """Remember a completed connection; `address` only when it is one we can dial again."""
    values = {"features": features, "last_connected": time.time(), "last_direction": direction}
    if address is not None:
        values["address"] = address
    with storage.begin() as db:
        done = db.execute(update(peers).where(peers.c.node_id == node_id).values(**values)).rowcount
        if not done:
            db.execute(peers.insert().values(node_id=node_id, persistent=False, **values))


def set_persistent(storage: Storage, node_id: str, persistent: bool, address: str | None = None) -> None:
    """Mark a peer to be kept connected (or not); creates the row when needed."""
    values: dict[str, object] = {"persistent": persistent}
    if address is not None:
        values["address"] = address
    with storage.begin() as db:
        done = db.execute(update(peers).where(peers.c.node_id == node_id).values(**values)).rowcount
        if not done:
            db.execute(peers.insert().values(node_id=node_id, features="", **values))


def get(storage: Storage, node_id: str) -> KnownPeer | None:
    """One stored peer."""
    with storage.begin() as db:
        r = db.execute(select(peers).where(peers.c.node_id == node_id)).first()
    return _row(r) if r is not None else None


def all_peers(storage: Storage) -> list[KnownPeer]:
    """Every stored peer."""
    with storage.begin() as db:
        return [_row(r) for r in db.execute(select(peers).order_by(peers.c.node_id))]
