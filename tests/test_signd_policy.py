"""signd's narrow contract: secrets reach signd alone, typed signing operations with their own policy,
and per-service capabilities."""
from __future__ import annotations

from pathlib import Path

import pytest
from embit.psbt import PSBT, DerivationPath
from embit.script import Script, p2wpkh
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from conftest import lnp_host
from peer_tools import RawPeer, free_port
from test_signd import WORDS, descendants, holding, node_announcement, profile
from lnp_plugin_api import RpcError
from lnp_plugin_api.chains import embit_network
from lnp_plugins import signd
from lnp_plugins.signd import policy, seed
from lnp_plugins.signd.keys import Keychain
from embit.ec import Signature
from embit.finalizer import finalize_psbt

PASSPHRASE = "hunter2 horse staple"


def test_first_run_never_decrypts_the_seed(tmp_path: Path, monkeypatch) -> None:
    """lnpd learns the node id from the public file; creating the seed needs no decryption."""
    def no_decrypting(*_args, **_kwargs):
        raise AssertionError("lnpd decrypted the seed")
    monkeypatch.setattr(seed, "load", no_decrypting)
    monkeypatch.setenv(seed.PASSPHRASE_ENV, PASSPHRASE)
    node_id = signd.public_node_id(tmp_path, "regtest", "")
    assert (tmp_path / "signd" / "node_id").read_text().strip() == node_id.hex()
    monkeypatch.delenv(seed.PASSPHRASE_ENV)
    assert signd.public_node_id(tmp_path, "regtest", "") == node_id  # no passphrase needed to read it
    (tmp_path / "signd" / "node_id").unlink()
    with pytest.raises(seed.SeedError, match="node_id .*missing.*lnp-host init"):
        signd.public_node_id(tmp_path, "regtest", "")


def test_the_passphrase_reaches_signd_alone(nodes, monkeypatch) -> None:
    """Processes mode, an encrypted seed: only signd's process has the passphrase in its environment,
    and the node works (the BOLT-8 handshake needs signd's ECDH)."""
    port = free_port()
    node = nodes(profile(Path("DATA_DIR"), port, "processes"), name="pp")
    monkeypatch.setenv(seed.PASSPHRASE_ENV, PASSPHRASE)
    node.start()
    monkeypatch.delenv(seed.PASSPHRASE_ENV)
    node_id = node.wait_ready()["node_id"]
    assert "encrypted" in (node.data_dir / "signd" / "seed.json").read_text()
    raw = RawPeer(port)
    try:
        raw.connect(bytes.fromhex(node_id))
        with node.client() as c:
            services = {s["name"]: s for s in c.info()["services"]}
    finally:
        raw.close()
    children = [p for p in descendants(node.proc.pid) if p != node.proc.pid]
    assert len(children) >= 3  # signd, peerd, tksigner at least
    assert holding(children, "environ", PASSPHRASE) == {services["signd"]["pid"]}
    assert node.stop() == 0


def test_init_rewrites_a_lost_node_id(short_tmp: Path, plugin_site: Path, nodes) -> None:
    """lnpd refuses to start without the public node id (it would have to decrypt the seed);
    `lnp-host init` (an offline tool, as signd) writes it again."""
    node = nodes(profile(Path("DATA_DIR"), free_port()), name="lost")
    seed.create(node.data_dir, "", WORDS)
    failed = lnp_host("run", "--profile", str(node.profile), site=plugin_site, timeout=60)
    assert failed.returncode != 0 and "lnp-host init" in failed.stderr + (node.data_dir / "lnp-host.log").read_text()
    done = lnp_host("init", "--profile", str(node.profile), site=plugin_site)
    assert done.returncode == 0, done.stderr
    assert (node.data_dir / "signd" / "node_id").exists()


# --- the wallet PSBT policy (real keys, real PSBTs; signd's checks without a node) ----------------

H = 0x80000000
KEYS = Keychain(WORDS, "regtest")
NETWORK = embit_network("regtest")


def wallet_path(branch: int, idx: int) -> list[int]:
    return [84 + H, 1 + H, H, branch, idx]


def psbt_spending(paths: list[list[int]], outputs: list[tuple[Script, int, list[int] | None, object]]) -> PSBT:
    """A PSBT spending P2WPKH coins of KEYS at `paths` to `outputs` (script, value, derivation path,
    the pubkey the derivation names)."""
    vin = [TransactionInput(bytes([i + 1]) * 32, 0) for i in range(len(paths))]
    vout = [TransactionOutput(value, script) for script, value, _, _ in outputs]
    psbt = PSBT(Transaction(version=2, vin=vin, vout=vout))
    for inp, path in zip(psbt.inputs, paths):
        key = KEYS.root.derive(path)
        inp.witness_utxo = TransactionOutput(100_000, p2wpkh(key))
        inp.bip32_derivations[key.get_public_key()] = DerivationPath(KEYS.root.my_fingerprint, path)
    for out, (_, _, path, pub) in zip(psbt.outputs, outputs):
        if path is not None:
            out.bip32_derivations[pub] = DerivationPath(KEYS.root.my_fingerprint, path)
    return psbt


