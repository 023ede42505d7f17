"""signd's channel operations and their policy, on a channel built by hand (tests/signer_tools.py),
with signd's real handlers and a real SQLite table (no node: the node-level tests are in
test_signd_channel_node.py)."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import coincurve
import pytest
from embit.script import Script
from sqlalchemy import create_engine

from lnp_plugin_api import RpcError, bolt11
from lnp_plugin_api.bech32 import CHARSET, bech32_encode, bytes_to_words, words_of
from lnp_plugin_api.services import ChannelSetup, HtlcTx, Signer as ServiceSigner
from lnp_plugin_api.bolt3 import (MAX_INDEX, anchor_script, derive_pubkey, derive_revocation_pubkey,
                                  per_commitment_secret, point, to_local_script)
from lnp_plugin_api.tx import SIGHASH_ALL, SIGHASH_SINGLE_ANYONECANPAY, p2wpkh, p2wsh, verify
from lnp_plugins import signd
from lnp_plugins.signd import policy, seed, storage
from lnp_plugins.signd.keys import PER_COMMITMENT_FAMILY, Keychain
from signer_tools import (COUNTERPARTY_DELAY, FUNDING_SAT, HOLDER_DELAY, PREIMAGE, Channel, Counterparty, params, parse,
                          spend)
from test_signd import WORDS

KEYS = Keychain(WORDS, "regtest")


class Verdict:
    allowed, by, reason = True, "", ""


def make_signer(data_dir: Path, db: Path | None = None) -> signd.Signer:
    """signd's Signer with a fake context: the seed in `data_dir`, its table in SQLite `db`."""
    if not (data_dir / "signd" / "seed.json").exists():
        seed.create(data_dir, "", WORDS)
    engine = create_engine(f"sqlite:///{db or data_dir / 'signd.sqlite'}")
    storage.metadata.create_all(engine)
    ctx = SimpleNamespace(config={"passphrase_file": "", "grant": {}}, log=logging.getLogger("test.signd"),
                          node=SimpleNamespace(data_dir=data_dir, network="regtest", node_id=KEYS.node_id()),
                          storage=SimpleNamespace(begin=engine.begin), decide=lambda name, body: Verdict(),
                          service="signd")
    signer = signd.Signer(ctx)  # type: ignore[arg-type]
    signer.engine = engine  # type: ignore[attr-defined]  # disposed by the fixture
    return signer


@pytest.fixture
def signer(tmp_path: Path):
    s = make_signer(tmp_path)
    yield s
    s.engine.dispose()


def ask(s: signd.Signer, op: str, **body: Any) -> Any:
    return signd.dispatch(s, f"signd.{op}", body)


def refused(s: signd.Signer, op: str, match: str, **body: Any) -> None:
    with pytest.raises(RpcError) as e:
        ask(s, op, **body)
    assert e.value.code == RpcError.REFUSED, e.value.message
    assert match in e.value.message, e.value.message


def ready(s: signd.Signer, channel_type: str = "static_remotekey") -> Channel:
    ch = Channel(KEYS, 0, Counterparty(), channel_type)
    got = ask(s, "ready_channel", index=0, params=params(ch.them, channel_type))
    assert got["funding_script"] == ch.funding_script().hex()
    return ch


def verify_der(pub: bytes, sig: bytes, digest: bytes) -> bool:
    return coincurve.PublicKey(pub).verify(sig[:-1], digest, hasher=None)


# --- the counterparty's commitments -------------------------------------------------------------

