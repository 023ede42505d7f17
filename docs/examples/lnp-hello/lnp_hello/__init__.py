"""hello: an example third-party plugin for lnp-host.

It adds the `hello` command, remembers every name it greeted in its own table, emits a
`greeted` event, and reacts to the host's `node_ready` event. It runs in a service of its own, so in
processes mode it is a process of its own.
"""
import os

from sqlalchemy import Column, Integer, MetaData, String, Table, select

from lnp_plugin_api import Event, EventSpec, Field, StorageModels, Subscription, hookimpl, rpc_method

metadata = MetaData()
greetings = Table("hello_greetings", metadata,
                  Column("name", String(100), primary_key=True),
                  Column("count", Integer, nullable=False))
seen = {"node_ready": 0}


@rpc_method
def hello(ctx, name: str = "world") -> dict:
    """Greet NAME and count how often it was greeted."""
    with ctx.storage.begin() as db:
        count = db.execute(select(greetings.c.count).where(greetings.c.name == name)).scalar() or 0
        if count:
            db.execute(greetings.update().where(greetings.c.name == name).values(count=count + 1))
        else:
            db.execute(greetings.insert().values(name=name, count=1))
    ctx.emit("greeted", {"name": name})
    return {"greeting": f"{ctx.config['greeting']} {name}", "times": count + 1,
            "node_ready_seen": seen["node_ready"], "service": ctx.service, "pid": os.getpid()}


def on_node_ready(ctx, event: Event) -> None:
    seen["node_ready"] += 1
    ctx.log.info("the node %s is ready", event.body["node_id"])


@hookimpl
def lnp_config_schema():
    return {"greeting": Field(str, "hello", "the word to greet with")}


@hookimpl
def lnp_rpc_methods():
    return [hello]


@hookimpl
def lnp_events():
    return [EventSpec("greeted", "someone was greeted; body: {name}")]


@hookimpl
def lnp_subscriptions():
    return [Subscription.event("node_ready", on_node_ready)]


@hookimpl
def lnp_storage_models():
    return StorageModels(metadata, version=1)