def change(idx: int) -> tuple[Script, int, list[int], object]:
    key = KEYS.root.derive(wallet_path(1, idx))
    return p2wpkh(key), 40_000, wallet_path(1, idx), key.get_public_key()


PAYMENT = (Script(bytes.fromhex("0014" + "11" * 20)), 50_000, None, None)


def test_a_wallet_psbt_is_signed_and_described() -> None:
    psbt = psbt_spending([wallet_path(0, 3)], [PAYMENT, change(7)])
    checked = policy.check_wallet_psbt(KEYS, psbt, NETWORK)
    assert [o["change"] for o in checked.outputs] == [False, True] and checked.fee_sat == 10_000
    assert checked.inputs[0]["ours"] and checked.inputs[0]["path"] == "m/84h/1h/0h/0/3"
    assert policy.sign_wallet_inputs(KEYS, checked) == 1
    pub = KEYS.root.derive(wallet_path(0, 3)).get_public_key()
    sig = psbt.inputs[0].partial_sigs[pub]
    assert pub.verify(Signature.parse(sig[:-1]), psbt.sighash(0, sighash=SIGHASH.ALL))  # a valid signature
    assert finalize_psbt(psbt) is not None


def test_an_input_on_the_node_key_path_is_refused() -> None:
    node_path = [1017 + H, 1 + H, 6 + H, 0, 0]  # the node key: never signed as a wallet coin
    for paths in ([node_path], [wallet_path(0, 1), node_path]):
        psbt = psbt_spending(paths, [PAYMENT])
        with pytest.raises(RpcError, match="not a wallet path") as e:
            policy.check_wallet_psbt(KEYS, psbt, NETWORK)
        assert e.value.code == RpcError.REFUSED
    channel_path = [1017 + H, 1 + H, 0 + H, 0, 0]  # a channel funding key
    with pytest.raises(RpcError, match="not a wallet path"):
        policy.check_wallet_psbt(KEYS, psbt_spending([channel_path], [PAYMENT]), NETWORK)


def test_a_forged_change_output_is_refused() -> None:
    script, value, path, pub = change(7)
    forged = (Script(bytes.fromhex("0014" + "22" * 20)), value, path, pub)  # says change, pays elsewhere
    with pytest.raises(RpcError, match="output 1 claims a key of this node") as e:
        policy.check_wallet_psbt(KEYS, psbt_spending([wallet_path(0, 3)], [PAYMENT, forged]), NETWORK)
    assert e.value.code == RpcError.REFUSED
    other_key = (script, value, path, KEYS.root.derive(wallet_path(1, 8)).get_public_key())  # pubkey mismatch
    with pytest.raises(RpcError, match="claims a key"):
        policy.check_wallet_psbt(KEYS, psbt_spending([wallet_path(0, 3)], [PAYMENT, other_key]), NETWORK)


def test_an_input_whose_script_is_not_its_key_is_refused() -> None:
    psbt = psbt_spending([wallet_path(0, 3)], [PAYMENT])
    psbt.inputs[0].witness_utxo = TransactionOutput(100_000, Script(bytes.fromhex("0014" + "33" * 20)))
    with pytest.raises(RpcError, match="not the wallet key"):
        policy.check_wallet_psbt(KEYS, psbt, NETWORK)


def test_node_messages_are_typed() -> None:
    ours = KEYS.node_id().hex()
    digest, _ = policy.node_message_digest(KEYS, "node_announcement", bytes.fromhex(node_announcement(ours)))
    assert len(digest) == 32
    for kind, message, words in (
            ("digest", "11" * 32, "no node message of kind"),                       # an arbitrary digest
            ("node_announcement", "11" * 32, "not a node_announcement"),
            ("node_announcement", node_announcement("02" + "55" * 32), "another node"),
            ("channel_update", "0101" + "00" * 200, "not a channel_update")):       # a node_announcement
        with pytest.raises(RpcError, match=words) as e:
            policy.node_message_digest(KEYS, kind, bytes.fromhex(message))
        assert e.value.code == RpcError.REFUSED


