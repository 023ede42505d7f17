"""BOLT-2 conformance of a real lnp-host node (channeld), written with lnprototest's events, run by LnpRunner.

lnprototest plays the peer and builds every commitment with its own code (`Commit`, `UpdateCommit`), with the
channel secrets it expects of the node (`LnpRunner.get_keyset`): the basepoints and per-commitment points the
node sends, and each signature it makes, are checked against keys the node was forced to use
(`--dev-force-channel-secrets`). The node runs as `lnp-host run` on a regtest chain shared by the module.
Channels are `option_static_remotekey` (lnprototest 0.0.7 builds no zero-fee-HTLC anchor commitments).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterator

import pytest

if os.environ.get("LNP_REQUIRE_LNPROTOTEST"):
    import lnprototest  # noqa: F401  (CI installs it: a missing one must fail, not skip)
lnprototest = pytest.importorskip("lnprototest")

from lnprototest import (AcceptFunding, AddHtlc, Block, CheckEq, Commit, Connect,  # noqa: E402
                         CreateFunding, Disconnect, ExpectMsg, ExpectTx, FundChannel, KeySet, Msg, Side,
                         UpdateCommit, bitfield, msat,
                         remote_delayed_payment_basepoint, remote_funding_privkey, remote_funding_pubkey,
                         remote_htlc_basepoint, remote_payment_basepoint, remote_per_commitment_point,
                         remote_per_commitment_secret, remote_revocation_basepoint)
from lnprototest.stash import (channel_id, commitsig_to_recv, commitsig_to_send, funding, funding_tx,  # noqa: E402
                               funding_txid, htlc_sigs_to_recv, htlc_sigs_to_send, rcvd, sent)
from lnprototest.utils import pubkey_of  # noqa: E402
from lnprototest.utils.bitcoin_utils import funding_amount_for_utxo, tx_spendable, utxo  # noqa: E402

from lnprototest import Event  # noqa: E402
from lnprototest.commit_tx import HTLC  # noqa: E402

from lnp_plugin_api.chains import chain_hash  # noqa: E402
from lnp_runner import TIMEOUT, LnpRunner, RegtestChain, chain, wait_until  # noqa: E402,F401 (chain: a fixture)

STATIC_REMOTEKEY = bitfield(12)          # our peer's init features and the channel_type
REGTEST = chain_hash("regtest").hex()
PEER_FUNDING_KEY = "20"
PEER_KEYS = KeySet(revocation_base_secret="21", payment_base_secret="22", htlc_base_secret="24",
                   delayed_payment_base_secret="23", shachain_seed="00" * 32)


@pytest.fixture
def runner(pytestconfig: Any, chain: RegtestChain) -> Iterator[LnpRunner]:
    """An LnpRunner on the module's chain; the node's chain laid afresh if an earlier test changed it."""
    chain.reset()
    r = LnpRunner(pytestconfig, chain=chain)
    try:
        yield r
    finally:
        if r.is_running():
            r.stop()
        r.teardown()


def connected() -> list:
    """Fund lnprototest's coins (block 102), connect as peer 02 and exchange init (static_remotekey)."""
    return [Block(blockheight=102, txs=[tx_spendable]),
            Connect(connprivkey="02"),
            ExpectMsg("init"),
            Msg("init", globalfeatures="", features=STATIC_REMOTEKEY)]


def node_keys_checked() -> dict:
    """The node's basepoints and first point: those of the forced channel secrets."""
    return dict(funding_pubkey=remote_funding_pubkey(), revocation_basepoint=remote_revocation_basepoint(),
                payment_basepoint=remote_payment_basepoint(),
                delayed_payment_basepoint=remote_delayed_payment_basepoint(),
                htlc_basepoint=remote_htlc_basepoint(), first_per_commitment_point=remote_per_commitment_point(0))


def peer_keys() -> dict:
    return dict(funding_pubkey=pubkey_of(PEER_FUNDING_KEY), revocation_basepoint=PEER_KEYS.revocation_basepoint(),
                payment_basepoint=PEER_KEYS.payment_basepoint(),
                delayed_payment_basepoint=PEER_KEYS.delayed_payment_basepoint(),
                htlc_basepoint=PEER_KEYS.htlc_basepoint(), first_per_commitment_point=PEER_KEYS.per_commit_point(0))


