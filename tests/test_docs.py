"""The docs' examples run: every fenced block of README.md, docs/*.md and the example package's README.

- ```python blocks with `@hookimpl` are plugins: installed by pip as a package of entry points, enabled
  in a real node, their commands called, their events, decisions, wire types and control requests made
  to happen; the node must log no error. Other ```python blocks run as scripts against that node.
- ```toml blocks are profiles (checked with `lnp-host check`) or entry-point tables (they must name
  a documented module, which the plugin test installs under exactly those names).
- Every `lnp-cli NAME ...` the docs show names a command of a real node's `help`, with parameters it
  takes (read by lnp-cli's own parser); those without placeholders are run. Every `lnp-host SUB ...`
  uses options `lnp-host SUB` has.
A block that cannot run as is carries `<!-- not-tested: why -->` on the line before; any other block
makes test_every_block_is_run_or_marked fail.
"""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tomllib
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any

import pytest

from conftest import EXAMPLE, ROOT, env_with, lnp_host, wait_for
from peer_tools import RawPeer, free_port
from lnp_host import cli, cli_client
from lnp_host.plugins import HOST_EVENTS, discover
from lnp_plugin_api import ENTRY_POINT_GROUP, PROJECT, RpcError, RpcMethod, Subscription, features, hookspecs

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), EXAMPLE / "README.md"]
NOT_TESTED = re.compile(r"<!--\s*not-tested:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")
SHELL = {"sh", "shell", "bash", "console"}
ENTRY_TABLE = f'[project.entry-points."{ENTRY_POINT_GROUP}"]'
HOOKS = {n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), f"{PROJECT}_spec")}
CLI_GLOBAL = {"--data-dir", "--rpc", "--keys", "--timeout"}  # lnp-cli's own options, each with a value
PLACEHOLDER = re.compile(r"[A-Z\[\]|]|\.\.\.")               # NODE_ID, [--known], SATS|all: not runnable

# How the test makes happen what a documented plugin listens to (besides calling its own commands).
PEER_EVENTS = {"peer_connected", "peer_disconnected", "custommsg"}   # a raw BOLT-8 peer comes and goes
AT_START = {"node_ready"}
CONTROL_BODIES = {"quote.fee": {"amount_sat": 250_000}}               # control requests, by name
# a control request that causes each decision; NODE_ID is replaced by the node's id
DECISION_CAUSES = {"sign_request": ("signd.sign_node_message", {
    "kind": "node_announcement", "message": "0101" + "00" * 64 + "0000" + "00000000" + "NODE_ID" + "00" * 37})}
UNHANDLED_CUSTOM = 32801  # an odd custom type no example handles: becomes `custommsg`


@dataclass(frozen=True)
class Block:
    """A fenced code block of a doc, with the reason it is not run when it is marked."""

    doc: Path
    line: int
    lang: str
    text: str
    skip: str | None

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if self.skip:
            return "marked"
        if self.lang == "python":
            return "plugin" if "@hookimpl" in self.text else "script"
        if self.lang == "toml":
            return "entry_points" if ENTRY_TABLE in self.text else "profile"
        if self.lang in SHELL:
            return "shell"
        return "unknown"


def fenced_blocks(doc: Path) -> list[Block]:
    """The doc's fenced blocks, each with the `not-tested` reason on the line before it, if any."""
    lines = doc.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{doc.relative_to(ROOT)}:{i + 1}: unclosed code block"
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        marker = NOT_TESTED.fullmatch(before)
        out.append(Block(doc, i + 1, m.group(1), "\n".join(lines[i + 1:end]) + "\n",
                         marker.group(1) if marker else None))
        i = end + 1
    return out


@dataclass(frozen=True)
class Mention:
    """A command line a doc shows, and the section (heading) it is in."""

    doc: Path
    line: int
    section: int
    words: list[str]

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def sections(doc: Path) -> list[int]:
    """The section number of each line (0 before the first heading; code blocks have no headings)."""
    out, section, fenced = [], 0, False
    for line in doc.read_text().splitlines():
        fenced ^= bool(FENCE.match(line))
        section += not fenced and line.startswith("#")
        out.append(section)
    return out


