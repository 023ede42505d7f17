"""Helpers for the BOLT-5 tests: a channel between two test signers, a fake signd answering `SignRequest`s
(keys derived from basepoint secrets as signd would), and a funded 2-of-2 on a real regtest chain."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import coincurve
from embit.networks import NETWORKS
from embit.script import Script

from conftest import wait_for
from lnp_plugins.bitcoind import BitcoindError
from lnp_plugin_api.bolt3 import MAX_INDEX, derive_privkey, derive_revocation_privkey, per_commitment_secret, point
from lnp_plugin_api.channel import Basepoints, ChannelParams, ChannelType, CommitmentSpec, Htlc, Side, SideConfig
from lnp_plugin_api.commitment import BuiltCommitment, funding_script
from lnp_plugin_api.onchain_tx import SignRequest, Sweep
from lnp_plugin_api.tx import Tx, der_to_compact, p2wpkh, p2wsh

L, R = Side.LOCAL, Side.REMOTE
BASEPOINTS = ("revocation", "payment", "delayed_payment", "htlc")


@dataclass
class Signer:
    """What signd holds for one side: every basepoint secret and the per-commitment seed."""

    seed: int
    to_self_delay: int = 6

    def secret(self, name: str) -> bytes:
        return hashlib.sha256(f"{self.seed}/{name}".encode()).digest()

    def config(self) -> SideConfig:
        bp = Basepoints(*(point(self.secret(n)) for n in BASEPOINTS))
        return SideConfig(point(self.secret("funding")), bp, dust_limit_sat=546, to_self_delay=self.to_self_delay,
                          channel_reserve_sat=10_000)

    def pcs(self, n: int) -> bytes:
        return per_commitment_secret(self.secret("shachain"), MAX_INDEX - n)

    def pcp(self, n: int) -> bytes:
        return point(self.pcs(n))

    def privkey(self, req: SignRequest) -> bytes:
        """The key a request names, checked against its pubkey (as signd must)."""
        key = req.key
        assert key is not None
        base = self.secret(key.basepoint)
        if key.tweak == "none":
            priv = base
        elif key.tweak == "per_commitment":
            assert req.per_commitment_point is not None
            priv = derive_privkey(base, req.per_commitment_point)
        else:
            assert key.tweak == "revocation" and req.revocation_secret is not None
            priv = derive_revocation_privkey(base, req.revocation_secret)
        assert point(priv) == key.pubkey, f"{key} does not derive its pubkey"
        return priv

    def sign(self, req: SignRequest) -> bytes:
        """DER signature (no sighash byte)."""
        return coincurve.PrivateKey(self.privkey(req)).sign(req.digest, hasher=None)

    def sign_funding(self, built: BuiltCommitment) -> bytes:
        return self.sign_funding_digest(built.funding_sighash)

    def sign_funding_digest(self, digest: bytes) -> bytes:
        return coincurve.PrivateKey(self.secret("funding")).sign(digest, hasher=None)

    def sign_htlcs(self, built: BuiltCommitment) -> list[bytes]:
        """The htlc_signatures this side sends for the peer's commitment `built` (64-byte)."""
        key = derive_privkey(self.secret("htlc"), built.keys.per_commitment_point)
        return [der_to_compact(coincurve.PrivateKey(key).sign(s.remote_sighash, hasher=None))
                for s in built.second_stages]


class Wallet:
    """A P2WPKH key of the test's own (fee inputs and destinations)."""

    def __init__(self, seed: int) -> None:
        self.key = coincurve.PrivateKey(hashlib.sha256(f"wallet/{seed}".encode()).digest())
        self.pubkey = self.key.public_key.format()
        self.script = p2wpkh(self.pubkey)

    def sign(self, req: SignRequest) -> bytes:
        return self.key.sign(req.digest, hasher=None)


def sign_sweep(sweep: Sweep, signer: Signer, wallet: Wallet | None = None) -> Tx:
    """Sign every input (wallet inputs by `wallet`, anyone-can-spend anchors with nothing) and finalize."""
    sigs = []
    for req, inp in zip(sweep.sign_requests(), sweep.inputs):
        if inp.wallet_pubkey is not None:
            assert wallet is not None
            sigs.append(wallet.sign(req))
        elif req.key is None:
            sigs.append(b"")
        else:
            sigs.append(signer.sign(req))
    return sweep.finalize(sigs)


def verify_sweep(sweep: Sweep, signed: Tx) -> None:
    """Every input's signature checks against the key its request names (and the peer's, for HTLC txs)."""
    for req, inp, txin in zip(sweep.sign_requests(), sweep.inputs, signed.inputs):
        pub = inp.wallet_pubkey if inp.wallet_pubkey is not None else (req.key.pubkey if req.key else None)
        if pub is None:
            continue
        ours = txin.witness[2] if inp.remote_sig is not None else txin.witness[0]
        assert ours[-1] == req.sighash_type
        assert coincurve.PublicKey(pub).verify(ours[:-1], req.digest, hasher=None)


def channel(channel_type: ChannelType, funding_txid: str = "22" * 32, vout: int = 1,
            funding_sat: int = 2_000_000) -> tuple[ChannelParams, Signer, Signer]:
    a, b = Signer(1), Signer(2, to_self_delay=5)
    return ChannelParams(a.config(), b.config(), funding_txid, vout, funding_sat, L, channel_type), a, b


def htlcs(height: int) -> tuple[tuple[Htlc, ...], dict[bytes, bytes]]:
    """Four HTLCs, two each way, and their preimages by payment hash."""
    pre = {i: bytes([0x40 + i]) * 32 for i in range(4)}
    hs = (Htlc(L, 0, 50_000_000, hashlib.sha256(pre[0]).digest(), height + 20),
          Htlc(L, 1, 60_000_000, hashlib.sha256(pre[1]).digest(), height + 8),
          Htlc(R, 0, 70_000_000, hashlib.sha256(pre[2]).digest(), height + 30),
          Htlc(R, 1, 80_000_000, hashlib.sha256(pre[3]).digest(), height + 9))
    return hs, {hashlib.sha256(p).digest(): p for p in pre.values()}


def spec(height: int, feerate: int = 2500) -> tuple[CommitmentSpec, dict[bytes, bytes]]:
    hs, pre = htlcs(height)
    return CommitmentSpec(feerate, 1_200_000_000, 540_000_000, hs), pre


def address(script_pubkey: bytes) -> str:
    """The regtest address of a scriptPubKey."""
    return Script(script_pubkey).address(NETWORKS["regtest"])


def fund(rpc, params_script: bytes, amount_sat: int) -> tuple[str, int]:
    """Pay `amount_sat` to `params_script` from the regtest node's wallet; the outpoint."""
    got: list[str] = []

    def send() -> bool:      # the node's wallet lags the chain by a moment after mining
        try:
            got.append(rpc.call("sendtoaddress", address(params_script), amount_sat / 1e8))
            return True
        except BitcoindError:
            return False
    wait_for(send)
    txid = got[0]
    found: list[str] = []

    def fetch() -> bool:
        try:
            found.append(rpc.call("getrawtransaction", txid))
            return True
        except BitcoindError:
            return False
    wait_for(fetch)
    raw = Tx.parse(bytes.fromhex(found[0]))
    vout = next(i for i, o in enumerate(raw.outputs) if o.script_pubkey == params_script)
    return txid, vout


def funding_spk(params: ChannelParams) -> bytes:
    return p2wsh(funding_script(params))
