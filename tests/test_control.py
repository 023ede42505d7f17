"""Control requests on real node processes: routed by name to whichever service runs the answering
plugin, bodies checked like RPC parameters, and the same answers whether the caller is in that
service or another."""
from __future__ import annotations

import pytest

from chain_tools import BTC, PROFILE as CHAIN_PROFILE, ChainNode
from conftest import wait_for
from lnp_plugin_api import RpcError
from peer_tools import free_port

PROFILE = """
[node]
data_dir = "DATA_DIR"
[bus]
mode = "MODE"
[plugins]
enabled = ["core", "tk_alpha", "tk_beta"]
[plugins.tk_beta]
limit = 100
PLACEMENT
"""

# (name, body) -> what tk_alpha gets back, the same with tk_beta in alpha's service or in its own
CASES = [
    (("tk.add", {"a": 2, "b": 3}), {"reply": {"sum": 5, "note": None, "service": "SERVICE"}}),
    (("tk.add", {"a": "2"}),
     {"error": {"code": RpcError.INVALID_PARAMS, "message": "tk.add: parameter 'a' must be an integer, got \"2\""}}),
    (("tk.add", {"b": 1}), {"error": {"code": RpcError.INVALID_PARAMS, "message": "tk.add: missing parameter 'a'"}}),
    (("tk.add", {"a": 1, "c": 1}),
     {"error": {"code": RpcError.INVALID_PARAMS, "message": "tk.add: unknown parameter 'c'"}}),
    (("tk.add", {"a": 1, "note": 7}),
     {"error": {"code": RpcError.INVALID_PARAMS, "message": "tk.add: parameter 'note' must be a string or null, got 7"}}),
    (("tk.add", [1, 2]), {"error": {"code": RpcError.INVALID_PARAMS, "message": "tk.add: the body must be an object"}}),
    (("tk.add", {"a": True}),
     {"error": {"code": RpcError.INVALID_PARAMS, "message": "tk.add: parameter 'a' must be an integer, got true"}}),
    (("tk.crash", {}),
     {"error": {"code": RpcError.INTERNAL_ERROR, "message": "internal error in SERVICE handling 'tk.crash': "
                                                             "ZeroDivisionError"}}),
    (("tk.nothing", {}),
     {"error": {"code": RpcError.METHOD_NOT_FOUND, "message": "no enabled plugin answers control request 'tk.nothing'"}}),
    (("echo", {"x": [1, 2]}), {"reply": {"x": [1, 2]}}),
]


def answers(node, service: str) -> None:
    """Every case answered as expected, with SERVICE the service tk_beta runs in."""
    with node.client() as c:
        for (name, body), expected in CASES:
            want = eval(repr(expected).replace("SERVICE", service))  # noqa: S307 (our own literals)
            assert c.tk_ask(name, body) == want, (name, body)
        assert c.tk_roundtrips(n=20)["n"] == 20


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_plugin_moves_to_another_service_by_profile_alone(nodes, mode: str) -> None:
    apart = nodes(PROFILE.replace("MODE", mode).replace("PLACEMENT", ""), name="apart").start()
    answers(apart, "beta")  # tk_beta in its own service (its lnp_service): over the bus
    assert apart.stop() == 0
    moved = PROFILE.replace("MODE", mode).replace("PLACEMENT", 'service = "alpha"')
    together = nodes(moved, name="together").start()  # tk_beta in alpha's service: direct calls
    with together.client() as c:
        services = {s["name"]: s for s in c.info()["services"]}
        assert set(services) == {"lnpd", "alpha"} and services["alpha"]["plugins"] == ["tk_alpha", "tk_beta"]
        assert c.tk_spend(500)["by"] == "tk_beta"  # its decision, events and RPC follow it
    answers(together, "alpha")
    assert together.stop() == 0
    assert "ZeroDivisionError" in together.log.read_text()  # the detail is logged, not returned


def test_a_bad_service_name_in_a_profile_is_refused(nodes) -> None:
    node = nodes(PROFILE.replace("MODE", "threads").replace("PLACEMENT", 'service = "no/slash"'))
    node.start(wait=False)
    assert node.proc.wait(30) == 2
    assert "[plugins.tk_beta] service: expected a service name" in node.log.read_text()


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_signer_wallet_and_chain_backend_move_by_profile(nodes, mode: str) -> None:
    """signd, the wallet and the chain backend, each in a service none of their callers names."""
    port = free_port()
    profile = (CHAIN_PROFILE.format(port=port).replace("[plugins]\n", f'[bus]\nmode = "{mode}"\n[plugins]\n')
               .replace("[plugins.bitcoind]\n", '[plugins.bitcoind]\nservice = "chainsrc"\n')
               + '[plugins.signd]\nservice = "keys"\n[plugins.wallet]\nservice = "funds"\n')
    chain = ChainNode(nodes(profile, name="moved").start(wait=False), port)
    try:
        services = {s["name"]: s["plugins"] for s in chain.info["services"]}
        assert services["keys"] == ["signd"] and services["funds"] == ["wallet"] and services["chainsrc"] == ["bitcoind"]
        assert "signd" not in services and "wallet" not in services
        chain.mine(101, chain.call("newaddr")["address"])  # keys from signd, blocks through watchd and chainsrc
        wait_for(lambda: chain.funds()["confirmed_sat"] >= 50 * BTC)
        held = chain.call("tk_fund", chain.btc_address(), BTC)  # Funding, then Signer, across services
        assert chain.call("tk_fund_finish", held["reservation"], True)["txid"] == held["txid"]
        assert held["txid"] in chain.btc.call("getrawmempool")
        chain.mine(1)
        assert chain.tx(held["txid"])["confirmations"] == 1
    finally:
        chain.close()


def test_trace_plugins_on_a_node(nodes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LNP_TRACE_PLUGINS", "1")
    node = nodes(PROFILE.replace("MODE", "processes").replace("PLACEMENT", "")).start()
    assert node.stop() == 0
    log = node.log.read_text()
    # every process (lnpd, alpha, beta) assembles the registry, and says so
    assert log.count("lnp trace: lnp_service [tk_beta] ok in ") == 3, log
    assert "lnp trace: lnp_key_custody [no plugin] ok in " in log  # the node's own key file
