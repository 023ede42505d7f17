"""BOLT-5 end to end on a real regtest chain (bcoin validates every script): a funded 2-of-2, a commitment
broadcast, then both sides driven only by `onchain.plan` until every output is resolved; and a revoked
commitment taken whole by a penalty, including the output of the cheater's HTLC-success transaction."""
from __future__ import annotations

import pytest

from chain_tools import external_chain  # noqa: F401 (a fixture)
from onchain_tools import L, R, Signer, Wallet, channel, fund, funding_spk, sign_sweep, spec, verify_sweep
from lnp_plugin_api import RpcError
from lnp_plugin_api.bolt3 import MAX_INDEX, Shachain
from lnp_plugin_api.bolt_extensions import extensions_for
from lnp_plugin_api.channel import ANCHORS, STATIC_REMOTEKEY, ChannelParams
from lnp_plugin_api.closing import ClosingNegotiation, closing_fee, signed_variant
from lnp_plugin_api.commitment import (BuiltCommitment, build_closing, build_commitment, check_signatures,
                                       funding_witness, signed_commitment)
from lnp_plugin_api.onchain import Action, Facts, Known, Spent, classify, plan
from lnp_plugin_api.onchain_tx import (Sweep, htlc_transaction, output_input, stage_output_input, sweep,
                                       wallet_input, anchor_cpfp, anyone_anchor_input)
from lnp_plugin_api.tx import Tx, compact_to_der, der_to_compact

FEERATE = 2000


class Chain:
    """The regtest node, and every transaction the test made (to find spends)."""

    def __init__(self, rpc) -> None:
        self.rpc = rpc
        self.addr = rpc.call("getnewaddress", "default")
        self.txs: dict[str, tuple[Tx, str]] = {}       # txid -> (tx, who made it)

    def mine(self, n: int = 1) -> None:
        self.rpc.call("generatetoaddress", n, self.addr)

    def height(self) -> int:
        return self.rpc.call("getblockcount")

    def send(self, tx: Tx, who: str) -> str:
        txid = self.rpc.call("sendrawtransaction", tx.serialize().hex())
        assert txid == tx.txid()
        self.txs[txid] = (tx, who)
        return txid

    def block_height(self, txid: str) -> int | None:
        info = self.rpc.call("getrawtransaction", txid, True)
        if not info.get("blockhash"):
            return None
        return self.rpc.call("getblockheader", info["blockhash"], True)["height"]

    def spends(self, txid: str, vout: int, me: str) -> Spent | None:
        for tid, (tx, who) in self.txs.items():
            for vin, txin in enumerate(tx.inputs):
                if txin.txid == txid and txin.vout == vout:
                    return Spent(tid, self.block_height(tid), who == me, txin.witness, vin)
        return None


def coins(chain: Chain, wallet: Wallet, n: int, amount: int = 200_000) -> list:
    return [wallet_input(*fund(chain.rpc, wallet.script, amount), amount, wallet.pubkey) for _ in range(n)]


def facts(chain: Chain, built: BuiltCommitment, me: str, preimages: dict) -> Facts:
    spent, stage_spent = {}, {}
    for o in built.outputs:
        s = chain.spends(built.txid, o.index, me)
        if s is not None:
            spent[o.index] = s
            later = chain.spends(s.txid, s.vin, me)
            if later is not None:
                stage_spent[(s.txid, s.vin)] = later
    return Facts(chain.height(), chain.block_height(built.txid), preimages, spent, stage_spent)


def execute(a: Action, built: BuiltCommitment, signer: Signer, wallet: Wallet, fee_coins: list,
            htlc_sigs: list[bytes]) -> Sweep | None:
    """What channeld would do for one due action of the owner (`built.owner` is LOCAL) or of the peer."""
    pcp = built.keys.per_commitment_point
    out = built.outputs[a.output] if a.output is not None else None
    if a.kind == "sweep":
        return sweep(a.path, [output_input(built.txid, out, a.path, pcp, preimage=a.preimage)], wallet.script, FEERATE)
    if a.kind == "htlc_tx":
        i = next(k for k, s in enumerate(built.second_stages) if s.output_index == a.output)
        extra = dict(fee_inputs=[fee_coins.pop()], change=wallet.script, feerate_per_kw=FEERATE) \
            if built.spec and any(o.descriptor.kind == "anchor" for o in built.outputs if o.descriptor) else {}
        return htlc_transaction(built, built.second_stages[i], htlc_sigs[i], a.preimage, **extra)
    if a.kind == "sweep_stage":
        stage = next(s for s in built.second_stages if s.output_index == a.output)
        return sweep("stage", [stage_output_input(a.txid, stage, "delayed", pcp, vout=a.vout)], wallet.script,
                     FEERATE)
    return None


