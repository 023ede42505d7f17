"""BOLT-5 builders and decisions, pure: every output of Appendix C/F's and random channels' commitments
spent by each of its paths, signed with the keys signd would derive, signatures checked, weights exact;
classify for every kind of spend; plan's decisions; the force-close deadlines.

Scripts are run for real by bcoin in tests/test_onchain_regtest.py."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from onchain_tools import L, R, Signer, Wallet, channel, sign_sweep, spec, verify_sweep
from lnp_plugin_api.bolt3 import MAX_INDEX, Shachain
from lnp_plugin_api.bolt_extensions import extensions_for
from lnp_plugin_api.channel import ANCHORS, STATIC_REMOTEKEY, ChannelType, CommitmentSpec, Htlc
from lnp_plugin_api.commitment import BuiltCommitment, build_closing, build_commitment
from lnp_plugin_api.onchain import (Action, Facts, Known, Spent, classify, commitment_number, extract_preimage,
                                    must_force_close, plan)
from lnp_plugin_api.onchain_tx import (Sweep, Uneconomical, anchor_cpfp, anyone_anchor_input, economical,
                                       htlc_transaction, input_weight, output_input, second_stage_input,
                                       stage_output_input, sweep, wallet_input)
from lnp_plugin_api.tx import Tx, der_to_compact

DEST = bytes.fromhex("0014") + b"\x09" * 20


def weight(tx: Tx) -> int:
    """The real weight of a signed transaction."""
    full = tx.serialize()
    base = Tx(tuple(i.__class__(i.txid, i.vout, i.sequence) for i in tx.inputs), tx.outputs, tx.locktime,
              tx.version).serialize()
    return 3 * len(base) + len(full)


def check(sw: Sweep, signer: Signer, wallet: Wallet | None = None) -> Tx:
    """Sign, check every signature, and check the weight estimate: never below, at most 3 bytes per input
    above (signatures are 71 to 73 bytes)."""
    signed = sign_sweep(sw, signer, wallet)
    verify_sweep(sw, signed)
    actual = weight(signed)
    assert actual <= sw.weight <= actual + 3 * len(sw.inputs) * 2
    assert sum(o.amount_sat for o in sw.tx.outputs) + sw.fee_sat == sum(i.amount_sat for i in sw.inputs)
    return signed


def all_spends(built: BuiltCommitment, owner: Signer, other: Signer, wallet: Wallet,
               preimages: dict[bytes, bytes], anchors: bool) -> list[str]:
    """Spend every output of `built` (owner's commitment) by every path, the right signer each time."""
    other_sigs = other.sign_htlcs(built)
    pcp = built.keys.per_commitment_point
    secret = owner.pcs(built.number)
    coin = wallet_input("33" * 32, 0, 100_000, wallet.pubkey)
    done = []
    for out in built.outputs:
        desc = out.descriptor
        for path in desc.paths:
            if path.name == "anyone":
                inp = anyone_anchor_input(built.txid, out)
                sw = sweep("anchor", [inp, coin], DEST, 1000)
                check(sw, owner, wallet)
                assert sw.tx.inputs[0].sequence == 16
                done.append("anchor/anyone")
                continue
            signer = owner if path.spender is built.owner else other
            pre = preimages.get(desc.htlc.payment_hash) if desc.htlc else None
            inp = output_input(built.txid, out, path.name, pcp, secret if path.name == "revocation" else None,
                               preimage=pre)
            extra = [coin] if desc.kind == "anchor" else []     # 330 sat do not pay for their own spend
            sw = sweep(path.name, [inp, *extra], DEST, 1000, dust_limit_sat=0)
            signed = check(sw, signer, wallet)
            if path.cltv:
                assert signed.locktime == path.cltv and signed.inputs[0].sequence < 0xFFFFFFFF
            if path.csv:
                assert signed.inputs[0].sequence == path.csv
            done.append(f"{desc.kind}/{path.name}")
    for i, stage in enumerate(built.second_stages):
        htlc = built.outputs[stage.output_index].descriptor.htlc
        pre = preimages[htlc.payment_hash] if stage.stage.kind == "htlc_success" else None
        extra = dict(fee_inputs=[coin], change=wallet.script, feerate_per_kw=1000) if anchors else {}
        sw = htlc_transaction(built, stage, other_sigs[i], pre, **extra)
        signed = check(sw, owner, wallet)
        assert signed.inputs[0].sequence == stage.stage.sequence and signed.locktime == stage.stage.locktime
        assert signed.outputs[0] == stage.tx.outputs[0]
        for path in stage.stage.paths:
            signer = owner if path.spender is built.owner else other
            inp = stage_output_input(sw.txid, stage, path.name, pcp, secret if path.name == "revocation" else None)
            check(sweep("stage", [inp], DEST, 1000, dust_limit_sat=0), signer)
            done.append(f"{stage.stage.kind}_output/{path.name}")
        done.append(stage.stage.kind)
    if anchors:
        sides = {o.descriptor.data["side"] for o in built.outputs if o.descriptor.kind == "anchor"}
        for side, signer in ((built.owner, owner), (built.owner.other, other)):
            if side.value in sides:
                check(anchor_cpfp(built, side, [coin], DEST, 3000, 1000, built.fee_sat), signer, wallet)
                done.append("cpfp")
            else:
                with pytest.raises(ValueError, match="no .* anchor"):
                    anchor_cpfp(built, side, [coin], DEST, 3000)
    return done


@pytest.mark.parametrize("ctype", [STATIC_REMOTEKEY, ANCHORS], ids=lambda t: t.name)
@pytest.mark.parametrize("owner", [L, R], ids=["ours", "theirs"])
def test_every_output_spent_by_every_path(ctype: ChannelType, owner) -> None:
    params, a, b = channel(ctype)
    s, pre = spec(100)
    p = params if owner is L else params.mirrored()
    sp = s if owner is L else s.mirrored()
    me, other = (a, b) if owner is L else (b, a)
    built = build_commitment(p, sp, L, 9, me.pcp(9), extensions_for(ctype))
    done = all_spends(built, me, other, Wallet(1), pre, ctype.anchors)
    expected = {"to_local/delayed", "to_local/revocation", "to_remote/payment", "offered_htlc/revocation",
                "offered_htlc/preimage", "received_htlc/revocation", "received_htlc/timeout", "htlc_timeout",
                "htlc_success", "htlc_timeout_output/delayed", "htlc_timeout_output/revocation",
                "htlc_success_output/delayed", "htlc_success_output/revocation"}
    if ctype.anchors:
        expected |= {"anchor/anchor", "anchor/anyone", "cpfp"}
    assert set(done) == expected


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**9), st.lists(st.tuples(st.booleans(), st.integers(600_000, 300_000_000),
                                                 st.integers(1, 1000)), max_size=5),
       st.integers(253, 20_000), st.booleans())
