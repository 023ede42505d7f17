"""BOLT-8 transport: Noise_XK_secp256k1_ChaChaPoly_SHA256 with BOLT-8's framing and key rotation.

The handshake runs on the `noiseprotocol` package, given a secp256k1 Diffie-Hellman backed by
coincurve (whose ECDH is BOLT-8's SHA256 of the compressed shared point). The static-key ECDH goes
through `KeyCustody`, so the node key never has to be in this process. BOLT-8's own parts are added
here: the version byte of each act, the prologue `lightning`, the encrypted 2-byte length prefix, and
key rotation every 1000 nonces. Everything here is sans-I/O: callers move the bytes.
"""
from __future__ import annotations

import hashlib
import hmac
import warnings
from typing import Any

import coincurve
from coincurve.context import GLOBAL_CONTEXT
from coincurve.utils import get_valid_secret
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.backends.default import DefaultNoiseBackend
from noise.backends.default.hashes import SHA256Hash
from noise.connection import Keypair, NoiseConnection
from noise.functions.dh import DH
from noise.functions.keypair import KeyPair

from lnp_plugin_api import KeyCustody

PROTOCOL_NAME = b"Noise_XK_secp256k1_ChaChaPoly_SHA256"
PROLOGUE = b"lightning"
ACT_ONE_SIZE = ACT_TWO_SIZE = 50
ACT_THREE_SIZE = 66
LENGTH_HEADER_SIZE = 18  # encrypted 2-byte length + 16-byte MAC
MAC_SIZE = 16
MAX_MESSAGE_SIZE = 65535
ROTATE_EVERY = 1000


class HandshakeError(Exception):
    """A failed handshake. `code` names the failure as BOLT-8's test vectors do (e.g. ACT2_BAD_TAG)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class TransportError(Exception):
    """A frame that does not decrypt or declares an impossible length: the connection must close."""


class _BadPubkey(ValueError):
    pass


class _Secp256k1KeyPair(KeyPair):
    """A key pair whose public key is 33 compressed bytes; the private part may be held by custody."""

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> "_Secp256k1KeyPair":
        key = coincurve.PrivateKey(bytes(private_bytes))
        public = key.public_key.format(compressed=True)
        return cls(private=key, public=public, public_bytes=public)

    @classmethod
    def from_public_bytes(cls, public_bytes: bytes) -> "_Secp256k1KeyPair":
        public = bytes(public_bytes)
        if len(public) != 33 or public[0] not in (2, 3):
            raise _BadPubkey("not a compressed secp256k1 point")
        try:
            coincurve.PublicKey(public)
        except ValueError:
            raise _BadPubkey("not a point on secp256k1") from None
        return cls(public=public, public_bytes=public)


class _Ephemeral:
    """An ephemeral secret with coincurve's ECDH, without the x-only key coincurve.PrivateKey derives."""

    __slots__ = ("secret", "context")
    ecdh = coincurve.PrivateKey.ecdh  # uses only .secret and .context

    def __init__(self) -> None:
        self.secret = get_valid_secret()
        self.context = GLOBAL_CONTEXT


class _Secp256k1(DH):
    @property
    def klass(self) -> type:
        return _Secp256k1KeyPair

    @property
    def dhlen(self) -> int:
        return 33  # BOLT-8 sends compressed public keys

    def generate_keypair(self) -> _Secp256k1KeyPair:
        key = _Ephemeral()
        public = coincurve.PublicKey.from_secret(key.secret).format(compressed=True)
        return _Secp256k1KeyPair(private=key, public=public, public_bytes=public)

    def dh(self, private_key: Any, public_key: bytes) -> bytes:
        # coincurve's ecdh is SHA256(compressed shared point), exactly BOLT-8's ECDH
        return private_key.ecdh(public_key)


class _Sha256(SHA256Hash):
    """noiseprotocol's SHA256 on hashlib: the same function, without a cryptography object per call."""

    def hash(self, data: bytes) -> bytes:
        return hashlib.sha256(data).digest()


def _hmac_sha256(key: bytes, data: bytes, algorithm: Any = None) -> bytes:
    return hmac.digest(key, data, "sha256")