def open_channel(**changes: Any) -> Msg:
    """lnprototest's open_channel (a static_remotekey channel of utxo 0), with `changes`."""
    fields = dict(chain_hash=REGTEST, temporary_channel_id="00" * 32, funding_satoshis=funding_amount_for_utxo(0),
                  push_msat=0, dust_limit_satoshis=546, max_htlc_value_in_flight_msat=4294967295,
                  channel_reserve_satoshis=9998, htlc_minimum_msat=0, feerate_per_kw=253, to_self_delay=5,
                  max_accepted_htlcs=483, channel_flags=1,
                  tlvs="{channel_type={type=" + STATIC_REMOTEKEY + "}}", **peer_keys())
    return Msg("open_channel", **{**fields, **changes})


def accepter_open() -> list:
    """lnprototest opens a channel to the node, funds it, and both sides exchange channel_ready."""
    return [
        open_channel(),
        ExpectMsg("accept_channel", temporary_channel_id=sent(), if_match=accept_within_limits,
                  minimum_depth=3, **node_keys_checked()),
        CreateFunding(*utxo(0), local_node_privkey="02", local_funding_privkey=PEER_FUNDING_KEY,
                      remote_node_privkey="01", remote_funding_privkey=remote_funding_privkey()),
        Commit(funding=funding(), opener=Side.local, local_keyset=PEER_KEYS,
               local_to_self_delay=rcvd("to_self_delay", int), remote_to_self_delay=sent("to_self_delay", int),
               local_amount=msat(sent("funding_satoshis", int)), remote_amount=0, local_dust_limit=546,
               remote_dust_limit=rcvd("dust_limit_satoshis", int), feerate=253,
               local_features=sent("init.features"), remote_features=rcvd("init.features")),
        Msg("funding_created", temporary_channel_id=rcvd(), funding_txid=funding_txid(), funding_output_index=0,
            signature=commitsig_to_send()),
        # the node's signature of lnprototest's commitment 0, checked by lnprototest's own builder
        ExpectMsg("funding_signed", channel_id=channel_id(), signature=commitsig_to_recv()),
        Block(blockheight=103, number=3, txs=[funding_tx()]),
        ExpectMsg("channel_ready", channel_id=channel_id(),
                  second_per_commitment_point=remote_per_commitment_point(1)),
        Msg("channel_ready", channel_id=channel_id(), second_per_commitment_point=PEER_KEYS.per_commit_point(1)),
    ]


def accept_within_limits(event: Any, msg: Any, runner: Any) -> None:
    """BOLT-2 on accept_channel: the node's limits are sane for the channel offered."""
    f = msg.fields
    assert f["dust_limit_satoshis"] >= 354, f  # BOLT-2: not below 354 sat
    assert f["dust_limit_satoshis"] <= f["channel_reserve_satoshis"], f
    # the reserve the node asks of us leaves us something, and is at least our dust limit
    assert 546 <= f["channel_reserve_satoshis"] <= funding_amount_for_utxo(0) // 10, f
    assert 1 <= f["max_accepted_htlcs"] <= 483, f
    assert f["to_self_delay"] > 0, f
    assert bytes(f["tlvs"]["channel_type"]["type"]).hex() == STATIC_REMOTEKEY, f


class NodeChannel(Event):
    """The node's `channels` RPC shows one channel with these fields (waited for, as the node may lag)."""

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.fields = fields

    def action(self, runner: LnpRunner) -> bool:
        super().action(runner)
        seen: list = []

        def matches() -> bool:
            seen[:] = runner.rpc("channels")["channels"]
            return len(seen) == 1 and all(seen[0].get(k) == v for k, v in self.fields.items())
        try:
            wait_until(matches, TIMEOUT, f"a channel with {self.fields}")
        except TimeoutError:
            raise lnprototest.EventError(self, f"channels: {seen}") from None
        return True


def test_open_as_accepter(runner: LnpRunner) -> None:
    runner.run(connected() + accepter_open()
               + [NodeChannel(state="normal", opener="remote", local_msat=0,
                              remote_msat=funding_amount_for_utxo(0) * 1000)])


