"""signd signs what the BOLT-5 builders make, on the real regtest chain (bcoin checks every script).

Our side is signd itself (its real handlers, keys from its seed, its state in SQLite, through the typed
`Signer` client); the peer is a test key holder. Each transaction is made the way channeld does it:
`onchain_tx` builds a `Sweep`, `Signer.sign_input` signs each `SignRequest` (signd recomputes every
digest and checks the spend), the wallet's inputs go through `Sweep.wallet_psbt` and `sign_wallet_psbt`,
`Sweep.finalize` assembles the witnesses. Every transaction is mined; the amounts are checked to the
satoshi against the chain."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from chain_tools import start_regtest, stop_process
from lnp_plugin_api import RpcError
from lnp_plugin_api.bolt_extensions import extensions_for
from lnp_plugin_api.channel import (ANCHORS, STATIC_REMOTEKEY, Basepoints, ChannelParams, ChannelType,
                                    CommitmentSpec, Htlc, SideConfig)
from lnp_plugin_api.closing import closing_fee, signed_variant
from lnp_plugin_api.commitment import BuiltCommitment, build_closing, build_commitment, funding_witness
from lnp_plugin_api.onchain_tx import (Sweep, anchor_cpfp, commitment_input, htlc_transaction, stage_output_input,
                                       sweep, wallet_input)
from lnp_plugin_api.services import ChannelSetup, HtlcTx, Signer
from lnp_plugin_api.tx import Tx, compact_to_der, der_to_compact
from lnp_plugins.bitcoind import Bitcoind
from onchain_tools import L, R, Signer as Peer, Wallet, fund, funding_spk, sign_sweep
from peer_tools import free_port
from test_signd_channel import DirectContext, make_signer

FEERATE = 2000
HARDENED = 0x80000000
ACCOUNT = [84 + HARDENED, 1 + HARDENED, HARDENED]   # regtest's wallet account m/84'/1'/0'
FUNDING_SAT = 2_000_000


class Chain:
    """The test's own regtest node."""

    def __init__(self, rpc: Bitcoind) -> None:
        self.rpc = rpc
        self.addr = rpc.call("getnewaddress", "default")

    def mine(self, n: int = 1) -> None:
        self.rpc.call("generatetoaddress", n, self.addr)

    def height(self) -> int:
        return int(self.rpc.call("getblockcount"))

    def send(self, tx: Tx) -> str:
        txid = self.rpc.call("sendrawtransaction", tx.serialize().hex())
        assert txid == tx.txid()
        return str(txid)

    def confirmed_outputs(self, txid: str) -> list[int]:
        """The amounts (sat) of a mined transaction's outputs, as the chain has them."""
        info = self.rpc.call("getrawtransaction", txid, True)
        assert info.get("blockhash"), f"{txid} is not mined"
        return [round(o["value"] * 100_000_000) for o in info["vout"]]


@pytest.fixture(scope="module")
def chain():
    port = free_port()
    proc = start_regtest(port, free_port())
    rpc = Bitcoind(f"http://127.0.0.1:{port}", "x", "testkey", timeout=30)
    c = Chain(rpc)
    c.mine(110)
    yield c
    rpc.close()
    stop_process(proc)