@pytest.mark.parametrize("ctype", [ANCHORS, STATIC_REMOTEKEY], ids=["anchors", "static_remotekey"])
def test_force_close_resolved_by_both_sides_on_chain(external_chain, ctype) -> None:  # noqa: F811
    _, rpc = external_chain
    chain = Chain(rpc)
    chain.mine(110)
    params, sa, sb = channel(ctype)
    exts = extensions_for(ctype)
    txid, vout = fund(rpc, funding_spk(params), params.funding_sat)
    params = ChannelParams(params.local, params.remote, txid, vout, params.funding_sat, L, ctype)
    wa, wb = Wallet(1), Wallet(2)
    fee_a = coins(chain, wa, 4)
    chain.mine(1)
    h = chain.height()
    spec_a, pre = spec(h)
    n = 7
    mine_view = build_commitment(params, spec_a, L, n, sa.pcp(n), exts)
    theirs_view = build_commitment(params.mirrored(), spec_a.mirrored(), R, n, sa.pcp(n), exts)
    assert mine_view.txid == theirs_view.txid
    sig_b = sb.sign_funding(mine_view)
    htlc_sigs = sb.sign_htlcs(mine_view)
    assert check_signatures(mine_view, der_to_compact(sig_b), htlc_sigs) is None
    commit = signed_commitment(mine_view, sa.sign_funding(mine_view), sig_b, params)
    chain.send(commit, "A")

    known_a = Known(params, exts, mine_view, {})
    known_b = Known(params.mirrored(), exts, None, {n: theirs_view})
    assert classify(commit, known_a).kind == "local"
    closing_b = classify(commit, known_b)
    assert closing_b.kind == "remote" and closing_b.number == n
    closing_a = classify(commit, known_a)
    unconfirmed = [Action("cpfp")] if ctype.anchors else [Action("wait")]
    assert plan(closing_a, facts(chain, mine_view, "A", {})) == unconfirmed
    if ctype.anchors:   # the anchor pays for the commitment (CPFP), with a wallet coin
        cpfp = anchor_cpfp(mine_view, L, [fee_a.pop()], wa.script, 5000, parent_weight=4 * len(commit.serialize()),
                           parent_fee_sat=mine_view.fee_sat)
        signed = sign_sweep(cpfp, sa, wa)
        verify_sweep(cpfp, signed)
        chain.send(signed, "A")
    chain.mine(1)
    assert chain.block_height(commit.txid()) is not None

    # A knows the preimage of B's HTLC 0; B knows that of A's HTLC 0. Drive both by plan() alone.
    pre_a = {k: v for k, v in pre.items() if v == bytes([0x42]) * 32}
    pre_b = {k: v for k, v in pre.items() if v == bytes([0x40]) * 32}
    seen: dict[str, list[str]] = {"A": [], "B": []}
    early_refused = False
    made: set = set()
    for _ in range(60):
        done = True
        for me, built, signer, wallet, known, pres in (("A", mine_view, sa, wa, closing_a, pre_a),
                                                       ("B", theirs_view, sb, wb, closing_b, pre_b)):
            actions = plan(known, facts(chain, built, me, pres))
            if actions[-1] != Action("done"):
                done = False
            for a in actions:
                if a.kind in ("preimage", "fail_htlc"):
                    if (a.kind, a.output) not in seen[me]:
                        seen[me].append((a.kind, a.output))
                    continue
                key = (me, a.kind, a.output)
                early = not a.due(chain.height())
                if key in made or (early and (early_refused or a.kind != "sweep" or a.path != "delayed")):
                    continue
                tx = execute(a, built, signer, wallet, fee_a, htlc_sigs)
                if tx is None:
                    continue
                signed = sign_sweep(tx, signer, wallet)
                verify_sweep(tx, signed)
                if early:
                    with pytest.raises(RpcError):   # the CSV delay is really enforced
                        chain.send(signed, me)
                    early_refused = True
                    continue
                made.add(key)
                chain.send(signed, me)
        chain.mine(1)
        if done:
            break
    else:
        pytest.fail("the channel was not resolved")
    assert early_refused
    assert sorted(k[1] for k in made if k[0] == "A") == ["htlc_tx", "htlc_tx", "sweep", "sweep_stage", "sweep_stage"]
    assert sorted(k[1] for k in made if k[0] == "B") == ["sweep"] * 3   # to_remote, preimage, timeout
    assert sorted(k for k, _ in seen["A"]) == sorted(k for k, _ in seen["B"]) == ["fail_htlc", "preimage"]
    if ctype.anchors:   # B's anchor, left unspent: anyone takes it 16 blocks after the commitment
        h0 = chain.block_height(commit.txid())
        anchor = next(o for o in mine_view.outputs if o.descriptor.kind == "anchor" and not chain.spends(
            mine_view.txid, o.index, "A"))
        grab = sweep("anchor", [anyone_anchor_input(mine_view.txid, anchor), fee_a.pop()], wa.script, FEERATE)
        signed = sign_sweep(grab, sa, wa)
        if chain.height() + 1 < h0 + 16:
            with pytest.raises(RpcError):
                chain.send(signed, "A")
            chain.mine(h0 + 16 - chain.height() - 1)
        chain.send(signed, "A")
        chain.mine(1)
        assert chain.block_height(grab.txid) is not None
    # Every output of the commitment is spent by a confirmed transaction, except anchors and HTLCs nobody
    # could claim; every transaction made is confirmed.
    for tid in chain.txs:
        assert chain.block_height(tid) is not None, tid
    kinds = {o.descriptor.kind for o in mine_view.outputs if chain.spends(mine_view.txid, o.index, "A")}
    assert {"to_local", "to_remote", "offered_htlc", "received_htlc"} <= kinds
    assert ("preimage", next(o.index for o in mine_view.outputs if o.descriptor.htlc is not None
                             and o.descriptor.htlc.id == 0 and o.descriptor.htlc.offerer is L)) in seen["A"]


