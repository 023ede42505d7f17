"""Bad profiles: exit status 2, a one-line message naming the file and the key, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, lnp_host
from lnp_host.profile import ProfileError, load_profile


def check_refused(tmp: Path, text: str | bytes, key: str, words: str, site: Path | None = None,
                  name: str = "bad.toml", expect_file: str | None = None, args: tuple[str, ...] = ()) -> str:
    """`lnp-host run` on TEXT exits 2 with one line naming the file (or `--set`), KEY and WORDS, and
    writes nothing."""
    data_dir = tmp / "data"
    profile = tmp / name
    if isinstance(text, str):
        text = text.replace("DATA_DIR", str(data_dir)).encode()
    profile.write_bytes(text.replace(b"DATA_DIR", str(data_dir).encode()))
    result = lnp_host("run", "--profile", str(profile), *args, site=site)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    where = "--set" if expect_file == "--set" else str(tmp / (expect_file or name))
    assert where in lines[0] and key in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not data_dir.exists(), "a refused profile must not create the data dir"
    return lines[0]


BASE = '[node]\ndata_dir = "DATA_DIR"\n'


def test_unknown_plugin(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + '[plugins]\nenabled = ["core", "nosuch"]\n', "[plugins] enabled",
                  "unknown plugin 'nosuch'")


def test_unknown_key_in_host_table(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + 'colour = "blue"\n', "[node] colour", "unknown key")


def test_unknown_key_in_plugin_table(tmp_path: Path, plugin_site: Path) -> None:
    check_refused(tmp_path, BASE + '[plugins]\nenabled = ["hello"]\n[plugins.hello]\ngreting = "hi"\n',
                  "[plugins.hello] greting", "unknown key", site=plugin_site)


def test_unknown_top_level_table(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + '[nodes]\nalias = "x"\n', "nodes", "unknown key")


def test_wrong_type(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + '[bus]\nheartbeat_misses = "three"\n', "[bus] heartbeat_misses",
                  "expected an integer, got str")


def test_wrong_type_in_plugin_table(tmp_path: Path, plugin_site: Path) -> None:
    check_refused(tmp_path, BASE + '[plugins]\nenabled = ["hello"]\n[plugins.hello]\ngreeting = 5\n',
                  "[plugins.hello] greeting", "expected a string, got int", site=plugin_site)


def test_bad_choice(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE.replace("[node]\n", '[node]\nnetwork = "moonnet"\n'), "[node] network",
                  "expected one of")


def test_missing_required_value(tmp_path: Path, plugin_site: Path) -> None:
    check_refused(tmp_path, BASE + '[plugins]\nenabled = ["tk_beta"]\n', "[plugins.tk_beta] limit",
                  "missing required value", site=plugin_site)


def test_unreadable_toml(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + "[plugins\nenabled = 3\n", "", "not valid TOML")


def test_missing_file(tmp_path: Path) -> None:
    result = lnp_host("run", "--profile", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr and "no such file" in result.stderr


def test_unknown_service_and_bad_service_table(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + "[services.ghost]\non_failure = \"stop\"\n", "[services] ghost",
                  "unknown service")
    check_refused(tmp_path, BASE + "[services.lnpd]\non_failure = \"explode\"\n", "[services.lnpd] on_failure",
                  "expected one of")


def test_error_in_base_profile_names_the_base_file(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text('[node]\nalias = 7\n')
    check_refused(tmp_path, 'extends = "base.toml"\n' + BASE, "[node] alias", "expected a string",
                  expect_file="base.toml")


def test_extends_merges_tables(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text('[node]\nalias = "base"\nnetwork = "signet"\n[bus]\nmode = "processes"\n')
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[node]\nalias = "child"\n')
    profile = load_profile(tmp_path / "child.toml")
    assert profile.section("node")["alias"] == "child"
    assert profile.section("node")["network"] == "signet"
    assert profile.section("bus")["mode"] == "processes"


def test_circular_extends(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ProfileError, match="circular"):
        load_profile(tmp_path / "a.toml")


def test_unknown_service_on_command_line(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(BASE.replace("DATA_DIR", str(tmp_path / "data")))
    result = lnp_host("run", "--profile", str(profile), "--service", "ghost")
    assert result.returncode == 2 and "unknown service 'ghost'" in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", ["default.toml", "regtest.toml", "processes.toml", "alice.toml", "bob.toml"])
def test_shipped_profiles_are_valid(name: str) -> None:
    result = lnp_host("check", "--profile", str(ROOT / "configs" / name))
    assert result.returncode == 0, result.stderr


def test_embedded_default_profile() -> None:
    profile = load_profile()
    assert profile.path.name == "default.toml"
    assert "core" in profile.enabled


def test_non_utf8_profile(tmp_path: Path) -> None:
    check_refused(tmp_path, b'[node]\ndata_dir = "DATA_DIR"\nalias = "caf\xe9"\n', "",
                  "not UTF-8 text (a bad byte on line 3)")


@pytest.mark.parametrize("key, value, words", [("heartbeat_interval", "-1.0", "must be greater than zero"),
                                               ("heartbeat_interval", "0", "must be greater than zero"),
                                               ("heartbeat_misses", "-3", "must be at least 1")])
def test_heartbeats_must_be_positive(tmp_path: Path, key: str, value: str, words: str) -> None:
    check_refused(tmp_path, BASE + f"[bus]\nmode = \"processes\"\n{key} = {value}\n", f"[bus] {key}", words)


def test_restart_settings_must_be_sane(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + "[services.lnpd]\nrestart_window = -5\n", "[services.lnpd] restart_window",
                  "must be greater than zero")
    check_refused(tmp_path, BASE + "[services.lnpd]\nmax_restarts = -1\n", "[services.lnpd] max_restarts",
                  "must be at least 0")


def test_storage_url_must_be_usable(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + '[storage]\nurl = "garbage://x"\n', "[storage] url",
                  "unknown database kind 'garbage'")
    line = check_refused(tmp_path, BASE + '[storage]\nurl = "postgresql+nosuch://u:hunter2@h/db"\n', "[storage] url",
                         "unknown database kind")
    assert "hunter2" not in line  # a URL's password is never repeated
    check_refused(tmp_path, BASE + '[storage]\nurl = "not a url"\n', "[storage] url", "not a database URL")


def test_rpc_endpoints_must_be_endpoints(tmp_path: Path) -> None:
    check_refused(tmp_path, BASE + '[rpc]\ntcp = "127.0.0.1:9836"\n', "[rpc] tcp", "expected tcp://")
    # a tcp:// local endpoint would be plaintext full admin: TCP only through `tcp`, with CURVE
    check_refused(tmp_path, BASE + '[rpc]\nendpoint = "tcp://0.0.0.0:9999"\n', "[rpc] endpoint", "expected ipc://")


def test_a_plugin_without_what_it_needs(tmp_path: Path, plugin_site: Path) -> None:
    check_refused(tmp_path, BASE + '[plugins]\nenabled = ["core", "bitcoind", "watchd", "wallet"]\n',
                  "[plugins] enabled", "plugin 'wallet' needs 'signd.wallet', 'signd.sign_wallet_psbt', which no enabled "
                  "plugin answers (enable signd?)")
    check_refused(tmp_path, BASE + '[plugins]\nenabled = ["core", "signd", "watchd", "wallet"]\n',
                  "[plugins] enabled", "plugin 'watchd' needs 'chain.info', 'chain.block'")
    # a third-party plugin declares its needs the same way
    check_refused(tmp_path, BASE + '[plugins]\nenabled = ["core", "tk_chain"]\n', "[plugins] enabled",
                  "plugin 'tk_chain' needs 'watchd.watch'", site=plugin_site)


@pytest.mark.parametrize("nested", ["x = " + "[" * 5000 + "]" * 5000, "x = " + "{a = " * 5000 + "1" + "}" * 5000,
                                    ".".join(["a"] * 5000) + " = 1", "x = " + "[" * 40 + "]" * 40],
                         ids=["arrays", "inline-tables", "dotted-keys", "arrays-40"])
def test_deeply_nested_toml(tmp_path: Path, nested: str) -> None:
    check_refused(tmp_path, BASE + "[plugins.core]\n" + nested + "\n", "", "nested more than 32 levels deep")


def test_environment_variables_in_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[node]\ndata_dir = "${LNP_TEST_DIR:-/nowhere}/n"\nalias = "$${LITERAL} ${LNP_TEST_EMPTY:-x}"\n')
    monkeypatch.delenv("LNP_TEST_DIR", raising=False)
    monkeypatch.setenv("LNP_TEST_EMPTY", "")
    assert load_profile(path).section("node")["data_dir"] == "/nowhere/n"
    assert load_profile(path).section("node")["alias"] == "${LITERAL} x"
    monkeypatch.setenv("LNP_TEST_DIR", "/srv/alice")
    assert load_profile(path).section("node")["data_dir"] == "/srv/alice/n"
    monkeypatch.delenv("LNP_TEST_DIR")
    check_refused(tmp_path, '[node]\ndata_dir = "${LNP_TEST_DIR}/data"\n', "[node] data_dir",
                  "environment variable LNP_TEST_DIR is not set")


def test_bob_finds_alices_chain_where_alice_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALICE_DIR", raising=False)
    bob = load_profile(ROOT / "configs" / "bob.toml")
    assert bob.plugin_table("bitcoind")["cookie_file"] == "~/.lnp-host/alice/regtest/.cookie"
    monkeypatch.setenv("ALICE_DIR", "/tmp/two/alice")
    bob = load_profile(ROOT / "configs" / "bob.toml", data_dir="/tmp/two/bob")
    assert bob.plugin_table("bitcoind")["cookie_file"] == "/tmp/two/alice/regtest/.cookie"


def test_set_overrides_keys(tmp_path: Path) -> None:
    profile = load_profile(ROOT / "configs" / "alice.toml", overrides=[
        'plugins.peerd.listen=["127.0.0.1:9000"]', "plugins.regtest.rpc_port=18500",
        "plugins.bitcoind.url=http://127.0.0.1:18500", "node.alias=a b=c", "bus.heartbeat_interval=2"])
    assert profile.plugin_table("peerd")["listen"] == ["127.0.0.1:9000"]
    assert profile.plugin_table("regtest")["rpc_port"] == 18500
    assert profile.plugin_table("bitcoind")["url"] == "http://127.0.0.1:18500"  # not TOML: a string
    assert profile.section("node")["alias"] == "a b=c"
    assert profile.section("bus")["heartbeat_interval"] == 2.0
    assert profile.plugin_table("regtest")  # the rest of the table stays


def test_set_errors_name_the_set_key(tmp_path: Path) -> None:
    config = str(ROOT / "configs" / "alice.toml")
    bad = lnp_host("check", "--profile", config, "--set", "plugins.peerd.listen=127.0.0.1:9000")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "lnp-host: --set: plugins.peerd.listen: expected a list of strings, got str"
    check_refused(tmp_path, BASE, "bus.heartbeat_misses", "must be at least 1", expect_file="--set",
                  args=("--set", "bus.heartbeat_misses=0"))
    check_refused(tmp_path, BASE, "node.alias.x", "node.alias is not a table", expect_file="--set",
                  args=("--set", "node.alias=x", "--set", "node.alias.x=1"))
    check_refused(tmp_path, BASE, "heartbeat_misses", "expected KEY=VALUE", expect_file="--set",
                  args=("--set", "heartbeat_misses"))
    check_refused(tmp_path, BASE, "node.colour", "unknown key", expect_file="--set", args=("--set", "node.colour=1"))
    check_refused(tmp_path, BASE, "x", "nested more than 32 levels deep", expect_file="--set",
                  args=("--set", "bus.x=" + "[" * 3000 + "]" * 3000))