class Node:
    """Our node's signing side as channeld sees it: the `Signer` client of a real signd."""

    def __init__(self, data_dir: Path) -> None:
        self.signd = make_signer(data_dir)
        self.signer = Signer(DirectContext(self.signd))  # type: ignore[arg-type]
        self.fingerprint = bytes.fromhex(self.signer.wallet().fingerprint)
        self.next_key = 0
        self.received: list[int] = []      # what our wallet keys got, sat

    def wallet_key(self) -> tuple[bytes, bytes, tuple[int, int]]:
        """A fresh receive key of the wallet: (script, pubkey, (branch, index)), as the wallet hands out."""
        path = (0, self.next_key)
        self.next_key += 1
        pub = self.signd.channels.keys.root.derive([*ACCOUNT, *path]).get_public_key().sec()
        return self.signd.channels.wallet_script(*path), pub, path

    def coin(self, chain: Chain, amount: int = 100_000) -> Any:
        """A confirmed wallet coin to pay fees with."""
        script, pub, path = self.wallet_key()
        txid, vout = fund(chain.rpc, script, amount)
        return wallet_input(txid, vout, amount, pub, path)

    def sign(self, channel: int, sw: Sweep) -> Tx:
        """What channeld does: signd signs each channel input, the wallet its own; finalize."""
        sigs = [b"" if r.path == "wallet" else self.signer.sign_input(channel, r) for r in sw.sign_requests()]
        if any(i.wallet_pubkey is not None for i in sw.inputs):
            signed = self.signer.sign_wallet_psbt(sw.wallet_psbt(self.fingerprint, ACCOUNT), "channel_fee")
            wallet = sw.wallet_signatures(signed)
            sigs = [wallet.get(k, s) for k, s in enumerate(sigs)]
        return sw.finalize(sigs)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("signd"))
    yield n
    n.signd.engine.dispose()


def open_channel(chain: Chain, node: Node, index: int, ctype: ChannelType) -> tuple[ChannelParams, Peer]:
    """A funded channel with keys from signd (we open), readied in signd."""
    keys = {k: bytes.fromhex(v) for k, v in node.signer.channel_keys(index).items()}
    local = SideConfig(keys["funding_pubkey"], Basepoints(keys["revocation_basepoint"], keys["payment_basepoint"],
                                                          keys["delayed_payment_basepoint"], keys["htlc_basepoint"]),
                       dust_limit_sat=546, to_self_delay=6, channel_reserve_sat=10_000)
    peer = Peer(100 + index, to_self_delay=5)
    draft = ChannelParams(local, peer.config(), "00" * 32, 0, FUNDING_SAT, L, ctype)
    txid, vout = fund(chain.rpc, funding_spk(draft), FUNDING_SAT)
    params = ChannelParams(local, peer.config(), txid, vout, FUNDING_SAT, L, ctype)
    bp = peer.config().basepoints
    node.signer.ready_channel(index, ChannelSetup(
        txid, vout, FUNDING_SAT, peer.config().funding_pubkey,
        {"revocation_basepoint": bp.revocation, "payment_basepoint": bp.payment,
         "delayed_payment_basepoint": bp.delayed_payment, "htlc_basepoint": bp.htlc},
        params.delay_of(L), params.delay_of(R), "anchors" if ctype.anchors else "static_remotekey", "holder"))
    return params, peer


def two_htlcs(height: int) -> tuple[CommitmentSpec, bytes, bytes]:
    """One HTLC we offered (expiring soon) and one offered to us; their preimages."""
    ours, theirs = b"\x51" * 32, b"\x52" * 32
    htlcs = (Htlc(L, 0, 60_000_000, hashlib.sha256(ours).digest(), height + 8),
             Htlc(R, 0, 70_000_000, hashlib.sha256(theirs).digest(), height + 40))
    return CommitmentSpec(2500, 1_200_000_000, 670_000_000, htlcs), ours, theirs


def holder_htlc_txs(built: BuiltCommitment, peer: Peer) -> tuple[list[bytes], list[HtlcTx]]:
    sigs = peer.sign_htlcs(built)
    return sigs, [HtlcTx(s.tx.serialize(), s.input_script, sig) for s, sig in zip(built.second_stages, sigs)]