@pytest.mark.parametrize("ctype", [ANCHORS, STATIC_REMOTEKEY], ids=["anchors", "static_remotekey"])
def test_revoked_commitment_taken_whole_by_one_penalty(external_chain, ctype) -> None:  # noqa: F811
    _, rpc = external_chain
    chain = Chain(rpc)
    chain.mine(110)
    params, sa, sb = channel(ctype)
    exts = extensions_for(ctype)
    txid, vout = fund(rpc, funding_spk(params), params.funding_sat)
    params = ChannelParams(params.local, params.remote, txid, vout, params.funding_sat, L, ctype)
    wa, wb = Wallet(1), Wallet(2)
    fee_b = coins(chain, wb, 1)
    chain.mine(1)
    h = chain.height()
    old, pre = spec(h)
    n = 4
    # B's commitment n, seen from B (owner LOCAL in B's params); A signed it and its HTLC transactions.
    pb = params.mirrored()
    cheat = build_commitment(pb, old.mirrored(), L, n, sb.pcp(n), exts)
    tx = signed_commitment(cheat, sb.sign_funding(cheat), sa.sign_funding(cheat), pb)
    a_sigs = sa.sign_htlcs(cheat)
    # ... then B revoked it (A holds the secret) and broadcasts it anyway, with an HTLC-success.
    secrets = Shachain()
    secrets.insert(sb.pcs(n), MAX_INDEX - n)
    chain.send(tx, "B")
    i = next(k for k, s in enumerate(cheat.second_stages) if s.stage.kind == "htlc_success"
             and cheat.outputs[s.output_index].descriptor.htlc.payment_hash
             == next(p for p in pre if pre[p] == bytes([0x40]) * 32))
    stage = cheat.second_stages[i]
    extra = dict(fee_inputs=fee_b, change=wb.script, feerate_per_kw=FEERATE) if ctype.anchors else {}
    chain.mine(1)    # the HTLC transaction's CSV of 1 (anchors)
    hs = htlc_transaction(cheat, stage, a_sigs[i], bytes([0x40]) * 32, **extra)
    chain.send(sign_sweep(hs, sb, wb), "B")
    chain.mine(1)

    known = Known(params, exts, None, {}, {n: old}, secrets)
    closing = classify(tx, known)
    assert closing.kind == "revoked" and closing.number == n and closing.built.txid == tx.txid()
    actions = plan(closing, facts(chain, closing.built, "A", {}))
    pen = next(a for a in actions if a.kind == "penalty")
    assert pen.stages == ((hs.txid, 0),)
    assert any(a.kind == "preimage" and a.preimage == bytes([0x40]) * 32 for a in actions)
    secret = closing.revocation_secret
    built = closing.built
    pcp = built.keys.per_commitment_point
    inputs = [output_input(built.txid, built.outputs[k], "revocation", pcp, secret) for k in pen.outputs]
    their_stage = next(s for s in built.second_stages if s.output_index == stage.output_index)
    inputs.append(stage_output_input(hs.txid, their_stage, "revocation", pcp, secret))
    penalty = sweep("penalty", inputs, wa.script, FEERATE)
    signed = sign_sweep(penalty, sa, wa)
    verify_sweep(penalty, signed)
    chain.send(signed, "A")
    remote = next(a for a in actions if a.kind == "sweep" and a.path == "payment")
    claim = sweep("to_remote", [output_input(built.txid, built.outputs[remote.output], "payment", pcp)],
                  wa.script, FEERATE)
    chain.send(sign_sweep(claim, sa, wa), "A")
    chain.mine(1)
    assert chain.block_height(penalty.txid) is not None and chain.block_height(claim.txid) is not None
    # A holds everything but the fees and the anchors.
    got = sum(o.amount_sat for o in penalty.tx.outputs) + sum(o.amount_sat for o in claim.tx.outputs)
    anchors = sum(o.amount_sat for o in built.outputs if o.descriptor.kind == "anchor")
    second_stage_fee = built.outputs[stage.output_index].amount_sat - their_stage.stage.amount_sat  # 0: anchors
    assert got == (params.funding_sat - built.fee_sat - anchors - second_stage_fee - penalty.fee_sat
                   - claim.fee_sat)
    assert plan(closing, facts(chain, built, "A", {h: p for h, p in pre.items() if p == bytes([0x40]) * 32}))[-1] \
        == Action("done")