# --- capabilities on real nodes ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_service_gets_only_its_capabilities(nodes, mode: str) -> None:
    """peerd has ECDH (its handshakes work) but no PSBT signatures; the wallet service no ECDH; an
    unknown service only what the profile grants; no one gets an arbitrary digest signed."""
    port = free_port()
    node = nodes(profile(Path("DATA_DIR"), port, mode, enabled=', "tk_intruder_peerd", "tk_intruder_wallet"'),
                 name=f"cap{mode[0]}")
    node.start()
    node_id = node.wait_ready()["node_id"]
    raw = RawPeer(port)  # peerd's ECDH with the node key is allowed
    try:
        raw.connect(bytes.fromhex(node_id))
    finally:
        raw.close()
    psbt = psbt_spending([wallet_path(0, 3)], [PAYMENT]).to_string()
    refused = {
        ("peerd", "signd.sign_wallet_psbt"): lambda c: c.call("tk_peerd_asks", "signd.sign_wallet_psbt", {"psbt": psbt}),
        ("peerd", "signd.basepoints"): lambda c: c.call("tk_peerd_asks", "signd.basepoints", {"index": 0}),
        ("wallet", "host.keys.ecdh"): lambda c: c.call("tk_wallet_ecdh", node_id),
        ("tksigner", "signd.sign_wallet_psbt"): lambda c: c.call("tk_signer_psbt", psbt),
        ("tksigner", "host.keys.ecdh"): lambda c: c.call("tk_signer_request", "host.keys.ecdh", {"pubkey": node_id}),
    }
    with node.client() as c:
        for (service, name), ask in refused.items():
            with pytest.raises(RpcError) as e:
                ask(c)
            assert e.value.code == RpcError.REFUSED and f"service {service!r} may not" in e.value.message, (service, name)
        # granted: channel keys and typed node messages; never an arbitrary digest
        assert c.call("tk_signer_basepoints", 0)
        assert c.call("tk_signer_message", "node_announcement", node_announcement(node_id))["signature"]
        with pytest.raises(RpcError) as e:
            c.call("tk_signer_message", "digest", "11" * 32)
        assert e.value.code == RpcError.REFUSED
        with pytest.raises(RpcError) as e:
            c.call("tk_signer_request", "host.keys.sign_digest", {"digest": "11" * 32})
        assert e.value.code == RpcError.METHOD_NOT_FOUND
    log = (node.data_dir / "lnp-host.log").read_text()
    for service, name in refused:
        assert f"refused {name} to service {service}" in log
    assert node.stop() == 0


# --- the buses over tcp:// ---------------------------------------------------------------------------

def tcp_profile(port: int, services: list[str], mode: str = "processes") -> str:
    tables = "".join(f'[bus.endpoints.{s}]\ncontrol = "tcp://127.0.0.1:{free_port()}"\n'
                     f'message = "tcp://127.0.0.1:{free_port()}"\n' for s in services)
    return profile(Path("DATA_DIR"), port, mode) + tables


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_the_buses_over_tcp_are_curve_with_the_node_keys(nodes, mode: str) -> None:
    """Processes (and threads) mode with every bus endpoint on tcp://: the node works over CURVE, the caller is the
    service whose key authenticated (capabilities still hold), and a client without a node key, or
    without CURVE, gets nothing while the node runs on."""
    import zmq
    port = free_port()
    node = nodes(tcp_profile(port, ["lnpd", "signd", "peerd", "tksigner"], mode), name=f"tcp{mode[0]}")
    node.start()
    node_id = node.wait_ready()["node_id"]
    keys = node.data_dir / "bus"
    assert sorted(p.name for p in keys.glob("*.key")) == ["lnpd.key", "peerd.key", "signd.key", "tksigner.key"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys.glob("*.key"))
    raw = RawPeer(port)  # peerd's ECDH, over CURVE to signd
    try:
        raw.connect(bytes.fromhex(node_id))
    finally:
        raw.close()
    with node.client() as c:
        assert c.call("tk_signer_basepoints", 0)
        with pytest.raises(RpcError, match="service 'tksigner' may not"):
            c.call("tk_signer_request", "host.keys.ecdh", {"pubkey": node_id})
    text = node.profile.read_text()
    signd_control = text.split("[bus.endpoints.signd]\ncontrol = \"")[1].split('"')[0]
    signd_public = (keys / "signd.pub").read_text().strip().encode()
    zctx = zmq.Context()
    try:
        for curve in (True, False):
            sock = zctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.routing_id = b"peerd/1/1"  # claims to be peerd: a claim proves nothing over tcp://
            if curve:
                sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
                sock.curve_serverkey = signd_public
            sock.connect(signd_control)
            try:
                sock.send_multipart([b"Q", b"1", b"host.keys.ecdh", b'{"pubkey": "%s"}' % node_id.encode()],
                                    zmq.NOBLOCK)
            except zmq.Again:
                pass  # not even connected: nothing to answer
            assert sock.poll(1500) == 0  # nothing comes back
            sock.close()
    finally:
        zctx.term()
    with node.client() as c:
        assert c.info()["node_id"] == node_id  # the node runs on
    assert "refused a bus connection with an unknown CURVE key" in (node.data_dir / "lnp-host.log").read_text()
    assert node.stop() == 0


def test_a_tcp_bus_without_its_keys_is_refused(short_tmp: Path, plugin_site: Path, nodes) -> None:
    """A service run alone (as on another host) with tcp:// endpoints but no bus keys: exit 2 naming the key."""
    node = nodes(tcp_profile(free_port(), ["lnpd", "signd", "peerd", "tksigner"]), name="nokeys")
    done = lnp_host("run", "--profile", str(node.profile), "--service", "tksigner", site=plugin_site, timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "bus/lnpd.pub" in done.stderr and "[bus] endpoints" in done.stderr