@pytest.mark.parametrize("ctype", [ANCHORS, STATIC_REMOTEKEY], ids=["anchors", "static_remotekey"])
def test_force_close_swept_to_the_wallet_by_signd(chain, node, ctype) -> None:
    index = 0 if ctype.anchors else 3
    params, peer = open_channel(chain, node, index, ctype)
    fees = [node.coin(chain) for _ in range(3)] if ctype.anchors else []
    chain.mine(1)
    spec, _, preimage = two_htlcs(chain.height())
    ours = build_commitment(params, spec, L, 0, node.signer.per_commitment_point(index, 0), extensions_for(ctype))
    htlc_sigs, htlcs = holder_htlc_txs(ours, peer)
    node.signer.validate_holder_commitment(index, 0, ours.tx.serialize(), der_to_compact(peer.sign_funding(ours)),
                                           htlcs)
    going = node.signer.sign_holder_commitment(index, 0)
    commitment = Tx.parse(bytes.fromhex(going["tx"]))
    assert commitment.txid() == ours.txid
    chain.send(commitment)
    made: list[Sweep] = []
    if ctype.anchors:   # our anchor and a wallet coin pay for the commitment (CPFP)
        script, _, path = node.wallet_key()
        cpfp = anchor_cpfp(ours, L, [fees.pop()], script, 5000, parent_weight=4 * len(commitment.serialize()),
                           parent_fee_sat=ours.fee_sat, destination_path=path)
        chain.send(node.sign(index, cpfp))
        made.append(cpfp)
    chain.mine(1)
    assert chain.confirmed_outputs(ours.txid) == [o.amount_sat for o in ours.outputs]

    # HTLC-success at once (we know the preimage), HTLC-timeout at its expiry; with anchors each adds a
    # wallet coin for its fee and pays wallet change (the peer signed SIGHASH_SINGLE|ANYONECANPAY).
    stage_of = {s.stage.kind: (k, s) for k, s in enumerate(ours.second_stages)}
    stages = {}
    for kind in ("htlc_success", "htlc_timeout"):
        k, stage = stage_of[kind]
        extra: dict[str, Any] = {}
        if ctype.anchors:
            script, _, path = node.wallet_key()
            extra = dict(fee_inputs=[fees.pop()], change=script, change_path=path, feerate_per_kw=FEERATE)
        htlc = htlc_transaction(ours, stage, htlc_sigs[k], preimage if kind == "htlc_success" else None, **extra)
        if kind == "htlc_timeout":
            chain.mine(max(0, stage.stage.locktime - chain.height()))
        chain.send(node.sign(index, htlc))
        made.append(htlc)
        stages[kind] = (htlc, stage)
    chain.mine(1)

    # to_local and both HTLC transactions' outputs after our delay, in one sweep
    script, _, path = node.wallet_key()
    to_local = next(o.index for o in ours.outputs if o.descriptor and o.descriptor.kind == "to_local")
    inputs = [commitment_input(ours, to_local, "delayed")] + [
        stage_output_input(htlc.txid, stage, "delayed", ours.keys.per_commitment_point, commitment_number=0)
        for htlc, stage in stages.values()]
    final = sweep("to_local", inputs, script, FEERATE, destination_path=path)
    signed = node.sign(index, final)
    with pytest.raises(RpcError):   # the CSV delay is the chain's too
        chain.send(signed)
    chain.mine(params.delay_of(L) - 1)
    chain.send(signed)
    chain.mine(1)
    made.append(final)

    # Every transaction is mined with the amounts built; the wallet holds what the channel gave us.
    for sw in made:
        assert chain.confirmed_outputs(sw.txid) == [o.amount_sat for o in sw.tx.outputs]
    to_wallet = sum(o.amount_sat for sw in made for o, p in zip(sw.tx.outputs, sw.output_paths) if p is not None)
    coins_spent = sum(i.amount_sat for sw in made for i in sw.inputs if i.wallet_pubkey is not None)
    fee_paid = sum(sw.fee_sat for sw in made)
    anchor = 330 if ctype.anchors else 0
    ours_before = spec.local_msat // 1000 - ours.fee_sat - 2 * anchor + sum(h.amount_msat // 1000 for h in spec.htlcs)
    assert to_wallet == ours_before + anchor + coins_spent - fee_paid
    # signd refuses to sign it again to anywhere else
    other = sweep("to_local", inputs, Wallet(9).script, FEERATE, destination_path=path)
    with pytest.raises(RpcError, match="does not pay the wallet key"):
        node.signer.sign_input(index, other.sign_requests()[0])