def test_cooperative_close_negotiated_signed_and_mined(external_chain) -> None:  # noqa: F811
    _, rpc = external_chain
    chain = Chain(rpc)
    chain.mine(110)
    params, sa, sb = channel(ANCHORS)
    txid, vout = fund(rpc, funding_spk(params), params.funding_sat)
    params = ChannelParams(params.local, params.remote, txid, vout, params.funding_sat, L, ANCHORS)
    chain.mine(1)
    wa, wb = Wallet(1), Wallet(2)
    local, remote = 1_234_567_890, params.funding_sat * 1000 - 1_234_567_890
    a = ClosingNegotiation(True, closing_fee(2000, wa.script, wb.script),
                           (closing_fee(1000, wa.script, wb.script), closing_fee(3000, wa.script, wb.script)))
    b = ClosingNegotiation(False, closing_fee(5000, wb.script, wa.script),
                           (closing_fee(2500, wb.script, wa.script), closing_fee(6000, wb.script, wa.script)))
    views = {"A": (params, sa, local, remote, wa.script, wb.script),
             "B": (params.mirrored(), sb, remote, local, wb.script, wa.script)}

    def closing_signed(who: str, fee: int) -> bytes:
        p, s, mine, theirs, my_script, their_script = views[who]
        built = build_closing(p, mine, theirs, my_script, their_script, fee, p.opener, p.local.dust_limit_sat)
        return der_to_compact(s.sign_funding_digest(built.sighash))

    step = a.first_offer()
    a, sender, msg = step.state, "A", (step.send, step.fee_range, closing_signed("A", step.send))
    sigs: dict[str, bytes] = {}
    for _ in range(10):
        receiver = "B" if sender == "A" else "A"
        p, s, mine, theirs, my_script, their_script = views[receiver]
        assert signed_variant(p, mine, theirs, my_script, their_script, msg[0], msg[2]) is not None
        sigs[sender] = msg[2]
        state = b if receiver == "B" else a
        step = state.receive(msg[0], msg[1])
        assert step.error is None
        if receiver == "B":
            b = step.state
        else:
            a = step.state
        if step.send is None:
            break
        msg, sender = (step.send, step.fee_range, closing_signed(receiver, step.send)), receiver
    assert a.agreed == b.agreed is not None
    fee = a.agreed
    assert closing_fee(2500, wa.script, wb.script) <= fee <= closing_fee(3000, wa.script, wb.script)
    built = signed_variant(params, local, remote, wa.script, wb.script, fee, sigs["B"])
    assert built is not None
    tx = built.tx.with_witness(0, funding_witness(params, compact_to_der(sigs["A"]), compact_to_der(sigs["B"])))
    chain.send(tx, "A")
    chain.mine(1)
    assert chain.block_height(tx.txid()) is not None
    assert classify(tx, Known(params, extensions_for(ANCHORS), None, {})).kind == "mutual"
    assert {o.script_pubkey: o.amount_sat for o in tx.outputs} == {wa.script: local // 1000 - fee,
                                                                    wb.script: remote // 1000}
