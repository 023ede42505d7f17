"""FAKE channeld for the unit tests of the invoices and pay plugins: it has no channel and talks to no peer.

It implements exactly the contract the real channeld offers them:
- the decision `htlc_accepted` (asked by `fake_channeld_receive`, which peels a test's onion with the node key
  through signd, as channeld does for a received HTLC, and builds the request body channeld sends);
- the control requests `channeld.add_htlc` and `channeld.add_htlcs` (HTLCs are stored, never sent; a peer must be declared first with
  `fake_channeld_add_peer`, else the request is refused);
- the durable event `htlc_resolved` (emitted by `fake_channeld_resolve`, as channeld does when an offered HTLC
  settles).
It also records the durable events of the invoices and pay plugins for the tests to read.
"""
import hashlib
import json
from concurrent.futures import Future

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, select

from lnp_plugin_api import (DecisionSpec, EventSpec, Fail, Resolve, RpcError, StorageModels, Subscription,
                            control_method, hookimpl, onion, rpc_method)
from lnp_plugin_api.services import Signer

metadata = MetaData()
peers = Table("fake_channeld_peers", metadata, Column("peer_id", String(66), primary_key=True))
offered = Table("fake_channeld_offered", metadata,
                Column("htlc_id", Integer, primary_key=True, autoincrement=True),
                Column("channel_id", String(64), nullable=False), Column("peer_id", String(66), nullable=False),
                Column("amount_msat", BigInteger, nullable=False), Column("payment_hash", String(64), nullable=False),
                Column("cltv_expiry", Integer, nullable=False), Column("onion", Text, nullable=False),
                Column("state", String(10), nullable=False))
events = Table("fake_channeld_events", metadata, Column("n", Integer, primary_key=True, autoincrement=True),
               Column("name", String(64), nullable=False), Column("body", Text, nullable=False))
RECORDED = ("invoice_paid", "payment_succeeded", "payment_failed")
mode = {"crash_after_store": False}   # the next add_htlc stores the HTLC, then fails without an answer


def channel_of(peer_id: str) -> str:
    return hashlib.sha256(bytes.fromhex(peer_id)).hexdigest()


@control_method("channeld.add_htlc")
def add_htlc(ctx, peer_id: str, amount_msat: int, payment_hash: str, cltv_expiry: int, onion: str,
             channel_id: str | None = None) -> dict:
    added = _add(ctx, peer_id, amount_msat, payment_hash, cltv_expiry, onion, channel_id)
    if mode["crash_after_store"]:
        mode["crash_after_store"] = False
        raise RuntimeError("fake channeld: stored the HTLC, then broke before answering")
    return added


@control_method("channeld.add_htlcs")
def add_htlcs(ctx, htlcs: list[dict]) -> dict:
    results = []
    crash, mode["crash_after_store"] = mode["crash_after_store"], False
    for h in htlcs:
        try:
            results.append(_add(ctx, **h))
        except RpcError as e:
            results.append({"error": {"code": e.code, "message": e.message}})
    if crash:
        raise RuntimeError("fake channeld: stored the HTLCs, then broke before answering")
    return {"results": results}


def _add(ctx, peer_id: str, amount_msat: int, payment_hash: str, cltv_expiry: int, onion: str,
         channel_id: str | None = None) -> dict:
    if len(bytes.fromhex(onion)) != 1366:
        raise RpcError(RpcError.INVALID_PARAMS, "an onion is 1366 bytes")
    with ctx.storage.begin() as conn:
        if conn.execute(select(peers).where(peers.c.peer_id == peer_id)).first() is None:
            raise RpcError(RpcError.REFUSED, f"no channel with {peer_id}")
        htlc_id = conn.execute(offered.insert().values(
            channel_id=channel_of(peer_id), peer_id=peer_id, amount_msat=amount_msat, payment_hash=payment_hash,
            cltv_expiry=cltv_expiry, onion=onion, state="offered")).inserted_primary_key[0]
    return {"channel_id": channel_of(peer_id), "htlc_id": htlc_id}


@rpc_method
def fake_channeld_add_peer(ctx, peer_id: str) -> dict:
    """Pretend to have a channel with PEER_ID."""
    with ctx.storage.begin() as conn:
        conn.execute(peers.insert().values(peer_id=peer_id))
    return {"channel_id": channel_of(peer_id)}


@rpc_method
def fake_channeld_offered(ctx) -> list:
    """The HTLCs `channeld.add_htlc` stored."""
    with ctx.storage.begin() as conn:
        return [dict(r._mapping) for r in conn.execute(select(offered).order_by(offered.c.htlc_id))]