def command_mentions(doc: Path, program: str) -> list[Mention]:
    """Every `PROGRAM ARGS` the doc shows (indented code, shell blocks, inline code), comments removed."""
    found: list[Mention] = []
    fence: str | None = None
    section = sections(doc)
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if m:
            fence = None if fence is not None else m.group(1)
            continue
        if fence is not None:
            texts = [line] if fence in SHELL else []
        elif line.startswith("    "):
            texts = [line]
        else:
            texts = re.findall(r"`([^`]+)`", line)
        for text in texts:
            for part in re.split(r"\s&&\s|;\s", re.split(r"\s#", text)[0]):
                words = part.split()
                if words[:1] == [program] and len(words) > 1:
                    found.append(Mention(doc, n, section[n - 1], words[1:]))
    return found


ALL = [b for doc in DOCS for b in fenced_blocks(doc)]


def of_kind(kind: str) -> list[Block]:
    return [b for b in ALL if b.kind == kind]


def test_every_block_is_run_or_marked() -> None:
    counts = Counter(b.kind for b in ALL)
    print("docs code blocks:", dict(counts))
    assert not of_kind("unknown"), "blocks neither run by this test nor marked <!-- not-tested: why -->: " + \
        ", ".join(f"{b} ({b.lang or 'no language'})" for b in of_kind("unknown"))
    for b in of_kind("shell"):  # shell blocks are checked line by line by the command tests
        lines = [x for x in b.text.splitlines() if x.strip() and not x.lstrip().startswith("#")]
        assert all(x.split()[0] in ("lnp-cli", "lnp-host") for x in lines), f"{b}: only lnp-cli/lnp-host lines are checked"
    assert counts["plugin"] >= 10 and counts["marked"] <= 3, "most examples must run"


def test_docs_use_the_installed_import_names() -> None:
    """Plugin authors import lnp_plugin_api and lnp_plugins.*; the repo folders are not packages."""
    wrong = re.compile(r"(?<![\w/.\[])plugin_api\.\w"  # `plugins.NAME.key` is a profile key, not a module
                       r"|\b(from|import) (plugin_api|plugins)\b")
    bad = [f"{doc.relative_to(ROOT)}:{n}: {line.strip()}" for doc in DOCS
           for n, line in enumerate(doc.read_text().splitlines(), 1) if wrong.search(line)]
    assert not bad, "use lnp_plugin_api / lnp_plugins.NAME:\n" + "\n".join(bad)
    dotted = {m.group(0) for doc in DOCS for m in re.finditer(r"\blnp_(plugin_api|plugins|host)(\.[a-z_]\w*)+",
                                                              doc.read_text())}
    assert not [name for name in dotted if not resolves(name)], f"names that do not exist: {dotted}"


def resolves(dotted: str) -> bool:
    """True when `a.b.c` is a module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


# --- profiles and entry points ---------------------------------------------------------------------

@pytest.mark.parametrize("block", of_kind("profile"), ids=str)
def test_profile_blocks_pass_lnp_host_check(block: Block, tmp_path: Path, plugin_site: Path) -> None:
    path = tmp_path / "profile.toml"
    path.write_text(block.text)
    done = lnp_host("check", "--profile", str(path), site=plugin_site)
    assert done.returncode == 0, f"{block}: {done.stderr}"


def _module_header(block: Block) -> str | None:
    m = re.match(r"#\s*(\w+)\.py\s*\n", block.text)
    return m.group(1) if m else None


def documented_entry_points() -> dict[str, str]:
    """Module -> entry-point name, from the docs' entry-point tables."""
    out: dict[str, str] = {}
    for b in of_kind("entry_points"):
        table = tomllib.loads(b.text)["project"]["entry-points"][ENTRY_POINT_GROUP]
        out.update({module: name for name, module in table.items()})
    return out


def test_entry_point_blocks_name_documented_modules() -> None:
    headed = {_module_header(b) for b in of_kind("plugin")} - {None}
    packaged = {}
    for pyproject in (ROOT / "docs" / "examples").glob("*/pyproject.toml"):
        packaged.update(tomllib.loads(pyproject.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP])
    assert of_kind("entry_points")
    for b in of_kind("entry_points"):
        for name, module in tomllib.loads(b.text)["project"]["entry-points"][ENTRY_POINT_GROUP].items():
            assert module in headed or packaged.get(name) == module, \
                f"{b}: {name} = {module!r} is neither a documented `# {module}.py` nor an example package's entry point"


