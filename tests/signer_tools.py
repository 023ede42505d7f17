"""A channel built by hand for signd's tests: the counterparty's keys and minimal BOLT-3 transactions
(embit), enough to exercise signd's channel policy without channeld's builder."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from lnp_plugin_api.bolt3 import (MAX_INDEX, OP_CHECKSIG, OP_CHECKSIGVERIFY, OP_DUP, OP_HASH160, derive_privkey,
                                  derive_pubkey, derive_revocation_pubkey, funding_script, obscuring_factor,
                                  offered_htlc_script, per_commitment_secret, point, push, received_htlc_script,
                                  to_local_script, to_remote_anchor_script)
from lnp_plugin_api.tx import SIGHASH_ALL, hash160_of_sha256, p2wpkh, p2wsh
from lnp_plugins.signd.keys import Keychain
from lnp_plugins.signd.sigs import sign

FUNDING_TXID = "aa" * 32
FUNDING_SAT = 1_000_000
HOLDER_DELAY, COUNTERPARTY_DELAY = 144, 6
PREIMAGE = bytes(range(32))
PAYMENT_HASH = hashlib.sha256(PREIMAGE).digest()


@dataclass
class Counterparty:
    """The other side's secrets, chosen by the test."""

    funding: bytes = b"\x11" * 32
    revocation: bytes = b"\x12" * 32
    payment: bytes = b"\x13" * 32
    delayed: bytes = b"\x14" * 32
    htlc: bytes = b"\x15" * 32
    seed: bytes = b"\x16" * 32

    def secret(self, n: int) -> bytes:
        return per_commitment_secret(self.seed, MAX_INDEX - n)

    def point(self, n: int) -> bytes:
        return point(self.secret(n))

    def basepoints(self) -> dict[str, str]:
        return {"revocation_basepoint": point(self.revocation).hex(), "payment_basepoint": point(self.payment).hex(),
                "delayed_payment_basepoint": point(self.delayed).hex(), "htlc_basepoint": point(self.htlc).hex()}


def params(them: Counterparty, channel_type: str = "static_remotekey", opener: str = "holder") -> dict:
    """ready_channel's params for a channel with `them`."""
    return {"funding_txid": FUNDING_TXID, "funding_vout": 0, "funding_sat": FUNDING_SAT,
            "counterparty_funding_pubkey": point(them.funding).hex(), "counterparty_basepoints": them.basepoints(),
            "holder_to_self_delay": HOLDER_DELAY, "counterparty_to_self_delay": COUNTERPARTY_DELAY,
            "channel_type": channel_type, "opener": opener}