def test_counterparty_commitments_and_revocations(signer) -> None:
    ch = ready(signer)
    tx0 = ch.commitment(0, ch.their_outputs(0))
    body0 = dict(index=0, commitment_number=0, tx=tx0.serialize().hex(), per_commitment_point=ch.them.point(0).hex())
    got = ask(signer, "sign_counterparty_commitment", **body0)
    digest = tx0.sighash_segwit(0, Script(ch.funding_script()), FUNDING_SAT, SIGHASH_ALL)
    assert verify(ch.bp["funding_pubkey"], bytes.fromhex(got["signature"]), digest)
    assert ask(signer, "sign_counterparty_commitment", **body0) == got  # the same again: fine (retransmission)
    other0 = ch.commitment(0, ch.their_outputs(0)[:1])
    refused(signer, "sign_counterparty_commitment", "another counterparty commitment 0",
            **{**body0, "tx": other0.serialize().hex()})
    tx1 = ch.commitment(1, ch.their_outputs(1))
    body1 = dict(index=0, commitment_number=1, tx=tx1.serialize().hex(), per_commitment_point=ch.them.point(1).hex())
    ask(signer, "sign_counterparty_commitment", **body1)
    tx2 = ch.commitment(2, ch.their_outputs(2))
    body2 = dict(index=0, commitment_number=2, tx=tx2.serialize().hex(), per_commitment_point=ch.them.point(2).hex())
    refused(signer, "sign_counterparty_commitment", "commitment 0 of the counterparty is not revoked", **body2)
    refused(signer, "validate_counterparty_revocation", "not the one of counterparty commitment 0",
            index=0, commitment_number=0, secret=ch.them.secret(1).hex())
    refused(signer, "validate_counterparty_revocation", "revoke commitment 0 first",
            index=0, commitment_number=1, secret=ch.them.secret(1).hex())
    assert ask(signer, "validate_counterparty_revocation", index=0, commitment_number=0,
               secret=ch.them.secret(0).hex()) == {"revoked": 0}
    refused(signer, "sign_counterparty_commitment", "revoked its commitment 0", **body0)
    ask(signer, "sign_counterparty_commitment", **body2)


def test_counterparty_commitment_must_spend_the_funding_outpoint(signer) -> None:
    ch = ready(signer)
    pcp = ch.them.point(0).hex()
    for tx, why in ((ch.commitment(0, ch.their_outputs(0), txid="bb" * 32), "does not spend channel 0's funding"),
                    (ch.commitment(0, ch.their_outputs(0), obscured=ch.factor ^ 5), "obscured commitment number"),
                    (ch.commitment(0, [(ch.their_outputs(0)[1][0], FUNDING_SAT + 1)]), "more than the channel holds")):
        refused(signer, "sign_counterparty_commitment", why, index=0, commitment_number=0,
                tx=tx.serialize().hex(), per_commitment_point=pcp)
    refused(signer, "sign_counterparty_commitment", "not ready", index=1, commitment_number=0,
            tx=ch.commitment(0, ch.their_outputs(0)).serialize().hex(), per_commitment_point=pcp)
    ask(signer, "sign_counterparty_commitment", index=0, commitment_number=0,  # nothing was recorded
        tx=ch.commitment(0, ch.their_outputs(0)).serialize().hex(), per_commitment_point=pcp)


@pytest.mark.parametrize("channel_type", ["static_remotekey", "anchors"])
def test_counterparty_htlc_signatures(signer, channel_type: str) -> None:
    """Our HTLC signatures on their commitment: anchors sign SIGHASH_SINGLE|ANYONECANPAY; an HTLC
    transaction paying anything but their revocable to_local is refused."""
    ch = ready(signer, channel_type)
    pcp = ch.them.point(0)
    our_htlc = derive_pubkey(ch.bp["htlc_basepoint"], pcp)
    script = ch.their_htlc_script(0)
    tx = ch.commitment(0, ch.their_outputs(0, script))
    to_local = ch.their_outputs(0)[0][0]
    their_to_local = to_local_script(derive_revocation_pubkey(ch.bp["revocation_basepoint"], pcp), COUNTERPARTY_DELAY,
                                       derive_pubkey(point(ch.them.delayed), pcp))
    assert to_local == p2wsh(their_to_local)
    htlc = ch.htlc_tx(tx, 2, their_to_local, 9_000)
    body = dict(index=0, commitment_number=0, tx=tx.serialize().hex(), per_commitment_point=pcp.hex(),
                htlcs=[{"tx": htlc.serialize().hex(), "witness_script": script.hex()}])
    got = ask(signer, "sign_counterparty_commitment", **body)
    flag = SIGHASH_SINGLE_ANYONECANPAY if channel_type == "anchors" else SIGHASH_ALL
    digest = htlc.sighash_segwit(0, Script(script), 10_000, flag)
    assert verify(our_htlc, bytes.fromhex(got["htlc_signatures"][0]), digest)
    pcp1 = ch.them.point(1)
    script1 = ch.their_htlc_script(1)
    tx1 = ch.commitment(1, ch.their_outputs(1, script1))
    stolen = ch.htlc_tx(tx1, 2, ch.our_to_local(0), 9_000)  # pays elsewhere
    refused(signer, "sign_counterparty_commitment", "output is not BOLT-3's", **{
        **body, "commitment_number": 1, "per_commitment_point": pcp1.hex(), "tx": tx1.serialize().hex(),
        "htlcs": [{"tx": stolen.serialize().hex(), "witness_script": script1.hex()}]})
    refused(signer, "sign_counterparty_commitment", "not an HTLC of this channel's keys", **{
        **body, "commitment_number": 1, "per_commitment_point": pcp1.hex(),
        "tx": ch.commitment(1, ch.their_outputs(1, script)).serialize().hex(),
        "htlcs": [{"tx": ch.htlc_tx(ch.commitment(1, ch.their_outputs(1, script)), 2, their_to_local, 9_000)
                   .serialize().hex(), "witness_script": script.hex()}]})


