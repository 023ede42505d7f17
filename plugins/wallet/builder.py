"""Building the wallet's transactions: addresses checked against the network, coin selection with
change, fees by virtual size, RBF signalling, and the PSBT signd signs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from embit import base58, bech32
from embit.psbt import PSBT, DerivationPath
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from lnp_plugin_api import RpcError
from lnp_plugin_api.chains import embit_network

RBF_SEQUENCE = 0xFFFFFFFD
INPUT_VBYTES = 68          # a P2WPKH input, signature included
OVERHEAD_VBYTES = 11       # version, counts, locktime, segwit marker


class WalletError(RpcError):
    """Bad input or an impossible spend; nothing was spent."""

    def __init__(self, message: str) -> None:
        super().__init__(RpcError.INVALID_PARAMS, message)


def script_for(address: str, network: str) -> Script:
    """The output script of `address`, refusing addresses of another network."""
    net = embit_network(network)
    address = address.strip()
    try:
        data = base58.decode_check(address)
    except Exception:
        data = None
    if data is not None:
        if len(data) != 21:
            raise WalletError(f"{address!r} is not a valid address")
        if data[:1] == net["p2pkh"]:
            return Script(b"\x76\xa9\x14" + data[1:] + b"\x88\xac")
        if data[:1] == net["p2sh"]:
            return Script(b"\xa9\x14" + data[1:] + b"\x87")
        raise WalletError(f"{address!r} is not an address of {network}")
    hrp = address.lower().split("1")[0] if "1" in address else ""
    if hrp != net["bech32"]:
        raise WalletError(f"{address!r} is not an address of {network}" if hrp else f"{address!r} is not an address")
    try:
        version, program = bech32.decode(hrp, address)
    except Exception:
        version, program = None, None
    if version is None or program is None or not 2 <= len(program) <= 40 or version > 16:
        raise WalletError(f"{address!r} is not a valid address")
    if version == 0 and len(program) not in (20, 32):
        raise WalletError(f"{address!r} is not a valid address")
    return Script(bytes([version + 0x50 if version else 0, len(program)]) + bytes(program))


def dust_limit(script: bytes) -> int:
    """Bitcoin Core's dust threshold at 3 sat/vB for this output type."""
    if len(script) == 22 and script[0] == 0:   # P2WPKH
        return 294
    if len(script) == 34 and script[0] in (0, 0x51):  # P2WSH, P2TR
        return 330
    if len(script) == 23:                       # P2SH
        return 540
    return 546


def output_vbytes(script: bytes) -> int:
    """The virtual size of an output paying to `script`."""
    return 8 + 1 + len(script)


@dataclass(frozen=True)
class Coin:
    """A spendable output of the wallet."""

    txid: str
    vout: int
    value_sat: int
    script: bytes
    branch: int
    idx: int


@dataclass
class Plan:
    """The chosen inputs, the outputs (the change last, if any) and the fee."""

    inputs: list[Coin]
    outputs: list[tuple[bytes, int]]
    change: tuple[bytes, int, int, int] | None  # script, value, branch, idx
    fee_sat: int
    vbytes: int


def select(coins: list[Coin], outputs: list[tuple[bytes, int]], feerate: float, change: tuple[bytes, int, int],
           send_all: bool = False) -> Plan:
    """Largest coins first until the outputs and the fee are covered; change only when it is not dust.

    With `send_all`, every coin is spent and the single output gets what the fee leaves.
    """
    if not coins:
        raise WalletError("no spendable funds")
    base = OVERHEAD_VBYTES + sum(output_vbytes(s) for s, _ in outputs)
    if send_all:
        vbytes = base + INPUT_VBYTES * len(coins)
        fee = _fee(vbytes, feerate)
        total = sum(c.value_sat for c in coins)
        script = outputs[0][0]
        if total - fee < dust_limit(script):
            raise WalletError(f"the balance ({total} sat) does not cover the fee ({fee} sat) and a non-dust output")
        return Plan(list(coins), [(script, total - fee)], None, fee, vbytes)
    target = sum(v for _, v in outputs)
    chosen: list[Coin] = []
    total = 0
    change_script = change[0]
    for coin in sorted(coins, key=lambda c: c.value_sat, reverse=True):
        chosen.append(coin)
        total += coin.value_sat
        vbytes = base + INPUT_VBYTES * len(chosen)
        fee_without = _fee(vbytes, feerate)
        if total < target + fee_without:
            continue
        with_change = vbytes + output_vbytes(change_script)
        fee_with = _fee(with_change, feerate)
        left = total - target - fee_with
        if left >= dust_limit(change_script):
            return Plan(chosen, list(outputs), (change_script, left, change[1], change[2]), fee_with, with_change)
        return Plan(chosen, list(outputs), None, total - target, vbytes)  # the dust goes to the fee
    need = target + _fee(base + INPUT_VBYTES * len(chosen), feerate)
    raise WalletError(f"insufficient funds: {total} sat spendable, {need} sat needed with the fee")


def _fee(vbytes: int, feerate: float) -> int:
    return int(vbytes * feerate + 0.999)


def build_psbt(plan: Plan, fingerprint: bytes, account_path: list[int], locktime: int,
               pubkey: Callable[[int, int], Any]) -> PSBT:
    """The unsigned transaction as a PSBT, with what signd needs: each input's UTXO and derivation,
    and the change output marked as ours so signd's policy plugins can tell it from a payment."""
    vin = [TransactionInput(bytes.fromhex(c.txid), c.vout, sequence=RBF_SEQUENCE) for c in plan.inputs]
    vout = [TransactionOutput(v, Script(s)) for s, v in plan.outputs]
    if plan.change is not None:
        vout.append(TransactionOutput(plan.change[1], Script(plan.change[0])))
    psbt = PSBT(Transaction(version=2, vin=vin, vout=vout, locktime=locktime))
    for inp, coin in zip(psbt.inputs, plan.inputs):
        inp.witness_utxo = TransactionOutput(coin.value_sat, Script(coin.script))
        inp.bip32_derivations[pubkey(coin.branch, coin.idx)] = DerivationPath(
            fingerprint, account_path + [coin.branch, coin.idx])
    if plan.change is not None:
        _, _, branch, idx = plan.change
        psbt.outputs[-1].bip32_derivations[pubkey(branch, idx)] = DerivationPath(
            fingerprint, account_path + [branch, idx])
    return psbt
