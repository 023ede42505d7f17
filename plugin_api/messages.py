"""Typed BOLT-1 and BOLT-2 peer messages: one dataclass per message, built on `wire`'s codec.

Each message class declares its fields in the spec's order with their wire types, and its TLV records;
the `MessageSpec` that encodes and decodes it is derived from that declaration, so the layout is written
once. `decode` takes a whole message (type included) and raises `WireError` on anything malformed:
truncated or trailing bytes, a wrong type, an invalid point, a bad TLV stream (unknown even record,
out of order, duplicated). Unknown odd TLV records are kept in `extra_tlvs` and encoded again as they
came. What the values mean (limits, feature negotiation, upfront shutdown scripts) is channeld's to check.

    msg = UpdateFee(channel_id=bytes(32), feerate_per_kw=253)
    assert decode_message(msg.encode()) == msg
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Self

from .wire import MessageSpec, TlvRecord, TlvStream, WireError, split_message

MAX_MESSAGE_SIZE = 65535  # BOLT-8 frames carry at most this many bytes, type included

MESSAGES: dict[int, type["Message"]] = {}


class FeeRange(NamedTuple):
    """`closing_signed`'s fee_range TLV."""

    min_fee_satoshis: int
    max_fee_satoshis: int


class AttributionData(NamedTuple):
    """The attribution_data TLV of `update_fulfill_htlc` / `update_fail_htlc` (20 u32 hold times, 210 4-byte HMACs)."""

    htlc_hold_times: bytes
    truncated_hmacs: bytes


class NextFunding(NamedTuple):
    """`channel_reestablish`'s next_funding TLV (splicing and dual funding)."""

    next_funding_txid: bytes
    retransmit_flags: int


class FundingLocked(NamedTuple):
    """`channel_reestablish`'s my_current_funding_locked TLV (splicing)."""

    my_current_funding_locked_txid: bytes
    retransmit_flags: int


def wire(kind: str) -> Any:
    """A message field of wire type `kind` (a name in `wire.FIELD_TYPES`)."""
    return field(metadata={"wire": kind})


def tlv(type_: int, *fields: tuple[str, str], as_: type | None = None) -> Any:
    """An optional TLV record: one field (the attribute holds its value) or several (held as an `as_` tuple)."""
    return field(default=None, metadata={"tlv": (type_, fields, as_)})


class Message:
    """Base of the typed messages: encode to and decode from the bytes of a whole message."""

    TYPE: ClassVar[int]
    NAME: ClassVar[str]
    SPEC: ClassVar[MessageSpec]
    extra_tlvs: dict[int, bytes]

    def encode(self) -> bytes:
        """The whole message, its 2-byte type first; `WireError` if a value does not fit its field."""
        try:
            out = self.SPEC.encode(self._values())
        except (OverflowError, TypeError, AttributeError, ValueError) as e:
            if isinstance(e, WireError):
                raise
            raise WireError(f"{self.NAME}: a value does not fit its field: {e}") from None
        if len(out) > MAX_MESSAGE_SIZE:
            raise WireError(f"{self.NAME}: {len(out)} bytes is more than a message can carry")
        return out

    def _values(self) -> dict[str, Any]:
        """The fields and TLV records as `MessageSpec.encode` takes them."""
        values: dict[str, Any] = {}
        tlvs: dict[str, Any] = {}
        for t, v in self.extra_tlvs.items():
            if t % 2 == 0 or any(rec.type == t for rec in self.SPEC.tlvs.records):
                raise WireError(f"{self.NAME}: extra TLV {t} must be odd and not a known record")
            tlvs[str(t)] = v
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "wire" in f.metadata:
                values[f.name] = value
            elif "tlv" in f.metadata and value is not None:
                _, rec_fields, as_ = f.metadata["tlv"]
                parts = tuple(value) if as_ is not None else (value,)
                if len(parts) != len(rec_fields):
                    raise WireError(f"{self.NAME}.{f.name}: expected {len(rec_fields)} values")
                tlvs[f.name] = {name: part for (_, name), part in zip(rec_fields, parts)}
        values["tlvs"] = tlvs
        return values

    @classmethod
    def decode(cls, msg: bytes) -> Self:
        """Decode a whole message of this class's type."""
        kind, payload = split_message(msg)
        if kind != cls.TYPE:
            raise WireError(f"expected {cls.NAME} ({cls.TYPE}), got message type {kind}")
        return cls.decode_payload(payload)

    @classmethod
    def decode_payload(cls, payload: bytes) -> Self:
        """Decode the bytes after the type."""
        values = cls.SPEC.decode(payload)
        tlvs = values.pop("tlvs")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if "wire" in f.metadata:
                kwargs[f.name] = values[f.name]
            elif "tlv" in f.metadata and f.name in tlvs:
                _, rec_fields, as_ = f.metadata["tlv"]
                record = tlvs.pop(f.name)
                parts = [record[name] for _, name in rec_fields]
                kwargs[f.name] = as_(*parts) if as_ is not None else parts[0]
        kwargs["extra_tlvs"] = {int(t): v for t, v in tlvs.items()}
        return cls(**kwargs)


