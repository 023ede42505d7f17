"""The genesis block hash of each network, and `chain_hash` as it appears on the wire."""
from __future__ import annotations

GENESIS: dict[str, str] = {  # big-endian, as block explorers show them
    "mainnet": "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    "testnet": "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
    "testnet4": "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043",
    "signet": "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
    "regtest": "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
}


def embit_network(network: str) -> dict:
    """embit's parameters (address prefixes, xpub versions) for one of our network names."""
    from embit.networks import NETWORKS
    return NETWORKS[{"mainnet": "main", "testnet": "test", "signet": "signet", "regtest": "regtest"}[network]]


def chain_hash(network: str) -> bytes:
    """The 32-byte `chain_hash` of `network` in wire order (the genesis hash, little-endian)."""
    return bytes.fromhex(GENESIS[network])[::-1]


def network_of(chain: bytes) -> str | None:
    """The network whose wire-order `chain_hash` is `chain`, if known."""
    for name, genesis in GENESIS.items():
        if bytes.fromhex(genesis)[::-1] == chain:
            return name
    return None
