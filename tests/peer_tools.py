"""A scriptable BOLT-8 peer for tests: blocking sockets, full control over every byte it sends.

Built on the project's sans-I/O `lnp_host.noise`, so the tests can also misbehave on purpose
(wrong versions, bad MACs, floods). Interop with an independent implementation is in
test_interop.py (pyln-proto).
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import coincurve

from lnp_host.keys import FileKeyCustody
from lnp_host.noise import LENGTH_HEADER_SIZE, MAC_SIZE, Handshake, Session
from lnp_plugin_api.chains import chain_hash
from lnp_plugin_api.messages import INIT, PING
from lnp_plugin_api.wire import split_message


class Key(FileKeyCustody):
    """A throwaway node key in memory (a forced secret is never written to disk)."""

    def __init__(self, secret: bytes | None = None) -> None:
        super().__init__(Path("/nonexistent"), secret or coincurve.PrivateKey().secret)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def our_init(features: bytes = b"", networks: list[bytes] | None = None) -> bytes:
    """An `init` as a test peer sends it (regtest by default)."""
    nets = [chain_hash("regtest")] if networks is None else networks
    return INIT.encode({"globalfeatures": b"", "features": features, "tlvs": {"networks": {"chains": nets}}})


TCP_ESTABLISHED, TCP_CLOSE = 1, 7  # Linux's tcp_info states


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of `sock` (Linux): TCP_CLOSE once the other side has reset it."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


class RawPeer:
    """A TCP connection to a node that speaks BOLT-8 only when told to. Close it (or use `with`)."""

    def __init__(self, port: int, host: str = "127.0.0.1", key: Key | None = None, timeout: float = 10.0,
                 rcvbuf: int | None = None, source: str | None = None) -> None:
        self.key = key or Key()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            if source is not None:  # e.g. 127.0.0.2: another source address on loopback
                self.sock.bind((source, 0))
            if rcvbuf is not None:  # before connecting, so the window the node sees is small
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            self.sock.close()
            raise
        self.session: Session | None = None

    def __enter__(self) -> "RawPeer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recv_exactly(self, n: int) -> bytes:
        """Exactly n bytes; raises EOFError if the node closes first."""
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return out

    def act_one(self, node_id: bytes) -> Handshake:
        """Send act one to `node_id` and read act two, then stall (the handshake is left unfinished)."""
        hs = Handshake(self.key, node_id)
        self.sock.sendall(hs.act_one())
        self.recv_exactly(50)
        return hs

    def handshake(self, node_id: bytes) -> "RawPeer":
        """Run the initiator's handshake to `node_id`."""
        hs = Handshake(self.key, node_id)
        self.sock.sendall(hs.act_one())
        self.sock.sendall(hs.read_act_two(self.recv_exactly(50)))
        self.session = hs.session
        return self

    def connect(self, node_id: bytes, features: bytes = b"") -> dict:
        """Handshake and exchange `init`; returns the node's init, decoded."""
        self.handshake(node_id)
        theirs = self.read()
        self.send(our_init(features))
        t, payload = split_message(theirs)
        assert t == 16, f"first message from the node was type {t}"
        return INIT.decode(payload)

    def send(self, msg: bytes) -> None:
        """Encrypt and send one message."""
        assert self.session is not None
        self.sock.sendall(self.session.encrypt_message(msg))

    def read(self, timeout: float = 10.0) -> bytes:
        """The next message."""
        assert self.session is not None
        self.sock.settimeout(timeout)
        length = self.session.decrypt_length(self.recv_exactly(LENGTH_HEADER_SIZE))
        return self.session.decrypt_body(self.recv_exactly(length + MAC_SIZE))

    def read_type(self, wanted: int, timeout: float = 10.0) -> bytes:
        """Payload of the next message of type `wanted`, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            t, payload = split_message(self.read(max(deadline - time.monotonic(), 0.01)))
            if t == wanted:
                return payload

    def ping(self, num_pong_bytes: int, ignored: int = 0) -> None:
        """Send a ping."""
        self.send(PING.encode({"num_pong_bytes": num_pong_bytes, "ignored": bytes(ignored)}))

    def is_closed(self, timeout: float = 10.0) -> bool:
        """True once the node has closed the connection (anything it still sends is drained)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if not self.sock.recv(65536):
                    return True
            except socket.timeout:
                return False
            except ConnectionError:
                return True
        return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
