"""The wallet's state machine: addresses from signd's BIP84 account, outputs from watchd's events,
spends built here and signed by signd. It never sees a private key."""
from __future__ import annotations

import json
import logging
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
from lnp_plugin_api.chain import ChainClient
from lnp_plugin_api.chains import embit_network

from . import storage as db
from .builder import Coin, WalletError, build_psbt, dust_limit, script_for, select as select_coins

log = logging.getLogger("lnp.wallet")
OWNER = "wallet"
COINBASE_MATURITY = 100
NULL_TXID = "00" * 32


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
        info = ctx.request("signd", "signd.wallet", {}, timeout=60)
        self.account = HDKey.from_string(info["xpub"])
        self.fingerprint = bytes.fromhex(info["fingerprint"])
        coin = 0 if self.network == "mainnet" else 1
        self.account_path = [84 + HARDENED_INDEX, coin + HARDENED_INDEX, HARDENED_INDEX]
        self.descriptors = info["descriptors"]
        self.chain = ChainClient(ctx)
        self.tip = int(ctx.request("watchd", "watchd.status", {}, timeout=60).get("height") or 0)
        with ctx.storage.begin() as conn:  # the last watchd notification applied
            self.applied = int(conn.execute(select(db.state.c.value).where(db.state.c.key == "watchd_seq")).scalar() or 0)
        for branch in (0, 1):
            self._fill_gap(branch)
        self.catch_up()  # what watchd notified while the wallet was not running

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
            self.ctx.request("watchd", "watchd.watch", {"kind": "script", "key": script, "owner": OWNER})
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

        Numbered notifications (`seq`) are applied strictly in order: one that arrives after a gap
        makes the wallet read what it missed from watchd first. Mempool sightings carry no number.
        """
        with self.lock:
            if name == "block_connected":
                self.tip = int(body["height"])
                return
            if name == "block_disconnected":
                self.tip = int(body["height"]) - 1
                return
            if body.get("owner") != OWNER:
                return
            if "seq" not in body:
                getattr(self, "_on_" + name)(body)
                return
            if int(body["seq"]) == self.applied + 1:
                self._apply(int(body["seq"]), name, body)
            else:
                self.catch_up()

    def _apply(self, seq: int, name: str, body: dict[str, Any]) -> None:
        if seq <= self.applied:
            return  # applied already
        getattr(self, "_on_" + name)(body)
        self.applied = seq
        if seq % 50 == 0:
            self.save_cursor()

    def save_cursor(self) -> None:
        """Record how far the notifications are applied, and let watchd forget them. Not after each
        one: the handlers are idempotent, so replaying a few after a crash gives the same state."""
        with self.ctx.storage.begin() as conn:
            conn.execute(delete(db.state).where(db.state.c.key == "watchd_seq"))
            conn.execute(insert(db.state).values(key="watchd_seq", value=str(self.applied)))
        self.ctx.request("watchd", "watchd.acknowledge", {"owner": OWNER, "seq": self.applied})

    def catch_up(self) -> None:
        """Apply every notification watchd holds for the wallet beyond the last one applied."""
        with self.lock:
            while True:
                missed = self.ctx.request("watchd", "watchd.notifications", {"owner": OWNER, "after": self.applied})
                for n in missed:
                    self._apply(int(n["seq"]), n["name"], n["body"])
                if len(missed) < 500:
                    break
            self.save_cursor()

    def _on_script_paid(self, b: dict[str, Any]) -> None:
        tx = Transaction.parse(bytes.fromhex(b["tx"]))
        coinbase = tx.vin[0].txid.hex() == NULL_TXID
        with self.ctx.storage.begin() as conn:
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
                values: dict[str, Any] = {"height": b["height"]} if b["height"] is not None else {}
                if known.state in ("reserved", "released"):  # ours, and it reached the network after all
                    values["state"] = "broadcast"
                if values:
                    conn.execute(update(db.transactions).where(db.transactions.c.txid == b["txid"]).values(**values))
            row = conn.execute(update(db.addresses).where(db.addresses.c.script == b["script"])
                               .values(used=True).returning(db.addresses.c.branch)).first()
        self.ctx.request("watchd", "watchd.watch", {"kind": "outpoint", "key": f"{b['txid']}:{b['vout']}",
                                                    "owner": OWNER})
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
        with self.ctx.storage.begin() as conn:
            where = (db.utxos.c.txid == txid) & (db.utxos.c.vout == int(vout))
            conn.execute(update(db.utxos).where(where).values(spent_by=b["spending_txid"], reserved_by=None))
            known = conn.execute(select(db.transactions).where(db.transactions.c.txid == b["spending_txid"])).first()
            if known is None:
                conn.execute(insert(db.transactions).values(txid=b["spending_txid"], raw=b["spending_tx"],
                                                            height=b["height"], created_at=time.time(),
                                                            net_sat=0, state="seen"))
            else:
                values = {"height": b["height"]} if b["height"] is not None else {}
                if known.state in ("reserved", "released"):
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
            row = conn.execute(select(db.transactions).where(db.transactions.c.txid == b["txid"])).first()
        if row is not None and row.state == "broadcast":  # a reorg took our payment out: send it again
            try:
                self.chain.broadcast(bytes.fromhex(row.raw))
            except RpcError as e:
                log.warning("rebroadcast of %s after a reorg failed: %s", b["txid"], e.message)

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

    def transactions(self) -> list[dict[str, Any]]:
        """The wallet's transactions, newest first, with confirmations."""
        with self.ctx.storage.begin() as conn:
            rows = conn.execute(select(db.transactions).where(db.transactions.c.state != "released")
                                .order_by(db.transactions.c.created_at.desc())).all()
            # what a transaction did to the balance follows from the outputs it paid us and spent
            received = dict(conn.execute(select(db.utxos.c.txid, func.sum(db.utxos.c.value_sat))
                                         .group_by(db.utxos.c.txid)).all())
            spent = dict(conn.execute(select(db.utxos.c.spent_by, func.sum(db.utxos.c.value_sat))
                                      .where(db.utxos.c.spent_by.is_not(None)).group_by(db.utxos.c.spent_by)).all())

        def net(r: Any) -> int:
            if r.state == "reserved":  # not sent: its inputs are not spent yet
                return int(r.net_sat)
            return int(received.get(r.txid, 0)) - int(spent.get(r.txid, 0))
        return [{"txid": r.txid, "net_sat": net(r), "fee_sat": r.fee_sat, "state": r.state, "label": r.label,
                 "height": r.height, "confirmations": self.tip - r.height + 1 if r.height is not None else 0}
                for r in rows]

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
            signed = self.ctx.request("signd", "signd.sign_psbt", {"psbt": psbt.to_string(), "purpose": purpose})
            tx = finalize_psbt(PSBT.from_string(signed["psbt"]))
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

    def _own_unconfirmed(self, conn: Any, txid: str) -> bool:
        state = conn.execute(select(db.transactions.c.state).where(db.transactions.c.txid == txid)).scalar()
        return state == "broadcast"

    def _reservation(self, conn: Any, reservation: str) -> dict[str, Any]:
        raw = conn.execute(select(db.state.c.value).where(db.state.c.key == f"reservation_{reservation}")).scalar()
        if raw is None:
            raise WalletError(f"no reservation {reservation!r}")
        return json.loads(raw)

    def broadcast(self, reservation: str) -> dict[str, Any]:
        """Send a funded transaction; its inputs become spent and its change ours (unconfirmed)."""
        with self.lock:
            with self.ctx.storage.begin() as conn:
                held = self._reservation(conn, reservation)
                raw = conn.execute(select(db.transactions.c.raw).where(db.transactions.c.txid == held["txid"])).scalar()
            txid = self.chain.broadcast(bytes.fromhex(raw))
            with self.ctx.storage.begin() as conn:
                conn.execute(update(db.utxos).where(db.utxos.c.reserved_by == reservation)
                             .values(spent_by=txid, reserved_by=None))
                conn.execute(update(db.transactions).where(db.transactions.c.txid == txid).values(state="broadcast"))
                if held["change"]:
                    script, value, vout = held["change"]
                    conn.execute(insert(db.utxos).values(txid=txid, vout=vout, value_sat=value, script=script,
                                                         height=None, coinbase=False))
                    conn.execute(update(db.addresses).where(db.addresses.c.script == script).values(used=True))
                conn.execute(delete(db.state).where(db.state.c.key == f"reservation_{reservation}"))
            self.ctx.request("watchd", "watchd.watch", {"kind": "txid", "key": txid, "owner": OWNER, "depths": [1]})
            if held["change"]:
                self.ctx.request("watchd", "watchd.watch", {"kind": "outpoint", "key": f"{txid}:{held['change'][2]}",
                                                            "owner": OWNER})
                self._fill_gap(1)
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
        send_all = amount.strip().lower() == "all"
        if not send_all:
            try:
                value = int(amount)
            except ValueError:
                raise WalletError(f"amount must be a number of sat or 'all', not {amount!r}") from None
            if value <= 0:
                raise WalletError("amount must be positive")
        else:
            value = 0
        funded = self.fund([(script, value)], feerate, send_all, label=f"withdraw to {address}")
        try:
            sent = self.broadcast(funded["reservation"])
        except RpcError:
            self.release(funded["reservation"])
            raise
        return {"txid": sent["txid"], "fee_sat": funded["fee_sat"], "feerate": funded["feerate"], "tx": funded["tx"]}