def test_random_channels(local_msat: int, hs: list, feerate: int, anchors: bool) -> None:
    ctype = ANCHORS if anchors else STATIC_REMOTEKEY
    params, a, b = channel(ctype)
    pre = {}
    htlcs = []
    for i, (ours, amount, expiry) in enumerate(hs):
        p = hashlib.sha256(bytes([i])).digest()
        pre[hashlib.sha256(p).digest()] = p
        htlcs.append(Htlc(L if ours else R, i, amount, hashlib.sha256(p).digest(), 500_000 + expiry))
    rest = params.funding_sat * 1000 - sum(h[1] for h in hs)
    local = min(local_msat, rest)
    sp = CommitmentSpec(feerate, local, rest - local, tuple(htlcs))
    for owner, me, other in ((L, a, b),):
        try:
            built = build_commitment(params, sp, owner, 3, me.pcp(3), extensions_for(ctype))
        except ValueError:
            return
        try:
            all_spends(built, me, other, Wallet(2), pre, anchors)
        except Uneconomical:
            pass


def test_appendix_c_channel_htlc_transactions_match_the_vectors() -> None:
    """Our HTLC transactions for Appendix C's commitment are BOLT-3's, byte for byte, once signed."""
    import coincurve
    from test_bolt3_commitments import APP_C, LOCAL_HTLC, REMOTE_HTLC, build, c_ids, preimage_of, sign
    case = APP_C["vectors"][1]
    built = build(STATIC_REMOTEKEY, 546, case["to_local_msat"], case["to_remote_msat"],
                  case["local_feerate_per_kw"], c_ids(case))
    for stage, expected in zip(built.second_stages, case["htlc_txs"]):
        remote = der_to_compact(sign(REMOTE_HTLC, stage.remote_sighash))
        pre = preimage_of(expected["htlc_id"]) if stage.stage.kind == "htlc_success" else None
        sw = htlc_transaction(built, stage, remote, pre)
        req = sw.sign_requests()[0]
        assert req.key.pubkey == coincurve.PrivateKey(LOCAL_HTLC).public_key.format()
        signed = sw.finalize([sign(LOCAL_HTLC, req.digest)])
        assert signed.serialize().hex() == expected["tx"]
        # Exact but for signature sizes (we count 73 bytes each, never short).
        assert weight(signed) <= sw.weight <= weight(signed) + 4