def test_their_commitment_claimed_by_preimage_timeout_and_to_remote(chain, node) -> None:
    """The peer's current commitment on chain: signd signs our to_remote, the HTLC it offered us by its
    preimage, and the one we offered by timeout once it expired (not before)."""
    index = 4
    params, peer = open_channel(chain, node, index, ANCHORS)
    chain.mine(1)
    spec, _, preimage = two_htlcs(chain.height())
    theirs = build_commitment(params, spec, R, 0, peer.pcp(0), extensions_for(ANCHORS))
    sig, _ = node.signer.sign_counterparty_commitment(
        index, 0, theirs.tx.serialize(), peer.pcp(0), [HtlcTx(s.tx.serialize(), s.input_script)
                                                      for s in theirs.second_stages])
    chain.send(theirs.tx.with_witness(0, funding_witness(params, compact_to_der(sig), peer.sign_funding(theirs))))
    chain.mine(1)
    kinds = {o.descriptor.kind: o.index for o in theirs.outputs if o.descriptor and o.descriptor.kind != "anchor"}
    script, _, path = node.wallet_key()
    now = sweep("claim", [commitment_input(theirs, kinds["to_remote"], "payment"),
                          commitment_input(theirs, kinds["offered_htlc"], "preimage", preimage=preimage)],
                script, FEERATE, destination_path=path)
    script, _, path = node.wallet_key()
    later = sweep("timeout", [commitment_input(theirs, kinds["received_htlc"], "timeout")], script, FEERATE,
                  destination_path=path)
    chain.send(node.sign(index, now))
    early = node.sign(index, later)   # signd signs it (the locktime is the expiry): the chain waits
    with pytest.raises(RpcError):
        chain.send(early)
    chain.mine(later.tx.locktime - chain.height())
    chain.send(early)
    chain.mine(1)
    for sw in (now, later):
        assert chain.confirmed_outputs(sw.txid) == [sw.tx.outputs[0].amount_sat]
    got = now.tx.outputs[0].amount_sat + later.tx.outputs[0].amount_sat
    ours = spec.local_msat // 1000 - theirs.fee_sat - 2 * 330 + sum(h.amount_msat // 1000 for h in spec.htlcs)
    assert got == ours - now.fee_sat - later.fee_sat


