"""TOML node profiles: loading, `extends`, and validation against the host's and plugins' schemas."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from lnp_plugin_api import Field

from .schema import type_matches, type_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NETWORKS = ("mainnet", "testnet", "signet", "regtest")
LOG_LEVELS = ("debug", "info", "warning", "error")
HOST_SERVICE = "lnpd"
MAX_DEPTH = 32  # tables and arrays nested deeper than this are refused (no profile needs more)
SET_ORIGIN = "--set"  # the origin of a key set on the command line, in place of a file
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_VARIABLE = re.compile(r"(\$?)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # $${ is a literal ${


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than zero"


def _at_least(low: int) -> Any:
    return lambda value: None if value >= low else f"must be at least {low}"


def _endpoint(*schemes: str) -> Any:
    """A check that a value is empty or an endpoint with one of `schemes` (e.g. tcp://HOST:PORT)."""
    def check(value: str) -> str | None:
        if not value or any(value.startswith(f"{s}://") and len(value) > len(s) + 3 for s in schemes):
            return None
        return f"expected {' or '.join(f'{s}://...' for s in schemes)}"
    return check


def _storage_url(url: str) -> str | None:
    """Why SQLAlchemy cannot use `url` (no such dialect, driver not installed), or None.

    The URL itself is never repeated: it may hold a password.
    """
    if not url:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "not a database URL (expected e.g. postgresql://USER@HOST/DB or sqlite:///PATH)"
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        return f"unknown database kind {parsed.drivername!r} (expected sqlite or postgresql)"
    except ImportError as e:
        return f"the driver for {parsed.drivername!r} is not installed ({e.name or e})"
    return None


HOST_SCHEMA: dict[str, dict[str, Field]] = {
    "node": {
        "network": Field(str, "regtest", "the Bitcoin network", NETWORKS),
        "data_dir": Field(str, "~/.lnp-host", "where the node keeps its key, database and logs",
                          check=lambda v: None if v.strip() else "must not be empty"),
        "alias": Field(str, "lnp-host", "the node's alias"),
        "log_level": Field(str, "info", "log level of every service unless set per service", LOG_LEVELS),
    },
    "storage": {
        "url": Field(str, "", "SQLAlchemy URL; empty means a SQLite file in the data dir", check=_storage_url),
        "sqlite_synchronous": Field(str, "full", "SQLite's synchronous setting (WAL): full makes each commit "
                                    "reach the disk before the node goes on (survives a power loss), normal only "
                                    "survives a crash of the node (faster; not for channels)", ("normal", "full")),
    },
    "bus": {
        "mode": Field(str, "threads", "threads: one process; processes: one process per service",
                      ("threads", "processes")),
        "one_cpu": Field(bool, True, "threads mode: run the services' threads on one CPU (they take turns "
                         "anyway, and a request then wakes its service without a cross-CPU wake-up)"),
        "heartbeat_interval": Field(float, 1.0, "seconds between liveness checks of each service",
                                    check=_positive),
        "heartbeat_misses": Field(int, 3, "missed heartbeats before a service counts as dead",
                                  check=_at_least(1)),
        "endpoints": Field(dict, {}, "per service: {control = ENDPOINT, message = ENDPOINT}; tcp:// ones are "
                          "always CURVE-encrypted with the node's service keys (DATA_DIR/bus)"),
    },
    "rpc": {
        # ipc only: a tcp:// endpoint here would be plaintext full admin; TCP goes through `tcp` (CURVE)
        "endpoint": Field(str, "", "the local RPC endpoint (ipc:// only; use `tcp` for TCP, CURVE-encrypted); "
                          "empty means ipc://DATA_DIR/rpc.sock", check=_endpoint("ipc")),
        "tcp": Field(str, "", "an optional tcp:// endpoint, always CURVE-encrypted", check=_endpoint("tcp")),
        "timeout": Field(float, 60.0, "seconds before an RPC call that got no answer fails", check=_positive),
    },
}

SERVICE_SCHEMA: dict[str, Field] = {
    "log_level": Field(str, "", "this service's log level", LOG_LEVELS + ("",)),
    "on_failure": Field(str, "restart", "what to do when the service dies", ("restart", "stop")),
    "max_restarts": Field(int, 5, "restarts allowed within restart_window before the node stops",
                          check=_at_least(0)),
    "restart_window": Field(float, 600.0, "seconds over which restarts are counted against max_restarts",
                            check=_positive),
    "launch": Field(str, "auto", "auto: the node starts it; external: the operator starts it with "
                    "`lnp-host run --service NAME`", ("auto", "external")),
}

DECISION_SCHEMA: dict[str, Field] = {
    "timeout": Field(float, 0.0, "seconds each participant has to answer (default: the decision's own)",
                     check=lambda v: None if v > 0 else "expected a number of seconds above 0"),
    "on_timeout": Field(str, "", "the result for a participant that does not answer (default: the "
                        "decision's own)", ("", "continue", "fail")),
}

SERVICE_KEY = "service"  # in every `[plugins.NAME]`: run the plugin in another service than its default
SERVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

TOP_LEVEL_KEYS = {"extends", "node", "storage", "bus", "rpc", "services", "plugins", "decisions"}


class ProfileError(Exception):
    """A profile that cannot be used. `str()` is the one-line message naming the file and the key."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file, self.key = str(file), key
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


@dataclass
class Profile:
    """A loaded, merged profile. `validate_host` and `validate_plugins` fill in defaults."""

    path: Path
    data: dict[str, Any]
    origins: dict[tuple[str, ...], Path | str] = field(default_factory=dict)  # a file, or SET_ORIGIN

    def origin(self, *path: str) -> Path | str:
        """The file that set `path` (the deepest match), or SET_ORIGIN for `--set`, for error messages."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.origins:
                return self.origins[path[:n]]
        return self.path

    def error(self, path: tuple[str, ...], message: str) -> ProfileError:
        """A ProfileError for the key at `path`, named as the user wrote it (in a file, or `--set`)."""
        origin = self.origin(*path)
        if origin == SET_ORIGIN:
            return ProfileError(SET_ORIGIN, ".".join(path), message)
        return ProfileError(origin, _key_name(path), message)

    def override(self, item: str) -> None:
        """Apply one `--set KEY=VALUE` (VALUE a TOML value, else a string) before validation."""
        key, sep, text = item.partition("=")
        path = tuple(key.strip().split("."))
        if not sep or not all(_BARE_KEY.fullmatch(part) for part in path):
            raise ProfileError(SET_ORIGIN, item, "expected KEY=VALUE, e.g. "
                               "plugins.peerd.listen='[\"127.0.0.1:9000\"]'")
        value = _toml_value(text, ".".join(path))
        table = self.data
        for n, part in enumerate(path[:-1], 1):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ProfileError(SET_ORIGIN, ".".join(path), f"{'.'.join(path[:n])} is not a table")
        table[path[-1]] = value
        for sub in [p for p in self.origins if p[:len(path)] == path]:
            del self.origins[sub]  # replaced: errors below this key now come from --set
        self.origins[path] = SET_ORIGIN

    def section(self, name: str) -> dict[str, Any]:
        """A validated host table (`node`, `storage`, `bus`, `rpc`)."""
        return self.data[name]

    @property
    def enabled(self) -> list[str]:
        """The names of the enabled plugins, in profile order."""
        return list(self.data.get("plugins", {}).get("enabled", []))

    def plugin_table(self, name: str) -> dict[str, Any]:
        """The (validated once `validate_plugins` ran) table of plugin `name`."""
        return self.data.get("plugins", {}).get(name, {})

    def service_override(self, name: str) -> str | None:
        """The service `[plugins.NAME] service = "..."` puts plugin `name` in, instead of its `lnp_service`."""
        table = self.data.get("plugins", {}).get(name)
        value = table.get(SERVICE_KEY) if isinstance(table, dict) else None
        if value is not None and not (isinstance(value, str) and SERVICE_NAME.fullmatch(value)):
            raise self.error(("plugins", name, SERVICE_KEY), "expected a service name (letters, digits, _ and -)")
        return value

    def service_settings(self, name: str) -> dict[str, Any]:
        """A service's settings with defaults filled in."""
        table = self.data.get("services", {}).get(name, {})
        return {k: table.get(k, f.default) for k, f in SERVICE_SCHEMA.items()}

    @property
    def data_dir(self) -> Path:
        """The data dir, with `~` expanded, made absolute."""
        return Path(self.data["node"]["data_dir"]).expanduser().absolute()

    def validate_host(self) -> None:
        """Check the host's tables, fill their defaults; plugins are checked by `validate_plugins`."""
        for key in self.data:
            if key not in TOP_LEVEL_KEYS:
                raise self.error((key,), f"unknown key (expected one of {', '.join(sorted(TOP_LEVEL_KEYS))})")
        for section, schema in HOST_SCHEMA.items():
            table = self.data.get(section, {})
            if not isinstance(table, dict):
                raise self.error((section,), "must be a table")
            self.data[section] = validate_table(schema, table, (section,), self)
        plugins = self.data.setdefault("plugins", {})
        if not isinstance(plugins, dict):
            raise self.error(("plugins",), "must be a table")
        enabled = plugins.setdefault("enabled", [])
        if not _is_list_of(enabled, str):
            raise self.error(("plugins", "enabled"), "expected a list of plugin names")
        if len(set(enabled)) != len(enabled):
            raise self.error(("plugins", "enabled"), "lists a plugin twice")

    def validate_plugins(self, schemas: Mapping[str, dict[str, Field]], known: set[str],
                         services: set[str]) -> None:
        """Check `[plugins]` against the discovered plugins and their schemas, and `[services]`."""
        plugins = self.data["plugins"]
        for name in self.enabled:
            if name not in known:
                raise self.error(("plugins", "enabled"),
                                 f"unknown plugin {name!r} (discovered: {', '.join(sorted(known)) or 'none'})")
        for name, table in list(plugins.items()):
            if name == "enabled":
                continue
            if name not in known:
                raise self.error(("plugins", name), "unknown plugin")
            if not isinstance(table, dict):
                raise self.error(("plugins", name), "must be a table")
        for name in self.enabled:
            table = {k: v for k, v in plugins.get(name, {}).items() if k != SERVICE_KEY}  # the host's key
            plugins[name] = validate_table(schemas.get(name, {}), table, ("plugins", name), self)
        table = self.data.get("services", {})
        if not isinstance(table, dict):
            raise self.error(("services",), "must be a table")
        for name, settings in table.items():
            if name not in services:
                raise self.error(("services", name),
                                 f"unknown service (running: {', '.join(sorted(services))})")
            if not isinstance(settings, dict):
                raise self.error(("services", name), "must be a table")
            table[name] = validate_table(SERVICE_SCHEMA, settings, ("services", name), self)
        for name, endpoints in self.data["bus"]["endpoints"].items():
            if name not in services:
                raise self.error(("bus", "endpoints", name), "unknown service")
            if not isinstance(endpoints, dict) or set(endpoints) - {"control", "message"} or not all(
                    isinstance(v, str) and "://" in v for v in endpoints.values()):
                raise self.error(("bus", "endpoints", name),
                                 'expected {control = "tcp://HOST:PORT", message = "tcp://HOST:PORT"}')

    def validate_requirements(self, requires: Mapping[str, list[str]], provided: set[str],
                              known: set[str]) -> None:
        """Refuse the profile when an enabled plugin needs a control request no enabled plugin answers
        (`lnp_requires`); the hint names installed plugins called like the missing requests' prefix."""
        for plugin, names in requires.items():
            missing = [n for n in names if n not in provided]
            if missing:
                hint = sorted({n.split(".")[0] for n in missing} & known - set(self.enabled))
                raise self.error(("plugins", "enabled"), f"plugin {plugin!r} needs "
                                 f"{', '.join(map(repr, missing))}, which no enabled plugin answers"
                                 + (f" (enable {' and '.join(hint)}?)" if hint else ""))

    def validate_decisions(self, declared: set[str]) -> None:
        """Check `[decisions.NAME]` tables against the decisions the enabled plugins declare."""
        table = self.data.get("decisions", {})
        if not isinstance(table, dict):
            raise self.error(("decisions",), "must be a table")
        for name, settings in table.items():
            if name not in declared:
                raise self.error(("decisions", name), "no enabled plugin declares this decision "
                                 f"(declared: {', '.join(sorted(declared)) or 'none'})")
            if not isinstance(settings, dict):
                raise self.error(("decisions", name), "must be a table")
            table[name] = validate_table(DECISION_SCHEMA, settings, ("decisions", name), self)

    def decision_settings(self, name: str) -> dict[str, Any]:
        """The profile's `[decisions.NAME]` (validated), or {} when it has none."""
        return self.data.get("decisions", {}).get(name, {})


def validate_table(schema: Mapping[str, Field], table: Mapping[str, Any], path: tuple[str, ...],
                   profile: Profile) -> dict[str, Any]:
    """Check `table` against `schema` and return it with defaults filled in."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise profile.error(path + (key,), f"unknown key (known keys: {known})")
        f = schema[key]
        if not type_matches(value, f.type):
            raise profile.error(path + (key,), f"expected {type_name(f.type)}, got {type(value).__name__}")
        if f.choices is not None and value not in f.choices:
            raise profile.error(path + (key,), f"expected one of {', '.join(map(repr, f.choices))}, got {value!r}")
        problem = f.check(value) if f.check is not None else None
        if problem:
            raise profile.error(path + (key,), problem)
        out[key] = float(value) if f.type is float else value
    for key, f in schema.items():
        if key not in out:
            if f.required:
                raise profile.error(path + (key,), "missing required value")
            out[key] = _copy(f.default)
    return out


def load_profile(path: str | Path | None = None, data_dir: str | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> Profile:
    """Read a profile (or the embedded default), follow `extends`, apply `--set` overrides and the
    data dir, check the host's tables."""
    if path is None:
        ref = resources.files("lnp_configs") / "default.toml"
        with resources.as_file(ref) as real:
            profile = _load(Path(real), [])
    else:
        profile = _load(Path(path), [])
    for item in overrides:
        profile.override(item)
    if data_dir is not None:
        profile.data.setdefault("node", {})["data_dir"] = data_dir
    profile.validate_host()
    return profile


def _load(path: Path, seen: list[Path]) -> Profile:
    path = path.absolute()
    if path in seen:
        raise ProfileError(seen[-1], "extends", f"circular: {path} extends itself")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ProfileError(path, "", "no such file") from None
    except OSError as e:
        raise ProfileError(path, "", f"cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ProfileError(path, "", f"not UTF-8 text (a bad byte on line {line})") from None
    data = _parse(text, path)
    _expand_all(data, path, ())
    origins: dict[tuple[str, ...], Path | str] = {p: path for p in _paths(data)}
    base_name = data.pop("extends", None)
    if base_name is None:
        return Profile(path, data, origins)
    if not isinstance(base_name, str):
        raise ProfileError(path, "extends", "expected a file name")
    base = _load(path.parent / base_name, seen + [path])
    base.origins.update(origins)
    return Profile(path, _merge(base.data, data), base.origins)


def _parse(text: str, path: Path) -> dict[str, Any]:
    """TOML text as a dict, refused when not valid or nested deeper than MAX_DEPTH."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(path, "", f"not valid TOML: {e}") from None
    except RecursionError:  # the parser recurses once per nested array or inline table
        raise ProfileError(path, "", f"nested more than {MAX_DEPTH} levels deep") from None
    deep = _too_deep(data)
    if deep is not None:
        raise ProfileError(path, ".".join(deep[:3]) + "...", f"nested more than {MAX_DEPTH} levels deep")
    return data


def _toml_value(text: str, key: str) -> Any:
    """A `--set` value: a TOML value (`5`, `true`, `["a"]`, `{a = 1}`), else the text as a string."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ProfileError(SET_ORIGIN, key, f"nested more than {MAX_DEPTH} levels deep") from None
    if set(parsed) != {"v"}:
        return text  # more than one value (a newline in the text): it was meant as a string
    if _too_deep(parsed["v"]) is not None:
        raise ProfileError(SET_ORIGIN, key, f"nested more than {MAX_DEPTH} levels deep")
    return parsed["v"]


def _too_deep(data: Any) -> tuple[str, ...] | None:
    """The first key path under which tables or arrays nest deeper than MAX_DEPTH, or None."""
    stack: list[tuple[Any, tuple[str, ...], int]] = [(data, (), 0)]
    while stack:  # iterative: a recursive walk would fail on exactly the input it must refuse
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return path
        if isinstance(value, dict):
            stack.extend((v, path + (str(k),), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path, depth + 1) for v in value)
    return None



def _expand_all(data: dict[str, Any] | list[Any], path: Path, key: tuple[str, ...]) -> None:
    """Expand `${NAME}` / `${NAME:-DEFAULT}` in every string value of a file, in place."""
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for k, value in list(items):
        here = key + (k,) if isinstance(data, dict) else key
        if isinstance(value, str):
            data[k] = _expand(value, path, here)  # type: ignore[index]
        elif isinstance(value, (dict, list)):
            _expand_all(value, path, here)


def _expand(text: str, path: Path, key: tuple[str, ...]) -> str:
    """Environment variables in one string: `${NAME}`, `${NAME:-DEFAULT}` (also when NAME is empty);
    `$${` stands for a literal `${`."""
    def value(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(0)[1:]
        name, default = m.group(2), m.group(3)
        found = os.environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                raise ProfileError(path, _key_name(key), f"environment variable {name} is not set "
                                   f"(write ${{{name}:-DEFAULT}} to give a default)")
            return default
        return found
    return _VARIABLE.sub(value, text)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in data.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out.extend(_paths(value, prefix + (key,)))
    return out


def _key_name(path: tuple[str, ...]) -> str:
    if len(path) == 1:
        return path[0]
    return f"[{'.'.join(path[:-1])}] {path[-1]}"


def _is_list_of(value: Any, item: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, item) for v in value)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