def test_uneconomical_and_bad_finalize() -> None:
    params, a, b = channel(STATIC_REMOTEKEY)
    s, pre = spec(100)
    built = build_commitment(params, s, L, 1, a.pcp(1), extensions_for(STATIC_REMOTEKEY))
    htlc_out = next(o for o in built.outputs if o.descriptor.kind == "received_htlc")
    with pytest.raises(Uneconomical):
        sweep("x", [output_input(built.txid, htlc_out, "revocation", built.keys.per_commitment_point)], DEST, 10**6)
    sw = sweep("x", [output_input(built.txid, htlc_out, "timeout", built.keys.per_commitment_point)], DEST, 253)
    with pytest.raises(ValueError, match="signatures"):
        sw.finalize([])
    der = b.sign(sw.sign_requests()[0])           # the timeout path is the peer's
    assert sw.finalize([der]) == sw.finalize([der_to_compact(der)], compact=True)
    inp = output_input(built.txid, next(o for o in built.outputs if o.descriptor.kind == "offered_htlc"),
                       "preimage", built.keys.per_commitment_point)
    with pytest.raises(ValueError, match="preimage"):
        sweep("x", [inp], DEST, 253).finalize([b"\x30"])
    stage = built.second_stages[0]
    coin = wallet_input("33" * 32, 0, 100_000, Wallet(1).pubkey)
    with pytest.raises(ValueError, match="no fee inputs"):
        htlc_transaction(built, stage, b.sign_htlcs(built)[0], b"\x00" * 32, [coin], DEST, 1000)
    with pytest.raises(ValueError, match="no 'delayed' path"):
        output_input(built.txid, htlc_out, "delayed", built.keys.per_commitment_point)


