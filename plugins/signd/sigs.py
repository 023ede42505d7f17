"""signd's signatures and the transactions it reads, over `lnp_plugin_api.tx` (the one place that parses
transactions and computes sighashes); the BOLT-3 scripts signd rebuilds are `lnp_plugin_api.bolt3`'s."""
from __future__ import annotations

import coincurve
from embit.ec import PublicKey
from embit.script import p2pkh

from lnp_plugin_api.tx import Tx, compact_to_der, der_to_compact, der_with_sighash


def parse_tx(text: object) -> Tx:
    """A whole transaction, with inputs and outputs, from hex; ValueError when it is not one."""
    try:
        tx = Tx.parse(bytes.fromhex(str(text)))
    except Exception:  # embit raises several types for bytes that are not a transaction
        raise ValueError("not a transaction") from None
    if not tx.inputs or not tx.outputs:
        raise ValueError("not a transaction")
    return tx


def sign(secret: bytes, digest: bytes) -> bytes:
    """A 64-byte compact ECDSA signature (low S, RFC6979), as BOLT-2 messages carry them."""
    return der_to_compact(coincurve.PrivateKey(secret).sign(digest, hasher=None))


def sign_all(secret: bytes, digests: list[bytes]) -> list[bytes]:
    """`sign` of each digest with one key (made once: making it computes its public key)."""
    key = coincurve.PrivateKey(secret)
    return [der_to_compact(key.sign(digest, hasher=None)) for digest in digests]


def witness_signature(compact: bytes, sighash: int) -> bytes:
    """The script form of a compact signature: DER and the sighash byte."""
    return der_with_sighash(compact_to_der(compact), sighash)


def p2wpkh_script_code(pubkey: bytes) -> bytes:
    """The BIP143 script code of a P2WPKH spend (a P2PKH script)."""
    return p2pkh(PublicKey.parse(pubkey)).data
