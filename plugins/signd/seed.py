"""The seed: a BIP39 mnemonic in DATA_DIR/signd/seed.json (mode 0600), optionally encrypted.

Encryption: scrypt (n=2**15, r=8, p=1) stretches the passphrase into a ChaCha20-Poly1305 key.
The node id is also written, in the clear, to DATA_DIR/signd/node_id, so other processes can learn
it without reading the secret.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from embit import bip39

from lnp_host.keys import SEED_PASSPHRASE_ENV, read_secret, write_secret

SEED_FILE = "seed.json"
NODE_ID_FILE = "node_id"
PASSPHRASE_ENV = SEED_PASSPHRASE_ENV  # lnpd passes it to signd's process only
SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class SeedError(Exception):
    """The seed cannot be created or read (wrong passphrase, damaged file); the message says which."""


def folder(data_dir: Path) -> Path:
    """signd's directory in the data dir."""
    return data_dir / "signd"


def _key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(passphrase.encode(), salt=salt, n=n, r=r, p=p, maxmem=2**27, dklen=32)


def create(data_dir: Path, passphrase: str = "", mnemonic: str | None = None) -> str:
    """Write a new seed (random, or the given mnemonic); returns the mnemonic. Refuses to overwrite."""
    path = folder(data_dir) / SEED_FILE
    if path.exists():
        raise SeedError(f"a seed exists already in {path}")
    words = mnemonic if mnemonic is not None else bip39.mnemonic_from_bytes(os.urandom(32))
    if not bip39.mnemonic_is_valid(words):
        raise SeedError("not a valid BIP39 mnemonic")
    record: dict = {"version": 1}
    if passphrase:
        salt, nonce = os.urandom(16), os.urandom(12)
        box = ChaCha20Poly1305(_key(passphrase, salt, **SCRYPT))
        record["encrypted"] = {"kdf": "scrypt", **SCRYPT, "salt": salt.hex(), "nonce": nonce.hex(),
                               "ciphertext": box.encrypt(nonce, words.encode(), b"lnp-host seed").hex()}
    else:
        record["mnemonic"] = words
    folder(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret(path, json.dumps(record).encode())
    return words


def load(data_dir: Path, passphrase: str = "") -> str:
    """The mnemonic; an encrypted seed needs its passphrase."""
    path = folder(data_dir) / SEED_FILE
    try:
        record = json.loads(read_secret(path))
    except FileNotFoundError:
        raise SeedError(f"no seed in {path}: run `lnp-host init`") from None
    except ValueError:
        raise SeedError(f"{path} is damaged") from None
    if "mnemonic" in record:
        return str(record["mnemonic"])
    enc = record.get("encrypted")
    if not enc:
        raise SeedError(f"{path} is damaged")
    if not passphrase:
        raise SeedError(f"the seed is encrypted: set {PASSPHRASE_ENV} or [plugins.signd] passphrase_file")
    box = ChaCha20Poly1305(_key(passphrase, bytes.fromhex(enc["salt"]), enc["n"], enc["r"], enc["p"]))
    try:
        return box.decrypt(bytes.fromhex(enc["nonce"]), bytes.fromhex(enc["ciphertext"]), b"lnp-host seed").decode()
    except InvalidTag:
        raise SeedError("wrong seed passphrase") from None


def passphrase_from(config_file: str, data_dir: Path) -> str:
    """The passphrase from the environment, or from the configured file (relative to the data dir)."""
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if config_file:
        path = Path(config_file).expanduser()
        path = path if path.is_absolute() else data_dir / path
        try:
            return path.read_text().strip()
        except OSError as e:
            raise SeedError(f"cannot read the passphrase file {path}: {e.strerror}") from None
    return ""
