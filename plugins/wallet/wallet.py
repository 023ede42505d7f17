"""The wallet's state machine: addresses from signd's BIP84 account, outputs from watchd's events,
spends built here and signed by signd. It never sees a private key.

Its own unconfirmed transactions are checked at start, at each block and every RESEND_INTERVAL:
one the backend's mempool lacks (evicted, or a restarted backend) is sent again. One that cannot
confirm any more (an input spent by another transaction in a block) is `conflicted`, and one the
user gives up on is `abandoned`: either way its inputs are spendable again and its outputs gone.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from typing import Any

from embit.bip32 import HARDENED_INDEX, HDKey
from embit.finalizer import finalize_psbt
from embit.psbt import PSBT
from embit.script import p2wpkh
from embit.transaction import Transaction
from sqlalchemy import delete, func, insert, select, update

from lnp_plugin_api import RpcError, ServiceContext
from lnp_plugin_api.chain import BROADCAST_REJECTED, ChainClient
from lnp_plugin_api.chains import embit_network
from lnp_plugin_api.services import ChainWatch, Signer

from . import storage as db
from .builder import Coin, WalletError, build_psbt, dust_limit, script_for, select as select_coins

log = logging.getLogger("lnp.wallet")
OWNER = "wallet"
COINBASE_MATURITY = 100
NULL_TXID = "00" * 32
RESEND_INTERVAL = 60.0  # seconds between checks of the unconfirmed transactions when no block comes
NOT_SENT = ("reserved", "released")   # ours, not sent by us: seen on the network, it was sent after all
GIVEN_UP = ("abandoned", "conflicted")  # ours, given up: only a block brings it back (a mempool sighting
                                        # may be one from before it was given up)


class Wallet:
    """One node's on-chain wallet."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.network = ctx.node.network
        self.net = embit_network(self.network)
        self.gap = int(ctx.config["gap_limit"])
        self.min_feerate = float(ctx.config["min_feerate"])
        self.max_feerate = float(ctx.config["max_feerate"])
        self.lock = threading.RLock()
        self.signer = Signer(ctx)
        self.watchd = ChainWatch(ctx, OWNER)
        info = self.signer.wallet(timeout=60)
        self.account = HDKey.from_string(info.xpub)
        self.fingerprint = bytes.fromhex(info.fingerprint)
        coin = 0 if self.network == "mainnet" else 1
        self.account_path = [84 + HARDENED_INDEX, coin + HARDENED_INDEX, HARDENED_INDEX]
        self.descriptors = info.descriptors
        self.chain = ChainClient(ctx)
        with ctx.storage.begin() as conn:  # the last block whose events the wallet applied
            stored = conn.execute(select(db.state.c.value).where(db.state.c.key == "tip")).scalar()
        self.tip = int(stored) if stored is not None else \
            int(self.watchd.status(timeout=60).get("height") or 0)
        for branch in (0, 1):
            self._fill_gap(branch)
        # what watchd notified while the wallet was not running comes from the outbox once it serves
        self.mempool: dict[str, str] = {}  # our unconfirmed txid -> what the last check found
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.resender = threading.Thread(target=self._resend_loop, name="wallet-resend", daemon=True)
        self.resender.start()  # its first check is the one at start

    def close(self) -> None:
        """Stop checking the unconfirmed transactions."""
        self.stopping.set()
        self.wake.set()
        self.resender.join(10)

    # --- addresses -----------------------------------------------------------------------------

    def pubkey(self, branch: int, idx: int) -> Any:
        """The public key at account/branch/idx."""
        return self.account.derive([branch, idx]).key

    def _derive(self, branch: int, idx: int) -> tuple[str, str]:
        script = p2wpkh(self.pubkey(branch, idx))
        return script.data.hex(), script.address(self.net)

    def _fill_gap(self, branch: int) -> None:
        """Keep `gap` unused addresses of the branch derived and watched."""
        with self.ctx.storage.begin() as conn:
            rows = conn.execute(select(db.addresses).where(db.addresses.c.branch == branch)).all()
        unused = sum(1 for r in rows if not r.used)
        next_idx = max((r.idx for r in rows), default=-1) + 1
        for idx in range(next_idx, next_idx + max(0, self.gap - unused)):
            script, address = self._derive(branch, idx)
            self.watchd.watch_script(script)
            with self.ctx.storage.begin() as conn:
                conn.execute(insert(db.addresses).values(script=script, branch=branch, idx=idx, address=address,
                                                         used=False))

    def _next_unused(self, branch: int) -> tuple[str, str, int]:
        with self.ctx.storage.begin() as conn:
            issued = conn.execute(select(db.state.c.value).where(db.state.c.key == f"issued_{branch}")).scalar()
            row = conn.execute(select(db.addresses).where((db.addresses.c.branch == branch)
                                                          & (db.addresses.c.used == False)  # noqa: E712
                                                          & (db.addresses.c.idx > int(issued or -1)))
                               .order_by(db.addresses.c.idx).limit(1)).first()
            if row is None:
                raise RpcError(RpcError.INTERNAL_ERROR, "no address derived yet")
            conn.execute(delete(db.state).where(db.state.c.key == f"issued_{branch}"))
            conn.execute(insert(db.state).values(key=f"issued_{branch}", value=str(row.idx)))
        return row.script, row.address, row.idx

    def new_address(self) -> dict[str, str]:
        """A receive address not handed out before."""
        with self.lock:
            script, address, idx = self._next_unused(0)
            if self._unused_after(0, idx) < self.gap // 2:
                self._fill_gap(0)
            return {"address": address, "path": f"m/84h/{self.account_path[1] - HARDENED_INDEX}h/0h/0/{idx}"}

    def _unused_after(self, branch: int, idx: int) -> int:
        with self.ctx.storage.begin() as conn:
            return len(conn.execute(select(db.addresses.c.idx).where((db.addresses.c.branch == branch)
                                                                     & (db.addresses.c.idx > idx))).all())

    def _address_of(self, script: str) -> Any:
        with self.ctx.storage.begin() as conn:
            return conn.execute(select(db.addresses).where(db.addresses.c.script == script)).first()

    # --- what watchd tells us ------------------------------------------------------------------

    def on_event(self, name: str, body: dict[str, Any]) -> None:
        """Apply one of watchd's events (ours only, except the block events).

        They are durable: delivered in order, at least once, so one may come again after a restart
        (a suffix of what was delivered, in the same order). Each handler is idempotent, so
        applying it again gives the same state."""
        with self.lock:
            if name in ("block_connected", "block_disconnected"):  # after the block's other events
                self.tip = int(body["height"]) - (name == "block_disconnected")
                with self.ctx.storage.begin() as conn:
                    conn.execute(delete(db.state).where(db.state.c.key == "tip"))
                    conn.execute(insert(db.state).values(key="tip", value=str(self.tip)))
                self.wake.set()
                return
            if body.get("owner") != OWNER:
                return
            getattr(self, "_on_" + name)(body)

    def _given_up(self, conn: Any, txid: str, height: int | None) -> bool:
        """A mempool sighting of a transaction we gave up on: ignored."""
        state = conn.execute(select(db.transactions.c.state).where(db.transactions.c.txid == txid)).scalar()
        return height is None and state in GIVEN_UP

    def _on_script_paid(self, b: dict[str, Any]) -> None:
        tx = Transaction.parse(bytes.fromhex(b["tx"]))
        coinbase = tx.vin[0].txid.hex() == NULL_TXID
        with self.ctx.storage.begin() as conn:
            if self._given_up(conn, b["txid"], b["height"]):
                return
            found = conn.execute(select(db.utxos).where((db.utxos.c.txid == b["txid"]) & (db.utxos.c.vout == b["vout"]))
                                 ).first()
            if found is None:
                conn.execute(insert(db.utxos).values(txid=b["txid"], vout=b["vout"], value_sat=b["value_sat"],
                                                     script=b["script"], height=b["height"], coinbase=coinbase))
            elif b["height"] is not None:  # mined (a mempool sighting never undoes a confirmation)
                conn.execute(update(db.utxos).where((db.utxos.c.txid == b["txid"]) & (db.utxos.c.vout == b["vout"]))
                             .values(height=b["height"]))
            known = conn.execute(select(db.transactions).where(db.transactions.c.txid == b["txid"])).first()
            if known is None:
                conn.execute(insert(db.transactions).values(txid=b["txid"], raw=b["tx"], height=b["height"],
                                                            created_at=time.time(), net_sat=0,
                                                            state="seen"))
            else:
                values: dict[str, Any] = {"height": b["height"], "conflict": None} if b["height"] is not None else {}
                if known.state in NOT_SENT or (known.state in GIVEN_UP and b["height"] is not None):
                    values["state"] = "broadcast"  # ours, and it reached the network after all
                if values:
                    conn.execute(update(db.transactions).where(db.transactions.c.txid == b["txid"]).values(**values))
            row = conn.execute(update(db.addresses).where(db.addresses.c.script == b["script"])
                               .values(used=True).returning(db.addresses.c.branch)).first()
        self.watchd.watch_outpoint(b["txid"], b["vout"])
        if row is not None:
            self._fill_gap(row.branch)

    def _on_script_unpaid(self, b: dict[str, Any]) -> None:
        with self.ctx.storage.begin() as conn:
            ours = conn.execute(select(db.transactions.c.state).where(db.transactions.c.txid == b["txid"])).scalar()
            where = (db.utxos.c.txid == b["txid"]) & (db.utxos.c.vout == b["vout"])
            if ours in ("broadcast", "reserved"):  # our own transaction: back to the mempool, output stays
                conn.execute(update(db.utxos).where(where).values(height=None))
            else:
                conn.execute(delete(db.utxos).where(where))
            conn.execute(update(db.transactions).where(db.transactions.c.txid == b["txid"]).values(height=None))

    def _on_outpoint_spent(self, b: dict[str, Any]) -> None:
        txid, vout = b["outpoint"].split(":")
        spender = b["spending_txid"]
        with self.ctx.storage.begin() as conn:
            if self._given_up(conn, spender, b["height"]):
                return
            where = (db.utxos.c.txid == txid) & (db.utxos.c.vout == int(vout))
            ours = [t for t, tx in self._pending(conn).items() if t != spender
                    and any(f"{vin.txid.hex()}:{vin.vout}" == b["outpoint"] for vin in tx.vin)]
            for other in ours:  # another transaction spends an input of our unconfirmed one
                if b["height"] is None:  # in the mempool only: ours was replaced there, but may still confirm
                    log.warning("transaction %s replaced in the mempool by %s", other, spender)
                    conn.execute(update(db.transactions).where(db.transactions.c.txid == other)
                                 .values(conflict=spender))
                else:
                    gone = self._give_up(conn, other, "conflicted", spender)
                    log.warning("transaction %s can no longer confirm (%s in block %d spends its input %s): "
                                "released %s", other, spender, b["height"], b["outpoint"], ", ".join(gone))
            if not ours or b["height"] is not None:  # a mempool sighting leaves the output with our own spend
                conn.execute(update(db.utxos).where(where).values(spent_by=spender, reserved_by=None))
            known = conn.execute(select(db.transactions).where(db.transactions.c.txid == b["spending_txid"])).first()
            if known is None:
                conn.execute(insert(db.transactions).values(txid=b["spending_txid"], raw=b["spending_tx"],
                                                            height=b["height"], created_at=time.time(),
                                                            net_sat=0, state="seen"))
            else:
                values = {"height": b["height"], "conflict": None} if b["height"] is not None else {}
                if known.state in NOT_SENT or (known.state in GIVEN_UP and b["height"] is not None):
                    values["state"] = "broadcast"
                if values:
                    conn.execute(update(db.transactions).where(db.transactions.c.txid == b["spending_txid"])
                                 .values(**values))

    def _on_outpoint_unspent(self, b: dict[str, Any]) -> None:
        txid, vout = b["outpoint"].split(":")
        with self.ctx.storage.begin() as conn:
            state = conn.execute(select(db.transactions.c.state).where(db.transactions.c.txid == b["spending_txid"])
                                 ).scalar()
            conn.execute(update(db.transactions).where(db.transactions.c.txid == b["spending_txid"]).values(height=None))
            if state != "broadcast":  # not ours: the output is ours to spend again
                conn.execute(update(db.utxos).where((db.utxos.c.txid == txid) & (db.utxos.c.vout == int(vout)))
                             .values(spent_by=None))

    def _on_tx_depth(self, b: dict[str, Any]) -> None:
        with self.ctx.storage.begin() as conn:
            conn.execute(update(db.transactions).where(db.transactions.c.txid == b["txid"]).values(height=b["height"]))

    def _on_tx_unconfirmed(self, b: dict[str, Any]) -> None:
        with self.ctx.storage.begin() as conn:
            conn.execute(update(db.transactions).where(db.transactions.c.txid == b["txid"]).values(height=None))
        self.wake.set()  # a reorg took our payment out: it is sent again if the mempool lacks it

    # --- our unconfirmed transactions ----------------------------------------------------------

    def _pending(self, conn: Any) -> dict[str, Transaction]:
        """Our sent, unconfirmed transactions."""
        rows = conn.execute(select(db.transactions.c.txid, db.transactions.c.raw)
                            .where((db.transactions.c.state == "broadcast") & db.transactions.c.height.is_(None))
                            ).all()
        return {r.txid: Transaction.parse(bytes.fromhex(r.raw)) for r in rows}

    def _give_up(self, conn: Any, txid: str, state: str, conflict: str | None) -> list[str]:
        """Our unconfirmed `txid` will not confirm: it and our transactions spending its outputs take
        `state`; their inputs are ours to spend again and their outputs are gone. Returns the txids."""
        pending = self._pending(conn)
        todo, done = [txid], []
        while todo:
            t = todo.pop()
            if t in done:
                continue
            done.append(t)
            conn.execute(update(db.transactions).where(db.transactions.c.txid == t)
                         .values(state=state, conflict=conflict))
            conn.execute(update(db.utxos).where(db.utxos.c.spent_by == t).values(spent_by=None))
            conn.execute(delete(db.utxos).where((db.utxos.c.txid == t) & db.utxos.c.height.is_(None)))
            todo += [c for c, tx in pending.items() if any(vin.txid.hex() == t for vin in tx.vin)]
        return done

    def _resend_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.resend()
            except RpcError as e:  # the backend or watchd not answering (watchd reports it): next time
                log.debug("unconfirmed transactions not checked: %s", e.message)
            except Exception:
                log.exception("checking the unconfirmed transactions failed")
            self.wake.wait(RESEND_INTERVAL)
            self.wake.clear()

    def resend(self) -> None:
        """Send again each of our unconfirmed transactions the backend's mempool lacks, parents first."""
        # A transaction just mined is not missing: only check once watchd has the backend's tip, and
        # the wallet has applied watchd's events up to it (block events come after the block's others).
        watched = self.watchd.status()["height"]
        if watched is None or watched < self.chain.info().height or self.tip < watched:
            return  # watchd or the wallet is catching up: checked again at the next block event
        with self.ctx.storage.begin() as conn:
            rows = conn.execute(select(db.transactions.c.txid, db.transactions.c.raw)
                                .where((db.transactions.c.state == "broadcast") & db.transactions.c.height.is_(None))
                                .order_by(db.transactions.c.created_at)).all()
        self.mempool = {r.txid: self.mempool[r.txid] for r in rows if r.txid in self.mempool}
        for r in rows:
            if self.chain.in_mempool(r.txid):
                self.mempool[r.txid] = "in the mempool"
                continue
            with self.lock:
                with self.ctx.storage.begin() as conn:  # still ours to send (not abandoned, not mined meanwhile)
                    still = conn.execute(select(db.transactions.c.txid).where(
                        (db.transactions.c.txid == r.txid) & (db.transactions.c.state == "broadcast")
                        & db.transactions.c.height.is_(None))).first()
                if still is None:
                    continue
                try:
                    self.chain.broadcast(bytes.fromhex(r.raw))
                except RpcError as e:
                    if e.code != BROADCAST_REJECTED:
                        raise
                    if self.mempool.get(r.txid) != f"refused: {e.message}":  # warned once, not at every block
                        log.warning("transaction %s is not in the mempool and was refused again: %s", r.txid,
                                    e.message)
                    self.mempool[r.txid] = f"refused: {e.message}"
                    continue
            log.info("transaction %s was missing from the mempool (evicted, or the backend restarted): sent again",
                     r.txid)
            self.mempool[r.txid] = "sent again"

    def abandon(self, txid: str) -> dict[str, Any]:
        """Give up on our unconfirmed transaction `txid` (and ours spending its outputs): their inputs
        become spendable again. Refused once it is in a block. Should the network still have it and
        mine it, the wallet counts it again."""
        txid = txid.strip().lower()
        with self.lock, self.ctx.storage.begin() as conn:
            row = conn.execute(select(db.transactions).where(db.transactions.c.txid == txid)).first()
            if row is None or row.state in ("seen", "released"):
                raise WalletError(f"no transaction {txid!r} sent by this wallet")
            if row.height is not None:
                raise WalletError(f"transaction {txid} is in block {row.height}: it cannot be abandoned")
            if row.state == "reserved":
                raise WalletError(f"transaction {txid} was not sent: the service that funded it releases it")
            if row.state != "broadcast":
                return {"txid": txid, "state": row.state, "abandoned": []}
            done = self._give_up(conn, txid, "abandoned", None)
        log.info("abandoned %s", ", ".join(done))
        return {"txid": txid, "state": "abandoned", "abandoned": done}

    # --- reading -------------------------------------------------------------------------------

    def _coins(self, conn: Any, include_reserved: bool = False) -> list[Any]:
        rows = conn.execute(select(db.utxos, db.addresses.c.branch, db.addresses.c.idx)
                            .join(db.addresses, db.addresses.c.script == db.utxos.c.script)
                            .where(db.utxos.c.spent_by.is_(None))).all()
        return [r for r in rows if include_reserved or r.reserved_by is None]

    def _mature(self, r: Any) -> bool:
        return not r.coinbase or (r.height is not None and self.tip - r.height + 1 >= COINBASE_MATURITY)

    def funds(self) -> dict[str, Any]:
        """Balances and the unspent outputs."""
        with self.lock, self.ctx.storage.begin() as conn:
            rows = self._coins(conn, include_reserved=True)
        confirmed = sum(r.value_sat for r in rows if r.height is not None and self._mature(r))
        immature = sum(r.value_sat for r in rows if not self._mature(r))
        unconfirmed = sum(r.value_sat for r in rows if r.height is None)
        reserved = sum(r.value_sat for r in rows if r.reserved_by is not None)
        outputs = [{"txid": r.txid, "vout": r.vout, "value_sat": r.value_sat,
                    "address": self._derive(r.branch, r.idx)[1],
                    "confirmations": self.tip - r.height + 1 if r.height is not None else 0,
                    "coinbase": bool(r.coinbase), "reserved": r.reserved_by is not None} for r in rows]
        return {"confirmed_sat": confirmed, "unconfirmed_sat": unconfirmed, "immature_sat": immature,
                "reserved_sat": reserved, "height": self.tip, "outputs": outputs}

    def transactions(self, limit: int | None = None, since: int | None = None) -> list[dict[str, Any]]:
        """The wallet's transactions, newest first, with confirmations: at most `limit`, and only the
        unconfirmed ones and those confirmed at height `since` or above when it is given."""
        if limit is not None and limit < 1:
            raise WalletError("limit must be 1 or more")
        if since is not None and since < 0:
            raise WalletError("since must be a block height (0 or more)")
        query = select(db.transactions).where(db.transactions.c.state != "released")
        if since is not None:
            query = query.where(db.transactions.c.height.is_(None) | (db.transactions.c.height >= since))
        query = query.order_by(db.transactions.c.created_at.desc(), db.transactions.c.txid)
        with self.ctx.storage.begin() as conn:
            rows = conn.execute(query.limit(limit) if limit is not None else query).all()
            # what a transaction did to the balance follows from the outputs it paid us and spent
            received = dict(conn.execute(select(db.utxos.c.txid, func.sum(db.utxos.c.value_sat))
                                         .group_by(db.utxos.c.txid)).all())
            spent = dict(conn.execute(select(db.utxos.c.spent_by, func.sum(db.utxos.c.value_sat))
                                      .where(db.utxos.c.spent_by.is_not(None)).group_by(db.utxos.c.spent_by)).all())

        def net(r: Any) -> int:
            if r.state == "reserved":  # not sent: its inputs are not spent yet
                return int(r.net_sat)
            return int(received.get(r.txid, 0)) - int(spent.get(r.txid, 0))

        def mempool(r: Any) -> str | None:  # what the last check of our unconfirmed transactions found
            return self.mempool.get(r.txid) if r.state == "broadcast" and r.height is None else None
        return [{"txid": r.txid, "net_sat": net(r), "fee_sat": r.fee_sat, "state": r.state, "label": r.label,
                 "height": r.height,
                 "confirmations": self.tip - r.height + 1 if r.height is not None else 0,
                 "mempool": mempool(r), "conflict": r.conflict} for r in rows]

    # --- spending ------------------------------------------------------------------------------

    def feerate(self, asked: float | None) -> float:
        """sat/vB: the asked one, or the estimate for 6 blocks, never below the floor."""
        if asked is not None:
            if not self.min_feerate <= asked <= self.max_feerate:
                raise WalletError(f"feerate must be {self.min_feerate:g}..{self.max_feerate:g} sat/vB")
            return asked
        estimates = self.chain.fees()
        rate = estimates.get(6) or estimates.get(12) or estimates.get(144) or 0
        return min(max(rate / 1000, self.min_feerate), self.max_feerate)

    def fund(self, outputs: list[tuple[bytes, int]], feerate: float | None, send_all: bool = False,
             label: str = "", purpose: str = "withdraw") -> dict[str, Any]:
        """Choose inputs, add change, have signd sign, and reserve the inputs; nothing is broadcast yet."""
        for script, value in outputs:
            if not send_all and value < dust_limit(script):
                raise WalletError(f"{value} sat is below the dust limit ({dust_limit(script)} sat) of that output")
        rate = self.feerate(feerate)
        with self.lock:
            with self.ctx.storage.begin() as conn:
                rows = [r for r in self._coins(conn) if self._mature(r)
                        and (r.height is not None or self._own_unconfirmed(conn, r.txid))]
            coins = [Coin(r.txid, r.vout, r.value_sat, bytes.fromhex(r.script), r.branch, r.idx) for r in rows]
            change_script, _, change_idx = self._next_unused(1)
            plan = select_coins(coins, outputs, rate, (bytes.fromhex(change_script), 1, change_idx), send_all)
            psbt = build_psbt(plan, self.fingerprint, self.account_path, self.tip, self.pubkey)
            signed = self.signer.sign_wallet_psbt(psbt.to_string(), purpose)
            tx = finalize_psbt(PSBT.from_string(signed))
            if tx is None:
                raise RpcError(RpcError.INTERNAL_ERROR, "signd did not sign every input")
            txid = tx.txid().hex()
            reservation = uuid.uuid4().hex
            change_value = plan.change[1] if plan.change else 0
            with self.ctx.storage.begin() as conn:  # persisted before anything is sent
                for c in plan.inputs:
                    conn.execute(update(db.utxos).where((db.utxos.c.txid == c.txid) & (db.utxos.c.vout == c.vout))
                                 .values(reserved_by=reservation))
                conn.execute(insert(db.transactions).values(
                    txid=txid, raw=tx.serialize().hex(), height=None, created_at=time.time(),
                    net_sat=change_value - sum(c.value_sat for c in plan.inputs), fee_sat=plan.fee_sat,
                    state="reserved", label=label))
                conn.execute(delete(db.state).where(db.state.c.key == f"reservation_{reservation}"))
                conn.execute(insert(db.state).values(key=f"reservation_{reservation}", value=json.dumps(
                    {"txid": txid, "change": [change_script, change_value, len(tx.vout) - 1] if plan.change else None})))
            return {"reservation": reservation, "txid": txid, "tx": tx.serialize().hex(), "fee_sat": plan.fee_sat,
                    "feerate": rate, "vbytes": plan.vbytes,
                    "change_vout": len(tx.vout) - 1 if plan.change else None}

    def fee_coin(self, min_sat: int) -> dict[str, Any]:
        """Reserve the smallest confirmed coin worth at least `min_sat` for a transaction another service
        builds and has signd sign (a channel's zero-fee HTLC transaction, an anchor CPFP): {reservation,
        txid, vout, value_sat, pubkey, key: [branch, index]}. The coin is the wallet's again when a
        transaction spending it is seen (or by `release`)."""
        if min_sat < 1:
            raise WalletError("min_sat must be positive")
        with self.lock, self.ctx.storage.begin() as conn:
            rows = sorted((r for r in self._coins(conn) if self._mature(r) and r.height is not None
                           and r.value_sat >= min_sat), key=lambda r: r.value_sat)
            if not rows:
                raise WalletError(f"no confirmed coin of at least {min_sat} sat to pay a fee with")
            coin, reservation = rows[0], uuid.uuid4().hex
            conn.execute(update(db.utxos).where((db.utxos.c.txid == coin.txid) & (db.utxos.c.vout == coin.vout))
                         .values(reserved_by=reservation))
            conn.execute(insert(db.state).values(key=f"reservation_{reservation}", value=json.dumps(
                {"txid": None, "change": None})))
        return {"reservation": reservation, "txid": coin.txid, "vout": coin.vout, "value_sat": coin.value_sat,
                "pubkey": self.pubkey(coin.branch, coin.idx).sec().hex(), "key": [coin.branch, coin.idx],
                "fingerprint": self.fingerprint.hex(), "account": list(self.account_path)}

    def sign_fee_coin(self, reservation: str, psbt: str) -> dict[str, Any]:
        """Have signd sign the coin `reservation` holds in `psbt` (base64): it must spend that coin, and
        name no other wallet key for an input (the wallet signs that coin and nothing else). {psbt}."""
        try:
            parsed = PSBT.from_string(psbt)
        except Exception:
            raise WalletError("psbt is not a valid base64 PSBT") from None
        with self.lock:
            with self.ctx.storage.begin() as conn:
                self._reservation(conn, reservation)
                held = conn.execute(select(db.utxos.c.txid, db.utxos.c.vout)
                                    .where(db.utxos.c.reserved_by == reservation)).first()
            if held is None:
                raise WalletError(f"reservation {reservation} holds no coin (spent or released)")
            spends = [(vin.txid.hex(), vin.vout) for vin in parsed.tx.vin]
            if (held.txid, held.vout) not in spends:
                raise WalletError("the transaction does not spend the reserved coin")
            if any(inp.bip32_derivations for k, inp in enumerate(parsed.inputs) if spends[k] != tuple(held)):
                raise WalletError("only the reserved coin may be signed")
            return {"psbt": self.signer.sign_wallet_psbt(psbt, "channel_fee")}

    def _own_unconfirmed(self, conn: Any, txid: str) -> bool:
        state = conn.execute(select(db.transactions.c.state).where(db.transactions.c.txid == txid)).scalar()
        return state == "broadcast"

    def _reservation(self, conn: Any, reservation: str) -> dict[str, Any]:
        raw = conn.execute(select(db.state.c.value).where(db.state.c.key == f"reservation_{reservation}")).scalar()
        if raw is None:
            raise WalletError(f"no reservation {reservation!r}")
        return json.loads(raw)

    def broadcast(self, reservation: str) -> dict[str, Any]:
        """Send a funded transaction; its inputs become spent and its change ours (unconfirmed).

        Refused by the network (BROADCAST_REJECTED): nothing changes, the reservation stands. No
        answer from the backend: it may have the transaction, so it counts as sent (and is sent
        again while the mempool lacks it), and the error says so."""
        with self.lock:
            with self.ctx.storage.begin() as conn:
                held = self._reservation(conn, reservation)
                raw = conn.execute(select(db.transactions.c.raw).where(db.transactions.c.txid == held["txid"])).scalar()
            txid, unsure = held["txid"], None
            try:
                self.chain.broadcast(bytes.fromhex(raw))
            except RpcError as e:
                if e.code == BROADCAST_REJECTED:
                    raise
                unsure = e
            with self.ctx.storage.begin() as conn:
                conn.execute(update(db.utxos).where(db.utxos.c.reserved_by == reservation)
                             .values(spent_by=txid, reserved_by=None))
                conn.execute(update(db.transactions).where(db.transactions.c.txid == txid).values(state="broadcast"))
                if held["change"]:
                    script, value, vout = held["change"]
                    seen = conn.execute(select(db.utxos.c.txid).where((db.utxos.c.txid == txid)
                                                                      & (db.utxos.c.vout == vout))).first()
                    if seen is None:  # not reported by watchd already (sent by someone else first)
                        conn.execute(insert(db.utxos).values(txid=txid, vout=vout, value_sat=value, script=script,
                                                             height=None, coinbase=False))
                    conn.execute(update(db.addresses).where(db.addresses.c.script == script).values(used=True))
                conn.execute(delete(db.state).where(db.state.c.key == f"reservation_{reservation}"))
            self.watchd.watch_txid(txid, [1])
            if held["change"]:
                self.watchd.watch_outpoint(txid, held["change"][2])
                self._fill_gap(1)
            if unsure is not None:
                raise RpcError(unsure.code, f"{unsure.message}; transaction {txid} is kept as sent, and sent again "
                               f"when the backend answers (`abandon {txid}` gives up on it)")
            return {"txid": txid}

    def release(self, reservation: str) -> dict[str, Any]:
        """Abandon a funded transaction that was not broadcast: its inputs are free again."""
        with self.lock, self.ctx.storage.begin() as conn:
            held = self._reservation(conn, reservation)
            conn.execute(update(db.utxos).where(db.utxos.c.reserved_by == reservation).values(reserved_by=None))
            conn.execute(update(db.transactions).where(db.transactions.c.txid == held["txid"]).values(state="released"))
            conn.execute(delete(db.state).where(db.state.c.key == f"reservation_{reservation}"))
        return {"released": reservation}

    def withdraw(self, address: str, amount: str, feerate: float | None) -> dict[str, Any]:
        """Pay AMOUNT sat (or `all`) to ADDRESS; returns the txid once the network has it."""
        script = script_for(address, self.network).data
        send_all = amount == "all"  # exactly: a sweep is never a guess from a near miss ("ALL", "al")
        if not send_all:
            if not re.fullmatch(r"-?[0-9]+", amount):
                raise WalletError(f"amount must be a number of sat or 'all', not {amount!r}")
            value = int(amount)
            if value <= 0:
                raise WalletError("amount must be positive")
        else:
            value = 0
        funded = self.fund([(script, value)], feerate, send_all, label=f"withdraw to {address}")
        try:
            sent = self.broadcast(funded["reservation"])
        except RpcError as e:
            if e.code == BROADCAST_REJECTED:  # otherwise it may be out there: kept as sent (see broadcast)
                self.release(funded["reservation"])
            raise
        return {"txid": sent["txid"], "fee_sat": funded["fee_sat"], "feerate": funded["feerate"], "tx": funded["tx"]}
