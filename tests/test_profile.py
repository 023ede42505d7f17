"""Bad profiles: exit status 2, a one-line message naming the file and the key, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, lnp_host
from lnp_host.profile import ProfileError, load_profile


def check_refused(tmp: Path, text: str, key: str, words: str, site: Path | None = None,
                  name: str = "bad.toml", expect_file: str | None = None) -> str:
    data_dir = tmp / "data"
    profile = tmp / name
    profile.write_text(text.replace("DATA_DIR", str(data_dir)))
    result = lnp_host("run", "--profile", str(profile), site=site)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(tmp / (expect_file or name)) in lines[0] and key in lines[0] and words in lines[0], lines[0]
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
