"""tk_sink: records the durable events and one-way requests that reach it (in its table, so a restart
keeps them), and can be told to fail its next deliveries."""
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, select
import json

from lnp_plugin_api import Subscription, StorageModels, hookimpl, rpc_method

metadata = MetaData()
received = Table("tk_sink_received", metadata, Column("n", Integer, primary_key=True, autoincrement=True),
                 Column("seq", Integer, nullable=True), Column("name", String(64), nullable=False),
                 Column("body", Text, nullable=False))
state = {"fail": 0, "bench": 0}


def _record(ctx, seq, name, body) -> None:
    if state["fail"] > 0:
        state["fail"] -= 1
        raise RuntimeError("tk_sink asked to fail")
    with ctx.storage.begin() as conn:
        conn.execute(received.insert().values(seq=seq, name=name, body=json.dumps(body)))


def on_event(ctx, event):
    _record(ctx, event.seq, event.name, event.body)


def on_bench(ctx, event):
    state["bench"] += 1


def note(ctx, body):
    _record(ctx, None, "note", body)
    return {"noted": True}


@rpc_method
def tk_sink_received(ctx) -> list:
    """What reached the sink, in arrival order: {seq, name, body}."""
    with ctx.storage.begin() as conn:
        return [{"seq": r.seq, "name": r.name, "body": json.loads(r.body)}
                for r in conn.execute(select(received).order_by(received.c.n))]


@rpc_method
def tk_sink_fail(ctx, n: int) -> dict:
    """Make the next N deliveries fail (the handler raises)."""
    state["fail"] = n
    return {"failing": n}


@hookimpl
def lnp_service():
    return "sink"


@hookimpl
def lnp_rpc_methods():
    return [tk_sink_received, tk_sink_fail]


@hookimpl
def lnp_storage_models():
    return StorageModels(metadata)


@hookimpl
def lnp_subscriptions():
    return [Subscription.event("tk_durable_event", on_event), Subscription.event("tk_lossy_event", on_event),
            Subscription.event("tk_bench_event", on_bench), Subscription.control("tk_sink.note", note)]
