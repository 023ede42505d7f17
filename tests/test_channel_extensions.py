"""A Bifrost extension adds an output without touching channeld: the pipeline, the update log and persistence
carry it like the built-in ones (tests/extra_output_ext.py)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from extra_output_ext import NAME, TLV_MAX, ExtraOutput, ExtraOutputExtension, ExtraTerms
from lnp_plugin_api.bolt_extensions import extensions_for, with_extensions
from lnp_plugin_api.channel import ANCHORS, STATIC_REMOTEKEY, CommitmentSpec, Side, Update, UpdateRefused
from lnp_plugin_api.channel_fees import budget, fee_for_weight
from lnp_plugin_api.channel_updates import UpdateLog
from lnp_plugin_api.commitment import build_commitment
from test_channel_updates import FUNDING_SAT, Node, deliver, make_params, pcp, settle

L, R = Side.LOCAL, Side.REMOTE
SCRIPT = bytes.fromhex("51")  # OP_TRUE: any script will do for the test


def negotiated(ours: int = 50_000, theirs: int = 40_000) -> ExtraTerms:
    a, b = ExtraOutputExtension(ours), ExtraOutputExtension(theirs)
    sent, received = a.open_tlvs("open_channel", {}), b.open_tlvs("accept_channel", {})
    terms = a.negotiate(sent, received)
    assert terms == b.negotiate(received, sent)
    assert isinstance(terms, ExtraTerms)
    return terms


def pair_with_extra(channel_type=ANCHORS) -> tuple[Node, Node]:
    exts = with_extensions(channel_type, [ExtraOutputExtension()])
    p = make_params(channel_type)
    spec = CommitmentSpec(2500, 600_000_000, FUNDING_SAT * 1000 - 600_000_000)
    states = {NAME: negotiated()}
    a = Node(1, p, UpdateLog.start(p, spec, exts, states), exts)
    b = Node(2, p.mirrored(), UpdateLog.start(p.mirrored(), spec.mirrored(), exts, states), exts)
    return a, b


def test_negotiation_through_tlvs() -> None:
    assert negotiated().max_sat == 40_000
    tlvs = ExtraOutputExtension().open_tlvs("open_channel", {})
    assert set(tlvs) == {TLV_MAX} and TLV_MAX % 2 == 1
    # The records travel in open_channel's TLV stream: an odd type the peer's codec keeps under its number.
    from lnp_plugin_api.wire import TlvStream
    stream = TlvStream().encode({str(t): v for t, v in tlvs.items()})
    assert {int(t): v for t, v in TlvStream().decode(stream).items()} == tlvs
    with pytest.raises(ValueError, match="did not offer"):
        ExtraOutputExtension().negotiate(tlvs, {})


def test_extension_goes_before_the_ordering() -> None:
    names = [e.name for e in with_extensions(ANCHORS, [ExtraOutputExtension()])]
    assert names == ["funding", "balances", "htlcs", "anchors", NAME, "bip69_cltv"]
    assert [e.name for e in extensions_for(STATIC_REMOTEKEY)] == ["funding", "balances", "htlcs", "bip69_cltv"]
    with pytest.raises(ValueError, match="twice"):
        with_extensions(ANCHORS, [ExtraOutputExtension(), ExtraOutputExtension()])


def test_extra_output_appears_in_both_commitments_in_bip69_order() -> None:
    a, b = pair_with_extra()
    assert a.propose(Update("set_extra", NAME, L, {"amount_sat": 1000, "script": SCRIPT.hex()}))
    assert a.add_htlc(5_000_000)
    settle(a, b)
    assert a.log.local == b.log.remote.mirrored() and a.log.entries == ()
    extra = a.log.local.ext[NAME]
    assert extra == ExtraOutput(L, 1000, SCRIPT)
    n = a.log.local_number
    mine = build_commitment(a.params, a.log.local, L, n, pcp(1, n), a.exts)
    theirs = build_commitment(b.params, b.log.remote, R, n, pcp(1, n), b.exts)
    assert mine.tx == theirs.tx
    kinds = [(o.amount_sat, o.descriptor.kind) for o in mine.outputs]
    assert kinds == sorted(kinds, key=lambda k: k[0])
    assert [k for _, k in kinds] == ["anchor", "anchor", "extra", "offered_htlc", "to_remote", "to_local"]
    out = next(o for o in mine.outputs if o.owner == NAME)
    assert out.descriptor.witness_script == SCRIPT and out.descriptor.paths[0].spender is L
    # The opener pays the extra output's weight with the rest of the fee.
    assert mine.fee_sat == fee_for_weight(2500, 1124 + 172 + 172)
    assert budget(a.params, a.log.local, L, a.exts).weight == 1124 + 2 * 172
    assert mine.outputs[-1].amount_sat == (600_000_000 - 5_000_000) // 1000 - 1000 - mine.fee_sat - 660
    # In the remote's commitment the HTLC is received, still one extra output.
    assert sorted(o.descriptor.kind for o in theirs.outputs).count("extra") == 1


def test_stored_channel_finds_its_extensions() -> None:
    from lnp_plugin_api.bolt_extensions import for_params
    p = replace(make_params(ANCHORS), extensions=("funding", "balances", "htlcs", "anchors", NAME, "bip69_cltv"))
    ext = ExtraOutputExtension()
    assert for_params(p, {NAME: ext})[-2] is ext
    with pytest.raises(ValueError, match=NAME):
        for_params(p, {})
    assert [e.name for e in for_params(replace(p, extensions=()), {})] == ["funding", "balances", "htlcs",
                                                                            "anchors", "bip69_cltv"]


def test_extension_rules_and_foreign_channels() -> None:
    a, b = pair_with_extra()
    with pytest.raises(UpdateRefused, match="maximum"):
        a.log.check(Update("set_extra", NAME, L, {"amount_sat": 40_001, "script": "51"}), a.exts)
    a.propose(Update("set_extra", NAME, L, {"amount_sat": 100, "script": "51"}))
    with pytest.raises(UpdateRefused, match="already"):
        a.log.check(Update("set_extra", NAME, L, {"amount_sat": 100, "script": "51"}), a.exts)
    plain = extensions_for(ANCHORS)
    log = UpdateLog.start(a.params, a.log.local, plain)
    with pytest.raises(UpdateRefused, match="has not"):
        log.check(Update("set_extra", NAME, L, {"amount_sat": 100, "script": "51"}), plain)
    with pytest.raises(UpdateRefused, match="does not own"):
        a.log.check(Update("add_htlc", NAME, L, {}), a.exts)


def test_extension_state_persists_and_migrates() -> None:
    a, b = pair_with_extra()
    a.propose(Update("set_extra", NAME, L, {"amount_sat": 700, "script": "51"}))
    a.sign()
    deliver(a, b), deliver(a, b)
    for node in (a, b):
        data = json.loads(json.dumps(node.log.to_json()))
        assert data["states"][NAME] == {"version": 2, "data": {"max_sat": 40_000}}
        assert UpdateLog.from_json(data, node.params, node.exts) == node.log
    old = a.log.to_json()
    old["states"][NAME] = {"version": 1, "data": {"max_msat": 40_000_000}}
    assert UpdateLog.from_json(old, a.params, a.exts).states[NAME] == ExtraTerms(40_000)