class _Backend(DefaultNoiseBackend):
    def __init__(self) -> None:
        super().__init__()
        self.diffie_hellmans["secp256k1"] = _Secp256k1
        self.keypairs["secp256k1"] = _Secp256k1KeyPair
        # BOLT-8 uses SHA256 only; the handshake does dozens of hashes, so per-call overhead counts
        self.hashes["SHA256"] = _Sha256
        self.hmac = _hmac_sha256


_BACKEND = _Backend()


def hkdf2(salt: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """HKDF-SHA256 with an empty info, two 32-byte outputs (BOLT-8's HKDF)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    t1 = hmac.new(prk, b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(prk, t1 + b"\x02", hashlib.sha256).digest()
    return t1, t2


class CipherState:
    """One direction of a BOLT-8 session: ChaCha20-Poly1305 with a nonce, rotated every 1000 nonces."""

    __slots__ = ("key", "ck", "nonce", "_aead")

    def __init__(self, key: bytes, ck: bytes) -> None:
        self.key, self.ck, self.nonce = key, ck, 0
        self._aead = ChaCha20Poly1305(key)

    def _next_nonce(self) -> bytes:
        n = self.nonce
        self.nonce += 1
        return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")

    def _after_use(self) -> None:
        if self.nonce == ROTATE_EVERY:
            self.ck, self.key = hkdf2(self.ck, self.key)
            self.nonce = 0
            self._aead = ChaCha20Poly1305(self.key)

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt with the next nonce."""
        out = self._aead.encrypt(self._next_nonce(), plaintext, None)
        self._after_use()
        return out

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt with the next nonce; raises TransportError on a bad MAC."""
        try:
            out = self._aead.decrypt(self._next_nonce(), ciphertext, None)
        except InvalidTag:
            raise TransportError("bad MAC") from None
        self._after_use()
        return out


class Session:
    """An established BOLT-8 session: frames messages out and reads frames in."""

    def __init__(self, send: CipherState, recv: CipherState, remote_id: bytes) -> None:
        self.send, self.recv, self.remote_id = send, recv, remote_id

    def encrypt_message(self, msg: bytes) -> bytes:
        """The full frame: encrypted length + MAC, then encrypted body + MAC."""
        header, body = self.encrypt_parts(msg)
        return header + body

    def encrypt_parts(self, msg: bytes) -> tuple[bytes, bytes]:
        """The frame's two parts (the length header, the body), for large messages not worth joining."""
        if len(msg) > MAX_MESSAGE_SIZE:
            raise ValueError(f"a BOLT-8 message holds at most {MAX_MESSAGE_SIZE} bytes, not {len(msg)}")
        return self.send.encrypt(len(msg).to_bytes(2, "big")), self.send.encrypt(msg)

    def decrypt_length(self, header: bytes) -> int:
        """The body length from an 18-byte header; the caller then reads length + 16 bytes."""
        if len(header) != LENGTH_HEADER_SIZE:
            raise TransportError("short length header")
        return int.from_bytes(self.recv.decrypt(header), "big")

    def decrypt_body(self, body: bytes) -> bytes:
        """The message from its encrypted body."""
        return self.recv.decrypt(body)


class _CustodyKey:
    """The static private key as noiseprotocol sees it: ECDH answered by key custody, or by a result
    computed beforehand (`Handshake.static_ecdh_key`), so the handshake itself never waits on custody."""

    def __init__(self, custody: KeyCustody) -> None:
        self._custody = custody
        self.ready: dict[bytes, bytes] = {}  # peer's public key -> ECDH result given beforehand

    def ecdh(self, public_key: bytes) -> bytes:
        ready = self.ready.pop(bytes(public_key), None)
        return ready if ready is not None else self._custody.ecdh(public_key)


class Handshake:
    """One side of the BOLT-8 handshake.

    Initiator: `act_one()`, then `read_act_two(bytes)` returns act three and the session is ready.
    Responder: `read_act_one(bytes)` returns act two, then `read_act_three(bytes)`.
    `session` is set when the handshake is complete; `remote_id` is the peer's node id.
    The node key's ECDH (reading act one, writing act three) is asked of custody when needed, unless
    the caller computed it beforehand (`static_ecdh_key`, `give_ecdh`): custody over a bus is slow.
    """

    def __init__(self, custody: KeyCustody, remote_id: bytes | None = None,
                 ephemeral_secret: bytes | None = None) -> None:
        self.initiator = remote_id is not None
        conn = NoiseConnection.from_name(PROTOCOL_NAME, backend=_BACKEND)
        conn.set_prologue(PROLOGUE)
        public = custody.node_id()
        conn.noise_protocol.keypairs["s"] = _Secp256k1KeyPair(private=_CustodyKey(custody), public=public,
                                                             public_bytes=public)
        if ephemeral_secret is not None:  # test vectors only
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral_secret)
        if self.initiator:
            conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_id)
            conn.set_as_initiator()
        else:
            conn.set_as_responder()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn.start_handshake()
        self._conn = conn
        self._static = conn.noise_protocol.keypairs["s"].private
        # noiseprotocol drops the handshake state when done; BOLT-8's rotation needs its final ck
        self._symmetric = conn.noise_protocol.handshake_state.symmetric_state
        self.remote_id = remote_id
        self.session: Session | None = None

    def static_ecdh_key(self, act: bytes) -> bytes | None:
        """The public key the node key's ECDH uses once `act` is read: the peer's ephemeral key in act
        one (read by a responder) or act two (read by an initiator, for its act three). None when
        `act` is malformed: it is then refused without any ECDH."""
        size = ACT_ONE_SIZE if not self.initiator else ACT_TWO_SIZE
        if len(act) != size or act[0] != 0:
            return None
        try:
            return bytes(_Secp256k1KeyPair.from_public_bytes(act[1:34]).public_bytes)
        except _BadPubkey:
            return None

    def give_ecdh(self, public_key: bytes, secret: bytes) -> None:
        """The node key's ECDH with `public_key`, computed beforehand by the caller."""
        self._static.ready[bytes(public_key)] = secret

    def act_one(self) -> bytes:
        """Initiator: the 50-byte act one."""
        return b"\x00" + bytes(self._conn.write_message())

    def read_act_two(self, act: bytes) -> bytes:
        """Initiator: check act two, return the 66-byte act three; the session is then ready."""
        self._read(act, ACT_TWO_SIZE, "ACT2")
        out = b"\x00" + bytes(self._conn.write_message())
        self._finish()
        return out

    def read_act_one(self, act: bytes) -> bytes:
        """Responder: check act one, return the 50-byte act two."""
        self._read(act, ACT_ONE_SIZE, "ACT1")
        return b"\x00" + bytes(self._conn.write_message())

    def read_act_three(self, act: bytes) -> None:
        """Responder: check act three; learns the initiator's node id; the session is then ready."""
        self._read(act, ACT_THREE_SIZE, "ACT3")
        self._finish()

    def _read(self, act: bytes, size: int, name: str) -> None:
        if len(act) != size:
            raise HandshakeError(f"{name}_READ_FAILED", f"expected {size} bytes, got {len(act)}")
        if act[0] != 0:
            raise HandshakeError(f"{name}_BAD_VERSION", f"unknown handshake version {act[0]}")
        state = self._conn.noise_protocol.handshake_state
        try:
            self._conn.read_message(act[1:])
        except _BadPubkey as e:
            raise HandshakeError(f"{name}_BAD_PUBKEY", str(e)) from None
        except InvalidTag:
            # in act three the first MAC covers the encrypted static key, the second the payload
            if name == "ACT3" and not isinstance(state.rs, _Secp256k1KeyPair):
                raise HandshakeError("ACT3_BAD_CIPHERTEXT", "bad MAC on the static key") from None
            raise HandshakeError(f"{name}_BAD_TAG", "bad MAC") from None
        if name == "ACT3":
            self.remote_id = bytes(state.rs.public_bytes)

    def _finish(self) -> None:
        proto = self._conn.noise_protocol
        ck = self._symmetric.ck
        send_key = proto.cipher_state_encrypt.k
        recv_key = proto.cipher_state_decrypt.k
        assert self.remote_id is not None
        self.session = Session(CipherState(send_key, ck), CipherState(recv_key, ck), self.remote_id)