@rpc_method
def fake_channeld_resolve(ctx, htlc_id: int, preimage: str | None = None, failure_onion: str | None = None,
                          failure_code: int | None = None) -> dict:
    """Settle an offered HTLC: emit `htlc_resolved` as channeld would."""
    with ctx.transaction() as tx:
        row = tx.conn.execute(select(offered).where(offered.c.htlc_id == htlc_id)).first()
        tx.conn.execute(offered.update().where(offered.c.htlc_id == htlc_id).values(state="resolved"))
        tx.emit("htlc_resolved", {"channel_id": row.channel_id, "htlc_id": htlc_id, "payment_hash": row.payment_hash,
                                  "amount_msat": row.amount_msat, "preimage": preimage,
                                  "failure_onion": failure_onion, "failure_code": failure_code})
    return {"resolved": htlc_id}


@rpc_method
def fake_channeld_crash_next(ctx) -> dict:
    """Make the next add_htlc store its HTLC and then fail (an internal error) instead of answering."""
    mode["crash_after_store"] = True
    return {"armed": True}


@rpc_method
def fake_channeld_emit(ctx, body: dict) -> dict:
    """Emit `htlc_resolved` with any BODY (a malformed one, for the tests)."""
    ctx.emit("htlc_resolved", body)
    return {"emitted": True}


@rpc_method
def fake_channeld_receive(ctx, peer_id: str, htlc_id: int, amount_msat: int, payment_hash: str, cltv_expiry: int,
                          current_height: int, onion_hex: str) -> Future:
    """Receive an HTLC: peel the onion with the node key (signd) and ask `htlc_accepted`; the outcome."""
    try:
        peeled = onion.process_onion(bytes.fromhex(onion_hex), bytes.fromhex(payment_hash), Signer(ctx).onion_ecdh)
    except onion.OnionError as e:
        raise RpcError(RpcError.INVALID_PARAMS, f"onion refused: {e}") from None
    p = peeled.payload
    body = {"channel_id": channel_of(peer_id), "peer_id": peer_id, "short_channel_id": "1x2x3", "htlc_id": htlc_id,
            "amount_msat": amount_msat, "payment_hash": payment_hash, "cltv_expiry": cltv_expiry,
            "current_height": current_height, "is_final": peeled.is_final,
            "next_onion": None if peeled.next_onion is None else peeled.next_onion.hex(),
            "payload": {"amt_to_forward": p.amt_to_forward, "outgoing_cltv_value": p.outgoing_cltv_value,
                        "short_channel_id": None,
                        "payment_secret": None if p.payment_secret is None else p.payment_secret.hex(),
                        "total_msat": p.total_msat,
                        "payment_metadata": None if p.payment_metadata is None else p.payment_metadata.hex(),
                        "unknown": {str(k): v.hex() for k, v in p.unknown.items()}}}
    out: Future = Future()

    def done(result) -> None:
        if isinstance(result, Resolve):
            out.set_result({"result": "resolve", "by": result.by, **result.payload})
        elif isinstance(result, Fail):
            out.set_result({"result": "fail", "by": result.by, "reason": result.reason,
                            "failure": (result.payload or {}).get("failure"),
                            "shared_secret": peeled.shared_secret.hex()})
        else:
            out.set_result({"result": "continue"})
    ctx.decide_async("htlc_accepted", body, on_done=done)
    return out


def record(ctx, event) -> None:
    with ctx.storage.begin() as conn:
        conn.execute(events.insert().values(name=event.name, body=json.dumps(event.body)))


@rpc_method
def fake_channeld_events(ctx) -> list:
    """The durable events of the invoices and pay plugins that reached this fake, in order."""
    with ctx.storage.begin() as conn:
        return [{"name": r.name, "body": json.loads(r.body)} for r in conn.execute(select(events).order_by(events.c.n))]


@hookimpl
def lnp_service():
    return "fakechanneld"


@hookimpl
def lnp_decisions():
    return [DecisionSpec("htlc_accepted", "FAKE channeld: an HTLC received", timeout=10.0)]


@hookimpl
def lnp_events():
    return [EventSpec("htlc_resolved", "FAKE channeld: an offered HTLC settled", durable=True)]


@hookimpl
def lnp_storage_models():
    return StorageModels(metadata)


@hookimpl
def lnp_rpc_methods():
    return [fake_channeld_add_peer, fake_channeld_offered, fake_channeld_resolve, fake_channeld_receive,
            fake_channeld_events, fake_channeld_emit, fake_channeld_crash_next]


@hookimpl
def lnp_subscriptions():
    return [add_htlc, add_htlcs] + [Subscription.event(name, record) for name in RECORDED]
