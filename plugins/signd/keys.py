"""Every key signd holds, derived from the seed (documented in docs/keys.md).

    node key                     m/1017'/C'/6'/0/0
    channel i, family F          m/1017'/C'/F'/0/i   F: 0 funding, 1 revocation, 2 htlc, 3 payment,
                                                     4 delayed payment, 5 per-commitment seed
    wallet (BIP84)               m/84'/C'/0'/{0,1}/n
C is 0 on mainnet and 1 on the test networks. The same seed always gives the same keys.
Developers may force the BIP32 root's seed and every channel's secrets (lnp_host.keys.DevSecrets).
"""
from __future__ import annotations

import coincurve
from embit import bip32, bip39

from lnp_plugin_api.bolt3 import MAX_INDEX, per_commitment_secret, point
from lnp_plugin_api.chains import embit_network

FAMILIES = {"funding_pubkey": 0, "revocation_basepoint": 1, "htlc_basepoint": 2, "payment_basepoint": 3,
            "delayed_payment_basepoint": 4}
PER_COMMITMENT_FAMILY = 5
NODE_FAMILY = 6
# --dev-force-channel-secrets gives them in Core Lightning's order: funding, revocation, payment,
# delayed payment, HTLC, shachain seed; the family of each
FORCED_ORDER = (0, 1, 3, 4, 2, PER_COMMITMENT_FAMILY)


class Keychain:
    """The root key and what is derived from it."""

    def __init__(self, mnemonic: str, network: str, node_secret: bytes | None = None,
                 bip32_seed: bytes | None = None, channel_secrets: tuple[bytes, ...] | None = None) -> None:
        """Developers: `node_secret` replaces the derived node key (`--dev-force-privkey`), `bip32_seed`
        the mnemonic's BIP32 seed (`--dev-force-bip32-seed`), `channel_secrets` every channel's keys
        (`--dev-force-channel-secrets`, in FORCED_ORDER)."""
        self.network = network
        self.coin = 0 if network == "mainnet" else 1
        self._derived: dict[str, bytes] = {}
        self._root = bip32.HDKey.from_seed(bip32_seed if bip32_seed is not None else bip39.mnemonic_to_seed(mnemonic))
        self._forced_channel = dict(zip(FORCED_ORDER, channel_secrets)) if channel_secrets else None
        self.fingerprint = self._root.my_fingerprint.hex()
        self.node_key = coincurve.PrivateKey(node_secret or self._secret(f"m/1017h/{self.coin}h/{NODE_FAMILY}h/0/0"))
        self.account_path = f"m/84h/{self.coin}h/0h"
        self._account = self._root.derive(self.account_path)

    def _secret(self, path: str) -> bytes:
        # a derivation is a dozen of EC operations, asked for on every signature: each path's once
        found = self._derived.get(path)
        if found is None:
            found = self._derived[path] = self._root.derive(path).key.secret
        return found

    @property
    def root(self) -> bip32.HDKey:
        """The root key, for signing PSBTs whose inputs carry our derivation paths."""
        return self._root

    def node_id(self) -> bytes:
        """The node key's compressed public key."""
        return self.node_key.public_key.format()

    def account_xpub(self) -> str:
        """The BIP84 account's extended public key (tpub/xpub, as embit writes it for the network)."""
        return self._account.to_public().to_string(embit_network(self.network)["xpub"])

    def descriptors(self) -> dict[str, str]:
        """The wallet's receive and change descriptors, with key origin."""
        origin = f"[{self.fingerprint}/84h/{self.coin}h/0h]{self.account_xpub()}"
        return {"receive": f"wpkh({origin}/0/*)", "change": f"wpkh({origin}/1/*)"}

    def channel_secret(self, family: int, index: int) -> bytes:
        """A channel key's secret."""
        if self._forced_channel is not None:
            return self._forced_channel[family]
        return self._secret(f"m/1017h/{self.coin}h/{family}h/0/{index}")

    def basepoints(self, index: int) -> dict[str, str]:
        """BOLT-3 basepoints (and the funding key) of channel `index`."""
        return {name: point(self.channel_secret(family, index)).hex() for name, family in FAMILIES.items()}

    def per_commitment_secret(self, index: int, commitment_number: int) -> bytes:
        """The per-commitment secret of channel `index` for `commitment_number` (counting up from 0)."""
        seed = self.channel_secret(PER_COMMITMENT_FAMILY, index)
        return per_commitment_secret(seed, MAX_INDEX - commitment_number)

    def per_commitment_point(self, index: int, commitment_number: int) -> bytes:
        """The per-commitment point of channel `index` for `commitment_number` (counting up from 0)."""
        return point(self.per_commitment_secret(index, commitment_number))
