"""signd's table: the signer's state of each channel (docs/keys.md, "Channel operations and policy").

One row per channel index: its state as JSON (parameters, the holder and counterparty commitments
signed, validated and revoked), and apart from it the HTLC transactions of the latest validated holder
commitment with the counterparty's signatures (long, written only when a holder commitment is
validated, read only to go to chain); written and committed before the answer that depends on it leaves.
"""
from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, Text, bindparam, inspect, select, text

from lnp_plugin_api import StorageModels

metadata = MetaData()

channels = Table(
    "signd_channels", metadata,
    Column("idx", Integer, primary_key=True),  # the channel index of its keys (m/1017'/C'/F'/0/idx)
    Column("state", Text, nullable=False),     # JSON: channel.ChannelState
    # JSON: [{tx, witness_script, amount_sat, signature}] of the holder commitment `holder_validated`
    Column("holder_htlcs", Text, nullable=False, server_default="[]"),
)

# built once: signd runs these several times per commitment round
UPDATE_STATE = channels.update().where(channels.c.idx == bindparam("b_idx")).values(state=bindparam("b_state"))
UPDATE_STATE_AND_HTLCS = channels.update().where(channels.c.idx == bindparam("b_idx")).values(
    state=bindparam("b_state"), holder_htlcs=bindparam("b_htlcs"))
INSERT = channels.insert().values(idx=bindparam("b_idx"), state=bindparam("b_state"),
                                  holder_htlcs=bindparam("b_htlcs"))


def _holder_htlcs_apart(conn: Any) -> None:
    """Schema 2: the state's `holder_htlcs` moves to its own column, so the other operations neither
    read nor rewrite it."""
    # SQLite runs this ALTER outside the transaction: a run interrupted after it finds the column there
    if "holder_htlcs" not in {c["name"] for c in inspect(conn).get_columns(channels.name)}:
        conn.execute(text(f"ALTER TABLE {channels.name} ADD COLUMN holder_htlcs TEXT NOT NULL DEFAULT '[]'"))
    for idx, state in conn.execute(select(channels.c.idx, channels.c.state)).all():
        doc = json.loads(state)
        if "holder_htlcs" in doc:  # else moved by an earlier run whose commit went through
            htlcs = doc.pop("holder_htlcs")
            conn.execute(UPDATE_STATE_AND_HTLCS, {"b_idx": idx, "b_state": json.dumps(doc),
                                                  "b_htlcs": json.dumps(htlcs)})


MODELS = StorageModels(metadata, version=2, migrations={2: _holder_htlcs_apart})