def test_every_output_of_their_commitment_is_revocable_or_ours(signer) -> None:
    """An output of the counterparty's commitment we could not take after a revocation (paying them
    directly, an HTLC whose transaction we do not sign, an HTLC without our revocation key) is refused."""
    ch = ready(signer, "anchors")
    pcp = ch.them.point(0)

    def body(outputs: list, htlcs: list | None = None) -> dict:
        return dict(index=0, commitment_number=0, tx=ch.commitment(0, outputs).serialize().hex(),
                    per_commitment_point=pcp.hex(), htlcs=htlcs or [])
    plain = ch.their_outputs(0)
    refused(signer, "sign_counterparty_commitment", "output 2 of the counterparty's commitment",
            **body(plain + [(p2wpkh(point(ch.them.payment)), 1_000)]))
    refused(signer, "sign_counterparty_commitment", "output 2 of the counterparty's commitment",
            **body(ch.their_outputs(0, ch.their_htlc_script(0))))
    unrevocable = ch.htlc_script(derive_pubkey(ch.bp["htlc_basepoint"], pcp), derive_pubkey(point(ch.them.htlc), pcp))
    outputs = plain + [(p2wsh(unrevocable), 10_000)]
    htlc = ch.htlc_tx(ch.commitment(0, outputs), 2, ch.their_to_local(0), 10_000)
    refused(signer, "sign_counterparty_commitment", "not an HTLC of this channel's keys",
            **body(outputs, [{"tx": htlc.serialize().hex(), "witness_script": unrevocable.hex()}]))
    anchors = [(p2wsh(anchor_script(key)), 330) for key in (ch.bp["funding_pubkey"], point(ch.them.funding))]
    ask(signer, "sign_counterparty_commitment", **body(plain + anchors))


@pytest.mark.parametrize("channel_type", ["static_remotekey", "anchors"])
def test_an_htlc_output_must_be_bolt3s_script(signer, channel_type: str) -> None:
    """A script that holds our revocation key's hash and both HTLC keys but is not BOLT-3's HTLC script
    (here: the peer takes it with its key and ours, and the revocation key takes nothing) is refused."""
    ch = ready(signer, channel_type)
    pcp = ch.them.point(0)
    lookalike = ch.htlc_script(derive_pubkey(ch.bp["htlc_basepoint"], pcp), derive_pubkey(point(ch.them.htlc), pcp),
                               derive_revocation_pubkey(ch.bp["revocation_basepoint"], pcp))
    for script, good in ((lookalike, False), (ch.their_htlc_script(0), True)):
        tx = ch.commitment(0, ch.their_outputs(0, script))
        htlc = ch.htlc_tx(tx, 2, ch.their_to_local(0), 9_000)
        body = dict(index=0, commitment_number=0, tx=tx.serialize().hex(), per_commitment_point=pcp.hex(),
                    htlcs=[{"tx": htlc.serialize().hex(), "witness_script": script.hex()}])
        if good:
            assert len(ask(signer, "sign_counterparty_commitment", **body)["htlc_signatures"]) == 1
        else:
            refused(signer, "sign_counterparty_commitment", "not an HTLC of this channel's keys", **body)


# --- our commitments ----------------------------------------------------------------------------

