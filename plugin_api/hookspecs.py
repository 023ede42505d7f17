"""Every hook a plugin may implement. The host calls these and nothing else.

Declarative hooks (schema, service, RPC methods, subscriptions, events, decisions, storage, channel
extensions) are called once per plugin when the host assembles the node, in every process, and must
be cheap and free of side effects. Lifecycle hooks run in the plugin's own service.

See docs/plugins.md for a worked example of each.
"""
from __future__ import annotations

from typing import Any

import pluggy

from .types import (DecisionSpec, EventSpec, Field, KeyCustody, RemoteCustody, RpcMethod, ServiceContext,
                    StorageModels, Subscription)
from .channel import ChannelExtension
from .features import FeatureSpec

hookspec = pluggy.HookspecMarker("lnp_host")


@hookspec
def lnp_config_schema() -> dict[str, Field]:
    """The keys of this plugin's table in a profile (`[plugins.NAME]`), with types and defaults.

    The host rejects a profile that sets an unknown key, a wrong type, or misses a required key.
    The validated table reaches the plugin as `ctx.config`.
    """


@hookspec
def lnp_service() -> str:
    """The service this plugin runs in. Default: a service named after the plugin.

    Several plugins may share a service (Bifrost extensions run inside channeld); a service is
    one thread (threads mode) or one process (processes mode).
    """


@hookspec
def lnp_startup(ctx: ServiceContext) -> None:
    """Start: open resources, start background threads. Runs in the plugin's service.

    Raising here fails the service; the profile's failure policy decides what happens next. A
    setting that cannot be used (a port taken) raises `SettingError`: no restart, the node exits with 2.
    """


@hookspec
def lnp_shutdown(ctx: ServiceContext) -> None:
    """Stop: release what `lnp_startup` took. Called in reverse start order on SIGINT/SIGTERM."""


@hookspec
def lnp_requires() -> list[str]:
    """Control requests this plugin sends and cannot work without, by name (`"signd.sign_wallet_psbt"`,
    `"chain.info"`), whoever provides them.

    A profile that enables the plugin but no plugin answering one of them is refused, naming the
    plugin and the request, before anything starts. Name requests, not plugins, so any plugin that
    answers them (another signer, another chain backend) satisfies the need.
    """


@hookspec
def lnp_rpc_methods() -> list[RpcMethod]:
    """RPC commands this plugin adds to `lnp-cli` and the client library.

    Return `RpcMethod`s, usually made with the `@rpc_method` decorator. The host validates the
    parameters' types before the handler runs.
    """


@hookspec
def lnp_subscriptions() -> list[Subscription]:
    """What this plugin handles: peer wire messages by type, control requests by name, events by
    name, and decisions by name (in an order set with `before`/`after`). See `Subscription`.
    """


@hookspec
def lnp_events() -> list[EventSpec]:
    """Notifications this plugin emits with `ctx.emit`. Emitting an undeclared event is an error."""


@hookspec
def lnp_decisions() -> list[DecisionSpec]:
    """Decision points this plugin asks with `ctx.decide_async` or `ctx.decide` (e.g. `accept_channel`).

    Other plugins take part with `Subscription.decision`, asked one after another in their declared
    order; each answers `Continue` (possibly replacing parts of the request), `Fail` or `Resolve`, at
    once or later with a Future, and the first answer that is not `Continue` ends the chain. Each
    `DecisionSpec` sets how long a participant may take and the result for one that does not answer;
    a profile may change both in `[decisions.NAME]`.
    """


@hookspec
def lnp_features() -> list[FeatureSpec]:
    """BOLT-9 features this plugin implements (optional, or required by setting `required`).

    The node advertises exactly the union of what the enabled plugins declare, in `init`,
    `node_announcement` and invoices according to each feature's contexts.
    """


@hookspec
def lnp_storage_models() -> StorageModels:
    """Tables this plugin owns (SQLAlchemy metadata) with their schema version and migrations."""


@hookspec
def lnp_channel_extensions() -> list[ChannelExtension]:
    """Bifrost: channel extensions this plugin provides (outputs, update kinds, TLVs; `channel.ChannelExtension`,
    docs/channels.md). Names are unique across plugins; channeld uses one for a channel when both peers set
    its feature bits and its `negotiate` agrees."""


@hookspec(firstresult=True)
def lnp_key_custody(node: Any) -> KeyCustody | RemoteCustody | None:
    """Provide custody of the node key instead of the host's key file (signd does).

    `node` is the profile of the node being assembled (`section`, `plugin_table`, `data_dir`).
    Return a KeyCustody used in the lnpd process, or a RemoteCustody naming the service that serves
    the key over the control bus to every process; None leaves custody to the next plugin or the host.
    """


@hookspec
def lnp_init(node: Any) -> dict[str, Any] | None:
    """`lnp-host init`: create this plugin's persistent state (signd creates the seed).

    `node` is the profile. Return what to show the user; a key named `mnemonic` is shown only
    with `--show-mnemonic`. Raise to refuse (for example when the state exists already).
    """
