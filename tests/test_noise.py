"""BOLT-8 transport against every vector in bolt08-transport.json, and a live session both ways."""
from __future__ import annotations

import json
from pathlib import Path

import coincurve
import pytest

from conftest import VECTORS as SHARED_VECTORS
from lnp_host.keys import FileKeyCustody
from lnp_host.noise import Handshake, HandshakeError, Session, TransportError

VECTORS = json.loads((SHARED_VECTORS / "bolt08-transport.json").read_text())


def custody(secret_hex: str, tmp_path: Path) -> FileKeyCustody:
    return FileKeyCustody(tmp_path, bytes.fromhex(secret_hex))


def run_vector(v: dict, tmp_path: Path) -> Handshake:
    initiator = "rs.pub" in v
    hs = Handshake(custody(v["ls.priv"], tmp_path), bytes.fromhex(v["rs.pub"]) if initiator else None,
                   ephemeral_secret=bytes.fromhex(v["e.priv"]))
    pending_out: bytes | None = hs.act_one() if initiator else None
    act = 1
    for step in v["steps"]:
        if "act" in step:
            act = {"Act One": 1, "Act Two": 2, "Act Three": 3}[step["act"]]
        elif "output" in step:
            assert pending_out is not None and pending_out.hex() == step["output"]
            pending_out = None
        elif "input" in step:
            data = bytes.fromhex(step["input"])
            if initiator:
                pending_out = hs.read_act_two(data)
            elif act == 1:
                pending_out = hs.read_act_one(data)
            else:
                hs.read_act_three(data)
    return hs


@pytest.mark.parametrize("v", VECTORS["initiator"] + VECTORS["responder"], ids=lambda v: v["name"])
def test_handshake_vectors(v: dict, tmp_path: Path) -> None:
    if v["expect_success"]:
        hs = run_vector(v, tmp_path)
        keys = v["final_keys"]
        assert hs.session is not None
        assert hs.session.send.key.hex() == keys["sk"] and hs.session.recv.key.hex() == keys["rk"]
        if "rs.pub" not in v:  # the responder learns the initiator's node id
            assert hs.remote_id == coincurve.PrivateKey(bytes.fromhex("11" * 32)).public_key.format()
    else:
        expected = next(s["error"] for s in v["steps"] if "error" in s)
        with pytest.raises(HandshakeError) as e:
            run_vector(v, tmp_path)
        assert e.value.code == expected.split()[0]  # the vectors add the bad version's number


def test_message_vectors_and_rotation(tmp_path: Path) -> None:
    ok = VECTORS["initiator"][0]
    hs = run_vector(ok, tmp_path)
    m = VECTORS["message"]
    assert hs.session.send.ck.hex() == m["ck"]
    plaintext = bytes.fromhex(m["plaintext"])
    rotations = []
    for n in range(1002):
        ck_before = hs.session.send.ck
        frame = hs.session.encrypt_message(plaintext)
        if hs.session.send.ck != ck_before:
            rotations.append((hs.session.send.ck.hex(), hs.session.send.key.hex()))
        if str(n) in m["outputs"]:
            assert frame.hex() == m["outputs"][str(n)], n
    assert rotations[:2] == [(r["new_ck"], r["new_k"]) for r in m["rotations"][:2]]


def pair(tmp_path: Path) -> tuple[Session, Session]:
    a, b = FileKeyCustody(tmp_path / "a"), FileKeyCustody(tmp_path / "b")
    ini, res = Handshake(a, b.node_id()), Handshake(b)
    act2 = res.read_act_one(ini.act_one())
    res.read_act_three(ini.read_act_two(act2))
    assert res.remote_id == a.node_id() and ini.remote_id == b.node_id()
    return ini.session, res.session


def test_live_session_both_ways(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alice, bob = pair(tmp_path)
    for i in range(2500):  # several rotations in each direction
        msg = i.to_bytes(4, "big") * (i % 50)
        for sender, receiver in ((alice, bob), (bob, alice)):
            frame = sender.encrypt_message(msg)
            n = receiver.decrypt_length(frame[:18])
            assert receiver.decrypt_body(frame[18:18 + n + 16]) == msg
    frame = bytearray(alice.encrypt_message(b"hello"))
    frame[20] ^= 1
    n = bob.decrypt_length(bytes(frame[:18]))
    with pytest.raises(TransportError):
        bob.decrypt_body(bytes(frame[18:18 + n + 16]))
    with pytest.raises(ValueError):
        alice.encrypt_message(bytes(65536))