def test_revoked_commitment_penalized_and_to_remote_claimed(chain, node) -> None:
    index = 1
    params, peer = open_channel(chain, node, index, ANCHORS)
    exts = extensions_for(ANCHORS)
    theirs_wallet = Wallet(7)
    their_fee = fund(chain.rpc, theirs_wallet.script, 100_000)
    chain.mine(1)
    spec, ours_preimage, _ = two_htlcs(chain.height())
    # signd signs the peer's commitments 0 and 1; the peer revokes 0
    theirs = [build_commitment(params, spec, R, k, peer.pcp(k), exts) for k in (0, 1)]
    our_sigs = [node.signer.sign_counterparty_commitment(
        index, k, b.tx.serialize(), peer.pcp(k), [HtlcTx(s.tx.serialize(), s.input_script) for s in b.second_stages])
        for k, b in enumerate(theirs)]
    node.signer.validate_counterparty_revocation(index, 0, peer.pcs(0))
    revoked = theirs[0]
    # ... and broadcasts it anyway, then takes the HTLC we offered with its HTLC-success (and our signature)
    cheat = revoked.tx.with_witness(0, funding_witness(params, compact_to_der(our_sigs[0][0]),
                                                       peer.sign_funding(revoked)))
    chain.send(cheat)
    chain.mine(1)
    their_view = build_commitment(params.mirrored(), spec.mirrored(), L, 0, peer.pcp(0), exts)
    k = next(j for j, s in enumerate(their_view.second_stages) if s.stage.kind == "htlc_success")
    success = htlc_transaction(their_view, their_view.second_stages[k], our_sigs[0][1][k], ours_preimage,
                               fee_inputs=[wallet_input(*their_fee, 100_000, theirs_wallet.pubkey)],
                               change=theirs_wallet.script, feerate_per_kw=FEERATE)
    chain.send(sign_sweep(success, peer, theirs_wallet))
    chain.mine(1)

    secret = peer.pcs(0)  # channeld holds it in its shachain; signd checks it against its own record
    revocable = [o.index for o in revoked.outputs if o.descriptor and o.descriptor.kind != "anchor"
                 and any(p.name == "revocation" for p in o.descriptor.paths)
                 and o.index != their_view.second_stages[k].output_index]
    stage = next(s for s in revoked.second_stages if s.output_index == their_view.second_stages[k].output_index)
    inputs = [commitment_input(revoked, j, "revocation", secret) for j in revocable]
    inputs.append(stage_output_input(success.txid, stage, "revocation", revoked.keys.per_commitment_point, secret,
                                     commitment_number=0))
    script, _, path = node.wallet_key()
    penalty = sweep("penalty", inputs, script, FEERATE, destination_path=path)
    to_remote = next(o.index for o in revoked.outputs if o.descriptor and o.descriptor.kind == "to_remote")
    script, _, path = node.wallet_key()
    claim = sweep("to_remote", [commitment_input(revoked, to_remote, "payment")], script, FEERATE,
                  destination_path=path)
    # the revocation path only with the secret of a state signd knows is revoked
    forged = sweep("penalty", [commitment_input(revoked, revocable[0], "revocation", peer.pcs(1))], script,
                   FEERATE, destination_path=path)
    with pytest.raises(RpcError, match="not the one the counterparty revealed"):
        node.signer.sign_input(index, forged.sign_requests()[0])
    chain.send(node.sign(index, penalty))
    chain.send(node.sign(index, claim))
    chain.mine(1)
    assert chain.confirmed_outputs(penalty.txid) == [penalty.tx.outputs[0].amount_sat]
    assert chain.confirmed_outputs(claim.txid) == [claim.tx.outputs[0].amount_sat]
    # we hold everything but the fees and the anchors (with anchors the HTLC-success moved its whole amount)
    got = penalty.tx.outputs[0].amount_sat + claim.tx.outputs[0].amount_sat
    assert got == FUNDING_SAT - revoked.fee_sat - 2 * 330 - penalty.fee_sat - claim.fee_sat
    assert len(inputs) == 3   # to_local, the HTLC offered to them, the output of their HTLC-success


def test_cooperative_close_signed_by_signd(chain, node) -> None:
    index = 2
    params, peer = open_channel(chain, node, index, ANCHORS)
    chain.mine(1)
    ours, _, path = node.wallet_key()
    theirs = Wallet(8).script
    local, remote = 1_234_567_890, FUNDING_SAT * 1000 - 1_234_567_890
    fee = closing_fee(2500, ours, theirs)
    built = build_closing(params, local, remote, ours, theirs, fee, params.opener, params.local.dust_limit_sat)
    sig = node.signer.sign_mutual_close(index, built.tx.serialize(), built.output_sides.index(L), wallet_output=path)
    # the peer checks our signature as its closing_signed handler does, and signs the same transaction
    assert signed_variant(params.mirrored(), remote, local, theirs, ours, fee, sig) is not None
    tx = built.tx.with_witness(0, funding_witness(params, compact_to_der(sig),
                                                  peer.sign_funding_digest(built.sighash)))
    with pytest.raises(RpcError, match="does not pay the wallet key"):
        node.signer.sign_mutual_close(index, built.tx.serialize(), built.output_sides.index(L),
                                      wallet_output=(path[0], path[1] + 1))
    chain.send(tx)
    chain.mine(1)
    amounts = dict(zip([o.script_pubkey for o in tx.outputs], chain.confirmed_outputs(tx.txid())))
    assert amounts == {ours: local // 1000 - fee, theirs: remote // 1000}
