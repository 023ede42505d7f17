"""Stable types that plugins return from their hooks or receive from the host."""
from __future__ import annotations

import inspect
import logging
import typing
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol

# --- configuration -------------------------------------------------------------------------------

REQUIRED: Any = object()
"""Default marker for a configuration field that a profile must set."""

ConfigType = type | Any  # e.g. str, int, float, bool, list[str], dict


@dataclass(frozen=True)
class Field:
    """One key of a plugin's (or the host's) profile table.

    `type` is one of str, int, float, bool, dict, or list[X] with X one of those scalars.
    `choices` restricts a value to a fixed set. `check(value)` returns why a well-typed value is
    still unacceptable (or None), so a bad value is refused with the profile rather than at startup.
    """

    type: ConfigType
    default: Any = REQUIRED
    help: str = ""
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    @property
    def required(self) -> bool:
        """True when the profile must set this key."""
        return self.default is REQUIRED


class SettingError(Exception):
    """Raised by `lnp_startup` when a setting cannot be used here (a listen port already taken).

    Restarting cannot help, so the node logs the one-line message (no traceback), does not restart
    the service, and exits with status 2, as for a bad profile. `key` names the setting as a user
    writes it (`plugins.NAME.KEY`).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


# --- RPC -----------------------------------------------------------------------------------------

class RpcError(Exception):
    """An error a plugin's RPC handler raises on purpose; the client sees `code` and `message`."""

    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    SERVICE_UNAVAILABLE = -32000
    TIMEOUT = -32001
    REFUSED = -32002

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        """The JSON-RPC error object."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclass(frozen=True)
class Param:
    """One parameter of an RPC method."""

    name: str
    type: ConfigType
    default: Any = REQUIRED
    help: str = ""

    @property
    def required(self) -> bool:
        """True when the caller must give this parameter."""
        return self.default is REQUIRED


@dataclass(frozen=True)
class RpcMethod:
    """An RPC command a plugin adds. `handler(ctx, **params)` returns JSON-able data."""

    name: str
    handler: Callable[..., Any]
    params: tuple[Param, ...] = ()
    help: str = ""

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None,
                      help: str | None = None) -> "RpcMethod":
        """Build the method from `fn(ctx, ...)`: parameters from its signature, help from its docstring."""
        doc = help if help is not None else inspect.getdoc(fn) or ""
        return cls(name or fn.__name__, fn, params_of(fn, "RPC methods"), doc)


def params_of(fn: Callable[..., Any], what: str) -> tuple[Param, ...]:
    """The parameters of `fn(ctx, name: type = default, ...)` after the context, with their types."""
    hints = typing.get_type_hints(fn)
    params = []
    for i, p in enumerate(inspect.signature(fn).parameters.values()):
        if i == 0:
            continue  # the context
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{fn.__name__}: *args/**kwargs are not allowed in {what}")
        default = REQUIRED if p.default is p.empty else p.default
        params.append(Param(p.name, hints.get(p.name, Any), default))
    return tuple(params)


def rpc_method(fn: Callable[..., Any] | None = None, *, name: str | None = None,
               help: str | None = None) -> Any:
    """Decorator: turn `fn(ctx, param: type = default, ...)` into an `RpcMethod`."""
    if fn is None:
        return lambda f: RpcMethod.from_function(f, name, help)
    return RpcMethod.from_function(fn, name, help)


# --- bus subscriptions ---------------------------------------------------------------------------

SubscriptionKind = Literal["wire", "control", "event", "decision", "outbound"]


@dataclass(frozen=True)
class Subscription:
    """What a plugin handles, and the function that handles it.

    - wire: a peer wire message by BOLT type number; `handler(ctx, msg: WireMessage)`.
    - control: a control-bus request by name; `handler(ctx, body: dict) -> JSON-able reply`, or, made
      with `@control_method`, `handler(ctx, **body)` with `params` the host checks first.
    - event: a notification by name; `handler(ctx, event: Event)`. Made with `Subscription.events`,
      `handler(ctx, events: list[Event])`: durable events come in the windows the outbox delivers (one
      call, so one storage transaction, for many), in order; a raise means none of them was handled.
    - decision: a decision by name; `handler(ctx, body: dict) -> Continue | Fail | Resolve`, or a
      `concurrent.futures.Future` of one (None/True mean Continue, False/Decision(False, why) Fail).
      `before`/`after` name plugins this participant must be asked before/after.
    - outbound: the transport that sends wire messages to peers (peerd); `handler(ctx, msg: WireMessage)`.
    """

    kind: SubscriptionKind
    key: str | int
    handler: Callable[..., Any]
    before: tuple[str, ...] = ()    # decisions only: plugins to be asked after this one
    after: tuple[str, ...] = ()     # decisions only: plugins to be asked before this one
    params: tuple[Param, ...] | None = None  # control only: the body's keys, checked like RPC parameters
    batch: bool = False             # events only: the handler takes a list of events

    @classmethod
    def wire(cls, msg_type: int, handler: Callable[..., Any]) -> "Subscription":
        """Handle peer wire messages of BOLT type `msg_type`."""
        return cls("wire", int(msg_type), handler)

    @classmethod
    def control(cls, name: str, handler: Callable[..., Any]) -> "Subscription":
        """Answer control-bus requests called `name`."""
        return cls("control", name, handler)

    @classmethod
    def outbound(cls, handler: Callable[..., Any]) -> "Subscription":
        """Be the transport that sends every `ctx.send_wire` message to its peer (one per node)."""
        return cls("outbound", "", handler)

    @classmethod
    def event(cls, name: str, handler: Callable[..., Any]) -> "Subscription":
        """Receive every event called `name`."""
        return cls("event", name, handler)

    @classmethod
    def events(cls, name: str, handler: Callable[..., Any]) -> "Subscription":
        """Receive the events called `name` as lists, `handler(ctx, events)`: each window of durable
        events the outbox delivers in one call (each lossy event alone)."""
        return cls("event", name, handler, batch=True)

    @classmethod
    def decision(cls, name: str, handler: Callable[..., Any], before: str | tuple[str, ...] | list[str] = (),
                 after: str | tuple[str, ...] | list[str] = ()) -> "Subscription":
        """Take part in the decision called `name`, asked before the plugins named in `before` and
        after those in `after` (when they take part too); any participant may end the chain."""
        return cls("decision", name, handler, _names(before), _names(after))


def _names(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(n, str) for n in names):
        raise TypeError("before/after take plugin names")
    return names


def control_method(name: str) -> Callable[[Callable[..., Any]], Subscription]:
    """Decorator: answer control request `name` with `fn(ctx, param: type = default, ...)`.

    The host checks the request's body against the parameters, as it checks RPC parameters, before
    `fn` runs: a body with an unknown, missing or mistyped key gets RpcError(INVALID_PARAMS) naming it.
    The check and the error are the same whether the caller runs in the same service or another.
    """
    def declare(fn: Callable[..., Any]) -> Subscription:
        return Subscription("control", name, fn, params=params_of(fn, "control methods"))
    return declare


@dataclass(frozen=True)
class EventSpec:
    """A notification a plugin emits, declared so subscribers and docs know it.

    `durable`: written to the outbox and delivered at least once, in order, to every subscriber
    (each acknowledges it), even across restarts of either side; otherwise fire-and-forget (lossy).
    """

    name: str
    help: str = ""
    durable: bool = False


@dataclass(frozen=True)
class Event:
    """A notification as a subscriber receives it."""

    name: str
    source: str  # the plugin that emitted it
    body: dict[str, Any]
    seq: int | None = None  # durable events: the outbox row's number, increasing for each subscriber;
                            # delivery is at least once, so a handler may see a number again


# --- decisions -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Continue:
    """A participant's answer: go on to the next participant, with `replace` merged into the request
    (top-level keys replaced). As a decision's outcome: every participant continued, and `replace`
    holds every replacement made, so `{**body, **(replace or {})}` is the request the last one saw."""

    replace: dict[str, Any] | None = None


@dataclass(frozen=True)
class Fail:
    """A participant's answer: stop here and refuse, `reason` for logs and errors, `payload` (bytes or
    JSON-able, e.g. an onion failure) for the peer. `by` is the plugin that answered (set by the host)."""

    reason: str = "refused"
    payload: Any = None
    by: str = ""


@dataclass(frozen=True)
class Resolve:
    """A participant's answer: stop here, the participant settled it; `payload` (bytes or JSON-able,
    e.g. a preimage) is the answer. `by` is the plugin that answered (set by the host)."""

    payload: Any = None
    by: str = ""


DecisionResult = Continue | Fail | Resolve


def result_to_json(result: DecisionResult) -> dict[str, Any]:
    """The JSON form of a result on the control bus (bytes payloads as `payload_hex`)."""
    if isinstance(result, Continue):
        return {"result": "continue", "replace": result.replace}
    out: dict[str, Any] = {"result": "fail" if isinstance(result, Fail) else "resolve", "by": result.by}
    if isinstance(result, Fail):
        out["reason"] = result.reason
    if isinstance(result.payload, (bytes, bytearray)):
        out["payload_hex"] = bytes(result.payload).hex()
    else:
        out["payload"] = result.payload
    return out


def result_from_json(data: Any) -> DecisionResult:
    """Inverse of `result_to_json`; ValueError for anything else."""
    if not isinstance(data, dict) or data.get("result") not in ("continue", "fail", "resolve"):
        raise ValueError("expected {result: continue|fail|resolve, ...}")
    if data["result"] == "continue":
        replace = data.get("replace")
        if replace is not None and not isinstance(replace, dict):
            raise ValueError("replace must be an object")
        return Continue(replace)
    payload = data.get("payload")
    if data.get("payload_hex") is not None:
        payload = bytes.fromhex(str(data["payload_hex"]))
    by = str(data.get("by") or "")
    if data["result"] == "fail":
        return Fail(str(data.get("reason", "refused")), payload, by)
    return Resolve(payload, by)


def as_result(value: Any, plugin: str) -> DecisionResult:
    """A participant's answer as a result, `by` set to `plugin`: None/True continue, False fails, a
    Decision stands for Continue or Fail. TypeError for anything else."""
    if value is None or value is True:
        return Continue()
    if value is False:
        return Fail("refused", by=plugin)
    if isinstance(value, Continue):
        if value.replace is not None and not isinstance(value.replace, dict):
            raise TypeError(f"decision handler of {plugin!r} replaced with {type(value.replace).__name__}, "
                            "expected a dict")
        return value
    if isinstance(value, Fail):
        return Fail(str(value.reason), value.payload, plugin)
    if isinstance(value, Resolve):
        return Resolve(value.payload, plugin)
    if isinstance(value, Decision):
        return Continue() if value.allowed else Fail(value.reason or "refused", by=plugin)
    raise TypeError(f"decision handler of {plugin!r} returned {type(value).__name__}")


@dataclass(frozen=True)
class DecisionSpec:
    """A decision point a plugin asks, declared so other plugins can take part in it.

    Each participant has `timeout` seconds to answer; one that does not (or that fails) gets
    `default` (Continue() or a Fail). A profile may override both in `[decisions.NAME]`.
    """

    name: str
    help: str = ""
    timeout: float = 30.0
    default: Continue | Fail = Fail("timeout")

    def __post_init__(self) -> None:
        if not isinstance(self.timeout, (int, float)) or isinstance(self.timeout, bool) or self.timeout <= 0:
            raise ValueError(f"decision {self.name!r}: timeout must be a positive number of seconds")
        if not isinstance(self.default, (Continue, Fail)):
            raise ValueError(f"decision {self.name!r}: default must be Continue() or a Fail")


@dataclass(frozen=True)
class Decision:
    """A decision's outcome as a yes/no (`ctx.decide`): `allowed` when every participant continued;
    otherwise who ended it and why. `result` is the full result (Continue, Fail or Resolve)."""

    allowed: bool
    reason: str = ""
    by: str = ""
    result: Any = field(default=None, compare=False, repr=False)

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def of(cls, result: DecisionResult) -> "Decision":
        """The yes/no form of a result: Continue allows; Fail refuses; Resolve, which a yes/no asker
        cannot act on, refuses too (fail safe)."""
        if isinstance(result, Continue):
            return cls(True, result=result)
        if isinstance(result, Fail):
            return cls(False, result.reason, result.by, result)
        return cls(False, "resolved by the participant", result.by, result)


@dataclass(frozen=True)
class WireMessage:
    """A peer wire message on the message bus: the peer's node id, the BOLT type and the payload.
    `committed_at` (time.time()) is set on a message sent through the outbox: one committed before the
    peer's current connection began was meant for an earlier one, and the transport drops it. A plugin
    that decides a message before its transaction commits may set it to when it decided it."""

    peer_id: bytes
    type: int
    payload: bytes
    committed_at: float = 0.0


# --- storage -------------------------------------------------------------------------------------

Migration = Callable[[Any], None]  # receives a SQLAlchemy Connection inside a transaction


@dataclass(frozen=True)
class StorageModels:
    """Tables a plugin owns, at schema `version`.

    A new database gets `metadata.create_all`. A database at an older version runs
    `migrations[v]` for each v from its version + 1 up to `version`, in one transaction.
    """

    metadata: Any  # sqlalchemy.MetaData
    version: int = 1
    migrations: Mapping[int, Migration] = field(default_factory=dict)


# --- resources handed to plugins -----------------------------------------------------------------

class KeyCustody(Protocol):
    """Access to the node key without handing it out. signd will serve this over the bus."""

    def node_id(self) -> bytes:
        """The node's 33-byte compressed public key."""

    def ecdh(self, pubkey: bytes) -> bytes:
        """SHA256 of the compressed shared point of the node key and `pubkey` (BOLT-8's ECDH)."""


