"""Hostile input on the RPC endpoints and the buses of a real node: every request gets an error (or is
dropped), the next one is served, and the node still stops on request."""
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import zmq

from conftest import lnp_host
from lnp_host.bus import MAX_DEPTH, TooDeep, decode, decode_untrusted
from lnp_host.client import Client
from lnp_plugin_api import RpcError

DEEP = b"[" * 5000
PARSE_ERROR = -32700
PROFILE = """
[node]
data_dir = "DATA_DIR"
[bus]
mode = "MODE"
[rpc]
tcp = "tcp://127.0.0.1:PORT"
[plugins]
enabled = ["core", "hello", "tk_alpha", "tk_beta"]
[plugins.tk_beta]
limit = 5
"""

# (frames, expected JSON-RPC error code); every one must be answered
RPC_GARBAGE: list[tuple[list[bytes], int]] = [
    ([DEEP], RpcError.INVALID_REQUEST),
    ([b'{"method": "info", "params": ' + DEEP + b"]}"], RpcError.INVALID_REQUEST),
    ([b'{"method": "info", "params": {"x": ' + b"[" * 500 + b"]" * 500 + b"}}"], RpcError.INVALID_REQUEST),
    ([b'{"method": "info", "id": ' + b"[" * 900 + b"]" * 900 + b"}"], RpcError.INVALID_REQUEST),
    ([b'{"method": "tk_spend", "params": ["' + DEEP + b'"]}'], RpcError.INVALID_PARAMS),
    ([b'{"method": "tk_spend", "params": ["' + b"[" * 900 + b"]" * 900 + b'"]}'], RpcError.INVALID_PARAMS),
    ([b"{not json"], PARSE_ERROR),
    ([b"\xff\xfe\x00"], PARSE_ERROR),
    ([b""], PARSE_ERROR),
    ([b"a", b"b", b"c"], RpcError.INVALID_REQUEST),
    ([b'{"method": "tk_spend", "params": [1e999]}'], PARSE_ERROR),
    ([b'{"method": "tk_spend", "params": [NaN]}'], PARSE_ERROR),
    ([b'{"method": "tk_spend", "params": [' + b"9" * 5000 + b"]}"], PARSE_ERROR),
    ([b'{"method": "tk_spend", "params": [' + b"9" * 4000 + b"]}"], 0),  # 0: a result
    ([b'{"method": "info", "id": 1e400}'], PARSE_ERROR),
    ([b'{"method": "info", "params": "x"}'], RpcError.INVALID_PARAMS),
    ([b'{"method": "info", "params": 5}'], RpcError.INVALID_PARAMS),
    ([b'{"method": "info", "params": true}'], RpcError.INVALID_PARAMS),
    ([b'{"method": "hello", "params": {"name": {"a": 1}}}'], RpcError.INVALID_PARAMS),
    ([b'{"method": "\\ud800"}'], PARSE_ERROR),
    ([b'{"method": "hello", "params": ["\\ud800"]}'], PARSE_ERROR),
    ([b'{"method": "info", "id": {"a": 1}}'], RpcError.INVALID_REQUEST),
    ([b'{"method": "info", "id": true}'], RpcError.INVALID_REQUEST),
    ([b'"just a string"'], RpcError.INVALID_REQUEST),
    ([b'{"method": ["info"]}'], RpcError.INVALID_REQUEST),
]


