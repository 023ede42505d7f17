"""peerd between real node processes: connect, ping, peers, custom messages, persistence, SOCKS5."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import lnp_host, wait_for
from peer_tools import Key, RawPeer, free_port
from lnp_plugin_api import RpcError

FORCED = "01" * 32
FORCED_ID = "031b84c5567b126440995d3ed5aaba0565d71e1834604819ff9c17f5e9d5dd078f"


def profile(port: int | None, plugins: tuple[str, ...] = ("core", "peerd"), mode: str = "threads",
            **peerd: object) -> str:
    """A regtest profile with peerd listening on 127.0.0.1:PORT and the given peerd settings."""
    settings = {"listen": [f"127.0.0.1:{port}"] if port else [], **peerd}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return f"""
[node]
network = "regtest"
data_dir = "DATA_DIR"
[bus]
mode = "{mode}"
[plugins]
enabled = {json.dumps(list(plugins))}
[plugins.peerd]
{lines}
"""


class Peer:
    """A started node with its port and id."""

    def __init__(self, node, port: int) -> None:
        self.node, self.port = node, port
        self.id = node.wait_ready()["node_id"]

    def call(self, method: str, *args, **kwargs):
        with self.node.client(timeout=60) as c:
            return c.call(method, *args, **kwargs)

    def peer_ids(self) -> list[str]:
        return [p["id"] for p in self.call("peers")["peers"]]

    @property
    def addr(self) -> str:
        return f"{self.id}@127.0.0.1:{self.port}"


def start(nodes, name: str, plugins: tuple[str, ...] = ("core", "peerd"), mode: str = "threads",
          extra: tuple[str, ...] = (), port: int | None = None, **peerd: object) -> Peer:
    port = port or free_port()
    node = nodes(profile(port, plugins, mode, **peerd), name=name).start(*extra, wait=False)
    return Peer(node, port)


def test_connect_ping_peers_disconnect(nodes) -> None:
    a = start(nodes, "a")
    b = start(nodes, "b", plugins=("core", "peerd", "tk_peer"))
    out = a.call("connect", b.addr)
    assert out["id"] == b.id and out["direction"] == "out" and out["already_connected"] is False
    assert "option_support_large_channel/optional" in out["feature_names"]  # b's tk_peer declares it
    assert out["features"] == "080000"  # bit 19, nothing else: the node advertises exactly what plugins support
    wait_for(lambda: b.peer_ids() == [a.id])
    theirs = b.call("peers", a.id)["peers"][0]
    assert theirs["direction"] == "in" and theirs["address"].startswith("127.0.0.1:")
    assert theirs["features"] == "" and theirs["connected_since"] <= time.time()

    pong = a.call("ping", b.id, bytes=1000)
    assert pong["bytes"] == 1000 and 0 < pong["rtt_ms"] < 5000
    mine = a.call("peers")["peers"][0]
    assert mine["msgs_out"] >= 2 and mine["msgs_in"] >= 2 and mine["bytes_in"] > 1000
    assert a.call("connect", b.addr)["already_connected"] is True  # one connection per peer
    assert a.call("connect", b.id)["already_connected"] is True    # the address is remembered

    events = [e["event"] for e in b.call("tk_peer_received")]
    assert events == ["peer_connected"]
    assert b.call("tk_peer_received")[0]["body"]["id"] == a.id
    assert a.call("disconnect", b.id)["disconnected"] is True
    wait_for(lambda: b.peer_ids() == [] and a.peer_ids() == [])
    wait_for(lambda: [e["event"] for e in b.call("tk_peer_received")] == ["peer_connected", "peer_disconnected"])
    with pytest.raises(RpcError) as e:
        a.call("ping", b.id)
    assert e.value.code == 402
    with pytest.raises(RpcError) as e:
        a.call("disconnect", b.id)
    assert e.value.code == 402
    known = a.call("peers", known=True)["known"]
    assert known[0]["node_id"] == b.id and known[0]["address"] == f"127.0.0.1:{b.port}"


def test_messages_through_the_bus_and_custom_messages(nodes) -> None:
    a = start(nodes, "a", plugins=("core", "peerd", "tk_peer"))
    b = start(nodes, "b", plugins=("core", "peerd", "tk_peer"))
    a.call("connect", b.addr)
    wait_for(lambda: b.peer_ids() == [a.id])
    # a plugin sends through the message bus; the receiving plugin registered type 32771
    a.call("tk_peer_send", b.id, 32771, "c0ffee")
    a.call("sendcustommsg", b.id, "8003beef")
    wait_for(lambda: len([r for r in b.call("tk_peer_received") if "wire" in r]) == 2)
    wires = [r for r in b.call("tk_peer_received") if "wire" in r]
    assert wires == [{"wire": 32771, "payload": "c0ffee", "id": a.id}, {"wire": 32771, "payload": "beef", "id": a.id}]
    # a message too big for BOLT-8 is dropped by peerd with a warning; the connection stays
    a.call("tk_peer_send", b.id, 32771, "00" * 65534)
    a.call("tk_peer_send", b.id, 32771, "01")
    wait_for(lambda: len([r for r in b.call("tk_peer_received") if "wire" in r]) == 3)
    assert [r for r in b.call("tk_peer_received") if "wire" in r][-1]["payload"] == "01"
    # an odd custom type nobody handles: the custommsg notification, and listcustommsgs for clients
    a.call("sendcustommsg", b.id, "8005" + "ab" * 10)
    wait_for(lambda: b.call("listcustommsgs")["messages"])
    got = b.call("listcustommsgs")["messages"]
    assert got == [{"seq": 1, "id": a.id, "type": 32773, "payload": "ab" * 10}]
    assert b.call("listcustommsgs", since=1)["messages"] == []
    wait_for(lambda: any(r.get("event") == "custommsg" for r in b.call("tk_peer_received")))
    for bad, code in (("1234", -32602), ("zz", -32602), ("80", -32602)):
        with pytest.raises(RpcError) as e:
            a.call("sendcustommsg", b.id, bad)
        assert e.value.code == code
    # an even type nobody handles: BOLT-1 says close the connection
    a.call("sendcustommsg", b.id, "8006")
    wait_for(lambda: a.peer_ids() == [] and b.peer_ids() == [])
    with pytest.raises(RpcError) as e:
        a.call("sendcustommsg", b.id, "8003")
    assert e.value.code == 402


def test_connect_errors_are_clear(nodes) -> None:
    a = start(nodes, "a")
    other = Key().node_id().hex()
    cases = [
        ("02abc", "66 hex characters"),
        ("04" + "00" * 32, "must start with 02 or 03"),
        (f"{other}@127.0.0.1:70000", "out of range"),
        (f"{other}@127.0.0.1:port", "not a number"),
        (f"{other}@exa mple", "not an IP address"),
        (f"{other}@{'a' * 16}.onion", "v2"),
        (f"{other}@{'a' * 56}.onion", "not a valid Tor v3"),
        (other, "no address known"),
        (f"{a.id}@127.0.0.1:{a.port}", "our own node id"),
    ]
    for text, words in cases:
        with pytest.raises(RpcError) as e:
            a.call("connect", text)
        assert words in e.value.message, (text, e.value.message)
        assert e.value.code == -32602
    with pytest.raises(RpcError) as e:
        a.call("connect", f"{other}@127.0.0.1:{free_port()}")
    assert e.value.code == 401 and "cannot connect" in e.value.message
    with pytest.raises(RpcError) as e:  # the listener is a node, but not this node id
        a.call("connect", f"{other}@127.0.0.1:{a.port}")
    assert e.value.code == 401 and "handshake" in e.value.message and "node id" in e.value.message
    onion = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion"
    with pytest.raises(RpcError) as e:
        a.call("connect", f"{other}@{onion}")
    assert e.value.code == 401 and "proxy" in e.value.message
    with pytest.raises(RpcError) as e:
        a.call("connect", other, port=9735)
    assert "PORT needs HOST" in e.value.message
    assert a.call("peers") == {"peers": []}


def test_persistent_peer_reconnects_after_restarts(nodes) -> None:
    a = start(nodes, "a", reconnect_min_delay=0.2, reconnect_max_delay=1.0)
    b = start(nodes, "b")
    a.call("connect", b.addr, persistent=True)
    wait_for(lambda: b.peer_ids() == [a.id])
    b.node.stop()
    wait_for(lambda: a.peer_ids() == [])
    b.node.start()
    wait_for(lambda: a.peer_ids() == [b.id], timeout=20)
    a.node.stop()
    a.node.start()  # resumes persistent peers from storage
    wait_for(lambda: a.peer_ids() == [b.id], timeout=20)
    a.call("disconnect", b.id)  # on purpose: no redial until the next connect
    time.sleep(1.5)
    assert a.peer_ids() == []
    assert a.call("peers", known=True)["known"][0]["persistent"] is True


def test_listen_at_run_time_and_ipv6(nodes) -> None:
    a = start(nodes, "a")
    b = start(nodes, "b")
    port6 = free_port()
    assert f"[::1]:{port6}" in a.call("listen", f"[::1]:{port6}")["listening"]
    assert f"127.0.0.1:{a.port}" in a.call("listen")["listening"]
    with pytest.raises(RpcError) as e:
        a.call("listen", f"127.0.0.1:{a.port}")
    assert "cannot listen" in e.value.message
    with pytest.raises(RpcError):
        a.call("listen", "nowhere:")
    b.call("connect", f"{a.id}@[::1]:{port6}")
    wait_for(lambda: a.peer_ids() == [b.id])
    assert a.call("peers")["peers"][0]["address"].startswith("[::1]:")


def test_processes_mode_uses_the_key_over_the_bus(nodes) -> None:
    a = start(nodes, "a", mode="processes")
    b = start(nodes, "b")
    a.call("connect", b.addr)
    assert a.call("ping", b.id)["rtt_ms"] > 0
    b.call("disconnect", a.id)
    b.call("connect", a.addr)  # and as responder: act one and three need the node key's ECDH
    assert b.call("ping", a.id, bytes=65531)["bytes"] == 65531


def test_required_features_are_enforced(nodes) -> None:
    strict = start(nodes, "strict", plugins=("core", "peerd", "tk_needs_feature"))
    plain = start(nodes, "plain")
    with pytest.raises(RpcError) as e:
        strict.call("connect", plain.addr)
    assert "lacks features we require: option_splice (bit 62)" in e.value.message
    with pytest.raises(RpcError) as e:  # and the other way: strict sends its reason in a warning first
        plain.call("connect", strict.addr)
    assert e.value.code == 401
    assert strict.peer_ids() == [] and plain.peer_ids() == []
    with RawPeer(strict.port) as raw:
        theirs = raw.connect(bytes.fromhex(strict.id), features=bytes([0x40]) + bytes(7))  # sets bit 62: accepted
        assert theirs["features"][0] == 0x40 and len(theirs["features"]) == 8  # strict requires bit 62
        wait_for(lambda: strict.peer_ids() == [raw.key.node_id().hex()])


def test_socks5_proxy_for_ip_and_onion(nodes, tmp_path: Path) -> None:
    from socks_proxy import Socks5Proxy
    b = start(nodes, "b")
    onion = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion"
    with Socks5Proxy({onion: ("127.0.0.1", b.port)}) as proxy:
        a = start(nodes, "a", proxy=f"127.0.0.1:{proxy.port}", proxy_all=True)
        a.call("connect", b.addr)
        assert proxy.requests == [("127.0.0.1", b.port)]
        a.call("disconnect", b.id)
        wait_for(lambda: b.peer_ids() == [])
        out = a.call("connect", f"{b.id}@{onion}:9735")
        assert out["address"] == f"{onion}:9735"
        assert proxy.requests[-1] == (onion, 9735)  # the name went to the proxy, not to a resolver
        assert a.call("ping", b.id)["rtt_ms"] > 0
    with pytest.raises(RpcError) as e:  # the proxy is gone
        a.call("disconnect", b.id)
        a.call("connect", f"{b.id}@{onion}:9735")
    assert "through proxy" in e.value.message


def test_bad_peerd_settings_are_profile_errors(tmp_path: Path, plugin_site: Path) -> None:
    for setting, words in (('listen = ["nowhere:port"]', "not a number"),
                           ('listen = ["pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:9735"]',
                            "listen on a local address"),
                           ('listen = ["notanaddress"]', "listen on an IP address"),
                           ('listen = ["127.0.0.1:9735", "localhost:9736"]', "'localhost:9736'"),
                           ("proxy = \"1.2.3.4:99999\"", "out of range"),
                           ("max_peers = 0", "greater than zero"),
                           ("handshakes_per_address = 0", "greater than zero"),
                           ("reserved_handshakes = -1", "greater than zero"),
                           ("act_one_timeout = 0", "greater than zero"),
                           ('ping_interval = "soon"', "expected a number")):
        path = tmp_path / "bad.toml"
        path.write_text(f'[node]\ndata_dir = "{tmp_path}/d"\n[plugins]\nenabled = ["core", "peerd"]\n'
                        f"[plugins.peerd]\n{setting}\n")
        for command in ("check", "run"):
            result = lnp_host(command, "--profile", str(path), site=plugin_site)
            assert result.returncode == 2, (command, setting, result.stderr)
            line, = result.stderr.splitlines()  # one line, naming the file and the key
            assert str(path) in line and "plugins.peerd" in line and words in line, line
            assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_taken_listen_port_stops_the_node_with_one_line(nodes, mode: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = nodes(profile(port, mode=mode), name="a").start(wait=False)
        assert node.proc.wait(30) == 2  # a setting to fix, as for a bad profile: no restarts
    err = node.log.read_text()
    assert "Traceback" not in err and "restarting" not in err, err
    lines = [line for line in err.splitlines() if "plugins.peerd.listen" in line]
    assert lines and f"cannot listen on 127.0.0.1:{port}: Address already in use" in lines[0], err


def test_verbose_logs_connections_and_messages(nodes) -> None:
    a = start(nodes, "a", extra=("-v",))
    b = start(nodes, "b")
    unknown = Key().node_id().hex()
    with pytest.raises(RpcError):
        a.call("connect", f"{unknown}@127.0.0.1:{b.port}")  # b is not that node
    a.call("connect", b.addr)
    a.call("ping", b.id, bytes=10)
    with RawPeer(a.port) as raw:
        raw.sock.sendall(b"\x01" + bytes(49))  # an act one of an unknown version
        assert raw.is_closed(timeout=5)
    a.call("disconnect", b.id)
    log = (a.node.data_dir / "lnp-host.log").read_text()
    for words in (f"dialling {unknown} at 127.0.0.1:{b.port}", f"handshake with {unknown} at 127.0.0.1:{b.port} "
                  "failed: the node closed the connection without answering act one",
                  f"dialling {b.id}", f"handshake with {b.id} at 127.0.0.1:{b.port} done",
                  f"{b.id} out: init (16)", f"{b.id} in: init (16)", f"{b.id} out: ping (18), 6 bytes",
                  f"{b.id} in: pong (19), 14 bytes", "accepted connection from 127.0.0.1:",
                  "failed: ACT1_BAD_VERSION", f"peer {b.id} disconnected: disconnected by request"):
        assert words in log, words
    quiet = (b.node.data_dir / "lnp-host.log").read_text()  # b logs at info: no line per message
    assert f"peer {a.id} connected" in quiet and " in: " not in quiet and "dialling" not in quiet


def test_dev_force_privkey(nodes, tmp_path: Path, plugin_site: Path) -> None:
    a = start(nodes, "a", extra=("--dev-force-privkey", FORCED))
    assert a.id == FORCED_ID
    a.node.stop()
    assert FORCED not in a.node.log.read_text()
    assert FORCED not in (a.node.data_dir / "lnp-host.log").read_text()
    assert not (a.node.data_dir / "node_key").exists()  # a forced key is never stored
    main = tmp_path / "main.toml"
    main.write_text(f'[node]\nnetwork = "mainnet"\ndata_dir = "{tmp_path}/m"\n')
    result = lnp_host("run", "--profile", str(main), "--dev-force-privkey", FORCED, site=plugin_site)
    assert result.returncode == 2 and "refused on mainnet" in result.stderr and FORCED not in result.stderr
    bad = "ff" * 32  # above the curve order
    result = lnp_host("run", "--profile", str(a.node.profile), "--dev-force-privkey", bad, site=plugin_site)
    assert result.returncode == 2 and "valid secp256k1 secret" in result.stderr and bad not in result.stderr


def test_connection_limit(nodes) -> None:
    a = start(nodes, "a", max_peers=1)
    with RawPeer(a.port) as first:
        first.connect(bytes.fromhex(a.id))
        wait_for(lambda: len(a.peer_ids()) == 1)
        with RawPeer(a.port) as second:
            assert second.is_closed(timeout=1)  # refused before any handshake work
    wait_for(lambda: a.peer_ids() == [])
    with RawPeer(a.port) as third:
        third.connect(bytes.fromhex(a.id))
        wait_for(lambda: a.peer_ids() == [third.key.node_id().hex()])


def test_channels_mark_peers_persistent_over_the_control_bus(nodes) -> None:
    a = start(nodes, "a", plugins=("core", "peerd", "tk_peer"), reconnect_min_delay=0.2)
    b = start(nodes, "b")
    assert a.call("tk_peer_lookup", b.id) == {"peer": None}
    assert a.call("tk_peer_persist", b.id, f"127.0.0.1:{b.port}")["persistent"] is True
    wait_for(lambda: a.peer_ids() == [b.id])  # peerd dialled it by itself
    assert a.call("tk_peer_lookup", b.id)["peer"]["direction"] == "out"


def test_a_slow_connect_does_not_hold_up_the_others(nodes) -> None:
    a = start(nodes, "a", handshake_timeout=3.0)
    b = start(nodes, "b")
    a.call("connect", b.addr)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never answers the handshake
        slow_connect_is_not_waited_for(a, b, silent)


def slow_connect_is_not_waited_for(a: Peer, b: Peer, silent: socket.socket) -> None:
    outcome: list = []

    def slow() -> None:
        try:
            a.call("connect", f"{Key().node_id().hex()}@127.0.0.1:{silent.getsockname()[1]}")
        except RpcError as e:
            outcome.append(e.message)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert a.call("ping", b.id)["rtt_ms"] > 0
    assert a.call("peers")["peers"][0]["id"] == b.id
    assert time.monotonic() - started < 1.5  # answered while the connect was still waiting
    thread.join(10)
    assert outcome and "no answer within 3s" in outcome[0]


def test_replaced_connection_events_come_in_order(nodes) -> None:
    b = start(nodes, "b", plugins=("core", "peerd", "tk_peer"))
    key = Key()
    with RawPeer(b.port, key=key) as first:
        first.connect(bytes.fromhex(b.id))
        wait_for(lambda: len(b.call("tk_peer_received")) == 1)
        with RawPeer(b.port, key=key) as second:
            second.connect(bytes.fromhex(b.id))
            assert first.is_closed()
            wait_for(lambda: len(b.call("tk_peer_received")) == 3)
            events = b.call("tk_peer_received")
            assert [e["event"] for e in events] == ["peer_connected", "peer_disconnected", "peer_connected"]
            assert "replaced" in events[1]["body"]["reason"]
            assert b.peer_ids() == [key.node_id().hex()]
