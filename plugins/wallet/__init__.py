"""wallet: the node's on-chain BIP84 descriptor wallet (keys in signd, chain through watchd).

RPC: newaddr, funds, withdraw ADDRESS SATS|all [--feerate SAT_PER_VB], transactions [--limit N] [--since HEIGHT],
abandon TXID.
Control requests for other services (channel funding):
    wallet.newaddr   -> {address, script, key: [branch, index]}              (signd checks sweeps by the key)
    wallet.fund      {outputs: [{address | script, value_sat}], feerate?, label?}
                     -> {reservation, txid, tx, fee_sat, change_vout}   inputs reserved, nothing sent
    wallet.broadcast {reservation} -> {txid}
    wallet.release   {reservation} -> {released}                         abandon: inputs free again
    wallet.fee_coin  {min_sat} -> {reservation, txid, vout, value_sat, pubkey, key: [branch, index]}
                     the smallest confirmed coin of at least min_sat, reserved for a transaction another
                     service builds (channel fees); free again once a spend of it is seen, or by release
    wallet.sign_fee_coin {reservation, psbt} -> {psbt}   signd signs that coin (only) in the PSBT
"""
from __future__ import annotations

from typing import Any

from lnp_plugin_api import (Field, PerContext, ServiceContext, Subscription, control_method, hookimpl,
                            rpc_method)
from lnp_plugin_api.services import SIGNER_REQUESTS

from . import storage
from .builder import WalletError, script_for
from .wallet import Wallet

WATCHD_EVENTS = ("block_connected", "block_disconnected", "script_paid", "script_unpaid", "outpoint_spent",
                 "outpoint_unspent", "tx_depth", "tx_unconfirmed")
_wallets: PerContext[Wallet] = PerContext("the wallet")
_wallet = _wallets.get


@rpc_method
def newaddr(ctx: ServiceContext) -> dict[str, str]:
    """A new receive address (BIP84, native segwit)."""
    return _wallet(ctx).new_address()


@rpc_method
def funds(ctx: ServiceContext) -> dict[str, Any]:
    """Confirmed, unconfirmed, immature (coinbase) and reserved balances, and the unspent outputs."""
    return _wallet(ctx).funds()


@rpc_method
def withdraw(ctx: ServiceContext, address: str, amount: int | str, feerate: float | None = None) -> dict[str, Any]:
    """Send AMOUNT sat (or `all`) to ADDRESS at FEERATE sat/vB (default: the 6-block estimate, with a
    floor); signals RBF. Returns the txid once the backend's mempool holds the transaction."""
    return _wallet(ctx).withdraw(address, str(amount), feerate)


@rpc_method
def transactions(ctx: ServiceContext, limit: int | None = None, since: int | None = None) -> list[dict[str, Any]]:
    """The wallet's transactions, newest first, with their effect on the balance, fee, confirmations,
    and for unconfirmed ones of ours what the last mempool check found: the LIMIT newest, and with
    SINCE only the unconfirmed ones and those confirmed at block height SINCE or later."""
    return _wallet(ctx).transactions(limit, since)


@rpc_method
def abandon(ctx: ServiceContext, txid: str) -> dict[str, Any]:
    """Give up on TXID, a transaction of this wallet that is not in a block (and on those of ours
    spending its outputs): their inputs become spendable again. If the network mines it anyway, the
    wallet counts it again."""
    return _wallet(ctx).abandon(txid)


@control_method("wallet.newaddr")
def _newaddr(ctx: ServiceContext) -> dict[str, Any]:
    w = _wallet(ctx)
    found = w.new_address()
    return {"address": found["address"], "script": script_for(found["address"], w.network).data.hex(),
            "key": [0, int(found["path"].rsplit("/", 1)[1])]}


@control_method("wallet.fund")
def _fund(ctx: ServiceContext, outputs: list[dict], feerate: float | None = None, label: str = "",
          purpose: str = "fund") -> dict[str, Any]:
    w = _wallet(ctx)
    scripts = []
    for o in outputs:
        if not isinstance(o.get("value_sat"), int) or isinstance(o.get("value_sat"), bool):
            raise WalletError("each output needs value_sat and an address or a script")
        try:
            script = bytes.fromhex(str(o["script"])) if "script" in o else script_for(str(o.get("address", "")),
                                                                                       w.network).data
        except ValueError:
            raise WalletError("an output's script must be hex") from None
        scripts.append((script, o["value_sat"]))
    if not scripts:
        raise WalletError("no outputs to fund")
    return w.fund(scripts, feerate, label=label, purpose=purpose)


@control_method("wallet.broadcast")
def _broadcast(ctx: ServiceContext, reservation: str) -> dict[str, Any]:
    return _wallet(ctx).broadcast(reservation)


@control_method("wallet.fee_coin")
def _fee_coin(ctx: ServiceContext, min_sat: int) -> dict[str, Any]:
    if not isinstance(min_sat, int) or isinstance(min_sat, bool):
        raise WalletError("min_sat must be an integer")
    return _wallet(ctx).fee_coin(min_sat)


@control_method("wallet.sign_fee_coin")
def _sign_fee_coin(ctx: ServiceContext, reservation: str, psbt: str) -> dict[str, Any]:
    return _wallet(ctx).sign_fee_coin(str(reservation), str(psbt))


@control_method("wallet.release")
def _release(ctx: ServiceContext, reservation: str) -> dict[str, Any]:
    return _wallet(ctx).release(reservation)


def _on_event(ctx: ServiceContext, event: Any) -> None:
    # a durable event: raising leaves it unacknowledged, and the outbox delivers it again
    _wallet(ctx).on_event(event.name, event.body)


@hookimpl
def lnp_service() -> str:
    return "wallet"


@hookimpl
def lnp_requires() -> list[str]:
    # keys and signatures from a signer, addresses watched by watchd, fees and broadcasts from a backend
    return [SIGNER_REQUESTS["wallet"], SIGNER_REQUESTS["sign_wallet_psbt"], "watchd.watch", "watchd.status",
            "chain.fees", "chain.broadcast"]


@hookimpl
def lnp_config_schema() -> dict:
    positive = lambda v: None if v > 0 else "must be greater than zero"  # noqa: E731
    return {"gap_limit": Field(int, 20, "unused addresses kept watched on each branch", check=positive),
            "min_feerate": Field(float, 1.0, "fee rate floor, sat/vB", check=positive),
            "max_feerate": Field(float, 1000.0, "fee rate ceiling, sat/vB", check=positive)}


@hookimpl
def lnp_storage_models() -> Any:
    return storage.MODELS


@hookimpl
def lnp_rpc_methods() -> list:
    return [newaddr, funds, withdraw, transactions, abandon]


@hookimpl
def lnp_subscriptions() -> list:
    return [_newaddr, _fund, _broadcast, _fee_coin, _sign_fee_coin, _release
            ] + [Subscription.event(name, _on_event) for name in WATCHD_EVENTS]


@hookimpl
def lnp_startup(ctx: ServiceContext) -> None:
    _wallets.set(ctx, Wallet(ctx))


@hookimpl
def lnp_shutdown(ctx: ServiceContext) -> None:
    w = _wallets.pop(ctx)
    if w is not None:
        w.close()
