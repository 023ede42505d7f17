"""The outbox on real node processes: durable events, one-way requests and wire messages are sent
only after their transaction commits, in order, at least once, also across kill -9 and restarts."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import lnp_host, wait_for
from peer_tools import RawPeer, free_port
from test_storage import db_url, new_pg_database, postgres  # noqa: F401 (fixtures)
from lnp_host.outbox import MODELS, outbox
from lnp_host.storage import Database
from lnp_plugin_api import RpcError

THREADS = """
[node]
data_dir = "DATA_DIR"
network = "regtest"
[bus]
mode = "threads"
[plugins]
enabled = ["core", "tk_durable", "tk_sink"]
"""
PROCESSES = THREADS.replace('mode = "threads"', 'mode = "processes"\nheartbeat_interval = 0.5')
MODES = pytest.mark.parametrize("profile", [THREADS, PROCESSES], ids=["threads", "processes"])


def events(node) -> list[dict]:
    with node.client() as c:
        return c.tk_sink_received()


def events_when_running(node) -> list[dict]:
    """What the sink received, or nothing while it is being restarted (a loaded machine may restart
    it more than once; delivery after the restart is what is tested)."""
    try:
        return events(node)
    except RpcError as e:
        if "not running" not in e.message:
            raise
        return []


def call(node, method: str, **params):
    with node.client() as c:
        return c.call(method, **params)


def batch(n: int, b: int) -> list[dict]:
    return [{"name": "tk_durable_event", "body": {"batch": b, "i": i}} for i in range(n)] + [
        {"name": "note", "body": {"batch": b}}]


def without_seq(got: list[dict]) -> list[dict]:
    return [{"name": e["name"], "body": e["body"]} for e in got]


def assert_numbered(got: list[dict]) -> None:
    seqs = [e["seq"] for e in got if e["seq"] is not None]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@MODES
def test_durable_events_and_requests_arrive_in_order_after_the_commit(nodes, profile: str) -> None:
    node = nodes(profile).start()
    with node.client() as c:
        for b in (1, 2, 3):
            c.tk_durable_write(batch=b, n=3)
        with pytest.raises(RpcError):  # the transaction fails: neither its row nor its events go out
            c.tk_durable_write(batch=4, n=3, fail=True)
        c.tk_durable_write(batch=5, n=2)
        want = batch(3, 1) + batch(3, 2) + batch(3, 3) + batch(2, 5)
        wait_for(lambda: len(events(node)) >= len(want))
        got = events(node)
        assert without_seq(got) == want
        assert_numbered(got)
        # a handler that raises acknowledges nothing: the same events come again, still in order
        c.tk_sink_fail(n=2)
        c.tk_durable_write(batch=6, n=2)
        wait_for(lambda: len(events(node)) >= len(want) + 3, timeout=30)
        assert without_seq(events(node)) == want + batch(2, 6)
        # a lossy event in a transaction goes out after the commit, unnumbered
        c.tk_durable_lossy(batch=7)
        wait_for(lambda: events(node)[-1]["body"] == {"batch": 7})
        assert events(node)[-1]["seq"] is None
    assert node.stop() == 0
    db = Database("", node.data_dir)
    with db.begin() as conn:  # everything was acknowledged
        assert conn.execute(text("SELECT count(*) FROM lnp_outbox")).scalar() == 0
    db.close()


@pytest.mark.postgres
def test_durable_delivery_on_postgresql(nodes, postgres: str) -> None:  # noqa: F811
    url = new_pg_database(postgres)
    node = nodes(PROCESSES + f'[storage]\nurl = "{url}"\n').start()
    with node.client() as c:
        for b in range(1, 6):
            c.tk_durable_write(batch=b, n=20)
        want = [e for b in range(1, 6) for e in batch(20, b)]
        wait_for(lambda: len(events(node)) >= len(want), timeout=30)
        got = events(node)
        assert without_seq(got) == want
        assert_numbered(got)
    assert node.stop() == 0


def test_a_subscriber_that_was_down_receives_what_it_missed(nodes) -> None:
    node = nodes(PROCESSES).start()
    with node.client() as c:
        c.tk_durable_write(batch=1, n=1)
        wait_for(lambda: len(events(node)) == 2)
        sink = node.service("sink")["pid"]
        os.kill(sink, signal.SIGSTOP)  # hung: the supervisor kills and restarts it
        try:
            for b in (2, 3):
                c.tk_durable_write(batch=b, n=2)
            wait_for(lambda: node.service("sink")["pid"] not in (sink, None), timeout=30)
        finally:
            try:
                os.kill(sink, signal.SIGCONT)
            except ProcessLookupError:
                pass
        wait_for(lambda: len(without_seq(events_when_running(node))) >= 8, timeout=30)
        got = without_seq(events(node))
        # at least once: a window the hung sink took before it was killed may come again
        deduped = [e for k, e in enumerate(got) if e not in got[:k]]
        assert deduped == batch(1, 1) + batch(2, 2) + batch(2, 3)
    assert node.stop() == 0


@MODES
def test_kill_9_between_commit_and_delivery(nodes, profile: str, monkeypatch) -> None:
    """Persist before send: the transaction commits, the process dies before anything goes out; what
    it committed goes out, in order, when it runs again. In processes mode a raw peer connected to
    peerd receives the transaction's wire messages."""
    processes = "processes" in profile
    port = free_port()
    node = nodes(profile.replace('"tk_sink"]', '"tk_sink", "peerd"]') +
                 f'[plugins.peerd]\nlisten = ["127.0.0.1:{port}"]\n')
    monkeypatch.setenv("LNP_DEV_CRASH_AT", "outbox_after_commit")
    node.start()
    node_id = bytes.fromhex(node.wait_ready()["node_id"])
    with RawPeer(port) as peer:
        peer.connect(node_id)
        wait_for(lambda: len(call(node, "peers")["peers"]) == 1)
        pid = node.service("durable")["pid"]
        with pytest.raises(RpcError):
            with node.client(timeout=5) as c:
                c.tk_durable_write(batch=1, n=3, peer=peer.key.node_id().hex())
        if processes:  # the service died; the supervisor starts it again (no commit crashes it again)
            wait_for(lambda: node.service("durable")["pid"] not in (pid, None), timeout=30)
            got = [peer.read_type(32771) for _ in range(3)]
            assert got == [bytes([1, 0]), bytes([1, 1]), bytes([1, 2])]
        else:  # the whole node died: start it again (the peer is gone, so peerd drops the messages)
            assert node.proc.wait(10) == -signal.SIGKILL
            monkeypatch.delenv("LNP_DEV_CRASH_AT")
            node.start()
        wait_for(lambda: len(events(node)) == 4, timeout=30)
        got = events(node)
        assert without_seq(got) == batch(3, 1)
        assert_numbered(got)
    assert node.stop() == 0