@dataclass(frozen=True)
class RemoteCustody:
    """Returned by `lnp_key_custody` when the node key is served by a service over the control bus
    (it answers `host.keys.node_id` and `host.keys.ecdh`; signatures are the custodian's own typed
    operations, e.g. signd's `signd.sign_node_message`)."""

    service: str
    node_id: bytes


class Storage(Protocol):
    """The node's database."""

    engine: Any  # sqlalchemy.Engine

    def begin(self) -> Any:
        """A connection in a transaction: `with ctx.storage.begin() as conn: ...`."""


@dataclass(frozen=True)
class NodeInfo:
    """Facts about the node every plugin may read."""

    node_id: bytes
    alias: str
    network: str
    data_dir: Path
    version: str
    features: tuple[Any, ...] = ()  # FeatureSpec of every enabled plugin


T = typing.TypeVar("T")


class PerContext(typing.Generic[T]):
    """The object a plugin runs with, kept per context: several nodes may share one process (tests),
    so module-level state would mix them. Set it in `lnp_startup`, pop it in `lnp_shutdown`, and
    `get(ctx)` it in handlers (an RpcError if the plugin is not running)."""

    def __init__(self, what: str) -> None:
        self._items: "weakref.WeakKeyDictionary[Any, T]" = weakref.WeakKeyDictionary()
        self._what = what

    def set(self, ctx: Any, value: T) -> None:
        """Keep `value` for `ctx`."""
        self._items[ctx] = value

    def pop(self, ctx: Any) -> T | None:
        """Forget and return the value of `ctx`, if any."""
        return self._items.pop(ctx, None)

    def find(self, ctx: Any) -> T | None:
        """The value of `ctx`, or None."""
        return self._items.get(ctx)

    def get(self, ctx: Any) -> T:
        """The value of `ctx`; SERVICE_UNAVAILABLE when the plugin is not running."""
        value = self._items.get(ctx)
        if value is None:
            raise RpcError(RpcError.SERVICE_UNAVAILABLE, f"{self._what} is not running")
        return value


