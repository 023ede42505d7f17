"""tk_durable: writes state and durable events, one-way requests and wire messages in one transaction.

tk_sink (lnp_testkit.sink) records what reaches it, with the outbox's numbers.
"""
import time

from sqlalchemy import Column, Integer, MetaData, Table, func, select

from lnp_plugin_api import EventSpec, StorageModels, WireMessage, hookimpl, rpc_method

metadata = MetaData()
writes = Table("tk_durable_writes", metadata, Column("id", Integer, primary_key=True, autoincrement=True),
               Column("batch", Integer, nullable=False))


@rpc_method
def tk_durable_write(ctx, batch: int, n: int = 3, peer: str = "", fail: bool = False) -> dict:
    """In one transaction: a row of ours, N durable events, a one-way request to tk_sink, and with PEER
    a wire message (type 32771) per event. With FAIL the transaction fails: nothing may go out."""
    with ctx.transaction() as tx:
        tx.conn.execute(writes.insert().values(batch=batch))
        for i in range(n):
            tx.emit("tk_durable_event", {"batch": batch, "i": i})
            if peer:
                tx.send_wire(WireMessage(bytes.fromhex(peer), 32771, bytes([batch % 256, i % 256])))
        tx.request("tk_sink.note", {"batch": batch})
        if fail:
            raise ValueError("asked to fail")
    return {"written": n}


@rpc_method
def tk_durable_lossy(ctx, batch: int) -> dict:
    """A lossy event sent after the commit of a transaction."""
    with ctx.transaction() as tx:
        tx.emit("tk_lossy_event", {"batch": batch})
    return {"sent": True}


@rpc_method
def tk_durable_bench(ctx, n: int = 10000, per_tx: int = 500) -> dict:
    """Write N durable events in transactions of PER_TX and wait until every one is acknowledged."""
    from lnp_host.outbox import outbox  # the host's table: only to see when the rows are gone
    mine = (outbox.c.source == ctx.plugin) & (outbox.c.name == "tk_bench_event")
    start = time.perf_counter()
    for first in range(0, n, per_tx):
        with ctx.transaction() as tx:
            for i in range(first, min(n, first + per_tx)):
                tx.emit("tk_bench_event", {"i": i})
    while True:
        with ctx.storage.engine.connect() as conn:
            left = conn.execute(select(func.count()).select_from(outbox).where(mine)).scalar()
        if not left:
            break
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    return {"n": n, "seconds": elapsed, "per_second": n / elapsed}


@hookimpl
def lnp_service():
    return "durable"


@hookimpl
def lnp_rpc_methods():
    return [tk_durable_write, tk_durable_lossy, tk_durable_bench]


@hookimpl
def lnp_events():
    return [EventSpec("tk_durable_event", "{batch, i}", durable=True),
            EventSpec("tk_bench_event", "{i}", durable=True),
            EventSpec("tk_lossy_event", "{batch}")]


@hookimpl
def lnp_storage_models():
    return StorageModels(metadata)
