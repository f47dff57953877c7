"""Issue 19 through the real command line: a reversible migration, its reverse sync killed with kill -9 and
resumed by the same command, and a rollback approved with `livemigrate rollback`.

`livemigrate migrate` runs in its own process against the suite's Prefect server; the decisions go through
the CLI's own code (`decision_cli`), as an on-call engineer's terminal sends them.  The application's writes
to the destination (a writer thread, then inserts, updates, deletes, moved unique values and new indexes)
must all be on the source after the rollback, byte for byte, compared directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import MongoClient

from tasks.metadata import MetadataStore
from tasks.reverse import reverse_name
from tasks.state import Phase
from tasks.status import describe
from tests.conftest import Deployment
from tests.helpers import Writer, assert_same_data, seed_writer_data, wait_until
from tests.integration.test_reverse import application_on_destination, index_specs, seed

pytestmark = [pytest.mark.flows, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, pair: tuple[Deployment, Deployment], db: str) -> tuple[Path, str]:
    name = f"rev-{db}"[:60]
    data = {
        "name": name,
        "source": {"uri": pair[0].uri},
        "destination": {"uri": pair[1].uri},
        "namespaces": {"include": [f"{db}.*"]},
        "reversible": True,
        "cutover": {"max_lag_seconds": 5, "ready_after_seconds": 0.5, "quiesce_seconds": 0.3},
        "tuning": {"workers": 2, "partition_docs": 1000, "partitioning": "ranges", "connect_timeout_seconds": 5},
    }
    path = tmp_path / "reversible.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, name


def _migrate(cfg: Path) -> subprocess.Popen[str]:
    """`livemigrate migrate` in its own process group (kill -9 takes the whole migrator)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "migrate", "--config", str(cfg), "--skip-prechecks"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _paused(store: MetadataStore, name: str) -> bool:
    from prefect.client.orchestration import get_client

    doc = store.get(name)
    if doc is None or not doc.flow_run_id or not doc.lag.ready:
        return False
    with get_client(sync_client=True) as c:
        fr = c.read_flow_run(doc.flow_run_id)  # type: ignore[arg-type]
    return bool(fr.state and fr.state.is_paused())


def _decide(cfg: Path, action: str, approver: str) -> None:
    from flows.operate import decision_cli

    code = decision_cli(cfg, action, approver=approver, reason=f"{action} in the test", yes=True, as_json=True)
    assert code == 0, f"{action} refused"


def test_reverse_sync_survives_kill_9_and_the_rollback_is_approved_from_the_cli(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    tmp_path: Path,
) -> None:
    seed(src_client, dbname)
    seed_writer_data(src_client, dbname)
    cfg, name = _config(tmp_path, pair, dbname)
    rname = reverse_name(name)
    store = MetadataStore(dst_client)
    proc = _migrate(cfg)
    writer: Writer | None = None
    try:
        assert wait_until(lambda: _paused(store, name) or proc.poll() is not None, 90, 0.3), "never paused"
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        _decide(cfg, "cutover", "alice")
        # The same run goes on: the reverse sync, then the rollback form.
        assert wait_until(lambda: _paused(store, rname) or proc.poll() is not None, 60, 0.3), "no reverse pause"
        assert store.load(name).phase == Phase.COMPLETE
        assert proc.poll() is None, proc.communicate()[1][-3000:]

        writer = Writer(dst_client, dbname, seed=11, rate_sleep=0.002)  # the application, on the new cluster
        writer.start()
        applied = lambda: (cp := store.load_checkpoint(rname)) is not None and cp.applied_events > 100  # noqa: E731
        assert wait_until(applied, 30, 0.05), "the reverse sync applied nothing"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = store.load_checkpoint(rname)
        wait_until(lambda: False, 0.5, 0.1)  # the application goes on writing while nothing syncs
    finally:
        if writer is not None:
            writer.stop_event.set()
            writer.join(10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert writer is not None and writer.error is None and writer.ops > 0
    assert store.load(rname).phase == Phase.SYNCING  # a kill leaves no trace but a stale heartbeat

    killed_run = store.load(rname).flow_run_id
    again = _migrate(cfg)  # the same command
    try:
        application_on_destination(dst_client, dbname)
        resumed_run = lambda: store.load(rname).flow_run_id != killed_run and _paused(store, rname)  # noqa: E731
        assert wait_until(lambda: resumed_run() or again.poll() is not None, 90, 0.3), "not resumed"
        assert again.poll() is None, again.communicate()[1][-3000:]
        resumed = store.load_checkpoint(rname)
        assert resumed is not None and killed_at is not None and resumed.applied_events > killed_at.applied_events
        _decide(cfg, "rollback", "bob")
        out, err = again.communicate(timeout=120)
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
    assert again.returncode == 0, err[-3000:]
    assert "rolled back: the source reopened for writes at" in out, out

    assert assert_same_data(src_client, dst_client, [dbname]) > 0  # the source holds every write made after the cutover
    uris = [pair[0].uri, "--destination", pair[1].uri]
    compare = subprocess.run(  # and a second opinion that uses none of livemigrate's code
        [sys.executable, "scripts/compare_clusters.py", "--db", dbname, "--source", *uris],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert compare.returncode == 0, compare.stdout[-3000:] + compare.stderr[-2000:]
    assert index_specs(src_client, dbname) == index_specs(dst_client, dbname)
    forward, reverse = store.load(name), store.load(rname)
    assert [(d.action, d.approver) for d in forward.decisions] == [("cutover", "alice")]
    assert [(d.action, d.approver) for d in reverse.decisions] == [("reverse-sync", "alice"), ("rollback", "bob")]
    assert reverse.phase == Phase.COMPLETE and reverse.destination_ready_at is not None
    assert store.lock_holder() is None
    # What describe and the report the run published say of it (flows/status.py, flows/report.py).
    d = describe(store, name)
    assert d["direction"] == "rolled back" and d["reverse"]["source_reopened_at"] is not None
    assert [(e["event"], e["approver"]) for e in d["history"]] == [
        ("cutover", "alice"),
        ("reverse sync started", "alice"),
        ("rollback", "bob"),
    ]
    saved = store.last_report(name, "migration")
    assert saved is not None and saved["reverse"]["phase"] == "complete"
    assert saved["charts"]["reverse_lag"]["samples"] > 0