def test_the_crash_point_is_refused_on_mainnet(nodes, monkeypatch) -> None:
    node = nodes(THREADS.replace('"regtest"', '"mainnet"'))
    monkeypatch.setenv("LNP_DEV_CRASH_AT", "outbox_after_commit")
    out = lnp_host("run", "--profile", str(node.profile), site=node.site)
    assert out.returncode != 0 and "refused on mainnet" in out.stderr


def test_outbox_numbers_are_never_given_twice(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    db = Database(db_url, tmp_path)
    db.migrate({"lnp_host": MODELS})

    def write() -> int:
        with db.begin() as conn:
            return conn.execute(outbox.insert().values(source="a", dest="b", kind="E", name="x", body="{}")
                                ).inserted_primary_key[0]
    first = write()
    with db.begin() as conn:  # everything acknowledged: the table is empty
        conn.execute(outbox.delete())
    assert write() > first
    db.close()


def test_an_inbound_message_its_plugin_cannot_take_disconnects_the_peer(nodes) -> None:
    """Dropping it while the connection stays up would desynchronise a channel."""
    port = free_port()
    profile = (PROCESSES.replace('"tk_durable", "tk_sink"]', '"peerd", "tk_beta"]') +
               f'[plugins.tk_beta]\nlimit = 1\n[plugins.peerd]\nlisten = ["127.0.0.1:{port}"]\n'
               '[services.beta]\nlaunch = "external"\n')  # never started: type 32769 has nowhere to go
    node = nodes(profile)
    node.start(wait=False)
    node_id = bytes.fromhex(node.wait_ready()["node_id"])
    with RawPeer(port) as peer:
        peer.connect(node_id)
        peer.send((32769).to_bytes(2, "big") + b"\xca\xfe")
        assert peer.is_closed(timeout=20)
    wait_for(lambda: "could not be handed to its handler" in node.log.read_text())
    assert node.stop() == 0


def test_a_hung_service_whose_queue_is_full_gets_the_peer_disconnected(nodes) -> None:
    """SIGSTOP the service owning a wire type: once its inbox is full, the peer is disconnected."""
    port = free_port()
    profile = (PROCESSES.replace("heartbeat_interval = 0.5", "heartbeat_interval = 60")  # not restarted
                        .replace('"tk_durable", "tk_sink"]', '"peerd", "tk_beta"]') +
               f'[plugins.tk_beta]\nlimit = 1\n[plugins.peerd]\nlisten = ["127.0.0.1:{port}"]\n')
    node = nodes(profile).start()
    node_id = bytes.fromhex(node.wait_ready()["node_id"])
    beta = node.service("beta")["pid"]
    with RawPeer(port) as peer:
        peer.connect(node_id)
        os.kill(beta, signal.SIGSTOP)
        try:
            sent = 0
            while sent < 200_000 and not (sent % 5000 == 0 and peer.is_closed(timeout=0.01)):
                try:
                    peer.send((32769).to_bytes(2, "big") + sent.to_bytes(4, "big"))
                except OSError:
                    break
                sent += 1
            assert peer.is_closed(timeout=20)
        finally:
            os.kill(beta, signal.SIGCONT)
    wait_for(lambda: "could not be handed to its handler" in node.log.read_text())
    assert node.stop() == 0


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_peer_whose_messages_a_dead_service_handled_is_disconnected(nodes, how: str) -> None:
    """Killed, or hung until the supervisor kills it: whatever its inbox held from the peer is lost."""
    port = free_port()
    profile = (PROCESSES.replace('"tk_durable", "tk_sink"]', '"peerd", "tk_beta"]') +
               f'[plugins.tk_beta]\nlimit = 1\n[plugins.peerd]\nlisten = ["127.0.0.1:{port}"]\n')
    node = nodes(profile).start()
    node_id = bytes.fromhex(node.wait_ready()["node_id"])
    beta = node.service("beta")["pid"]
    with RawPeer(port) as peer, RawPeer(port) as bystander:
        peer.connect(node_id)
        bystander.connect(node_id)  # sends nothing beta handles: stays connected
        peer.send((32769).to_bytes(2, "big") + b"\x01")
        wait_for(lambda: any(r.get("payload") == "01" for r in call(node, "tk_received")))
        os.kill(beta, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        try:
            assert peer.is_closed(timeout=20)
        finally:
            if how == "stop":
                try:
                    os.kill(beta, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        bystander.ping(4)
        assert bystander.read_type(19) == bytes([0, 4]) + bytes(4)  # pong: 4 zero bytes, length first
    wait_for(lambda: "which handled its messages, is restarting" in node.log.read_text())
    assert node.stop() == 0
