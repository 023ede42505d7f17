"""The RPC endpoint: ipc private to the user, TCP with CURVE and an allow-list, lnp-cli, bad input."""
from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from conftest import env_with, lnp_host
from lnp_host.client import Client
from lnp_plugin_api import RpcError

PROFILE = """
[node]
data_dir = "DATA_DIR"
[rpc]
tcp = "tcp://127.0.0.1:PORT"
[plugins]
enabled = ["core", "hello", "tk_alpha", "tk_beta"]
[plugins.tk_beta]
limit = 5
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def node(nodes):
    port = free_port()
    n = nodes(PROFILE.replace("PORT", str(port))).start()
    n.port = port
    return n


def cli(node, *args: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "lnp_host.cli_client", "--data-dir", str(node.data_dir), *args],
                         capture_output=True, text=True, env=env_with(node.site), timeout=60)
    return out.returncode, json.loads(out.stdout)


def test_ipc_socket_is_private(node) -> None:
    sock = node.data_dir / "rpc.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o700  # born under umask 077 (for a socket, x means nothing)
    assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700


def test_lnp_cli_commands_and_errors(node) -> None:
    code, info = cli(node, "info")
    assert code == 0 and info["network"] == "regtest"
    code, plugins = cli(node, "plugins")
    assert code == 0 and {"core", "hello"} <= {p["name"] for p in plugins}
    code, helped = cli(node, "help")
    assert code == 0 and {"info", "plugins", "stop", "help", "hello"} <= {c["command"] for c in helped["commands"]}
    code, one = cli(node, "help", "hello")
    assert code == 0 and one["help"].startswith("Greet NAME") and one["params"][0]["name"] == "name"
    code, err = cli(node, "nosuch")
    assert code != 0 and err["error"]["code"] == RpcError.METHOD_NOT_FOUND
    code, err = cli(node, "tk_spend", "amount=lots")
    assert code != 0 and err["error"]["code"] == RpcError.INVALID_PARAMS and "amount" in err["error"]["message"]
    code, err = cli(node, "tk_spend")
    assert code != 0 and "missing parameter 'amount'" in err["error"]["message"]
    code, err = cli(node, "hello", "a", "b")
    assert code != 0 and err["error"]["code"] == RpcError.INVALID_PARAMS
    code, err = cli(node, "hello", "nme=x")
    assert code != 0 and "unknown parameter 'nme'" in err["error"]["message"]
    code, ok = cli(node, "tk_spend", "3")  # text from the command line becomes the declared integer
    assert code == 0 and ok["allowed"] is True


def test_wrong_types_over_the_library(node) -> None:
    with node.client() as c:
        for bad in ({"amount": "3.5"}, {"amount": True}, {"amount": [1]}, {"amount": None}):
            with pytest.raises(RpcError) as e:
                c.call("tk_spend", **bad)
            assert e.value.code == RpcError.INVALID_PARAMS
        assert c.tk_spend(amount=1)["allowed"]


def test_malformed_requests_get_errors_and_harm_nothing(node) -> None:
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"ipc://{node.data_dir / 'rpc.sock'}")
    try:
        for payload, code in ((b"{not json", -32700), (b"[1,2]", RpcError.INVALID_REQUEST),
                              (b'{"method": 5}', RpcError.INVALID_REQUEST),
                              (b'{"method": "info", "params": "x"}', RpcError.INVALID_PARAMS),
                              (b"\xff\xfe", -32700)):
            raw.send(payload)
            assert raw.poll(5000)
            assert json.loads(raw.recv())["error"]["code"] == code
        raw.send_multipart([b"two", b"frames"])
        assert raw.poll(5000) and json.loads(raw.recv())["error"]["code"] == RpcError.INVALID_REQUEST
    finally:
        raw.close()
    with node.client() as c:
        assert c.info()["services"][0]["state"] == "running"


def test_tcp_with_curve_and_allow_list(node, tmp_path: Path) -> None:
    creds = tmp_path / "alice.json"
    made = lnp_host("rpc-client", "alice", "--profile", str(node.profile), "--output", str(creds), site=node.site)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    keys = Client.load_keys(creds)
    endpoint = f"tcp://127.0.0.1:{node.port}"
    with Client(endpoint, keys, timeout=10) as c:
        assert c.info()["node_id"]
    code, info = cli(node, "--rpc", endpoint, "--keys", str(creds), "info")
    assert code == 0 and info["node_id"]

    # a client with a key that is not on the allow-list gets nothing at all
    public, secret = zmq.curve_keypair()
    stranger = {"public": public.decode(), "secret": secret.decode(), "server_public": keys["server_public"]}
    with Client(endpoint, stranger, timeout=2) as c:
        with pytest.raises(RpcError) as e:
            c.info()
        assert e.value.code == RpcError.TIMEOUT
    # nor does a plain-text client
    plain = zmq.Context.instance().socket(zmq.DEALER)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(endpoint)
    plain.send(b'{"method": "info", "id": 1}')
    assert plain.poll(2000) == 0
    plain.close()
    with pytest.raises(ValueError):
        Client(endpoint)  # the library refuses tcp:// without keys

    # removing the public key revokes the client
    (node.data_dir / "rpc" / "clients" / "alice.pub").unlink()
    with Client(endpoint, keys, timeout=2) as c:
        with pytest.raises(RpcError):
            c.info()


def test_rpc_client_name_checks(node) -> None:
    bad = lnp_host("rpc-client", "../evil", "--profile", str(node.profile), site=node.site)
    assert bad.returncode == 2 and "bad client name" in bad.stderr
    ok = lnp_host("rpc-client", "bob", "--profile", str(node.profile), site=node.site)
    assert ok.returncode == 0 and json.loads(ok.stdout)["secret"]
    again = lnp_host("rpc-client", "bob", "--profile", str(node.profile), site=node.site)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_cli_without_a_node(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "lnp_host.cli_client", "--data-dir", str(tmp_path), "info"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and json.loads(out.stdout)["error"]["code"] == RpcError.SERVICE_UNAVAILABLE
