"""channeld's crash_point: LNP_DEV_CRASH_FILE fires once (the file is removed), never on mainnet."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lnp_plugins.channeld.errors import CRASH_FILE_ENV, crash_point

KILL = ("from lnp_plugins.channeld.errors import crash_point\n"
        "crash_point('other', 'regtest')\n"          # another point: nothing
        "print('alive', flush=True)\n"
        "crash_point('commitment_signed_stored', {network!r})\n"
        "print('still alive', flush=True)\n")


def run(tmp_path: Path, network: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", KILL.format(network=network)], capture_output=True, text=True,
                          env={**os.environ, CRASH_FILE_ENV: str(tmp_path / "crash")}, timeout=60)


def test_the_point_named_in_the_file_kills_once(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "crash").write_text("channeld:commitment_signed_stored\n")
    done = run(tmp_path, "regtest")
    assert done.returncode == -9 and done.stdout == "alive\n"
    assert not (tmp_path / "crash").exists()          # fired once: the restarted process goes through
    monkeypatch.setenv(CRASH_FILE_ENV, str(tmp_path / "crash"))
    crash_point("commitment_signed_stored", "regtest")


def test_never_on_mainnet(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "crash").write_text("channeld:commitment_signed_stored")
    monkeypatch.setenv(CRASH_FILE_ENV, str(tmp_path / "crash"))
    monkeypatch.setenv("LNP_DEV_CRASH_AT", "channeld:commitment_signed_stored")
    crash_point("commitment_signed_stored", "mainnet")   # this process lives on
    assert (tmp_path / "crash").exists()