def open_within_limits(event: Any, msg: Any, runner: Any) -> None:
    """BOLT-2 on the node's open_channel."""
    f = msg.fields
    assert 354 <= f["dust_limit_satoshis"] <= f["channel_reserve_satoshis"], f
    assert f["channel_reserve_satoshis"] <= 999_877 // 10, f
    assert 1 <= f["max_accepted_htlcs"] <= 483, f
    assert f["feerate_per_kw"] >= 253, f
    assert bytes(f["tlvs"]["channel_type"]["type"]).hex() == STATIC_REMOTEKEY, f


def opener_open() -> list:
    """The node opens a channel to lnprototest (fundchannel RPC), broadcasts the funding, channel_ready."""
    return [
        FundChannel(amount=999_877),
        ExpectMsg("open_channel", chain_hash=REGTEST, funding_satoshis=999_877, push_msat=0, channel_flags="01",
                  if_match=open_within_limits, **node_keys_checked()),
        Msg("accept_channel", temporary_channel_id=rcvd(), dust_limit_satoshis=546,
            max_htlc_value_in_flight_msat=4294967295, channel_reserve_satoshis=9998, htlc_minimum_msat=0,
            minimum_depth=3, max_accepted_htlcs=483, to_self_delay=5,
            tlvs="{channel_type={type=" + STATIC_REMOTEKEY + "}}", **peer_keys()),
        ExpectMsg("funding_created", temporary_channel_id=rcvd("temporary_channel_id")),
        AcceptFunding(rcvd("funding_created.funding_txid"),
                      funding_output_index=rcvd("funding_created.funding_output_index", int),
                      funding_amount=rcvd("open_channel.funding_satoshis", int), local_node_privkey="02",
                      local_funding_privkey=PEER_FUNDING_KEY, remote_node_privkey="01",
                      remote_funding_privkey=remote_funding_privkey()),
        Commit(funding=funding(), opener=Side.remote, local_keyset=PEER_KEYS,
               local_to_self_delay=rcvd("open_channel.to_self_delay", int),
               remote_to_self_delay=sent("accept_channel.to_self_delay", int), local_amount=0,
               remote_amount=msat(rcvd("open_channel.funding_satoshis", int)), local_dust_limit=546,
               remote_dust_limit=rcvd("open_channel.dust_limit_satoshis", int),
               feerate=rcvd("open_channel.feerate_per_kw", int), local_features=sent("init.features"),
               remote_features=rcvd("init.features")),
        # the node's signature of lnprototest's commitment 0, checked by lnprototest's own builder
        CheckEq(rcvd("funding_created.signature"), commitsig_to_recv()),
        Msg("funding_signed", channel_id=channel_id(), signature=commitsig_to_send()),
        ExpectTx(rcvd("funding_created.funding_txid")),
        Block(blockheight=103, number=3),
        ExpectMsg("channel_ready", channel_id=channel_id(),
                  second_per_commitment_point=remote_per_commitment_point(1)),
        Msg("channel_ready", channel_id=channel_id(), second_per_commitment_point=PEER_KEYS.per_commit_point(1)),
    ]


def test_open_as_opener(runner: LnpRunner) -> None:
    runner.run(connected() + opener_open()
               + [NodeChannel(state="normal", opener="local", remote_msat=0)])


# an HTLC from lnprototest's side; its onion is garbage, so the node fails it as malformed once committed
HTLC_IN = HTLC(Side.local, 500_000_000, "11" * 32, 200, "00" * 1366)


def add_htlc_dance() -> list:
    """lnprototest offers an HTLC and both commitments are renewed (commitment 1 of each side)."""
    return [
        Msg("update_add_htlc", channel_id=channel_id(), id=0, amount_msat=HTLC_IN.amount_msat,
            payment_hash=HTLC_IN.payment_hash(), cltv_expiry=HTLC_IN.cltv_expiry,
            onion_routing_packet=HTLC_IN.onion_routing_packet),
        UpdateCommit(new_htlcs=[(HTLC_IN, 0)]),
        Msg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_send(),
            htlc_signature=htlc_sigs_to_send()),
        ExpectMsg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=remote_per_commitment_secret(0),
                  next_per_commitment_point=remote_per_commitment_point(2)),
        ExpectMsg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_recv(),
                  htlc_signature=htlc_sigs_to_recv()),
        Msg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=PEER_KEYS.per_commit_secret(0),
            next_per_commitment_point=PEER_KEYS.per_commit_point(2)),
    ]