def message(type_: int, name: str) -> Any:
    """Class decorator: make a `Message` dataclass of BOLT type `type_` and register it."""
    def wrap(cls: type) -> type:
        cls.__annotations__["extra_tlvs"] = "dict[int, bytes]"
        cls.extra_tlvs = field(default_factory=dict)
        cls = dataclass(frozen=True)(cls)
        msg_fields, records = [], []
        for f in dataclasses.fields(cls):
            if "wire" in f.metadata:
                msg_fields.append((f.metadata["wire"], f.name))
            elif "tlv" in f.metadata:
                t, rec_fields, _ = f.metadata["tlv"]
                records.append(TlvRecord(t, f.name, tuple(rec_fields)))
        cls.TYPE, cls.NAME = type_, name
        cls.SPEC = MessageSpec(type_, name, tuple(msg_fields), TlvStream(tuple(records)))
        if type_ in MESSAGES:
            raise ValueError(f"message type {type_} declared twice")
        MESSAGES[type_] = cls
        return cls
    return wrap


def decode_message(msg: bytes) -> Message:
    """Decode any message declared here; `WireError` for a malformed one or a type not declared here."""
    kind, _ = split_message(msg)
    cls = MESSAGES.get(kind)
    if cls is None:
        raise WireError(f"unknown message type {kind}")
    return cls.decode(msg)


# ---- BOLT-1 -------------------------------------------------------------------------------------------

@message(16, "init")
class Init(Message):
    globalfeatures: bytes = wire("u16_bytes")
    features: bytes = wire("u16_bytes")
    networks: list[bytes] | None = tlv(1, ("chain_hashes", "chains"))
    remote_addr: bytes | None = tlv(3, ("rest", "data"))


@message(17, "error")
class ErrorMessage(Message):
    channel_id: bytes = wire("channel_id")
    data: bytes = wire("u16_bytes")


@message(1, "warning")
class WarningMessage(Message):
    channel_id: bytes = wire("channel_id")
    data: bytes = wire("u16_bytes")


@message(18, "ping")
class Ping(Message):
    num_pong_bytes: int = wire("u16")
    ignored: bytes = wire("u16_bytes")


@message(19, "pong")
class Pong(Message):
    ignored: bytes = wire("u16_bytes")


# The BOLT-1 layouts as `MessageSpec`s, for code that encodes and decodes them as dicts (peerd).
INIT, ERROR, WARNING, PING, PONG = (c.SPEC for c in (Init, ErrorMessage, WarningMessage, Ping, Pong))


# ---- BOLT-2: channel establishment v1 -----------------------------------------------------------------

@message(32, "open_channel")
class OpenChannel(Message):
    chain_hash: bytes = wire("chain_hash")
    temporary_channel_id: bytes = wire("32*byte")
    funding_satoshis: int = wire("u64")
    push_msat: int = wire("u64")
    dust_limit_satoshis: int = wire("u64")
    max_htlc_value_in_flight_msat: int = wire("u64")
    channel_reserve_satoshis: int = wire("u64")
    htlc_minimum_msat: int = wire("u64")
    feerate_per_kw: int = wire("u32")
    to_self_delay: int = wire("u16")
    max_accepted_htlcs: int = wire("u16")
    funding_pubkey: bytes = wire("point")
    revocation_basepoint: bytes = wire("point")
    payment_basepoint: bytes = wire("point")
    delayed_payment_basepoint: bytes = wire("point")
    htlc_basepoint: bytes = wire("point")
    first_per_commitment_point: bytes = wire("point")
    channel_flags: int = wire("byte")
    upfront_shutdown_script: bytes | None = tlv(0, ("rest", "shutdown_scriptpubkey"))
    channel_type: bytes | None = tlv(1, ("rest", "type"))  # a feature bitfield (BOLT-9)


@message(33, "accept_channel")
class AcceptChannel(Message):
    temporary_channel_id: bytes = wire("32*byte")
    dust_limit_satoshis: int = wire("u64")
    max_htlc_value_in_flight_msat: int = wire("u64")
    channel_reserve_satoshis: int = wire("u64")
    htlc_minimum_msat: int = wire("u64")
    minimum_depth: int = wire("u32")
    to_self_delay: int = wire("u16")
    max_accepted_htlcs: int = wire("u16")
    funding_pubkey: bytes = wire("point")
    revocation_basepoint: bytes = wire("point")
    payment_basepoint: bytes = wire("point")
    delayed_payment_basepoint: bytes = wire("point")
    htlc_basepoint: bytes = wire("point")
    first_per_commitment_point: bytes = wire("point")
    upfront_shutdown_script: bytes | None = tlv(0, ("rest", "shutdown_scriptpubkey"))
    channel_type: bytes | None = tlv(1, ("rest", "type"))


@message(34, "funding_created")
class FundingCreated(Message):
    temporary_channel_id: bytes = wire("32*byte")
    funding_txid: bytes = wire("sha256")  # internal byte order, as in the transaction's outpoints
    funding_output_index: int = wire("u16")
    signature: bytes = wire("signature")


