"""signd's channel operations and their policy (docs/keys.md, "Channel operations and policy").

channeld never holds a channel's private keys: it tells signd the negotiated channel once
(`ready_channel`), then asks for each signature. signd keeps its own state of every channel (what it
signed for the counterparty, which of our commitments it validated, revoked, or signed for the
chain) and refuses whatever would let a peer take our money: signing a commitment it has revoked,
revealing the secret of the current state, signing a revoked counterparty state, spending another
outpoint, sweeping to a script outside the wallet. Every refusal signs nothing and changes nothing;
every change is committed before the answer leaves (the caller passes `begin`, a storage transaction).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import coincurve
from sqlalchemy import select

from lnp_plugin_api import RpcError
from lnp_plugin_api.addresses import parse_node_id
from lnp_plugin_api.bolt3 import (MAX_INDEX, HtlcScripts, Shachain, ShachainError, anchor_script,
                                  commitment_locktime_sequence, derive_privkey, derive_pubkey, derive_revocation_pubkey,
                                  funding_script, funding_witness_of, obscuring_factor, point, to_local_script,
                                  to_remote_anchor_script)
from lnp_plugin_api.tx import (SIGHASH_ALL, SIGHASH_SINGLE_ANYONECANPAY, Tx, compact_to_der, hash160_of_sha256, p2wpkh,
                               p2wsh, verify)

from .keys import FAMILIES, Keychain
from .sigs import parse_tx, sign, sign_all, witness_signature
from .storage import INSERT, UPDATE_STATE, UPDATE_STATE_AND_HTLCS, channels

REFUSED = RpcError.REFUSED
BAD = RpcError.INVALID_PARAMS
FUNDING, REVOCATION, HTLC, PAYMENT, DELAYED = (FAMILIES[n] for n in (
    "funding_pubkey", "revocation_basepoint", "htlc_basepoint", "payment_basepoint", "delayed_payment_basepoint"))
CHANNEL_TYPES = ("static_remotekey", "anchors")
HARDENED = 0x80000000
NONE = -1  # no commitment number yet


def refuse(message: str) -> RpcError:
    return RpcError(REFUSED, message)


def bad(message: str) -> RpcError:
    return RpcError(BAD, message)


@dataclass
class ChannelState:
    """What signd knows and has done for one channel; `params` as `ready_channel` checked them. The
    HTLC transactions of `holder_tx` are stored apart (`ChannelSigner.holder_htlcs`)."""

    index: int
    params: dict[str, Any]
    holder_validated: int = NONE     # the latest holder commitment whose counterparty signature verified
    holder_tx: str = ""              # ... that commitment (unsigned), its counterparty signature (compact)
    holder_signature: str = ""
    holder_revoked: int = NONE       # every holder commitment up to this one had its secret released
    holder_broadcast: int = NONE     # the holder commitment signed for the chain (never revoked after)
    counterparty_signed: dict[str, dict[str, str]] = field(default_factory=dict)  # number -> {txid, point}
    counterparty_revoked: int = NONE  # the counterparty revealed the secret of every commitment up to this
    counterparty_secrets: dict[str, list[Any]] = field(default_factory=dict)  # those secrets (Shachain.to_json)


def _int(body: dict[str, Any], name: str, low: int = 0, high: int = MAX_INDEX) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad(f"{name} must be an integer {low}..{high}")
    return value


def _hex(body: dict[str, Any], name: str, size: int | None = None) -> bytes:
    value = body[name]
    if not isinstance(value, str):
        raise bad(f"{name} must be hex text")
    data = bytes.fromhex(value)
    if size is not None and len(data) != size:
        raise bad(f"{name} must be {size} bytes")
    return data


def _key(body: dict[str, Any], name: str) -> bytes:
    try:
        return parse_node_id(str(body[name]))
    except ValueError:
        raise bad(f"{name} is not a valid compressed public key") from None


def _tx(body: dict[str, Any], name: str = "tx") -> Tx:
    try:
        return parse_tx(body[name])
    except ValueError:
        raise bad(f"{name} is not a transaction (hex)") from None


def outputs_detail(tx: Tx) -> list[dict[str, Any]]:
    """A transaction's outputs as the `sign_request` decision sees them."""
    return [{"value_sat": o.amount_sat, "script": o.script_pubkey.hex()} for o in tx.outputs]


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise bad(f"{name} must be a list of objects")
    return value