def validate(s: signd.Signer, ch: Channel, n: int, sig: bytes | None = None) -> None:
    tx = ch.commitment(n, ch.our_outputs(n))
    ask(s, "validate_holder_commitment", index=0, commitment_number=n, tx=tx.serialize().hex(),
        signature=(sig or ch.their_sig(tx)).hex())


def test_holder_commitments_revocation_and_going_to_chain(signer) -> None:
    ch = ready(signer)
    tx0 = ch.commitment(0, ch.our_outputs(0))
    refused(signer, "validate_holder_commitment", "does not verify", index=0, commitment_number=0,
            tx=tx0.serialize().hex(), signature=ch.their_sig(tx0, secret=b"\x22" * 32).hex())
    validate(signer, ch, 0)
    refused(signer, "revoke_holder_commitment", "current state", index=0, commitment_number=0)
    validate(signer, ch, 1)
    got = ask(signer, "revoke_holder_commitment", index=0, commitment_number=0)
    seed0 = KEYS.channel_secret(PER_COMMITMENT_FAMILY, 0)
    assert got["secret"] == per_commitment_secret(seed0, MAX_INDEX).hex()
    assert got["next_point"] == KEYS.per_commitment_point(0, 2).hex()
    refused(signer, "revoke_holder_commitment", "current state", index=0, commitment_number=1)
    validate(signer, ch, 2)
    with pytest.raises(RpcError, match="commitment 1 is not revoked yet"):
        validate(signer, ch, 3)
    refused(signer, "sign_holder_commitment", "was revoked", index=0, commitment_number=0)
    refused(signer, "sign_holder_commitment", "not the latest validated", index=0, commitment_number=1)
    closing = ask(signer, "sign_holder_commitment", index=0, commitment_number=2)
    signed = parse(closing["tx"])
    witness = signed.vin[0].witness.items
    assert witness[0] == b"" and witness[3] == ch.funding_script() and len(witness) == 4
    digest = signed.sighash_segwit(0, Script(ch.funding_script()), FUNDING_SAT, SIGHASH_ALL)
    keys = sorted([ch.bp["funding_pubkey"], point(ch.them.funding)])
    assert verify_der(keys[0], witness[1], digest) and verify_der(keys[1], witness[2], digest)
    ask(signer, "revoke_holder_commitment", index=0, commitment_number=1)  # 1 is replaced by 2: fine
    refused(signer, "revoke_holder_commitment", "may be on chain", index=0, commitment_number=2)
    with pytest.raises(RpcError, match="went to chain"):
        validate(signer, ch, 3)


def test_holder_htlc_signatures_are_checked_and_returned(signer) -> None:
    ch = ready(signer, "anchors")
    pcp = ch.holder_point(0)
    ours, theirs = derive_pubkey(ch.bp["htlc_basepoint"], pcp), derive_pubkey(point(ch.them.htlc), pcp)
    script = ch.our_htlc_script(0)
    tx = ch.commitment(0, ch.our_outputs(0, script))
    htlc = ch.htlc_tx(tx, 2, ch.our_to_local(0), 9_000)
    good = ch.their_sig(htlc, ch.their_htlc_secret(0), script, 10_000, SIGHASH_SINGLE_ANYONECANPAY)
    body = dict(index=0, commitment_number=0, tx=tx.serialize().hex(), signature=ch.their_sig(tx).hex(),
                htlcs=[{"tx": htlc.serialize().hex(), "witness_script": script.hex(), "signature": good.hex()}])
    wrong_flag = ch.their_sig(htlc, ch.their_htlc_secret(0), script, 10_000, SIGHASH_ALL)
    refused(signer, "validate_holder_commitment", "HTLC transaction spending output 2 does not verify",
            **{**body, "htlcs": [{**body["htlcs"][0], "signature": wrong_flag.hex()}]})
    ask(signer, "validate_holder_commitment", **body)
    closing = ask(signer, "sign_holder_commitment", index=0, commitment_number=0)
    [h] = closing["htlcs"]
    assert bytes.fromhex(h["counterparty_signature"])[-1] == SIGHASH_SINGLE_ANYONECANPAY
    digest = htlc.sighash_segwit(0, Script(script), 10_000, SIGHASH_ALL)
    assert verify_der(ours, bytes.fromhex(h["holder_signature"]), digest)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    """The signer's state is in its table: a new signd refuses what the old one revoked."""
    first = make_signer(tmp_path)
    ch = ready(first)
    validate(first, ch, 0)
    validate(first, ch, 1)
    ask(first, "revoke_holder_commitment", index=0, commitment_number=0)
    first.engine.dispose()
    second = make_signer(tmp_path)
    try:
        refused(second, "sign_holder_commitment", "was revoked", index=0, commitment_number=0)
        refused(second, "revoke_holder_commitment", "current state", index=0, commitment_number=1)
        refused(second, "ready_channel", "other parameters", index=0, params=params(Counterparty(funding=b"\x01" * 32)))
    finally:
        second.engine.dispose()