# --- plugin examples in a real node ----------------------------------------------------------------

class Example:
    """A plugin example, run through its declarative hooks here and installed for the node."""

    def __init__(self, block: Block, entry_names: dict[str, str]) -> None:
        self.block = block
        self.module = _module_header(block) or f"docs_{block.doc.stem.lower().replace('-', '_')}_{block.line}"
        self.name = entry_names.get(self.module, self.module)
        self.ns: dict[str, Any] = {"__name__": self.module}
        exec(compile(block.text, str(block), "exec"), self.ns)
        impls = {n for n, v in self.ns.items() if callable(v) and hasattr(v, f"{PROJECT}_impl")}
        assert impls, f"{block}: no @hookimpl function"
        assert impls <= HOOKS, f"{block}: {sorted(impls - HOOKS)} are not hooks (plugin_api/hookspecs.py)"
        unmarked = {n for n, v in self.ns.items() if n.startswith("lnp_") and callable(v)} - impls
        assert not unmarked, f"{block}: {sorted(unmarked)} lack @hookimpl"

    def implements(self, hook: str) -> bool:
        return hasattr(self.ns.get(hook), f"{PROJECT}_impl")

    def hook(self, name: str) -> Any:
        """Call a declarative hook (they take no arguments); None when not implemented."""
        return self.ns[name]() if self.implements(name) else None

    @property
    def service(self) -> str:
        return self.hook("lnp_service") or self.name

    def subscriptions(self, kind: str) -> list[Subscription]:
        return [s for s in self.hook("lnp_subscriptions") or [] if s.kind == kind]


PROBE = '''
"""docs_probe: sees the events and decisions the examples take part in."""
from lnp_plugin_api import Subscription, hookimpl, rpc_method

seen = []


def _on_event(ctx, event):
    seen.append({"event": event.name, "body": event.body})


def _participant(name):
    def participate(ctx, body):
        seen.append({"decision": name, "body": body})
    return participate


@rpc_method
def docs_probe_seen(ctx) -> list:
    """Events and decisions seen so far."""
    return seen


@hookimpl
def lnp_rpc_methods():
    return [docs_probe_seen]


@hookimpl
def lnp_subscriptions():
    return ([Subscription.event(n, _on_event) for n in EVENTS] +
            [Subscription.decision(n, _participant(n)) for n in DECISIONS])
'''

# A service of its own: a service waiting for a reply cannot answer the decision its request causes.
ASKER = '''
"""docs_asker: sends control requests for tests/test_docs.py."""
from lnp_plugin_api import hookimpl, rpc_method


@rpc_method
def docs_request(ctx, name: str, body: dict) -> dict:
    """Send control request NAME with BODY to whichever plugin answers it."""
    return {"reply": ctx.request(name, body)}


@hookimpl
def lnp_rpc_methods():
    return [docs_request]
'''