def test_decoders_refuse_without_recursion_errors() -> None:
    nested = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert decode_untrusted(nested) and decode_untrusted(b'{"a": "\\u00e9", "b": 1.5}') == {"a": "\u00e9", "b": 1.5}
    for deep in (b"[" + nested + b"]", b"[" * 5000, b'{"a": ' * 5000):
        with pytest.raises(TooDeep):
            decode_untrusted(deep)
    for bad in (b"NaN", b"[-Infinity]", b"1e999", b"9" * 5000, b'"\\udc00"', b'{"\\ud800": 1}', b"\xff", b""):
        with pytest.raises(ValueError):
            decode_untrusted(bad)
    with pytest.raises(ValueError):
        decode(b"[" * 100_000)  # the bus decoder: a ValueError too, never a RecursionError
    assert decode(b"") is None and decode(b'{"x": [1]}') == {"x": [1]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(nodes, mode: str):
    port = free_port()
    node = nodes(PROFILE.replace("MODE", mode).replace("PORT", str(port)), name=mode[0]).start()
    node.port = port
    return node


def dealer(endpoint: str, keys: dict | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys:
        sock.curve_publickey = keys["public"].encode()
        sock.curve_secretkey = keys["secret"].encode()
        sock.curve_serverkey = keys["server_public"].encode()
    sock.connect(endpoint)
    return sock


def still_serves(node) -> None:
    with node.client(timeout=10) as c:
        assert c.info()["services"][0]["state"] == "running"
        assert c.hello("x")["greeting"]


def stops(node) -> None:
    with node.client(timeout=10) as c:
        assert c.stop() == {"result": "stopping"}
    assert node.proc.wait(30) == 0


def send_garbage(sock: zmq.Socket, node) -> None:
    for frames, code in RPC_GARBAGE:
        sock.send_multipart(frames)
        assert sock.poll(10_000), f"no answer to {frames[0][:60]!r}"
        answer = json.loads(sock.recv())
        got = answer["error"]["code"] if "error" in answer else 0
        assert got == code, (frames[0][:60], answer)
        still_serves(node)


def test_garbage_on_rpc_sock(nodes) -> None:
    node = start(nodes, "threads")
    sock = dealer(f"ipc://{node.data_dir / 'rpc.sock'}")
    try:
        send_garbage(sock, node)
    finally:
        sock.close()
    log = (node.data_dir / "lnp-host.log").read_text()
    assert "Traceback" not in log  # refused as bad input, not as crashes
    stops(node)


def test_garbage_on_the_curve_endpoint(nodes, tmp_path: Path) -> None:
    node = start(nodes, "threads")
    creds = tmp_path / "c.json"
    made = lnp_host("rpc-client", "c", "--profile", str(node.profile), "--output", str(creds), site=node.site)
    assert made.returncode == 0, made.stderr
    sock = dealer(f"tcp://127.0.0.1:{node.port}", Client.load_keys(creds))
    try:
        send_garbage(sock, node)
    finally:
        sock.close()
    stops(node)


def control_garbage() -> list[list[bytes]]:
    """Control-bus frame sets (without the routing identity) that must not stop a service."""
    out: list[list[bytes]] = []
    for kind in (b"Q", b"C", b"D", b"E", b"P", b"R", b"\xff"):
        for name in (b"host.node_info", b"host.keys.ecdh", b"host.keys.sign_digest", b"echo", b"hello", b"tk_spend", b"\xff\xfe"):
            for body in (DEEP, b"{bad", b"\xff", b"[1]", b"5", b'"s"', b"null", b"1e999", b"9" * 5000,
                         b'{"plugin": "tk_beta", "body": ' + DEEP + b"}", b'{"plugin": "tk_beta", "body": 5}',
                         b'{"name": {"x": 1}}', b'{"source": 5, "body": []}'):
                out.append([kind, b"1", name, body])
    out += [[b"Q"], [b"Q", b"1"], [b"Q", b"1", b"echo"], [b"Q", b"1", b"echo", b"{}", b"extra"]]
    return out


def message_garbage() -> list[list[bytes]]:
    """Message-bus frame sets that must not stop a service."""
    return [[b"I"], [b"I", b"p", b"\x80\x01"], [b"I", b"p", b"\x80", b"x"], [b"X", b"p", b"\x80\x01", b"x"],
            [b"I", b"p", b"\x80\x01", DEEP], [b"O", b"p", b"\x80\x01", b""], [b"I", b"", b"\x00\x10", b""],
            [b"I", b"p", b"\x80\x01", b"x", b"extra"]]


def test_garbage_on_the_control_and_message_buses(nodes) -> None:
    node = start(nodes, "processes")
    run = node.data_dir / "run"
    socks = []
    try:
        for service in ("lnpd", "hello", "beta"):
            control = dealer(f"ipc://{run / service}.control")
            message = dealer(f"ipc://{run / service}.message")
            socks += [control, message]
            for frames in control_garbage():
                control.send_multipart(frames)
            for frames in message_garbage():
                message.send_multipart(frames)
            # the garbage was read (answers came back where one is due) and the service goes on
            answers = 0
            while control.poll(2000):
                frames = control.recv_multipart()
                assert frames[0] == b"R" and frames[2] in (b"ok", b"err")
                answers += 1
            assert answers > 100
            control.send_multipart([b"P", b"ping", b"", b""])
            assert control.poll(5000) and control.recv_multipart()[:3] == [b"R", b"ping", b"ok"]
            still_serves(node)
    finally:
        for s in socks:
            s.close()
    with node.client() as c:
        assert all(s["state"] == "running" and s["restarts"] == 0 for s in c.info()["services"])
    stops(node)


def test_client_survives_a_bad_server(short_tmp: Path) -> None:
    """The client library against a fake server: garbage answers are RpcErrors, never other exceptions."""
    server = zmq.Context.instance().socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{short_tmp / 'fake.sock'}"
    server.bind(endpoint)
    answers = [(DEEP, RpcError.INTERNAL_ERROR), (b"\xff", RpcError.INTERNAL_ERROR), (b"[1]", RpcError.TIMEOUT),
               (b'{"id": ID, "error": 5}', RpcError.INTERNAL_ERROR)]

    def serve() -> None:
        for answer, _ in answers:
            ident, request = server.recv_multipart()
            rid = str(json.loads(request)["id"]).encode()
            server.send_multipart([ident, answer.replace(b"ID", rid)])

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with Client(endpoint, timeout=2) as c:
            for _, code in answers:
                with pytest.raises(RpcError) as e:
                    c.info()
                assert e.value.code == code
    finally:
        thread.join(10)
        server.close()