# --- invoices, onion ECDH, capabilities, garbage ------------------------------------------------

def invoice_data(network: str = "regtest", drop: int | None = None, add: bytes = b"", **changes: Any) -> dict:
    """{hrp, data} of a whole unsigned invoice as channeld asks signd to sign it; `drop` leaves out the
    fields of that tag, `add` appends raw 5-bit words."""
    inv = bolt11.Invoice(currency=bolt11.currency_for(network), timestamp=1_700_000_000, payment_hash=b"\x03" * 32,
                         payment_secret=b"\x04" * 32, amount_msat=1_000_000_000, description="coffee", **changes)
    hrp, data5 = bolt11.unsigned_parts(inv)
    if drop is not None:
        fields = bolt11.decode_unsigned(hrp, data5).wire[1]
        data5 = data5[:7] + b"".join(bytes([f.tag, len(f.data) >> 5, len(f.data) & 31]) + f.data
                                     for f in fields if f.tag != drop)
    return {"hrp": hrp, "data": "".join(CHARSET[w] for w in data5 + add)}


def test_invoice_signature(signer) -> None:
    body = invoice_data()
    sig = bytes.fromhex(ask(signer, "sign_invoice", **body)["signature"])
    assert len(sig) == 65
    text = bech32_encode(body["hrp"], words_of(body["data"]) + bytes_to_words(sig))
    assert bolt11.decode(text).payee == KEYS.node_id()  # a whole invoice, signed by the node
    ask(signer, "sign_invoice", **invoice_data(payee=KEYS.node_id(), payee_in_invoice=True))
    refused(signer, "sign_invoice", "another payee", **invoice_data(payee=point(b"\x09" * 32), payee_in_invoice=True))
    refused(signer, "sign_invoice", "network", **invoice_data("mainnet"))
    refused(signer, "sign_invoice", "network", **invoice_data("testnet"))
    refused(signer, "sign_invoice", "payment_hash", **invoice_data(drop=bolt11.P))
    refused(signer, "sign_invoice", "truncated tagged field", hrp=body["hrp"], data=body["data"] + "pp")
    with pytest.raises(RpcError) as e:
        ask(signer, "sign_invoice", hrp=body["hrp"], data="NOT-BECH32")
    assert e.value.code == RpcError.INVALID_PARAMS


def test_invoice_is_checked_whole(signer) -> None:
    # the fields a reader needs (payment secret, description), an amount that is one, known even features,
    # and an `n` field readers would skip (wrong length) that signd refuses all the same
    refused(signer, "sign_invoice", "payment_secret", **invoice_data(drop=bolt11.S))
    refused(signer, "sign_invoice", "d field", **invoice_data(drop=bolt11.D))
    refused(signer, "sign_invoice", "unknown feature", **invoice_data(features=frozenset({8, 14, 100})))
    refused(signer, "sign_invoice", "precision", hrp="lnbcrt1p", data=invoice_data()["data"])
    refused(signer, "sign_invoice", "another payee", **invoice_data(add=bytes([bolt11.N, 1, 20]) + bytes(52)))


def test_onion_ecdh_and_channel_keys(signer) -> None:
    other = coincurve.PrivateKey(b"\x44" * 32)
    got = ask(signer, "onion_ecdh", point=other.public_key.format().hex())
    assert got["secret"] == other.ecdh(KEYS.node_id()).hex()
    keys = ask(signer, "channel_keys", index=4)
    assert keys["funding_pubkey"] == KEYS.basepoints(4)["funding_pubkey"]
    assert keys["second_per_commitment_point"] == KEYS.per_commitment_point(4, 1).hex()