class Channel:
    """Our keys (channel `index` of `keys`) and theirs; builds the transactions each side signs."""

    def __init__(self, keys: Keychain, index: int, them: Counterparty, channel_type: str = "static_remotekey") -> None:
        self.keys, self.index, self.them, self.type = keys, index, them, channel_type
        self.bp = {k: bytes.fromhex(v) for k, v in keys.basepoints(index).items()}
        self.factor = obscuring_factor(self.bp["payment_basepoint"], point(them.payment))  # we open

    def holder_point(self, n: int) -> bytes:
        return self.keys.per_commitment_point(self.index, n)

    def funding_script(self) -> bytes:
        return funding_script(self.bp["funding_pubkey"], point(self.them.funding))

    def commitment(self, n: int, outputs: list[tuple[bytes, int]], txid: str = FUNDING_TXID,
                   obscured: int | None = None) -> Transaction:
        """A commitment of number `n` paying `outputs` [(script_pubkey, sat)]."""
        o = n ^ self.factor if obscured is None else obscured
        vin = TransactionInput(bytes.fromhex(txid), 0, sequence=0x80 << 24 | (o >> 24) & 0xFFFFFF)
        return Transaction(version=2, vin=[vin], vout=[TransactionOutput(v, Script(s)) for s, v in outputs],
                           locktime=0x20 << 24 | o & 0xFFFFFF)

    # the counterparty's commitment (paying us to_remote) and ours
    def their_to_local(self, n: int) -> bytes:
        """The counterparty's to_local script on its commitment `n` (revocable with our basepoint)."""
        pcp = self.them.point(n)
        return to_local_script(derive_revocation_pubkey(self.bp["revocation_basepoint"], pcp), COUNTERPARTY_DELAY,
                                 derive_pubkey(point(self.them.delayed), pcp))

    def their_outputs(self, n: int, htlc_script: bytes | None = None) -> list[tuple[bytes, int]]:
        to_local = self.their_to_local(n)
        ours = self.bp["payment_basepoint"]
        to_remote = p2wsh(to_remote_anchor_script(ours)) if self.type == "anchors" else p2wpkh(ours)
        outs = [(p2wsh(to_local), 600_000), (to_remote, 390_000)]
        return outs + ([(p2wsh(htlc_script), 10_000)] if htlc_script else [])

    def our_to_local(self, n: int) -> bytes:
        pcp = self.holder_point(n)
        return to_local_script(derive_revocation_pubkey(point(self.them.revocation), pcp), HOLDER_DELAY,
                                 derive_pubkey(self.bp["delayed_payment_basepoint"], pcp))

    def our_outputs(self, n: int, htlc_script: bytes | None = None) -> list[tuple[bytes, int]]:
        outs = [(p2wsh(self.our_to_local(n)), 390_000), (p2wpkh(point(self.them.payment)), 600_000)]
        return outs + ([(p2wsh(htlc_script), 10_000)] if htlc_script else [])

    def htlc_script(self, ours: bytes, theirs: bytes, revocation: bytes = b"\x02" * 33) -> bytes:
        """A look-alike of an HTLC's witness script: it holds the hash of the revocation key and both HTLC
        keys, but is not BOLT-3's (nobody can take it with the revocation key)."""
        return (bytes([OP_DUP, OP_HASH160]) + push(hash160_of_sha256(revocation)) + bytes([0x87, 0x75]) + push(ours)
                + bytes([OP_CHECKSIGVERIFY]) + push(theirs) + bytes([OP_CHECKSIG]))

    def their_htlc_script(self, n: int) -> bytes:
        """An HTLC the counterparty offered on its commitment `n`: revocable with our revocation basepoint."""
        pcp = self.them.point(n)
        return offered_htlc_script(derive_revocation_pubkey(self.bp["revocation_basepoint"], pcp),
                                   derive_pubkey(point(self.them.htlc), pcp), derive_pubkey(self.bp["htlc_basepoint"], pcp),
                                   PAYMENT_HASH, self.type == "anchors")

    def our_htlc_script(self, n: int) -> bytes:
        """An HTLC we received on our commitment `n`: revocable with the counterparty's revocation basepoint."""
        pcp = self.holder_point(n)
        return received_htlc_script(derive_revocation_pubkey(point(self.them.revocation), pcp),
                                    derive_pubkey(self.bp["htlc_basepoint"], pcp), derive_pubkey(point(self.them.htlc), pcp),
                                    PAYMENT_HASH, 600_000, self.type == "anchors")

    def htlc_tx(self, commitment: Transaction, vout: int, pays: bytes, value: int) -> Transaction:
        seq = 1 if self.type == "anchors" else 0
        return Transaction(version=2, vin=[TransactionInput(commitment.txid(), vout, sequence=seq)],
                           vout=[TransactionOutput(value, Script(p2wsh(pays)))], locktime=0)

    def their_sig(self, tx: Transaction, secret: bytes = b"", script: bytes = b"", value: int = FUNDING_SAT,
                  flag: int = SIGHASH_ALL) -> bytes:
        """The counterparty's compact signature of input 0 (by default: the funding input)."""
        digest = tx.sighash_segwit(0, Script(script or self.funding_script()), value, flag)
        return sign(secret or self.them.funding, digest)

    def their_htlc_secret(self, n: int) -> bytes:
        """The counterparty's HTLC key on our commitment `n`."""
        return derive_privkey(self.them.htlc, self.holder_point(n))


def parse(text: str) -> Transaction:
    """A transaction from hex (embit's, to look into what signd returns)."""
    return Transaction.parse(bytes.fromhex(text))


def spend(prev_txid: bytes, vout: int, outputs: list[tuple[bytes, int]], sequence: int = 0xFFFFFFFF) -> Transaction:
    """A one-input transaction spending prev_txid:vout."""
    return Transaction(version=2, vin=[TransactionInput(prev_txid, vout, sequence=sequence)],
                       vout=[TransactionOutput(v, Script(s)) for s, v in outputs], locktime=0)
