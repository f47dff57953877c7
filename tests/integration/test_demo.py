"""`make demo` runs in the suite at a reduced size: it must finish, migrate, verify and clean up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_secantus

pytestmark = [pytest.mark.integration, pytest.mark.flows]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@requires_secantus("the demo starts its own SecantusDB servers")
def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        LIVEMIGRATE_DEMO_DOCS="3000", LIVEMIGRATE_DEMO_OUT=str(tmp_path / "out"), PREFECT_HOME=str(tmp_path / "prefect")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "flows.demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "phase: complete" in proc.stdout
    assert "final verification equal: True" in proc.stdout
    # What it says it loaded is what it copied, plus the application's inserts the copy reached (never fewer).
    loaded = re.search(r"loaded (\d+) documents into the source", proc.stdout)
    account = re.search(
        r"copied (\d+) documents = (\d+) loaded \+ (\d+) the application inserted .* inserted (\d+);", proc.stdout
    )
    assert loaded and account, proc.stdout[-3000:]
    copied, loaded_again, extra, app_inserts = (int(g) for g in account.groups())
    assert int(loaded.group(1)) == loaded_again == 3000
    assert copied == loaded_again + extra and extra <= app_inserts
    assert "stopped both servers" in proc.stdout
    assert (tmp_path / "out" / "verification").is_dir()
    leftover = subprocess.run(["pgrep", "-f", "livemigrate-demo-"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "the demo left a server running"