def test_capabilities_of_the_new_operations() -> None:
    ops = [n for n in policy.OPERATIONS if n.startswith("signd.") and n not in ("signd.wallet", "signd.sign_wallet_psbt")]
    for name in ops:
        assert policy.may("channeld", name, "signd", {}, ["channeld"]), name
        assert not policy.may("peerd", name, "signd", {}, ["peerd"]), name
        assert not policy.may("wallet", name, "signd", {}, ["wallet"]), name
    assert policy.OPERATIONS["signd.onion_ecdh"] == "onion" and policy.OPERATIONS["signd.sign_invoice"] == "invoice"
    assert not policy.may("peerd", "signd.onion_ecdh", "signd", {"peerd": ["ecdh"]}, ["peerd"])


GARBAGE: list[Any] = [None, 1, "x", [], {}, {"index": "0"}, {"index": -1}, {"index": 2**40},
                      {"index": 0, "commitment_number": "1"}, {"index": 0, "commitment_number": True},
                      {"index": 0, "commitment_number": 0, "tx": "zz", "per_commitment_point": "02"},
                      {"index": 0, "commitment_number": 0, "tx": "0200", "signature": "00"},
                      {"index": 0, "commitment_number": 0, "tx": 5, "per_commitment_point": None, "htlcs": "no"},
                      {"index": 0, "params": []}, {"index": 0, "params": {"funding_txid": 3}},
                      {"index": 0, "kind": "to_local", "tx": "00", "input_index": 0, "amount_sat": 1},
                      {"index": 0, "kind": ["x"], "tx": [], "wallet_outputs": "x"},
                      {"index": 0, "commitment_number": 0, "secret": "zz"},
                      {"hrp": 1, "data": None}, {"hrp": "lnbcrt", "data": ""}, {"point": "02" * 33},
                      {"point": None}]


def test_every_operation_answers_garbage_with_a_clear_error(signer) -> None:
    ch = ready(signer)
    validate(signer, ch, 0)
    real_tx = ch.commitment(0, ch.our_outputs(0)).serialize().hex()
    garbage = GARBAGE + [{"index": 0, "commitment_number": 0, "tx": real_tx, "signature": "zz", "htlcs": [{}]},
                         {"index": 0, "commitment_number": 0, "tx": real_tx, "per_commitment_point": "02" * 33,
                          "htlcs": [{"tx": real_tx, "witness_script": 7}]},
                         {"index": 0, "kind": "to_local", "tx": real_tx, "input_index": 3, "amount_sat": 1,
                          "commitment_number": 0},
                         {"index": 0, "kind": "to_local", "tx": real_tx, "input_index": 0, "amount_sat": 1,
                          "commitment_number": 0, "wallet_outputs": [["a", 1]]}]
    for name in signd.HANDLED:
        for body in garbage:
            try:
                signd.dispatch(signer, name, body)
            except RpcError as e:
                assert e.code in (RpcError.INVALID_PARAMS, RpcError.REFUSED), (name, body, e.message)
                assert "Traceback" not in e.message


def test_forced_channel_secrets_and_bip32_seed() -> None:
    """--dev-force-channel-secrets: every channel uses them (Core Lightning's order); --dev-force-bip32-seed
    replaces the mnemonic's root."""
    forced = tuple(bytes([i]) * 32 for i in range(1, 7))
    keys = Keychain(WORDS, "regtest", channel_secrets=forced)
    for index in (0, 9):
        got = keys.basepoints(index)
        assert got["funding_pubkey"] == point(forced[0]).hex()
        assert got["revocation_basepoint"] == point(forced[1]).hex()
        assert got["payment_basepoint"] == point(forced[2]).hex()
        assert got["delayed_payment_basepoint"] == point(forced[3]).hex()
        assert got["htlc_basepoint"] == point(forced[4]).hex()
        assert keys.per_commitment_point(index, 0) == point(per_commitment_secret(forced[5], MAX_INDEX))
    assert keys.node_id() == KEYS.node_id() and keys.account_xpub() == KEYS.account_xpub()
    seeded = Keychain("", "regtest", bip32_seed=b"\x01" * 32)
    assert seeded.node_id() != KEYS.node_id() and seeded.account_xpub() != KEYS.account_xpub()
    assert seeded.account_xpub() == Keychain("", "regtest", bip32_seed=b"\x01" * 32).account_xpub()