def test_add_htlc(runner: LnpRunner) -> None:
    runner.run(connected() + accepter_open() + add_htlc_dance() + [
        # irrevocably committed, the HTLC is failed: its onion's key is not a point (invalid_onion_key,
        # BADONION|PERM|6)
        ExpectMsg("update_fail_malformed_htlc", channel_id=channel_id(), id=0,
                  sha256_of_onion=hashlib.sha256(bytes(1366)).hexdigest(), failure_code=0xC006),
    ])


def reconnected() -> list:
    """Hang up and connect again as peer 02 (the funding coins are already on chain)."""
    return [Disconnect(), Connect(connprivkey="02"), ExpectMsg("init"),
            Msg("init", globalfeatures="", features=STATIC_REMOTEKEY)]


def test_reestablish_after_open(runner: LnpRunner) -> None:
    """BOLT-2 with option_data_loss_protect: the numbers and fields of a channel at commitment 0, and
    channel_ready sent again (next_commitment_number 1 on both sides)."""
    runner.run(connected() + accepter_open() + reconnected() + [
        ExpectMsg("channel_reestablish", channel_id=channel_id(), next_commitment_number=1,
                  next_revocation_number=0, your_last_per_commitment_secret="00" * 32,
                  my_current_per_commitment_point=remote_per_commitment_point(0)),
        Msg("channel_reestablish", channel_id=channel_id(), next_commitment_number=1, next_revocation_number=0,
            your_last_per_commitment_secret="00" * 32,
            my_current_per_commitment_point=PEER_KEYS.per_commit_point(0)),
        ExpectMsg("channel_ready", channel_id=channel_id(),
                  second_per_commitment_point=remote_per_commitment_point(1)),
        NodeChannel(state="normal"),
    ])


def test_reestablish_after_htlc(runner: LnpRunner) -> None:
    """After an HTLC committed both ways: the node's channel_reestablish names commitment 2 next, our
    revocation 1 next, the last secret we gave it and its current point; the channel goes on, and the
    node's removal of the HTLC (forgotten unsigned on the disconnection) is proposed again."""
    runner.run(connected() + accepter_open() + add_htlc_dance() + [
        # the node has taken our revoke_and_ack once it fails the irrevocably committed HTLC; we hang up
        # before signing that removal, so it is forgotten and proposed again
        ExpectMsg("update_fail_malformed_htlc", channel_id=channel_id(), id=0, failure_code=0xC006),
    ] + reconnected() + [
        ExpectMsg("channel_reestablish", channel_id=channel_id(), next_commitment_number=2,
                  next_revocation_number=1, your_last_per_commitment_secret=PEER_KEYS.per_commit_secret(0),
                  my_current_per_commitment_point=remote_per_commitment_point(1)),
        Msg("channel_reestablish", channel_id=channel_id(), next_commitment_number=2, next_revocation_number=1,
            your_last_per_commitment_secret=remote_per_commitment_secret(0),
            my_current_per_commitment_point=PEER_KEYS.per_commit_point(1)),
        ExpectMsg("update_fail_malformed_htlc", channel_id=channel_id(), id=0, failure_code=0xC006),
        NodeChannel(state="normal", htlcs_in_flight=1),
    ])


class CommitReceivedHtlc(Event):
    """`UpdateCommit` for the HTLC the node just offered (its fields known only once received)."""

    def action(self, runner: LnpRunner) -> bool:
        super().action(runner)
        f = runner.get_stash(self, "update_add_htlc").fields
        htlc = HTLC(Side.remote, f["amount_msat"], PREIMAGE, f["cltv_expiry"], bytes(f["onion_routing_packet"]).hex())
        commit = runner.get_stash(self, "Commit")
        if not commit.add_htlc(htlc, f["id"]):
            raise lnprototest.SpecFileError(self, f"htlc id {f['id']} exists already")
        commit.inc_commitnum()
        return True


