"""`livemigrate migrate` starts the engine's work before Prefect (issue 20: the first document within 5 s).

How fast is measured by the benchmark (bench/startup_bench.py); these tests pin the order and the hand-over:
the engine's first steps begin before Prefect (or Great Expectations, or pandas) is imported, an error of a
step reaches every later step the flow waits for, clone progress made before the flow's progress artifact
exists is handed to it, and no temporary server is started where a Prefect API is configured.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.headstart import HeadStart, _ProgressRelay
from tasks.config import config_from_dict
from tasks.errors import LiveMigrateError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "mongodb://127.0.0.1:1/?directConnection=true"  # nothing listens on port 1

# Runs `livemigrate migrate` with the destination's lock check stubbed out, up to the moment the engine's
# Migration is made; reports which heavy packages are imported by then.  The Prefect API it is given answers
# nothing, so no temporary server is started.
PROBE = """
import contextlib, os, sys
import flows.operate as op
import tasks.migration as tm

class Store:
    def __init__(self, client): pass
    def check_lock(self, *args): pass
    def get(self, name): return None

op.connect_side = lambda cfg, side: contextlib.nullcontext()
op.MetadataStore = Store
def made(self, *args, **kwargs):
    print("IMPORTED", *sorted(m for m in ("prefect", "great_expectations", "pandas") if m in sys.modules), flush=True)
    os._exit(7)

tm.Migration.__init__ = made
from flows.cli import main
sys.argv = ["livemigrate", "migrate", "--config", sys.argv[1]]
main()
"""


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        yaml.safe_dump({"name": "startup", "source": {"uri": UNREACHABLE}, "destination": {"uri": UNREACHABLE}})
    )
    return path


def test_migrate_begins_the_engine_before_prefect_is_imported(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:1/api"}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(_config_file(tmp_path))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 7, r.stderr[-3000:]
    assert r.stdout.split() == ["IMPORTED"], r.stdout  # none of prefect, great_expectations, pandas


def test_an_error_reaches_every_step_the_flow_waits_for() -> None:
    cfg = config_from_dict(
        {
            "name": "startup-error",
            "source": {"uri": UNREACHABLE},
            "destination": {"uri": UNREACHABLE},
            "tuning": {"connect_timeout_seconds": 0.2},
        },
        "test config",
    )
    head = HeadStart(cfg, restart=False, skip_prechecks=True).start()
    try:
        with pytest.raises(LiveMigrateError) as first:
            head.migration()
        for step in ("existing", "prechecks", "begin", "clone"):
            with pytest.raises(LiveMigrateError) as later:
                head.wait(step)
            assert later.value is first.value, step
        assert head.copying(5.0)  # the head start ended: Prefect need not wait for it
    finally:
        head.close()


def test_progress_before_the_flow_attaches_is_replayed_to_it() -> None:
    relay = _ProgressRelay()
    relay("clone", "m|db.a|000000", 10, 100, {"bytes": 1.0})
    relay("clone", "m|db.a|000000", 20, 100, {"bytes": 2.0})
    relay("clone", "m|db.b|000000", 5, 50, {"bytes": 3.0})
    assert relay.first.is_set()
    seen: list[tuple[Any, ...]] = []
    relay.attach(lambda *args: seen.append(args))
    assert [(k, d) for _, k, d, _, _ in seen] == [("m|db.a|000000", 20), ("m|db.b|000000", 5)]
    relay("clone", "m|db.a|000000", 30, 100, {"bytes": 4.0})
    assert seen[-1][1:3] == ("m|db.a|000000", 30)


def test_no_temporary_server_where_an_api_is_configured() -> None:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:1/api"}
    r = subprocess.run(
        [sys.executable, "-m", "flows.tempserver", str(os.getpid())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "configured"), r.stderr[-3000:]