# --- the typed client (plugin_api.services.Signer) over signd's handlers ------------------------

class DirectContext:
    """ctx.request straight to signd's handlers: the client's encoding, without a bus."""

    def __init__(self, s: signd.Signer) -> None:
        self.s = s

    def request(self, name: str, body: dict, timeout: float | None = None) -> Any:
        return signd.dispatch(self.s, name, body)


def setup_for(them: Counterparty, channel_type: str = "anchors", shutdown: bytes | None = None) -> ChannelSetup:
    p = params(them, channel_type)
    return ChannelSetup(p["funding_txid"], 0, FUNDING_SAT, point(them.funding),
                        {k: bytes.fromhex(v) for k, v in them.basepoints().items()}, HOLDER_DELAY, COUNTERPARTY_DELAY,
                        channel_type, "holder", shutdown)


def test_typed_client_drives_a_channel_to_chain(signer) -> None:
    """The calls channeld makes, through `Signer`: open, one update each way, force close with an
    anchors HTLC transaction that adds a fee input and wallet change."""
    client = ServiceSigner(DirectContext(signer))  # type: ignore[arg-type]
    ch = Channel(KEYS, 0, Counterparty(), "anchors")
    assert client.channel_keys(0)["first_per_commitment_point"] == ch.holder_point(0).hex()
    assert client.ready_channel(0, setup_for(ch.them)) == ch.funding_script()
    sig, htlc_sigs = client.sign_counterparty_commitment(0, 0, ch.commitment(0, ch.their_outputs(0)).serialize(),
                                                         ch.them.point(0), [])
    assert len(sig) == 64 and htlc_sigs == []
    for n in (0, 1):
        pcp = ch.holder_point(n)
        script = ch.our_htlc_script(n)
        tx = ch.commitment(n, ch.our_outputs(n, script))
        htlc = ch.htlc_tx(tx, 2, ch.our_to_local(n), 10_000)  # zero-fee: anchors
        their = ch.their_sig(htlc, ch.their_htlc_secret(n), script, 10_000, SIGHASH_SINGLE_ANYONECANPAY)
        client.validate_holder_commitment(0, n, tx.serialize(), ch.their_sig(tx),
                                          [HtlcTx(htlc.serialize(), script, their)])
    secret, next_point = client.revoke_holder_commitment(0, 0)
    assert point(secret) == ch.holder_point(0) and next_point == ch.holder_point(2)
    client.sign_counterparty_commitment(0, 1, ch.commitment(1, ch.their_outputs(1)).serialize(), ch.them.point(1), [])
    client.validate_counterparty_revocation(0, 0, ch.them.secret(0))
    with pytest.raises(RpcError, match="was not signed for the chain"):
        client.sign_holder_htlc(0, 1, htlc.serialize(), 0, [None], htlc=0)
    closing = client.sign_holder_commitment(0, 1)
    assert parse(closing["tx"]).txid() == tx.txid()
    # the HTLC transaction with a wallet input for its fee and wallet change
    bumped = parse(htlc.serialize().hex())
    bumped.vin.append(spend(b"\x77" * 32, 0, []).vin[0])
    change = signer.channels.wallet_script(1, 9)
    bumped.vout.append(spend(b"\x77" * 32, 0, [(change, 5_000)]).vout[0])
    with pytest.raises(RpcError, match="needs the preimage"):     # an HTLC-success: only with its preimage
        client.sign_holder_htlc(0, 1, bumped.serialize(), 0, [None, (1, 9)])
    with pytest.raises(RpcError, match="not the one of this HTLC"):
        client.sign_holder_htlc(0, 1, bumped.serialize(), 0, [None, (1, 9)], preimage=b"\x01" * 32)
    got = client.sign_holder_htlc(0, 1, bumped.serialize(), 0, [None, (1, 9)], preimage=PREIMAGE)  # found by its input
    digest = bumped.sighash_segwit(0, Script(script), 10_000, SIGHASH_ALL)
    assert verify_der(derive_pubkey(ch.bp["htlc_basepoint"], ch.holder_point(1)), got["holder_signature"], digest)
    assert got["counterparty_signature"][-1] == SIGHASH_SINGLE_ANYONECANPAY
    with pytest.raises(RpcError, match="does not pay the wallet"):
        client.sign_holder_htlc(0, 1, bumped.serialize(), 0, [None, (1, 8)], htlc=0)
    elsewhere = parse(bumped.serialize().hex())
    elsewhere.vin[0].vout = 3
    with pytest.raises(RpcError, match="no HTLC transaction of holder commitment 1 spends"):
        client.sign_holder_htlc(0, 1, elsewhere.serialize(), 0, [None, (1, 9)])
    moved = parse(bumped.serialize().hex())
    moved.vout[0].value -= 1_000  # not the output the counterparty signed
    with pytest.raises(RpcError, match="not the HTLC transaction the counterparty signed"):
        client.sign_holder_htlc(0, 1, moved.serialize(), 0, [None, (1, 9)], htlc=0)