PREIMAGE = "22" * 32


def test_node_offers_htlc(runner: LnpRunner) -> None:
    """The node (the opener, holding the funds) offers an HTLC (runner.addhtlc: its `pay` RPC): its
    update_add_htlc, then its commitment_signed with the signatures lnprototest's builder expects, our
    revoke_and_ack and commitment_signed, its revoke_and_ack."""
    htlc_hash = HTLC(Side.remote, 0, PREIMAGE, 0, "00" * 1366).payment_hash()
    runner.run(connected() + opener_open() + [
        NodeChannel(state="normal"),
        AddHtlc(amount=100_000_000, preimage=PREIMAGE),
        ExpectMsg("update_add_htlc", channel_id=channel_id(), id=0, amount_msat=100_000_000,
                  payment_hash=htlc_hash),
        CommitReceivedHtlc(),
        ExpectMsg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_recv(),
                  htlc_signature=htlc_sigs_to_recv()),
        Msg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=PEER_KEYS.per_commit_secret(0),
            next_per_commitment_point=PEER_KEYS.per_commit_point(2)),
        Msg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_send(),
            htlc_signature=htlc_sigs_to_send()),
        ExpectMsg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=remote_per_commitment_secret(0),
                  next_per_commitment_point=remote_per_commitment_point(2)),
        NodeChannel(state="normal", htlcs_in_flight=1),
    ])


REFUSALS = [
    ({"tlvs": "{channel_type={type=" + bitfield(12, 46) + "}}"}, "channel_type"),   # scid_alias, announced
    ({"channel_reserve_satoshis": 500}, "below our dust limit"),                        # BOLT-2: reserve < dust
    ({"dust_limit_satoshis": 353}, "dust_limit_satoshis"),                            # BOLT-2: below 354
    ({"to_self_delay": 60_000}, "to_self_delay"),                                     # over our maximum
    ({"max_accepted_htlcs": 484}, "max_accepted_htlcs"),                              # BOLT-2: over 483
    ({"chain_hash": "00" * 32}, ""),                                                  # another chain
]


def test_open_refused(runner: LnpRunner) -> None:
    """Each open_channel the node must refuse gets an `error` for its temporary channel saying why, and no
    accept_channel; the connection stays usable for the next one, and a good one is then accepted."""
    def says_why(reason: str) -> Any:
        def check(event: Any, msg: Any, runner: Any) -> None:
            assert reason in bytes(msg.fields["data"]).decode(errors="replace"), msg.to_str()
        return check

    events = connected()
    for i, (changes, reason) in enumerate(REFUSALS, start=1):
        temp = f"{i:064x}"
        events += [open_channel(temporary_channel_id=temp, **changes),
                   ExpectMsg("error", channel_id=temp, if_match=says_why(reason))]
    runner.run(events + [open_channel(), ExpectMsg("accept_channel", temporary_channel_id="00" * 32)])


def test_reestablish_retransmits_commitment_signed(runner: LnpRunner) -> None:
    """We hang up after the node's revoke_and_ack, as if its commitment_signed were lost: our
    channel_reestablish says we expect commitment 1 still, and the node sends the same commitment_signed
    again (the signatures lnprototest's builder expects); the dance then completes."""
    runner.run(connected() + accepter_open() + add_htlc_dance()[:4] + reconnected() + [
        ExpectMsg("channel_reestablish", channel_id=channel_id(), next_commitment_number=2,
                  next_revocation_number=0, your_last_per_commitment_secret="00" * 32,
                  my_current_per_commitment_point=remote_per_commitment_point(1)),
        Msg("channel_reestablish", channel_id=channel_id(), next_commitment_number=1, next_revocation_number=1,
            your_last_per_commitment_secret=remote_per_commitment_secret(0),
            my_current_per_commitment_point=PEER_KEYS.per_commit_point(0)),
        ExpectMsg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_recv(),
                  htlc_signature=htlc_sigs_to_recv()),
        Msg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=PEER_KEYS.per_commit_secret(0),
            next_per_commitment_point=PEER_KEYS.per_commit_point(2)),
        ExpectMsg("update_fail_malformed_htlc", channel_id=channel_id(), id=0, failure_code=0xC006),
    ])