def test_economical_splits_inputs_worth_less_than_their_fee() -> None:
    params, a, b = channel(ANCHORS)
    s, pre = spec(100)
    built = build_commitment(params, s, R, 1, b.pcp(1), extensions_for(ANCHORS))
    pcp = built.keys.per_commitment_point
    inputs = [output_input(built.txid, o, "revocation", pcp, b.pcs(1)) for o in built.outputs
              if o.descriptor.kind != "anchor" and o.descriptor.kind != "to_remote"]
    anchor = anyone_anchor_input(built.txid, next(o for o in built.outputs if o.descriptor.kind == "anchor"))
    keep, drop = economical(inputs + [anchor], 2000)
    assert keep == inputs and drop == [anchor]         # 330 sat cost more than that to spend
    for rate in (10_000, 100_000, 300_000):
        keep, drop = economical(inputs, rate)
        assert all(i.amount_sat > rate * input_weight(i) // 1000 for i in keep)
        assert all(i.amount_sat <= rate * input_weight(i) // 1000 for i in drop)
    assert drop and keep
    penalty = sweep("penalty", keep, DEST, 1000)
    assert penalty.weight == 4 * len(penalty.tx.serialize()) + 2 + sum(i.witness_size() for i in keep)


# --- classify ---

def scenario(ctype: ChannelType):
    params, a, b = channel(ctype)
    exts = extensions_for(ctype)
    s, pre = spec(100)
    local = build_commitment(params, s, L, 10, a.pcp(10), exts)
    remote = {10: build_commitment(params, s, R, 10, b.pcp(10), exts),
              11: build_commitment(params, s, R, 11, b.pcp(11), exts)}
    secrets = Shachain()
    for n in range(10):
        secrets.insert(b.pcs(n), MAX_INDEX - n)
    old = CommitmentSpec(s.feerate_per_kw, s.local_msat + 10_000_000, s.remote_msat - 10_000_000, s.htlcs)
    known = Known(params, exts, local, remote, {7: old}, secrets)
    return params, a, b, exts, known, old, pre


@pytest.mark.parametrize("ctype", [STATIC_REMOTEKEY, ANCHORS], ids=lambda t: t.name)
def test_classify_every_kind_of_spend(ctype: ChannelType) -> None:
    params, a, b, exts, known, old, pre = scenario(ctype)
    local = known.local
    assert commitment_number(params, local.tx) == 10
    assert classify(local.tx, known).kind == "local"
    for n in (10, 11):
        c = classify(known.remote[n].tx, known)
        assert (c.kind, c.number, c.built) == ("remote", n, known.remote[n])
    revoked = build_commitment(params, old, R, 7, b.pcp(7), exts)
    c = classify(revoked.tx, known)
    assert (c.kind, c.number, c.revocation_secret, c.built.txid) == ("revoked", 7, b.pcs(7), revoked.txid)
    assert len(c.outputs) == len(revoked.outputs)
    # A revoked one whose spec was not kept: its to_local and to_remote are still found by script.
    other = build_commitment(params, old, R, 3, b.pcp(3), exts)
    c = classify(other.tx, known)
    assert c.kind == "revoked" and {o.descriptor.kind for o in c.outputs} >= {"to_local", "to_remote"}
    for o in c.outputs:
        assert (other.tx.outputs[o.index].script_pubkey, other.tx.outputs[o.index].amount_sat) == \
            (o.script_pubkey, o.amount_sat)
    # A commitment newer than we know (we lost data): only to_remote, whose key needs no point.
    future = build_commitment(params, old, R, 40, b.pcp(40), exts)
    c = classify(future.tx, known)
    assert c.kind == "future" and [o.descriptor.kind for o in c.outputs] == ["to_remote"]
    assert future.tx.outputs[c.outputs[0].index].amount_sat == c.outputs[0].amount_sat
    # Our own old commitment is nothing we can act on.
    assert classify(build_commitment(params, old, L, 5, a.pcp(5), exts).tx, known).kind == "unknown"
    closing = build_closing(params, 1_000_000_000, 1_000_000_000, DEST, DEST[:-1] + b"\x01", 500, L, 546)
    assert classify(closing.tx, known).kind == "mutual"
    from dataclasses import replace as copy
    assert classify(closing.tx, copy(known, closing_txids=frozenset({closing.tx.txid()}))).kind == "mutual"
    assert classify(closing.tx, copy(known, closing_txids=frozenset({"00" * 32}))).kind == "unknown"
    assert plan(classify(closing.tx, known), Facts(200, 150)) == [Action("done")]
    everything = {o.index: Spent("ee" * 32, 150, True) for o in known.local.outputs}
    acts = plan(classify(known.local.tx, known), Facts(200, 140, {}, everything))
    assert acts[-1] != Action("done") and {a.kind for a in acts} == {"fail_htlc", "sweep_stage"}
    acts = plan(classify(known.local.tx, known), Facts(200, 140, {}, everything,
                                                       {("ee" * 32, 0): Spent("ff" * 32, 160, True)}))
    assert [a.kind for a in acts] == ["fail_htlc", "fail_htlc", "done"]     # repeated until forgotten
    with pytest.raises(ValueError, match="funding"):
        classify(Tx(((local.tx.inputs[0].__class__("00" * 32, 0)),), ()), known)


# --- plan ---

def test_plan_our_commitment() -> None:
    params, a, b, exts, known, old, pre = scenario(STATIC_REMOTEKEY)
    closing = classify(known.local.tx, known)
    assert plan(closing, Facts(120, None)) == [Action("wait")]
    success_hash = next(h.payment_hash for h in known.local.spec.htlcs if h.offerer is R and h.id == 0)
    acts = plan(closing, Facts(120, 110, {success_hash: pre[success_hash]}))
    by = {(a.kind, a.path): a for a in acts}
    delay = params.delay_of(L)
    assert by[("sweep", "delayed")].not_before == 110 + delay
    timeouts = [a for a in acts if a.kind == "htlc_tx" and a.path == "htlc_timeout"]
    assert sorted(a.not_before for a in timeouts) == sorted(max(h.cltv_expiry + 1, 110)
                                                             for h in known.local.spec.htlcs if h.offerer is L)
    success = [a for a in acts if a.path == "htlc_success"]
    assert len(success) == 1 and success[0].preimage == pre[success_hash] and success[0].due(120)
    assert not [a for a in acts if a.kind == "wait"]           # B's other HTLC expired at 109: resolved
    early = plan(closing, Facts(106, 105, {success_hash: pre[success_hash]}))
    assert [a.not_before for a in early if a.kind == "wait"] == [109]    # theirs to time out until then
    assert early[-1] != Action("done")
    # Our HTLC-timeout confirmed: fail upstream, sweep its output after the delay.
    out = timeouts[0].output
    acts = plan(closing, Facts(200, 110, {}, {out: Spent("ab" * 32, 150, True)}))
    mine = [a for a in acts if a.output == out]
    assert [a.kind for a in mine] == ["fail_htlc", "sweep_stage"] and mine[1].not_before == 150 + delay
    # The peer took it with the preimage instead.
    p = pre[known.local.outputs[out].descriptor.htlc.payment_hash]
    acts = plan(closing, Facts(200, 110, {}, {out: Spent("cd" * 32, 150, False, (b"sig", p, b"script"))}))
    assert [a for a in acts if a.output == out] == [Action("preimage", out, htlc=known.local.outputs[out]
                                                           .descriptor.htlc, preimage=p)]


def test_plan_their_commitment_and_revoked() -> None:
    params, a, b, exts, known, old, pre = scenario(ANCHORS)
    closing = classify(known.remote[10].tx, known)
    ours_hash = next(h.payment_hash for h in old.htlcs if h.offerer is R)
    acts = plan(closing, Facts(120, 110, {ours_hash: pre[ours_hash]}))
    kinds = sorted((a.kind, a.path) for a in acts)
    assert ("sweep", "payment") in kinds and ("sweep", "preimage") in kinds
    assert [a.not_before for a in acts if a.path == "payment"] == [111]     # anchors: 1 block CSV
    timeouts = [a for a in acts if a.path == "timeout"]
    assert sorted(a.not_before for a in timeouts) == sorted(max(h.cltv_expiry + 1, 111)   # and 1 block CSV
                                                             for h in old.htlcs if h.offerer is L)
    revoked = build_commitment(params, old, R, 7, b.pcp(7), exts)
    c = classify(revoked.tx, known)
    acts = plan(c, Facts(120, 110))
    pen = next(a for a in acts if a.kind == "penalty")
    revocable = {o.index for o in revoked.outputs if o.descriptor.kind in ("to_local", "offered_htlc",
                                                                            "received_htlc")}
    assert set(pen.outputs) == revocable and pen.stages == ()


def test_must_force_close_deadlines() -> None:
    s, pre = spec(100)
    first_ours = min(h.cltv_expiry for h in s.htlcs if h.offerer is L)
    assert must_force_close(s, first_ours, {}) is None
    assert must_force_close(s, first_ours + 1, {}).cltv_expiry == first_ours
    theirs = min((h for h in s.htlcs if h.offerer is R), key=lambda h: h.cltv_expiry)
    known = {theirs.payment_hash: pre[theirs.payment_hash]}
    assert must_force_close(s, theirs.cltv_expiry - 19, known) is None
    assert must_force_close(s, theirs.cltv_expiry - 18, known) == theirs
    assert must_force_close(s, theirs.cltv_expiry - 18, {}) is None


def test_extract_preimage() -> None:
    p = b"\x05" * 32
    assert extract_preimage([b"", b"sig", b"sig", p, b"script"], hashlib.sha256(p).digest()) == p
    assert extract_preimage([b"sig", b""], hashlib.sha256(p).digest()) is None


@pytest.mark.parametrize("funder", [L, R], ids=["ours", "theirs"])
def test_an_extension_output_is_swept_by_its_own_path(funder) -> None:
    """A Bifrost extension's output (tests/extra_output_ext.py) is resolved from its descriptor alone."""
    from extra_output_ext import NAME, ExtraOutput, ExtraOutputExtension
    from lnp_plugin_api.bolt_extensions import with_extensions
    params, a, b = channel(STATIC_REMOTEKEY)
    exts = with_extensions(STATIC_REMOTEKEY, [ExtraOutputExtension()])
    payment = params.side(funder).basepoints.payment
    s, pre = spec(100)
    s = CommitmentSpec(s.feerate_per_kw, s.local_msat - 20_000_000, s.remote_msat, s.htlcs,
                       {NAME: ExtraOutput(funder, 20_000, bytes([33]) + payment + b"\xac")})
    built = build_commitment(params, s, L, 4, a.pcp(4), exts)
    known = Known(params, exts, built, {})
    acts = plan(classify(built.tx, known), Facts(120, 110))
    extra = next(o for o in built.outputs if o.descriptor.kind == "extra")
    mine = [x for x in acts if x.output == extra.index]
    if funder is L:
        assert mine == [Action("sweep", extra.index, "funder", 110)]
        sw = sweep("extra", [output_input(built.txid, extra, "funder", a.pcp(4))], DEST, 1000)
        check(sw, a)
    else:
        assert mine == []


def test_anchor_htlc_transaction_fee_inputs() -> None:
    params, a, b = channel(ANCHORS)
    s, pre = spec(100)
    built = build_commitment(params, s, L, 2, a.pcp(2), extensions_for(ANCHORS))
    stage = next(st for st in built.second_stages if st.stage.kind == "htlc_timeout")
    sig = b.sign_htlcs(built)[built.second_stages.index(stage)]
    alone = htlc_transaction(built, stage, sig)
    assert alone.fee_sat == 0 and alone.tx == stage.tx        # valid, but pays nothing: add fee inputs
    w = Wallet(3)
    with pytest.raises(ValueError, match="change"):
        htlc_transaction(built, stage, sig, fee_inputs=[wallet_input("44" * 32, 1, 5000, w.pubkey)])
    with pytest.raises(Uneconomical):
        htlc_transaction(built, stage, sig, fee_inputs=[wallet_input("44" * 32, 1, 900, w.pubkey)], change=DEST,
                         feerate_per_kw=1000)
    sw = htlc_transaction(built, stage, sig, fee_inputs=[wallet_input("44" * 32, 1, 50_000, w.pubkey)],
                          change=DEST, feerate_per_kw=1000)
    assert sw.fee_sat == 1000 * sw.weight // 1000 and sw.tx.outputs[1].amount_sat == 50_000 - sw.fee_sat
    check(sw, a, w)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["local", "remote", "revoked"]), st.sets(st.integers(0, 12)), st.integers(100, 200),
       st.booleans())
