"""BOLT-2 cooperative close of a real lnp-host node, written with lnprototest's events, run by LnpRunner.

The node closes (its `close` RPC, lnprototest's `CloseChannel`) or is closed (lnprototest sends `shutdown`):
the shutdown exchange, the `closing_signed` negotiation with and without `fee_range`, and the mutual close
transaction the node broadcasts (`ExpectTx`). The closing transaction is built here with python-bitcoinlib as
BOLT-3 lays it ("Legacy Closing Transaction": version 2, the funding input with sequence 0xFFFFFFFF, each
side's balance minus the fee for the opener, outputs under the dust limit dropped, BIP69 order), from
lnprototest's own view of the balances (its `Commit`); each signature the node sends is checked against it
with the funding key the node was forced to use, and lnprototest signs it with its own. Also: a shutdown with
a script BOLT-2 does not allow (a warning, the channel stays), one that breaks the peer's
upfront_shutdown_script (the connection failed), and a shutdown while an HTLC is in flight (no negotiation
until it is settled). The module shares one regtest chain (lnp_runner's `chain` fixture).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import pytest

if os.environ.get("LNP_REQUIRE_LNPROTOTEST"):
    import lnprototest  # noqa: F401  (CI installs it: a missing one must fail, not skip)
lnprototest = pytest.importorskip("lnprototest")

from bitcoin.core import CMutableTransaction, CMutableTxIn, CMutableTxOut, COutPoint, CScript  # noqa: E402
from bitcoin.core import Hash160  # noqa: E402
from bitcoin.core.script import SIGHASH_ALL, SIGVERSION_WITNESS_V0, SignatureHash  # noqa: E402
from lnprototest import (AddHtlc, CloseChannel, Event, ExpectDisconnect, ExpectMsg, ExpectTx, Msg, Side,  # noqa: E402
                         bitfield)
from lnprototest.commit_tx import HTLC  # noqa: E402
from lnprototest.signature import Sig  # noqa: E402
from lnprototest.stash import (channel_id, commitsig_to_recv, commitsig_to_send, htlc_sigs_to_recv,  # noqa: E402
                               htlc_sigs_to_send, rcvd,
                               sent)
from lnprototest.utils import pubkey_of  # noqa: E402

from lnp_runner import LnpRunner, chain  # noqa: E402,F401 (chain: a fixture)
from test_conformance_bolt2 import (PEER_KEYS, PREIMAGE, STATIC_REMOTEKEY, CommitReceivedHtlc,  # noqa: E402
                                    NodeChannel, accepter_open, connected, open_channel, opener_open,
                                    remote_per_commitment_point, remote_per_commitment_secret, runner)

assert runner  # the fixture, imported for this module's tests
PEER_SCRIPT = "0014" + Hash160(bytes.fromhex(pubkey_of("30"))).hex()       # lnprototest's P2WPKH
OTHER_SCRIPT = "0014" + Hash160(bytes.fromhex(pubkey_of("31"))).hex()
P2PKH = "76a914" + "11" * 20 + "88ac"                                  # not a shutdown form (BOLT-2)
DUST = 546                                                             # both sides' dust limit


def closing_tx(runner: LnpRunner, event: Event, fee: int) -> CMutableTransaction:
    """BOLT-3's closing transaction for `fee`, from lnprototest's balances (its `Commit`) and the two
    shutdown scripts (ours sent, the node's received)."""
    commit = runner.get_stash(event, "Commit")
    funding = runner.get_stash(event, "Funding")
    node_script = bytes.fromhex(rcvd("shutdown.scriptpubkey")(runner, event, "scriptpubkey"))
    sats = {side: commit.amounts[side] // 1000 for side in (Side.local, Side.remote)}
    sats[commit.opener] -= fee
    outs = [(sats[Side.local], bytes.fromhex(PEER_SCRIPT)), (sats[Side.remote], node_script)]
    outs = sorted((o for o in outs if o[0] >= DUST), key=lambda o: (o[0], o[1]))
    return CMutableTransaction([CMutableTxIn(COutPoint(bytes.fromhex(funding.txid), funding.output_index),
                                             nSequence=0xFFFFFFFF)],
                               [CMutableTxOut(amount, CScript(script)) for amount, script in outs],
                               nLockTime=0, nVersion=2)


def close_sig(runner: LnpRunner, event: Event, fee: int, signer: Side) -> Sig:
    """`signer`'s signature of the closing transaction for `fee` (Side.local: lnprototest, remote: the node)."""
    funding = runner.get_stash(event, "Funding")
    tx = closing_tx(runner, event, fee)
    sighash = SignatureHash(funding.redeemscript(), tx, 0, SIGHASH_ALL, amount=funding.amount,
                            sigversion=SIGVERSION_WITNESS_V0)
    return Sig(funding.bitcoin_privkeys[signer].secret.hex(), sighash.hex())


def fee_of(fee: int | Callable) -> Callable[[LnpRunner, Event], int]:
    return lambda runner, event: fee(runner, event, "fee_satoshis") if callable(fee) else fee


def our_sig(fee: int | Callable) -> Callable[[LnpRunner, Event, str], Sig]:
    """lnprototest's signature of the closing transaction for `fee` (a number, or a stash lookup)."""
    return lambda runner, event, field: close_sig(runner, event, fee_of(fee)(runner, event), Side.local)


def closing_txid(fee: int | Callable) -> Callable[[LnpRunner, Event, str], str]:
    """The closing transaction's txid (internal byte order, as ExpectTx takes it)."""
    return lambda runner, event, field: closing_tx(runner, event, fee_of(fee)(runner, event)).GetTxid().hex()


def fee_range(lo: int | Callable, hi: int | Callable) -> Callable[[LnpRunner, Event, str], str]:
    def tlvs(runner: LnpRunner, event: Event, field: str) -> str:
        a, b = fee_of(lo)(runner, event), fee_of(hi)(runner, event)
        return "{fee_range={min_fee_satoshis=" + str(a) + ",max_fee_satoshis=" + str(b) + "}}"
    return tlvs


def signed_by_node(fee: int | None = None) -> Callable[[Any, Any, Any], None]:
    """if_match for the node's closing_signed: its signature is the node's funding key's, of the closing
    transaction for the fee it names (`fee`, if given), and it carries a fee_range around that fee."""
    def check(event: Any, msg: Any, runner: Any) -> None:
        f = msg.fields
        got = int(f["fee_satoshis"])
        assert fee is None or got == fee, f"fee {got}, expected {fee}"
        assert close_sig(runner, event, got, Side.remote) == f["signature"], "not the node's signature of the close"
        r = f["tlvs"]["fee_range"]
        assert r["min_fee_satoshis"] <= got <= r["max_fee_satoshis"], r
    return check


def says(text: str) -> Callable[[Any, Any, Any], None]:
    def check(event: Any, msg: Any, runner: Any) -> None:
        assert text in bytes(msg.fields["data"]).decode(errors="replace"), msg.to_str()
    return check


def node_shutdown() -> ExpectMsg:
    """The node's shutdown: a P2WPKH of its wallet (no upfront script: lnprototest does not advertise it)."""
    def p2wpkh(event: Any, msg: Any, runner: Any) -> None:
        script = bytes(msg.fields["scriptpubkey"])
        assert len(script) == 22 and script[:2] == b"\x00\x14", script.hex()
    return ExpectMsg("shutdown", channel_id=channel_id(), if_match=p2wpkh)


NODE_FEE = rcvd("closing_signed.fee_satoshis", int)     # the fee of the node's last closing_signed


def test_node_closes_as_opener(runner: LnpRunner) -> None:
    """The node (opener, all the funds) closes: shutdown both ways, its closing_signed with a fee_range, ours
    with its fee, and it broadcasts that closing transaction (one output: ours is 0)."""
    runner.run(connected() + opener_open() + [
        NodeChannel(state="normal"),
        CloseChannel(channel_id()),
        node_shutdown(),
        Msg("shutdown", channel_id=channel_id(), scriptpubkey=PEER_SCRIPT),
        ExpectMsg("closing_signed", channel_id=channel_id(), if_match=signed_by_node()),
        Msg("closing_signed", channel_id=channel_id(), fee_satoshis=NODE_FEE, signature=our_sig(NODE_FEE),
            tlvs=fee_range(NODE_FEE, NODE_FEE)),
        ExpectTx(closing_txid(NODE_FEE)),
        NodeChannel(state="closing"),
    ])


def test_peer_closes_with_fee_range(runner: LnpRunner) -> None:
    """lnprototest (the opener) closes: its closing_signed's fee is inside the node's range, so the node
    (not paying) answers the same fee with its signature and broadcasts."""
    runner.run(connected() + accepter_open() + [
        NodeChannel(state="normal"),
        Msg("shutdown", channel_id=channel_id(), scriptpubkey=PEER_SCRIPT),
        node_shutdown(),
        Msg("closing_signed", channel_id=channel_id(), fee_satoshis=2000, signature=our_sig(2000),
            tlvs=fee_range(1000, 20_000)),
        ExpectMsg("closing_signed", channel_id=channel_id(), fee_satoshis=2000, if_match=signed_by_node(2000)),
        ExpectTx(closing_txid(2000)),
        NodeChannel(state="closing", local_msat=0),
    ])


def test_peer_closes_without_fee_range(runner: LnpRunner) -> None:
    """The legacy negotiation: lnprototest offers a fee below anything the node accepts (1 sat, no
    fee_range); the node counters with a fee of its own range; lnprototest takes it (still without a
    fee_range) and the node broadcasts that transaction."""
    def countered(event: Any, msg: Any, runner: Any) -> None:
        assert int(msg.fields["fee_satoshis"]) > 1, msg.to_str()
        signed_by_node()(event, msg, runner)
    runner.run(connected() + accepter_open() + [
        Msg("shutdown", channel_id=channel_id(), scriptpubkey=PEER_SCRIPT),
        node_shutdown(),
        Msg("closing_signed", channel_id=channel_id(), fee_satoshis=1, signature=our_sig(1)),
        ExpectMsg("closing_signed", channel_id=channel_id(), if_match=countered),
        Msg("closing_signed", channel_id=channel_id(), fee_satoshis=NODE_FEE, signature=our_sig(NODE_FEE)),
        ExpectTx(closing_txid(NODE_FEE)),
        NodeChannel(state="closing"),
    ])


def test_shutdown_with_a_bad_script_is_refused(runner: LnpRunner) -> None:
    """BOLT-2: a shutdown script in no allowed form gets a warning and changes nothing; a good one is then
    answered."""
    runner.run(connected() + accepter_open() + [
        Msg("shutdown", channel_id=channel_id(), scriptpubkey=P2PKH),
        ExpectMsg("warning", channel_id=channel_id(), if_match=says("not a standard form")),
        NodeChannel(state="normal"),
        Msg("shutdown", channel_id=channel_id(), scriptpubkey=PEER_SCRIPT),
        node_shutdown(),
        NodeChannel(state="negotiating"),
    ])


def test_shutdown_breaking_the_upfront_script_fails_the_connection(runner: LnpRunner) -> None:
    """option_upfront_shutdown_script advertised by both: the node's accept_channel commits to a P2WPKH of
    its wallet; our shutdown to another script than the one our open_channel committed to gets a warning
    and the connection is closed, the channel left as it was."""
    features = bitfield(5, 12)

    def commits(event: Any, msg: Any, runner: Any) -> None:
        script = bytes(msg.fields["tlvs"]["upfront_shutdown_script"]["shutdown_scriptpubkey"])
        assert len(script) == 22 and script[:2] == b"\x00\x14", script.hex()
    opening = accepter_open()
    opening[0] = open_channel(tlvs="{upfront_shutdown_script={shutdown_scriptpubkey=" + PEER_SCRIPT
                              + "},channel_type={type=" + STATIC_REMOTEKEY + "}}")
    opening[1] = ExpectMsg("accept_channel", temporary_channel_id=sent(), if_match=commits)
    events = connected()
    events[-1] = Msg("init", globalfeatures="", features=features)
    runner.run(events + opening + [
        NodeChannel(state="normal"),
        Msg("shutdown", channel_id=channel_id(), scriptpubkey=OTHER_SCRIPT),
        ExpectMsg("warning", channel_id=channel_id(), if_match=says("upfront_shutdown_script")),
        ExpectDisconnect(),
        NodeChannel(state="normal"),
    ])


class SettleOfferedHtlc(Event):
    """`UpdateCommit` for the node's HTLC we fulfil: its amount moves to us in lnprototest's `Commit`."""

    def action(self, runner: LnpRunner) -> bool:
        super().action(runner)
        commit = runner.get_stash(self, "Commit")
        htlc = next(iter(commit.htlcs.values()))
        if not commit.del_htlc(htlc, xfer_funds=True):
            raise lnprototest.SpecFileError(self, "no HTLC to settle")
        commit.inc_commitnum()
        return True


def test_shutdown_while_an_htlc_is_in_flight(runner: LnpRunner) -> None:
    """The node's HTLC is in both commitments when we send shutdown: the node answers shutdown but does not
    negotiate until the HTLC is settled (our update_fulfill_htlc and the commitment dance, still allowed
    after shutdown); then, as the opener, it sends closing_signed for a transaction paying each side."""
    htlc_hash = HTLC(Side.remote, 0, PREIMAGE, 0, "00" * 1366).payment_hash()
    runner.run(connected() + opener_open() + [
        NodeChannel(state="normal"),
        AddHtlc(amount=100_000_000, preimage=PREIMAGE),
        ExpectMsg("update_add_htlc", channel_id=channel_id(), id=0, amount_msat=100_000_000, payment_hash=htlc_hash),
        CommitReceivedHtlc(),
        ExpectMsg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_recv(),
                  htlc_signature=htlc_sigs_to_recv()),
        Msg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=PEER_KEYS.per_commit_secret(0),
            next_per_commitment_point=PEER_KEYS.per_commit_point(2)),
        Msg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_send(), htlc_signature=htlc_sigs_to_send()),
        ExpectMsg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=remote_per_commitment_secret(0),
                  next_per_commitment_point=remote_per_commitment_point(2)),
        NodeChannel(state="normal", htlcs_in_flight=1),
        Msg("shutdown", channel_id=channel_id(), scriptpubkey=PEER_SCRIPT),
        node_shutdown(),
        NodeChannel(state="shutdown", htlcs_in_flight=1),     # no closing_signed while the HTLC is there
        Msg("update_fulfill_htlc", channel_id=channel_id(), id=0, payment_preimage=PREIMAGE),
        SettleOfferedHtlc(),
        Msg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_send(), htlc_signature=htlc_sigs_to_send()),
        ExpectMsg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=remote_per_commitment_secret(1),
                  next_per_commitment_point=remote_per_commitment_point(3)),
        ExpectMsg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_recv(), htlc_signature=htlc_sigs_to_recv()),
        Msg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=PEER_KEYS.per_commit_secret(1),
            next_per_commitment_point=PEER_KEYS.per_commit_point(3)),
        ExpectMsg("closing_signed", channel_id=channel_id(), if_match=signed_by_node()),
        Msg("closing_signed", channel_id=channel_id(), fee_satoshis=NODE_FEE, signature=our_sig(NODE_FEE),
            tlvs=fee_range(NODE_FEE, NODE_FEE)),
        ExpectTx(closing_txid(NODE_FEE)),
        NodeChannel(state="closing", remote_msat=100_000_000),
    ])
