"""Helpers of the invoice and payment tests: nodes running the invoices and pay plugins next to the FAKE
channeld of tests/plugins/lnp-fake-channeld (unit tests), and the onion/invoice work a test does as the
other side of a direct channel.

The end-to-end test with the real channeld uses the same steps: replace `fake_payee_profile`/`fake_payer_profile`
by profiles enabling channeld (and a regtest chain), open a channel, and drop the `relay_*` helpers, which
carry an HTLC from one fake channeld to the other as the real channelds will over the wire."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from conftest import ROOT
from lnp_plugin_api import bolt11, onion

FAKE_CHANNELD = ROOT / "tests" / "plugins" / "lnp-fake-channeld"


def install_fakes() -> Iterator[Path]:
    """pip-install the FAKE channeld package in a directory of its own (for the nodes' PYTHONPATH)."""
    target = Path(tempfile.mkdtemp(prefix="lnp-fakes-"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(FAKE_CHANNELD)], check=True)
    yield target
    shutil.rmtree(target, ignore_errors=True)


def profile(enabled: list[str], mode: str = "threads") -> str:
    """A regtest node with signd and `enabled`; the fake channeld may peel onions (signd's `onion`)."""
    return (f'[node]\nnetwork = "regtest"\ndata_dir = "DATA_DIR"\n[bus]\nmode = "{mode}"\n'
            f'[plugins]\nenabled = {["core", "signd", *enabled]!r}\n'.replace("'", '"')
            + '[plugins.signd]\ngrant = {fake_channeld = ["onion"]}\n')


PAYEE = ["invoices", "fake_channeld"]
PAYER = ["pay", "fake_channeld", "fake_chain"]


def invoice_of(key: bytes, amount_msat: int | None = 50_000, preimage: bytes = b"\x42" * 32, expiry: int = 600,
               network: str = "regtest", features: frozenset[int] = bolt11.DEFAULT_FEATURES,
               timestamp: int | None = None, secret: bytes = b"\x11" * 32) -> str:
    """An invoice signed by `key` (a fake payee's node key held by the test)."""
    inv = bolt11.Invoice(currency=bolt11.currency_for(network), timestamp=int(time.time()) if timestamp is None
                         else timestamp, payment_hash=hashlib.sha256(preimage).digest(), payment_secret=secret,
                         amount_msat=amount_msat, description="test", expiry=expiry, features=features)
    return bolt11.encode(inv, bolt11.sign_with_key(key))


def onion_to(payee: bytes, amount_msat: int, cltv: int, payment_hash: bytes, secret: bytes | None,
             total_msat: int | None = None) -> tuple[bytes, list[bytes]]:
    """A one-hop onion to `payee` as a payer builds it (`secret` None: a payload without payment_data)."""
    if secret is None:
        hop = onion.HopPayload(amt_to_forward=amount_msat, outgoing_cltv_value=cltv)
    else:
        hop = onion.HopPayload.final(amount_msat, cltv, secret, total_msat=total_msat)
    return onion.build_onion(b"\x07" * 32, [payee], [hop], payment_hash)


def relay_to_payee(payee_client: Any, htlc: dict[str, Any], payer_id: str, height: int) -> dict[str, Any]:
    """Hand an HTLC the payer's fake channeld stored to the payee's fake channeld, which asks htlc_accepted."""
    return payee_client.fake_channeld_receive(peer_id=payer_id, htlc_id=htlc["htlc_id"],
                                              amount_msat=htlc["amount_msat"], payment_hash=htlc["payment_hash"],
                                              cltv_expiry=htlc["cltv_expiry"], current_height=height,
                                              onion_hex=htlc["onion"])