class ServiceContext(Protocol):
    """What a plugin receives in every hook and handler (one context per plugin)."""

    plugin: str                 # the plugin's name
    service: str                # the service it runs in
    config: dict[str, Any]      # its validated profile table
    node: NodeInfo
    log: logging.Logger
    storage: Storage
    keys: KeyCustody
    data_dir: Path              # a directory of the plugin's own, inside the node's data dir
    host: Any                   # the host's control (services, plugins, stop); only in lnpd

    def request(self, name: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Send control request `name` to the plugin that answers it, wherever it runs, and wait for
        its reply. Errors are RpcError, the same for a plugin in this service as in another."""

    def plugins_in(self, service: str) -> list[str]:
        """The enabled plugins running in `service` (e.g. to grant a service what its plugins need)."""

    def emit(self, event: str, body: dict[str, Any] | None = None) -> None:
        """Send a notification to every subscriber of `event`."""

    def transaction(self) -> Any:
        """`with ctx.transaction() as tx:` one storage transaction holding the plugin's writes
        (`tx.conn`) and what follows from them: `tx.emit`, `tx.request` (one-way) and `tx.send_wire`
        are delivered by the host only after the commit, in order, at least once."""

    def decide(self, decision: str, body: dict[str, Any] | None = None,
               timeout: float | None = None) -> Decision:
        """Ask `decision` and wait for its outcome as a yes/no. Blocks: not for event loops."""

    def decide_async(self, decision: str, body: dict[str, Any] | None = None,
                     on_done: Callable[[DecisionResult], None] | None = None) -> "Future[DecisionResult]":
        """Ask `decision` without blocking: participants in order, each may continue (with
        replacements), fail or resolve. `on_done(result)` runs on this service's thread."""

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on this plugin's service thread (from any thread), after what it is doing."""

    def send_wire(self, msg: WireMessage) -> None:
        """Send a wire message to a peer, through the transport plugin (peerd), over the message bus."""

    def deliver_wire(self, msg: WireMessage, timeout: float = 5.0) -> bool:
        """Hand a message received from a peer to the plugin that handles its type; False if none does.
        Waits up to `timeout` seconds for a handler's service to take it (0: never waits), else raises
        RpcError (SERVICE_UNAVAILABLE)."""

    def connect_wire_handlers(self) -> None:
        """Connect the calling thread to the services that handle wire messages now, so its first
        `deliver_wire(msg, timeout=0)` does not find a connection still being made (peerd's loop)."""

    def wire_service(self, msg_type: int) -> str | None:
        """The service whose plugin handles wire messages of `msg_type`, or None."""

    def set_health(self, problem: str | None) -> None:
        """Report a problem the plugin has (for example its backend not answering), or None once it is
        gone; `lnp-cli info` shows it under the plugin's service. Cheap to call often: only changes
        are passed on."""

    def fail(self, reason: str) -> None:
        """Declare this service broken (for example a vital background thread died): it stops and the
        profile's failure policy (restart or stop the node) applies."""

