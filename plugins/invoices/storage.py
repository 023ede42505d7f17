"""The invoices plugin's table: one row per invoice, its preimage kept here and nowhere else."""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Integer, MetaData, String, Table, Text

from lnp_plugin_api import StorageModels

metadata = MetaData()

invoices = Table(
    "invoices_invoices", metadata,
    Column("label", String(200), primary_key=True),
    Column("payment_hash", String(64), nullable=False, unique=True),
    Column("preimage", String(64), nullable=False),        # secret until paid: never logged nor listed
    Column("payment_secret", String(64), nullable=False),
    Column("bolt11", Text, nullable=False),
    Column("amount_msat", BigInteger, nullable=True),      # None: any amount
    Column("description", Text, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False),
    Column("min_final_cltv_expiry_delta", Integer, nullable=False),
    Column("status", String(8), nullable=False),           # unpaid | paid (expired is computed)
    Column("pay_index", Integer, nullable=True, unique=True),
    Column("received_msat", BigInteger, nullable=True),
    Column("paid_at", Float, nullable=True),
    Column("paid_by", String(200), nullable=True),         # "CHANNEL_ID:HTLC_ID": the same HTLC asked again
)

MODELS = StorageModels(metadata)