def test_mutual_close_pays_us_where_allowed(signer) -> None:
    client = ServiceSigner(DirectContext(signer))  # type: ignore[arg-type]
    ch = Channel(KEYS, 0, Counterparty(), "static_remotekey")
    upfront = p2wpkh(point(b"\x88" * 32))
    client.ready_channel(0, setup_for(ch.them, "static_remotekey", upfront))
    wallet, theirs, other = signer.channels.wallet_script(0, 2), p2wpkh(point(ch.them.payment)), p2wpkh(b"\x02" * 33)

    def close(ours: bytes, txid: str = "aa" * 32, value: int = 500_000) -> bytes:
        return spend(bytes.fromhex(txid), 0, [(ours, value), (theirs, 499_000)]).serialize()
    sig = client.sign_mutual_close(0, close(wallet), 0, wallet_output=(0, 2))
    tx = parse(close(wallet).hex())
    assert verify(ch.bp["funding_pubkey"], sig,
                    tx.sighash_segwit(0, Script(ch.funding_script()), FUNDING_SAT, SIGHASH_ALL))
    client.sign_mutual_close(0, close(upfront), 0)
    client.sign_mutual_close(0, close(other), 0, destination=other)  # named by the user: sign_request sees it
    client.sign_mutual_close(0, close(theirs, value=1000), None)    # nothing for us
    for args, match in (((close(other), 0), "pays neither"), ((close(other), 0, (0, 2)), "does not pay the wallet"),
                        ((close(wallet, txid="bb" * 32), 0, (0, 2)), "funding outpoint"),
                        ((close(wallet, value=600_000), 0, (0, 2)), "more than the channel holds")):
        with pytest.raises(RpcError, match=match) as e:
            client.sign_mutual_close(0, *args)
        assert e.value.code == RpcError.REFUSED


def test_a_refused_sign_request_or_a_failed_commit_gives_nothing(signer, monkeypatch) -> None:
    """The sign_request decision sees channel signatures and may refuse them; a state that cannot be
    committed releases no secret and records nothing."""
    ch = ready(signer)
    validate(signer, ch, 0)
    validate(signer, ch, 1)
    seen = []

    class No:
        allowed, by, reason = False, "tk_limit", "not today"

    def decide(name: str, body: dict) -> Any:
        seen.append(body)
        return No()
    monkeypatch.setattr(signer.ctx, "decide", decide)
    refused(signer, "sign_holder_commitment", "signing refused by tk_limit: not today", index=0, commitment_number=1)
    assert seen == [{"kind": "channel", "purpose": "holder_commitment", "index": 0, "commitment_number": 1}]
    assert signer.channels.load(0).holder_broadcast == -1  # not marked as gone to chain

    def broken(state: Any) -> None:
        raise RuntimeError("disk full")
    monkeypatch.setattr(signer.channels, "save", broken)
    with pytest.raises(RuntimeError):
        ask(signer, "revoke_holder_commitment", index=0, commitment_number=0)
    monkeypatch.undo()
    assert signer.channels.load(0).holder_revoked == -1
    refused(signer, "sign_holder_commitment", "not the latest", index=0, commitment_number=0)