@message(35, "funding_signed")
class FundingSigned(Message):
    channel_id: bytes = wire("channel_id")
    signature: bytes = wire("signature")


@message(36, "channel_ready")
class ChannelReady(Message):
    channel_id: bytes = wire("channel_id")
    second_per_commitment_point: bytes = wire("point")
    short_channel_id: int | None = tlv(1, ("short_channel_id", "alias"))  # option_scid_alias


# ---- BOLT-2: closing ----------------------------------------------------------------------------------

@message(38, "shutdown")
class Shutdown(Message):
    channel_id: bytes = wire("channel_id")
    scriptpubkey: bytes = wire("u16_bytes")


@message(39, "closing_signed")
class ClosingSigned(Message):
    channel_id: bytes = wire("channel_id")
    fee_satoshis: int = wire("u64")
    signature: bytes = wire("signature")
    fee_range: FeeRange | None = tlv(1, ("u64", "min_fee_satoshis"), ("u64", "max_fee_satoshis"), as_=FeeRange)


# ---- BOLT-2: normal operation -------------------------------------------------------------------------

@message(128, "update_add_htlc")
class UpdateAddHtlc(Message):
    channel_id: bytes = wire("channel_id")
    id: int = wire("u64")
    amount_msat: int = wire("u64")
    payment_hash: bytes = wire("sha256")
    cltv_expiry: int = wire("u32")
    onion_routing_packet: bytes = wire("1366*byte")
    blinded_path: bytes | None = tlv(0, ("point", "path_key"))  # route blinding: the path key point


@message(130, "update_fulfill_htlc")
class UpdateFulfillHtlc(Message):
    channel_id: bytes = wire("channel_id")
    id: int = wire("u64")
    payment_preimage: bytes = wire("32*byte")
    attribution_data: AttributionData | None = tlv(1, ("80*byte", "htlc_hold_times"),
                                                   ("840*byte", "truncated_hmacs"), as_=AttributionData)


@message(131, "update_fail_htlc")
class UpdateFailHtlc(Message):
    channel_id: bytes = wire("channel_id")
    id: int = wire("u64")
    reason: bytes = wire("u16_bytes")
    attribution_data: AttributionData | None = tlv(1, ("80*byte", "htlc_hold_times"),
                                                   ("840*byte", "truncated_hmacs"), as_=AttributionData)


@message(135, "update_fail_malformed_htlc")
class UpdateFailMalformedHtlc(Message):
    channel_id: bytes = wire("channel_id")
    id: int = wire("u64")
    sha256_of_onion: bytes = wire("sha256")
    failure_code: int = wire("u16")


@message(132, "commitment_signed")
class CommitmentSigned(Message):
    channel_id: bytes = wire("channel_id")
    signature: bytes = wire("signature")
    htlc_signatures: list[bytes] = wire("u16_signatures")  # in the commitment's HTLC output order
    funding_txid: bytes | None = tlv(1, ("sha256", "funding_txid"))  # splicing


@message(133, "revoke_and_ack")
class RevokeAndAck(Message):
    channel_id: bytes = wire("channel_id")
    per_commitment_secret: bytes = wire("32*byte")
    next_per_commitment_point: bytes = wire("point")


@message(134, "update_fee")
class UpdateFee(Message):
    channel_id: bytes = wire("channel_id")
    feerate_per_kw: int = wire("u32")


# ---- BOLT-2: reestablishment --------------------------------------------------------------------------

@message(136, "channel_reestablish")
class ChannelReestablish(Message):
    channel_id: bytes = wire("channel_id")
    next_commitment_number: int = wire("u64")
    next_revocation_number: int = wire("u64")
    # option_data_loss_protect (ASSUMED): all zeros when no secret was received yet
    your_last_per_commitment_secret: bytes = wire("32*byte")
    my_current_per_commitment_point: bytes = wire("point")
    next_funding: NextFunding | None = tlv(1, ("sha256", "next_funding_txid"), ("byte", "retransmit_flags"),
                                           as_=NextFunding)
    my_current_funding_locked: FundingLocked | None = tlv(5, ("sha256", "my_current_funding_locked_txid"),
                                                          ("byte", "retransmit_flags"), as_=FundingLocked)


# ---- BOLT-7: the peer's channel parameters (channeld keeps them for its private channels) ---------------

@message(258, "channel_update")
class ChannelUpdate(Message):
    signature: bytes = wire("signature")          # of the double SHA-256 of everything after it (`signed_part`)
    chain_hash: bytes = wire("chain_hash")
    short_channel_id: int = wire("short_channel_id")
    timestamp: int = wire("u32")
    message_flags: int = wire("byte")
    channel_flags: int = wire("byte")             # bit 0: direction (1: from node_id_2), bit 1: disabled
    cltv_expiry_delta: int = wire("u16")
    htlc_minimum_msat: int = wire("u64")
    fee_base_msat: int = wire("u32")
    fee_proportional_millionths: int = wire("u32")
    htlc_maximum_msat: int = wire("u64")

    def signed_part(self) -> bytes:
        """The bytes the signature covers: the message after its type and signature."""
        return self.encode()[2 + 64:]