def test_plan_never_spends_a_spent_output(which: str, spent_idx: set, height: int, ours: bool) -> None:
    params, a, b, exts, known, old, pre = scenario(ANCHORS)
    tx = {"local": known.local.tx, "remote": known.remote[10].tx,
          "revoked": build_commitment(params, old, R, 7, b.pcp(7), exts).tx}[which]
    closing = classify(tx, known)
    spent = {i: Spent("ab" * 32, 100, ours, vin=k) for k, i in enumerate(sorted(spent_idx))
             if i < len(closing.outputs)}
    acts = plan(closing, Facts(height, 100, pre, spent))
    assert acts[-1].kind == "done" or any(x.kind in ("sweep", "htlc_tx", "sweep_stage", "penalty", "wait")
                                          for x in acts)
    for x in acts:
        if x.kind in ("sweep", "htlc_tx"):
            assert x.output not in spent
        if x.kind == "penalty":
            assert not set(x.outputs) & set(spent)
            htlcs = [s.vin for i, s in spent.items()
                     if closing.outputs[i].descriptor.kind in ("offered_htlc", "received_htlc")]
            assert x.stages == (() if ours else tuple(("ab" * 32, v) for v in htlcs))


@pytest.mark.parametrize("ctype", [STATIC_REMOTEKEY, ANCHORS], ids=lambda t: t.name)
def test_revoked_commitment_taken_whole_from_its_htlcs_and_feerate(ctype: ChannelType) -> None:
    """channeld keeps of each commitment it signs for the peer only its HTLCs and feerate (not the balances):
    enough to find every output of it once revoked, HTLC outputs included, each with its second stage, so
    one penalty takes them all, and a cheater's HTLC transaction's output too."""
    from dataclasses import replace as copy
    params, a, b, exts, known, old, pre = scenario(ctype)
    cheat = build_commitment(params, old, R, 3, b.pcp(3), exts)
    kept = copy(known, revoked_specs={3: CommitmentSpec(old.feerate_per_kw, 0, 0, old.htlcs)})
    c = classify(cheat.tx, kept)
    assert c.kind == "revoked"
    assert sorted(o.descriptor.kind for o in c.outputs) == sorted(o.descriptor.kind for o in cheat.outputs)
    for o in c.outputs:
        real = cheat.outputs[o.index]
        assert (o.script_pubkey, o.amount_sat, o.descriptor.htlc) == (real.script_pubkey, real.amount_sat,
                                                                      real.descriptor.htlc)
    revocable = {o.index for o in cheat.outputs if o.descriptor.kind in ("to_local", "offered_htlc",
                                                                          "received_htlc")}
    assert len(revocable) > 1
    (pen,) = [x for x in plan(c, Facts(120, 110)) if x.kind == "penalty"]
    assert set(pen.outputs) == revocable and pen.stages == ()
    # Without them, only the balance outputs are found (the HTLC outputs would be left to the cheater).
    assert {o.descriptor.kind for o in classify(cheat.tx, known).outputs} <= {"to_local", "to_remote", "anchor"}

    # The cheater takes an HTLC it received to its second stage (HTLC-success) before our penalty.
    at = {o.index: o for o in c.outputs}
    i = next(o.index for o in c.outputs if o.descriptor.kind == "received_htlc")
    h = at[i].descriptor.htlc
    stx = "cd" * 32
    acts = plan(c, Facts(120, 110, {}, {i: Spent(stx, 111, False, (b"", b"s", b"s", pre[h.payment_hash]), vin=2)}))
    (pen,) = [x for x in acts if x.kind == "penalty"]
    assert set(pen.outputs) == revocable - {i} and pen.stages == ((stx, 2),)
    assert [x.preimage for x in acts if x.kind == "preimage"] == [pre[h.payment_hash]]
    pcp, secret = c.built.keys.per_commitment_point, c.revocation_secret
    inputs = [output_input(c.txid, at[k], "revocation", pcp, secret) for k in pen.outputs]
    inputs.append(second_stage_input(stx, 2, 40_000, at[i].descriptor.second_stage, "revocation", pcp, secret))
    check(sweep("penalty", inputs, DEST, 1000), a)      # every key is ours (the revocation key)

    # Our penalty took an HTLC we offered: failed upstream once confirmed.
    j = next(o.index for o in c.outputs if o.descriptor.kind == "received_htlc" and o.descriptor.htlc.offerer is L)
    acts = plan(c, Facts(120, 110, {}, {j: Spent("ef" * 32, 112, True)}))
    assert [(x.kind, x.htlc) for x in acts if x.kind == "fail_htlc"] == [("fail_htlc", at[j].descriptor.htlc)]
    assert not [x for x in plan(c, Facts(120, 110, {}, {j: Spent("ef" * 32, None, True)})) if x.kind == "fail_htlc"]