def check_params(raw: Any) -> dict[str, Any]:
    """The negotiated channel as `ready_channel` takes it, checked and normalised."""
    if not isinstance(raw, dict):
        raise bad("params must be an object")
    txid = _hex(raw, "funding_txid", 32)
    params = {
        "funding_txid": txid.hex(), "funding_vout": _int(raw, "funding_vout", 0, 0xFFFF),
        "funding_sat": _int(raw, "funding_sat", 1, 21_000_000 * 100_000_000),
        "counterparty_funding_pubkey": _key(raw, "counterparty_funding_pubkey").hex(),
        "holder_to_self_delay": _int(raw, "holder_to_self_delay", 0, 0xFFFF),
        "counterparty_to_self_delay": _int(raw, "counterparty_to_self_delay", 0, 0xFFFF),
    }
    points = raw["counterparty_basepoints"]
    if not isinstance(points, dict):
        raise bad("counterparty_basepoints must be an object")
    for name in ("revocation_basepoint", "payment_basepoint", "delayed_payment_basepoint", "htlc_basepoint"):
        params[f"counterparty_{name}"] = _key(points, name).hex()
    if raw["channel_type"] not in CHANNEL_TYPES:
        raise bad(f"channel_type must be one of {', '.join(CHANNEL_TYPES)}")
    if raw["opener"] not in ("holder", "counterparty"):
        raise bad("opener must be holder or counterparty")
    params["channel_type"], params["opener"] = raw["channel_type"], raw["opener"]
    shutdown = raw.get("holder_shutdown_script")  # option_upfront_shutdown_script: where a close may pay us
    if shutdown is not None:
        script = _hex(raw, "holder_shutdown_script")
        if not 1 <= len(script) <= 42:
            raise bad("holder_shutdown_script must be a script of 1 to 42 bytes")
        params["holder_shutdown_script"] = script.hex()
    return params