@pytest.mark.parametrize("amount_msat, htlc_id", [(0, 0), (HTLC_IN.amount_msat, 1)],
                         ids=["below htlc_minimum_msat", "first id not 0"])
def test_add_htlc_refused(runner: LnpRunner, amount_msat: int, htlc_id: int) -> None:
    """BOLT-2: an update_add_htlc below the node's htlc_minimum_msat, or whose id does not follow the last
    one, fails the channel: an `error` for it, and the node puts its commitment on chain (`onchain`, the
    failure kept)."""
    runner.run(connected() + accepter_open() + [
        NodeChannel(state="normal"),
        Msg("update_add_htlc", channel_id=channel_id(), id=htlc_id, amount_msat=amount_msat,
            payment_hash=HTLC_IN.payment_hash(), cltv_expiry=HTLC_IN.cltv_expiry,
            onion_routing_packet=HTLC_IN.onion_routing_packet),
        ExpectMsg("error", channel_id=channel_id()),
        NodeChannel(state="onchain"),
    ])


def add_htlc_in(**changes: Any) -> Msg:
    """lnprototest's update_add_htlc of HTLC_IN as id 0, with `changes`."""
    fields = dict(channel_id=channel_id(), id=0, amount_msat=HTLC_IN.amount_msat, payment_hash=HTLC_IN.payment_hash(),
                  cltv_expiry=HTLC_IN.cltv_expiry, onion_routing_packet=HTLC_IN.onion_routing_packet)
    return Msg("update_add_htlc", **{**fields, **changes})


def test_a_retransmitted_update_counts_once_and_a_reused_id_fails_the_channel(runner: LnpRunner) -> None:
    """BOLT-2 allows retransmissions of unacknowledged updates: the same update_add_htlc twice is one HTLC
    (the node's revoke_and_ack shows it took lnprototest's commitment with ONE HTLC, its own commitment_signed
    signs one). An update_add_htlc reusing id 0 for another HTLC breaks "id increases by 1": an `error`,
    and the channel goes to chain."""
    runner.run(connected() + accepter_open() + [add_htlc_in(), add_htlc_in()] + add_htlc_dance()[1:] + [
        ExpectMsg("update_fail_malformed_htlc", channel_id=channel_id(), id=0, failure_code=0xC006),
        NodeChannel(state="normal", htlcs_in_flight=1),
        ExpectMsg("commitment_signed", channel_id=channel_id()),   # the node signs its removal
        add_htlc_in(amount_msat=HTLC_IN.amount_msat + 1),
        ExpectMsg("error", channel_id=channel_id()),
        NodeChannel(state="onchain"),
    ])


def test_an_update_sent_again_after_reestablish_counts_once(runner: LnpRunner) -> None:
    """The node took our update_add_htlc and commitment_signed, and revoked; we hang up and, as a peer that
    lost track, send the update_add_htlc again after channel_reestablish: the node ignores the copy (same
    id, same HTLC: it is in its log already) and the dance completes with one HTLC."""
    runner.run(connected() + accepter_open() + add_htlc_dance()[:4] + reconnected() + [
        ExpectMsg("channel_reestablish", channel_id=channel_id(), next_commitment_number=2,
                  next_revocation_number=0),
        Msg("channel_reestablish", channel_id=channel_id(), next_commitment_number=1, next_revocation_number=1,
            your_last_per_commitment_secret=remote_per_commitment_secret(0),
            my_current_per_commitment_point=PEER_KEYS.per_commit_point(0)),
        ExpectMsg("commitment_signed", channel_id=channel_id(), signature=commitsig_to_recv(),
                  htlc_signature=htlc_sigs_to_recv()),
        add_htlc_in(),
        Msg("revoke_and_ack", channel_id=channel_id(), per_commitment_secret=PEER_KEYS.per_commit_secret(0),
            next_per_commitment_point=PEER_KEYS.per_commit_point(2)),
        ExpectMsg("update_fail_malformed_htlc", channel_id=channel_id(), id=0, failure_code=0xC006),
        NodeChannel(state="normal", htlcs_in_flight=1),
    ])