def install_examples(examples: list[Example], events: set[str], decisions: set[str], root: Path) -> Path:
    """pip-install the examples and the probe as one package of entry points; returns the site dir."""
    pkg, site = root / "pkg", root / "site"
    pkg.mkdir()
    for ex in examples:
        (pkg / f"{ex.module}.py").write_text(ex.block.text)
    (pkg / "docs_probe.py").write_text(f"EVENTS = {sorted(events)!r}\nDECISIONS = {sorted(decisions)!r}\n" + PROBE)
    (pkg / "docs_asker.py").write_text(ASKER)
    modules = [ex.module for ex in examples] + ["docs_probe", "docs_asker"]
    entries = "\n".join(f'{ex.name} = "{ex.module}"' for ex in examples)
    (pkg / "pyproject.toml").write_text(f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"
[project]
name = "lnp-docs-examples"
version = "0"
[tool.setuptools]
py-modules = {json.dumps(modules)}
{ENTRY_TABLE}
{entries}
docs_probe = "docs_probe"
docs_asker = "docs_asker"
""")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(pkg)], check=True)
    return site


def sample(tp: Any) -> Any:
    """A value of a parameter's declared type."""
    samples = {str: "docs", int: 1, float: 1.0, bool: True, dict: {}}
    if tp in samples:
        return samples[tp]
    if typing.get_origin(tp) is list:
        return []
    if isinstance(tp, UnionType) or typing.get_origin(tp) is typing.Union:
        return sample(next(a for a in typing.get_args(tp) if a is not type(None)))
    raise AssertionError(f"no sample value for {tp!r}")


def builtin_hook(names: list[str], hook: str) -> list[Any]:
    """What the named built-in plugins' declarative `hook` returns, for those that implement it."""
    modules = [discover()[name].entry_point.load() for name in names]
    return [getattr(m, hook)() for m in modules if hasattr(m, hook)]


def declared(names: list[str], hook: str) -> set[str]:
    """Events or decisions the host and the named built-in plugins declare."""
    found = {s.name for s in HOST_EVENTS} if hook == "lnp_events" else set()
    return found | {s.name for specs in builtin_hook(names, hook) for s in specs}


def node_errors(node: Any) -> list[str]:
    text = node.log.read_text() + (node.data_dir / "lnp-host.log").read_text()
    return [line for line in text.splitlines() if re.search(r"\s(ERROR|CRITICAL)\s|Traceback", line)]


def check_declarations(examples: list[Example], builtins: list[str]) -> None:
    """What the examples declare fits the node they run in, before anything runs."""
    events = {s.key for ex in examples for s in ex.subscriptions("event")}
    decisions = {s.key for ex in examples for s in ex.subscriptions("decision")}
    own_events = {s.name for ex in examples for s in ex.hook("lnp_events") or []}
    own_decisions = {s.name for ex in examples for s in ex.hook("lnp_decisions") or []}
    undeclared = (events - own_events - declared(builtins, "lnp_events")) | \
        (decisions - own_decisions - declared(builtins, "lnp_decisions"))
    assert not undeclared, f"examples subscribe to what nothing declares: {sorted(undeclared)}"
    models = builtin_hook(builtins, "lnp_storage_models") + [ex.hook("lnp_storage_models") for ex in examples]
    tables = Counter(t for m in models if m is not None for t in m.metadata.tables)
    assert not [t for t, n in tables.items() if n > 1], f"examples reuse tables of other plugins: {tables}"
    for ex in examples:
        for ext in ex.hook("lnp_channel_extensions") or []:  # check the protocol (channel.ChannelExtension)
            assert isinstance(ext.name, str) and all(isinstance(x, tuple) for x in (ext.feature_bits, ext.update_kinds))
            assert all(callable(getattr(ext, m)) for m in ("open_tlvs", "negotiate", "update_tlvs", "load_state",
                                                           "check_update", "apply_update", "rollback", "prepare",
                                                           "build")), ex.block


def examples_profile(examples: list[Example], builtins: list[str], port: int) -> str:
    """A profile enabling the examples (required settings given a value) with the probe and the asker."""
    tables = "".join(f"[plugins.{ex.name}]\n" + "".join(f"{k} = {json.dumps(sample(f.type))}\n"
                                                        for k, f in (ex.hook("lnp_config_schema") or {}).items()
                                                        if f.required) for ex in examples)
    enabled = builtins + [ex.name for ex in examples] + ["docs_probe", "docs_asker"]
    return f"""[node]
network = "regtest"
data_dir = "DATA_DIR"
[plugins]
enabled = {json.dumps(enabled)}
[plugins.peerd]
listen = ["127.0.0.1:{port}"]
[plugins.signd]
grant = {{docs_asker = ["node_message"]}}  # its own service: signd knows it only from this grant
{tables}"""


def visit_as_peer(node: Any, examples: list[Example], port: int, node_id: str) -> None:
    """Connect as a peer offering the examples' features, send each wire type they handle, leave."""
    specs = [spec for ex in examples for spec in ex.hook("lnp_features") or []]
    wire_types = sorted({s.key for ex in examples for s in ex.subscriptions("wire")})
    raw = RawPeer(port)
    try:
        init = raw.connect(bytes.fromhex(node_id), features=features.encode({s.pair | 1 for s in specs}))
        assert {s.wire_bit for s in specs} <= features.decode(init["features"]), "examples' features not advertised"
        for msg_type in wire_types + [UNHANDLED_CUSTOM]:
            raw.send(msg_type.to_bytes(2, "big"))
        with node.client() as c:  # the last one went out after the others: once it is in, all are
            wait_for(lambda: any(e.get("event") == "custommsg" for e in c.docs_probe_seen()))
    finally:
        raw.close()


def test_python_examples_run_in_a_real_node(short_tmp: Path, nodes: Any) -> None:
    entry_names = documented_entry_points()
    examples = [Example(b, entry_names) for b in of_kind("plugin")]
    assert len({ex.name for ex in examples}) == len(examples), "two examples share an entry-point name"
    builtins = ["core", "signd", "peerd"]
    check_declarations(examples, builtins)
    events = {s.key for ex in examples for s in ex.subscriptions("event")} | \
        {s.name for ex in examples for s in ex.hook("lnp_events") or []}
    decisions = {s.key for ex in examples for s in ex.subscriptions("decision")} | \
        {s.name for ex in examples for s in ex.hook("lnp_decisions") or []}
    causes = PEER_EVENTS | AT_START | set(DECISION_CAUSES) | \
        {s.name for ex in examples for hook in ("lnp_events", "lnp_decisions") for s in ex.hook(hook) or []}
    assert events | decisions <= causes, f"the test cannot make {sorted((events | decisions) - causes)} happen"

    site = install_examples(examples, events | PEER_EVENTS, decisions, short_tmp)
    port = free_port()
    # data dir ~/.lnp-host, HOME being its parent for the scripts
    node = nodes(examples_profile(examples, builtins, port), name=".lnp-host", site=site)
    initialised = lnp_host("init", "--profile", str(node.profile), site=site)
    assert initialised.returncode == 0, initialised.stderr
    assert {ex.name for ex in examples if ex.implements("lnp_init")} <= set(json.loads(initialised.stdout))
    info = node.start().wait_ready()
    running = {s["name"] for s in info["services"] if s["state"] == "running"}
    assert {ex.service for ex in examples} <= running, info["services"]

    for b in of_kind("script"):  # as a reader runs them; a leaked socket counts as a failure
        script = short_tmp / f"script_{b.line}.py"
        script.write_text(b.text)
        done = subprocess.run([sys.executable, "-W", "error::ResourceWarning", "-c",
                               f"import gc, runpy; runpy.run_path({str(script)!r}); gc.collect()"],
                              capture_output=True, text=True, timeout=60,
                              env={**env_with(site), "HOME": str(short_tmp)}, cwd=short_tmp)
        assert done.returncode == 0 and "Warning" not in done.stderr, f"{b}:\n{done.stderr}"

    visit_as_peer(node, examples, port, info["node_id"])
    with node.client() as c:
        for ex in examples:
            for m in ex.hook("lnp_rpc_methods") or []:
                assert isinstance(m, RpcMethod)
                try:
                    c.call(m.name, **{p.name: sample(p.type) for p in m.params if p.required})
                except RpcError as e:  # a documented refusal is fine; an internal error is a bug
                    assert e.code != RpcError.INTERNAL_ERROR, f"{ex.block}: {m.name}: {e.message}"
            for s in ex.subscriptions("control"):
                assert s.key in CONTROL_BODIES, f"{ex.block}: add a body for control request {s.key!r}"
                c.docs_request(s.key, CONTROL_BODIES[s.key])
        for name in sorted(decisions & set(DECISION_CAUSES)):
            request, body = DECISION_CAUSES[name]
            c.docs_request(request, json.loads(json.dumps(body).replace("NODE_ID", info["node_id"])))
        expected = {("event", n) for n in events} | {("decision", n) for n in decisions}

        def missing() -> set[tuple[str, str]]:
            return expected - {(k, e[k]) for e in c.docs_probe_seen() for k in ("event", "decision") if k in e}
        try:
            wait_for(lambda: not missing())
        except AssertionError:
            raise AssertionError(f"never happened: {sorted(missing())}") from None
        c.stop()
    assert node.proc.wait(30) == 0
    assert not node_errors(node), "\n".join(node_errors(node))


# --- command lines ---------------------------------------------------------------------------------

def test_lnp_host_lines_use_real_options() -> None:
    subparsers = next(a for a in cli._parser()._actions if a.dest == "command").choices
    mentions = [m for doc in DOCS for m in command_mentions(doc, "lnp-host")]
    assert mentions
    for m in mentions:
        sub = m.words[0]
        assert sub in subparsers, f"{m}: no `lnp-host {sub}`"
        options = set(subparsers[sub]._option_string_actions)
        for word in m.words[1:]:
            for option in re.findall(r"(?<![\w-])(--?[\w-]+)", word):
                assert option in options, f"{m}: `lnp-host {sub}` has no option {option}"


def cli_call(words: list[str]) -> tuple[list[str], str, list[str]]:
    """Global options, the command and its arguments of an `lnp-cli` line."""
    i, options = 0, []
    while i < len(words) and words[i] in CLI_GLOBAL:
        options += words[i:i + 2]
        i += 2
    return options, words[i], words[i + 1:]


def shown_plugins() -> dict[tuple[Path, int], dict[str, list[dict[str, Any]]]]:
    """The commands of the plugin examples of each doc section, with their parameters as `help` shows them."""
    out: dict[tuple[Path, int], dict[str, list[dict[str, Any]]]] = {}
    for b in of_kind("plugin"):
        methods = Example(b, {}).hook("lnp_rpc_methods") or []
        out.setdefault((b.doc, sections(b.doc)[b.line - 1]), {}).update(
            {m.name: [{"name": p.name, "required": p.required} for p in m.params] for m in methods})
    return out


def test_lnp_cli_lines_name_real_commands(nodes: Any, capsys: Any) -> None:
    """Every documented `lnp-cli` line, against a node of the default profile and the example package.

    A command the default node lacks must be shown next to the plugin that adds it: in the same
    section as its example, or in the README of the example package that has it.
    """
    rpc, port = free_port(), free_port()
    default = ROOT / "configs" / "default.toml"
    enabled = tomllib.loads(default.read_text())["plugins"]["enabled"]
    node = nodes(f"""extends = "{default}"
[node]
data_dir = "DATA_DIR"
[plugins]
enabled = {json.dumps(enabled + ["hello"])}
[plugins.peerd]
listen = ["127.0.0.1:{port}"]
[plugins.regtest]
rpc_port = {rpc}
wallet_port = {free_port()}
[plugins.bitcoind]
url = "http://127.0.0.1:{rpc}"
""", name="cli").start(wait=False)
    node.wait_ready(timeout=90)
    with node.client() as c:
        commands = {x["command"]: x for x in c.help()["commands"]}
    packaged = {name: pyproject.parent / "README.md" for pyproject in (ROOT / "docs" / "examples").glob("*/pyproject.toml")
                for name in tomllib.loads(pyproject.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]}
    nearby = shown_plugins()
    mentions = [m for doc in DOCS for m in command_mentions(doc, "lnp-cli")]
    runnable = []
    for m in mentions:
        options, name, args = cli_call(m.words)
        found = commands.get(name)
        if found is not None and found["plugin"] in enabled:
            params, run = found["params"], True
        elif name in nearby.get((m.doc, m.section), {}):
            params, run = nearby[(m.doc, m.section)][name], False
        elif found is not None and packaged.get(found["plugin"]) == m.doc:
            params, run = found["params"], True
        else:
            raise AssertionError(f"{m}: `lnp-cli {name}`: the default node has no such command"
                                 + (f" ({found['plugin']!r} adds it: show it with that plugin)" if found else ""))
        positional, named = cli_client._split([a.strip("[]") for a in args])
        names = [p["name"] for p in params]
        assert set(named) <= set(names), f"{m}: `lnp-cli {name}` takes {names}, not {sorted(named)}"
        free = [p for p in names if p not in named]
        assert len(positional) <= len(free), f"{m}: `lnp-cli {name}` takes at most {len(free)} more values"
        given = set(named) | set(free[:len(positional)])
        missing = [p["name"] for p in params if p["required"] and p["name"] not in given]
        assert not missing, f"{m}: `lnp-cli {name}` needs {missing}"
        if run and not options and not PLACEHOLDER.search(" ".join(m.words)) and name != "stop":
            runnable.append(m)
    assert len(runnable) >= 5
    for m in runnable:  # as a reader would type them
        status = cli_client.main(["--data-dir", str(node.data_dir), *m.words])
        assert status == 0, f"{m}: lnp-cli {' '.join(m.words)}:\n{capsys.readouterr().out}"
    assert any(cli_call(m.words)[1] == "stop" for m in mentions)
    assert cli_client.main(["--data-dir", str(node.data_dir), "stop"]) == 0
    assert node.proc.wait(60) == 0