class ChannelSigner:
    """The channel operations over a keychain and signd's table (`begin`: a storage transaction)."""

    def __init__(self, keys: Keychain, begin: Callable[[], ContextManager[Any]],
                 allowed: Callable[[str, dict[str, Any]], None] = lambda kind, detail: None) -> None:
        self.keys, self.begin, self.allowed = keys, begin, allowed
        self.lock = threading.Lock()  # one operation at a time: each reads, checks and writes a state
        self._saved: dict[int, str] = {}  # index -> the state as committed (signd is its only writer)
        self._pubs: dict[tuple[int, int], bytes] = {}

    # --- state ------------------------------------------------------------------------------------

    def load(self, index: int) -> ChannelState | None:
        """A fresh copy of the committed state of channel `index` (None: not ready)."""
        text = self._saved.get(index)
        if text is None:
            with self.begin() as conn:
                row = conn.execute(select(channels.c.state).where(channels.c.idx == index)).first()
            if row is None:
                return None
            text = self._saved[index] = row[0]
        return ChannelState(**json.loads(text))

    def save(self, state: ChannelState, holder_htlcs: list[dict[str, Any]] | None = None) -> None:
        """Commit the state, and the HTLC transactions of its `holder_tx` when given (before the answer
        that depends on them leaves)."""
        text = json.dumps(vars(state))  # its fields are JSON values already: no deep copy (asdict) needed
        with self.begin() as conn:
            # a row `_saved` knows was committed; signd is its only writer
            exists = state.index in self._saved or conn.execute(
                select(channels.c.idx).where(channels.c.idx == state.index)).first() is not None
            row = {"b_idx": state.index, "b_state": text, "b_htlcs": json.dumps(holder_htlcs or [])}
            if not exists:
                conn.execute(INSERT, row)
            elif holder_htlcs is None:
                conn.execute(UPDATE_STATE, row)
            else:
                conn.execute(UPDATE_STATE_AND_HTLCS, row)
        self._saved[state.index] = text  # only once committed

    def holder_htlcs(self, index: int) -> list[dict[str, Any]]:
        """The HTLC transactions of the latest validated holder commitment of channel `index`, with the
        counterparty's signatures: {tx, witness_script, amount_sat, signature}, in the order validated."""
        with self.begin() as conn:
            row = conn.execute(select(channels.c.holder_htlcs).where(channels.c.idx == index)).first()
        return [] if row is None else json.loads(row[0])

    def ready(self, index: int) -> ChannelState:
        state = self.load(index)
        if state is None:
            raise refuse(f"channel {index} is not ready: call ready_channel first")
        return state

    # --- keys -------------------------------------------------------------------------------------

    def secret(self, family: int, index: int) -> bytes:
        return self.keys.channel_secret(family, index)

    def pub(self, family: int, index: int) -> bytes:
        found = self._pubs.get((family, index))
        if found is None:   # an EC multiplication, asked for by every operation: once per key
            found = self._pubs[(family, index)] = point(self.secret(family, index))
        return found

    def holder_secret(self, index: int, n: int) -> bytes:
        """Our per-commitment secret of commitment `n`."""
        return self.keys.per_commitment_secret(index, n)

    def holder_point(self, index: int, n: int) -> bytes:
        return self.keys.per_commitment_point(index, n)

    def channel_keys(self, index: int) -> dict[str, str]:
        """Funding pubkey, basepoints and the first two per-commitment points of channel `index`."""
        return {**self.keys.basepoints(index), "first_per_commitment_point": self.holder_point(index, 0).hex(),
                "second_per_commitment_point": self.holder_point(index, 1).hex()}

    def funding_script(self, state: ChannelState) -> bytes:
        return funding_script(self.pub(FUNDING, state.index), bytes.fromhex(state.params["counterparty_funding_pubkey"]))

    def obscured(self, state: ChannelState, n: int) -> int:
        """BOLT-3: n XOR the obscuring factor (the opener's payment basepoint first)."""
        ours, theirs = self.pub(PAYMENT, state.index), bytes.fromhex(state.params["counterparty_payment_basepoint"])
        first, second = (ours, theirs) if state.params["opener"] == "holder" else (theirs, ours)
        return n ^ obscuring_factor(first, second)

    def holder_to_local(self, state: ChannelState, pcp: bytes) -> bytes:
        """Our to_local script (also our HTLC transactions' output) for our per-commitment point."""
        p = state.params
        return to_local_script(derive_revocation_pubkey(bytes.fromhex(p["counterparty_revocation_basepoint"]), pcp),
                                 p["holder_to_self_delay"], derive_pubkey(self.pub(DELAYED, state.index), pcp))

    def counterparty_to_local(self, state: ChannelState, pcp: bytes) -> bytes:
        """The counterparty's to_local script for its per-commitment point (revocable with our basepoint)."""
        p = state.params
        return to_local_script(derive_revocation_pubkey(self.pub(REVOCATION, state.index), pcp),
                                 p["counterparty_to_self_delay"],
                                 derive_pubkey(bytes.fromhex(p["counterparty_delayed_payment_basepoint"]), pcp))

    def counterparty_htlc_keys(self, state: ChannelState, pcp: bytes) -> tuple[bytes, bytes, bytes]:
        """The HTLC script keys of the counterparty's commitment for its point `pcp`: the revocation key
        (ours to derive once revoked), the counterparty's HTLC key, ours."""
        return (derive_revocation_pubkey(self.pub(REVOCATION, state.index), pcp),
                derive_pubkey(bytes.fromhex(state.params["counterparty_htlc_basepoint"]), pcp),
                derive_pubkey(self.pub(HTLC, state.index), pcp))

    def wallet_script(self, branch: int, index: int) -> bytes:
        """The P2WPKH script of wallet key m/84'/C'/0'/branch/index."""
        key = self.keys.root.derive([84 + HARDENED, self.keys.coin + HARDENED, HARDENED, branch, index])
        return p2wpkh(key.get_public_key().sec())

    # --- checks -----------------------------------------------------------------------------------

    def check_funding_spend(self, state: ChannelState, tx: Tx, what: str) -> None:
        """`tx` spends this channel's funding outpoint alone and pays out no more than the channel holds."""
        p = state.params
        vin = tx.inputs
        if len(vin) != 1 or vin[0].txid != p["funding_txid"] or vin[0].vout != p["funding_vout"]:
            raise refuse(f"the {what} does not spend channel {state.index}'s funding outpoint "
                         f"{p['funding_txid']}:{p['funding_vout']} (alone): refused")
        if sum(o.amount_sat for o in tx.outputs) > p["funding_sat"]:
            raise refuse(f"the {what} pays out more than the channel holds: refused")

    def check_commitment(self, state: ChannelState, tx: Tx, n: int) -> None:
        """The transaction spends exactly this channel's funding outpoint, encodes commitment `n` and
        pays out no more than the channel holds."""
        self.check_funding_spend(state, tx, "commitment")
        got = tx.locktime, tx.inputs[0].sequence
        want = commitment_locktime_sequence(self.obscured(state, n))
        if tx.version != 2 or [v >> 24 for v in got] != [v >> 24 for v in want]:
            raise refuse("not a BOLT-3 commitment transaction (version, locktime or sequence): refused")
        if got != want:
            raise refuse(f"the transaction's obscured commitment number is not commitment {n}'s: refused")

    def check_htlc(self, state: ChannelState, commitment: Tx, commitment_txid: str, item: dict[str, Any],
                   pays: bytes, scripts: HtlcScripts) -> tuple[Tx, bytes, int]:
        """A second-stage HTLC transaction: it alone spends an output of `commitment` that pays the
        given witness script, one of `scripts` (BOLT-3's HTLC scripts of the commitment's keys), and
        pays the scriptPubKey `pays` (the P2WSH of a to_local script) alone."""
        tx, script = _tx(item), _hex(item, "witness_script")
        anchors = state.params["channel_type"] == "anchors"
        if len(tx.inputs) != 1 or len(tx.outputs) != 1 or tx.version != 2:
            raise refuse("an HTLC transaction has one input and one output (version 2): refused")
        vin = tx.inputs[0]
        if vin.txid != commitment_txid or vin.vout >= len(commitment.outputs):
            raise refuse("an HTLC transaction does not spend an output of the commitment: refused")
        spent = commitment.outputs[vin.vout]
        if spent.script_pubkey != p2wsh(script) or scripts.kind(script) is None:
            raise refuse(f"commitment output {vin.vout} is not an HTLC of this channel's keys: refused")
        if vin.sequence != (1 if anchors else 0) or tx.outputs[0].script_pubkey != pays:
            raise refuse("an HTLC transaction's sequence or output is not BOLT-3's for this channel: refused")
        return tx, script, spent.amount_sat

    def check_counterparty_outputs(self, state: ChannelState, tx: Tx, pcp: bytes, htlcs: set[int]) -> None:
        """Every output of the counterparty's commitment is one we can take if it is ever revoked, or
        ours: its to_local (revocable with our key), our to_remote (once), an anchor of either funding
        key, or an HTLC output whose second-stage transaction we sign (revocable too)."""
        ours = self.pub(PAYMENT, state.index)
        theirs = bytes.fromhex(state.params["counterparty_funding_pubkey"])
        if state.params["channel_type"] == "anchors":
            to_remote = p2wsh(to_remote_anchor_script(ours))
            anchors = {p2wsh(anchor_script(self.pub(FUNDING, state.index))), p2wsh(anchor_script(theirs))}
        else:
            to_remote, anchors = p2wpkh(ours), set()
        known = {p2wsh(self.counterparty_to_local(state, pcp)), to_remote} | anchors
        for j, out in enumerate(tx.outputs):
            if j not in htlcs and out.script_pubkey not in known:
                raise refuse(f"output {j} of the counterparty's commitment is neither its revocable to_local, nor "
                             "ours, nor an anchor, nor an HTLC whose transaction we sign: refused")
        if sum(o.script_pubkey == to_remote for o in tx.outputs) > 1:
            raise refuse("the commitment pays our to_remote script twice: refused")

    def check_wallet_outputs(self, tx: Tx, paths: Any, skip: int | None = None) -> None:
        """Every output (but `skip`) pays a wallet key, named by its (branch, index) in `paths`, one
        per output (None for `skip`)."""
        if not isinstance(paths, list) or len(paths) != len(tx.outputs):
            raise bad("wallet_outputs must give [branch, index] for each output")
        for j, (out, path) in enumerate(zip(tx.outputs, paths)):
            if j != skip:
                self.check_wallet_output(j, out.script_pubkey, path)

    def check_wallet_output(self, j: int, script: bytes, path: Any) -> None:
        """Output `j` pays `script`, the wallet key of `path` [branch, index]."""
        if (not isinstance(path, list) or len(path) != 2 or path[0] not in (0, 1)
                or not isinstance(path[1], int) or isinstance(path[1], bool) or not 0 <= path[1] < HARDENED):
            raise bad("a wallet output is given as [branch (0 or 1), index]")
        if script != self.wallet_script(path[0], path[1]):
            raise refuse(f"output {j} does not pay the wallet key {path[0]}/{path[1]}: signd pays the wallet only")

    # --- operations -------------------------------------------------------------------------------

    def ready_channel(self, body: dict[str, Any]) -> dict[str, Any]:
        """Record the negotiated channel; the same parameters again are fine, other ones only while
        nothing has been signed for it."""
        index, params = _int(body, "index", 0, HARDENED - 1), check_params(body["params"])
        with self.lock:
            state = self.load(index)
            if state is not None and state.params != params and (
                    state.counterparty_signed or state.counterparty_revoked != NONE
                    or state.holder_validated != NONE):
                raise refuse(f"channel {index} has signed commitments with other parameters: refused")
            if state is None or state.params != params:
                self.save(ChannelState(index, params))
        return {"index": index, "funding_script": self.funding_script(ChannelState(index, params)).hex()}

    def sign_counterparty_commitment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Sign the funding input of the counterparty's commitment `n` and our side of its HTLC
        transactions (anchors: SIGHASH_SINGLE|ANYONECANPAY)."""
        index, n, tx = _int(body, "index", 0, HARDENED - 1), _int(body, "commitment_number"), _tx(body)
        pcp, htlcs = _key(body, "per_commitment_point"), _list(body, "htlcs")
        with self.lock:
            state = self.ready(index)
            self.check_commitment(state, tx, n)
            if n <= state.counterparty_revoked:
                raise refuse(f"the counterparty revoked its commitment {n}: signd never signs a revoked state")
            if n > state.counterparty_revoked + 2:
                raise refuse(f"commitment {n - 2} of the counterparty is not revoked yet: refused to sign {n}")
            txid = tx.txid()
            before = state.counterparty_signed.get(str(n))
            if before is not None and before != {"txid": txid, "point": pcp.hex()}:
                raise refuse(f"signd signed another counterparty commitment {n} already: refused")
            anchors = state.params["channel_type"] == "anchors"
            htlc_secret = derive_privkey(self.secret(HTLC, index), pcp)
            pays = p2wsh(self.counterparty_to_local(state, pcp))
            scripts = HtlcScripts(*self.counterparty_htlc_keys(state, pcp), anchors)
            checked = [self.check_htlc(state, tx, txid, item, pays, scripts) for item in htlcs]
            spent = {h.inputs[0].vout for h, _, _ in checked}
            if len(spent) != len(checked):
                raise refuse("two HTLC transactions spend the same output: refused")
            self.check_counterparty_outputs(state, tx, pcp, spent)
            self.allowed("channel", {"purpose": "counterparty_commitment", "index": index, "commitment_number": n,
                                     "outputs": outputs_detail(tx)})
            funding = self.funding_script(state)
            sig = sign(self.secret(FUNDING, index), tx.sighash(0, funding, state.params["funding_sat"], SIGHASH_ALL))
            flag = SIGHASH_SINGLE_ANYONECANPAY if anchors else SIGHASH_ALL
            htlc_sigs = [s.hex() for s in sign_all(htlc_secret, [h.sighash(0, script, value, flag)
                                                                 for h, script, value in checked])]
            state.counterparty_signed[str(n)] = {"txid": txid, "point": pcp.hex()}
            self.save(state)
        return {"signature": sig.hex(), "htlc_signatures": htlc_sigs}

    def validate_counterparty_revocation(self, body: dict[str, Any]) -> dict[str, Any]:
        """The counterparty revealed the secret of its commitment `n`: check it against the point it
        gave with that commitment and never sign `n` (or older) again."""
        index, n, secret = _int(body, "index", 0, HARDENED - 1), _int(body, "commitment_number"), _hex(body, "secret", 32)
        with self.lock:
            state = self.ready(index)
            if n <= state.counterparty_revoked:
                return {"revoked": state.counterparty_revoked}
            if n != state.counterparty_revoked + 1:
                raise refuse(f"the counterparty must revoke commitment {state.counterparty_revoked + 1} first")
            signed = state.counterparty_signed.get(str(n))
            try:
                matches = signed is not None and point(secret).hex() == signed["point"]
            except ValueError:
                matches = False
            if not matches:
                raise refuse(f"the secret is not the one of counterparty commitment {n}: refused")
            secrets = Shachain.from_json(state.counterparty_secrets)
            try:  # kept (49 entries at most) so a penalty is signed only with a secret really revealed
                secrets.insert(secret, MAX_INDEX - n)
            except ShachainError:
                raise refuse(f"the secret of counterparty commitment {n} does not derive the earlier ones: "
                             "refused") from None
            state.counterparty_revoked, state.counterparty_secrets = n, secrets.to_json()
            state.counterparty_signed = {k: v for k, v in state.counterparty_signed.items() if int(k) > n}
            self.save(state)
        return {"revoked": n}

    def validate_holder_commitment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Verify the counterparty's signatures of our commitment `n` (and of its HTLC transactions);
        it becomes our latest commitment, the only one signd will sign for the chain."""
        index, n, tx = _int(body, "index", 0, HARDENED - 1), _int(body, "commitment_number"), _tx(body)
        sig, htlcs = _hex(body, "signature", 64), _list(body, "htlcs")
        with self.lock:
            state = self.ready(index)
            self.check_commitment(state, tx, n)
            if state.holder_broadcast != NONE:
                raise refuse(f"channel {index} went to chain with commitment {state.holder_broadcast}: refused")
            if n == state.holder_validated and tx.serialize().hex() == state.holder_tx:
                return {"validated": n}
            if n != state.holder_validated + 1:
                raise refuse(f"the next holder commitment is {state.holder_validated + 1}, not {n}: refused")
            if state.holder_validated > state.holder_revoked + 1:
                raise refuse(f"holder commitment {state.holder_validated - 1} is not revoked yet: refused")
            p = state.params
            digest = tx.sighash(0, self.funding_script(state), p["funding_sat"], SIGHASH_ALL)
            if not verify(bytes.fromhex(p["counterparty_funding_pubkey"]), sig, digest):
                raise refuse("the counterparty's signature of the commitment does not verify: refused")
            pcp = self.holder_point(index, n)
            their_htlc = derive_pubkey(bytes.fromhex(p["counterparty_htlc_basepoint"]), pcp)
            ours = derive_pubkey(self.pub(HTLC, index), pcp)
            flag = SIGHASH_SINGLE_ANYONECANPAY if p["channel_type"] == "anchors" else SIGHASH_ALL
            their_key = coincurve.PublicKey(their_htlc)  # parsed once for every HTLC
            kept, txid, pays = [], tx.txid(), p2wsh(self.holder_to_local(state, pcp))
            scripts = HtlcScripts(derive_revocation_pubkey(bytes.fromhex(p["counterparty_revocation_basepoint"]), pcp),
                                  ours, their_htlc, p["channel_type"] == "anchors")
            for item in htlcs:
                htlc, script, value = self.check_htlc(state, tx, txid, item, pays, scripts)
                htlc_sig = _hex(item, "signature", 64)
                if not verify(their_key, htlc_sig, htlc.sighash(0, script, value, flag)):
                    raise refuse(f"the counterparty's signature of the HTLC transaction spending output "
                                 f"{htlc.inputs[0].vout} does not verify: refused")
                kept.append({"tx": htlc.serialize().hex(), "witness_script": script.hex(), "amount_sat": value,
                             "signature": htlc_sig.hex()})
            state.holder_validated, state.holder_tx, state.holder_signature = n, tx.serialize().hex(), sig.hex()
            self.save(state, kept)
        return {"validated": n}

    def revoke_holder_commitment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Release the secret of our commitment `n` once commitment n+1 is validated (n is replaced),
        with the point of n+2 (revoke_and_ack). Never the current state's, nor one signed for the chain."""
        index, n = _int(body, "index", 0, HARDENED - 1), _int(body, "commitment_number", 0, MAX_INDEX - 2)
        with self.lock:
            state = self.ready(index)
            if state.holder_broadcast != NONE and n >= state.holder_broadcast:
                raise refuse(f"holder commitment {n} may be on chain: signd never reveals its secret")
            if n > state.holder_revoked:
                if n >= state.holder_validated:
                    raise refuse(f"holder commitment {n} is the current state (no later commitment validated): "
                                 "signd never reveals its secret")
                if n != state.holder_revoked + 1:
                    raise refuse(f"holder commitment {state.holder_revoked + 1} must be revoked first")
                state.holder_revoked = n
                self.save(state)
        return {"secret": self.holder_secret(index, n).hex(), "next_point": self.holder_point(index, n + 2).hex()}

    def sign_holder_commitment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Our latest validated commitment, fully witnessed, to go to chain; and our signatures of its
        HTLC transactions. From then on signd reveals none of its secrets."""
        index, n = _int(body, "index", 0, HARDENED - 1), _int(body, "commitment_number")
        with self.lock:
            state = self.ready(index)
            if n <= state.holder_revoked:
                raise refuse(f"holder commitment {n} was revoked: signd never signs a revoked state")
            if n != state.holder_validated:
                raise refuse(f"holder commitment {n} is not the latest validated one "
                             f"({state.holder_validated}): refused")
            self.allowed("channel", {"purpose": "holder_commitment", "index": index, "commitment_number": n})
            state.holder_broadcast = n
            self.save(state)
            htlcs = self.holder_htlcs(index)
        p = state.params
        tx = parse_tx(state.holder_tx)
        funding = self.funding_script(state)
        ours = sign(self.secret(FUNDING, index), tx.sighash(0, funding, p["funding_sat"], SIGHASH_ALL))
        theirs = bytes.fromhex(p["counterparty_funding_pubkey"]), compact_to_der(bytes.fromhex(state.holder_signature))
        tx = tx.with_witness(0, funding_witness_of([(self.pub(FUNDING, index), compact_to_der(ours)), theirs]))
        pcp = self.holder_point(index, n)
        htlc_secret = derive_privkey(self.secret(HTLC, index), pcp)
        flag = SIGHASH_SINGLE_ANYONECANPAY if p["channel_type"] == "anchors" else SIGHASH_ALL
        digests = [parse_tx(h["tx"]).sighash(0, bytes.fromhex(h["witness_script"]), h["amount_sat"], SIGHASH_ALL)
                   for h in htlcs]
        out = [{"tx": h["tx"], "witness_script": h["witness_script"],
                "holder_signature": witness_signature(mine, SIGHASH_ALL).hex(),
                "counterparty_signature": witness_signature(bytes.fromhex(h["signature"]), flag).hex()}
               for h, mine in zip(htlcs, sign_all(htlc_secret, digests))]
        return {"tx": tx.serialize().hex(), "txid": tx.txid(), "htlcs": out}

    def sign_holder_htlc(self, body: dict[str, Any]) -> dict[str, Any]:
        """Our signature (SIGHASH_ALL) of an HTLC transaction of our commitment gone to chain, which
        may carry more inputs and outputs than the one the counterparty signed (anchors: it signed
        SIGHASH_SINGLE|ANYONECANPAY, so fees can be added): input `input_index` spends the HTLC output
        and output `input_index` is the one it signed; every other output pays the wallet. Which HTLC
        transaction: number `htlc` in the order validated, else the one spending that input's outpoint."""
        index, n, tx = _int(body, "index", 0, HARDENED - 1), _int(body, "commitment_number"), _tx(body)
        i = _int(body, "input_index", 0, len(tx.inputs) - 1)
        with self.lock:
            state = self.ready(index)
            if n != state.holder_broadcast:
                raise refuse(f"holder commitment {n} was not signed for the chain: refused")
            stored = self.holder_htlc(state, tx.inputs[i], body)
            signed = parse_tx(stored["tx"])
            vin, want = tx.inputs[i], signed.inputs[0]
            if (vin.txid, vin.vout, vin.sequence) != (want.txid, want.vout, want.sequence) or tx.version != 2 \
                    or i >= len(tx.outputs) or tx.outputs[i] != signed.outputs[0] or tx.locktime != signed.locktime:
                raise refuse("the transaction is not the HTLC transaction the counterparty signed (its input, "
                             "paired output, sequence or locktime): refused")
            self.check_wallet_outputs(tx, body.get("wallet_outputs"), skip=i)
            if signed.locktime == 0:    # HTLC-success (an HTLC-timeout waits for the expiry)
                check_preimage(body, bytes.fromhex(stored["witness_script"]))
            self.allowed("channel", {"purpose": "holder_htlc", "index": index, "commitment_number": n,
                                     "input": i, "amount_sat": stored["amount_sat"]})
        secret = derive_privkey(self.secret(HTLC, index), self.holder_point(index, n))
        digest = tx.sighash(i, bytes.fromhex(stored["witness_script"]), stored["amount_sat"], SIGHASH_ALL)
        flag = SIGHASH_SINGLE_ANYONECANPAY if state.params["channel_type"] == "anchors" else SIGHASH_ALL
        return {"holder_signature": witness_signature(sign(secret, digest), SIGHASH_ALL).hex(),
                "counterparty_signature": witness_signature(bytes.fromhex(stored["signature"]), flag).hex(),
                "witness_script": stored["witness_script"]}

    def holder_htlc(self, state: ChannelState, vin: Any, body: dict[str, Any]) -> dict[str, Any]:
        """The validated HTLC transaction numbered `htlc` in `body`, else the one spending `vin`'s outpoint."""
        htlcs = self.holder_htlcs(state.index)
        if body.get("htlc") is not None:
            which = _int(body, "htlc", 0, 2 * 483)
            if which >= len(htlcs):
                raise bad(f"holder commitment {state.holder_broadcast} has {len(htlcs)} HTLC transactions")
            return htlcs[which]
        for h in htlcs:
            spent = parse_tx(h["tx"]).inputs[0]
            if (spent.txid, spent.vout) == (vin.txid, vin.vout):
                return h
        raise refuse(f"no HTLC transaction of holder commitment {state.holder_broadcast} spends "
                     f"{vin.txid}:{vin.vout}: refused")

    def sign_mutual_close(self, body: dict[str, Any]) -> dict[str, Any]:
        """Our signature (64 bytes compact, SIGHASH_ALL) of a cooperative close: it spends the
        funding outpoint alone, and our output `holder_output` (None: we take nothing) pays the
        wallet key `wallet_output` [branch, index], the upfront shutdown script, or `destination`
        (a script the user named), which the `sign_request` decision sees as external."""
        index, tx = _int(body, "index", 0, HARDENED - 1), _tx(body)
        ours = body.get("holder_output")
        if ours is not None:
            ours = _int(body, "holder_output", 0, len(tx.outputs) - 1)
        with self.lock:
            state = self.ready(index)
            p = state.params
            self.check_funding_spend(state, tx, "close")
            external = False
            if ours is not None:
                script = tx.outputs[ours].script_pubkey
                wallet, destination = body.get("wallet_output"), body.get("destination")
                if wallet is not None:
                    self.check_wallet_output(ours, script, wallet)
                elif script.hex() == p.get("holder_shutdown_script"):
                    pass
                elif destination is not None and _hex(body, "destination") == script:
                    external = True
                else:
                    raise refuse("our output of the close pays neither the wallet, nor the upfront shutdown "
                                 "script, nor the destination named: refused")
            self.allowed("channel", {"purpose": "mutual_close", "index": index, "holder_output": ours,
                                     "external": external, "outputs": outputs_detail(tx)})
        digest = tx.sighash(0, self.funding_script(state), p["funding_sat"], SIGHASH_ALL)
        return {"signature": sign(self.secret(FUNDING, index), digest).hex()}


def check_preimage(body: dict[str, Any], script: bytes) -> None:
    """Refuse a claim by preimage unless the caller holds the preimage of the HTLC `script` pays: signing
    one that cannot be completed is no use, and a caller must not get signatures for guesses."""
    if body.get("preimage") is None:
        raise refuse("a claim by preimage needs the preimage: refused")
    preimage = _hex(body, "preimage", 32)
    if b"\xa9\x14" + hash160_of_sha256(preimage) + b"\x88" not in script:
        raise refuse("the preimage is not the one of this HTLC: refused")
