"""The migrate flow end to end under a temporary Prefect server: pause, decisions, cutover, expiry, cancel."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import MongoClient

from tasks.metadata import MetadataStore
from tasks.state import Phase
from tests.conftest import Deployment
from tests.helpers import Writer, assert_same_data, seed_writer_data, wait_until

pytestmark = [pytest.mark.flows, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, pair: tuple[Deployment, Deployment], db: str, **cutover: Any) -> Path:
    cfg = {
        "name": f"flow-{db}"[:60],
        "source": {"uri": pair[0].uri},
        "destination": {"uri": pair[1].uri},
        "namespaces": {"include": [f"{db}.*"]},
        "cutover": {"max_lag_seconds": 5, "ready_after_seconds": 0.5, "quiesce_seconds": 0.5, **cutover},
        "tuning": {"workers": 2, "partition_docs": 500, "partitioning": "ranges", "connect_timeout_seconds": 5},
    }
    path = tmp_path / "migration.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class FlowThread(threading.Thread):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.kwargs = kwargs
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from flows.migrate import migrate_flow

        try:
            self.result = migrate_flow(**self.kwargs)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc


def _paused(store: MetadataStore, name: str) -> bool:
    from prefect.client.orchestration import get_client

    doc = store.get(name)
    if doc is None or not doc.flow_run_id or not doc.ready:
        return False
    with get_client(sync_client=True) as c:
        fr = c.read_flow_run(doc.flow_run_id)  # type: ignore[arg-type]
    return bool(fr.state and fr.state.is_paused())


def _start(path: Path, dst_client: MongoClient, name: str, **kw: Any) -> tuple[FlowThread, MetadataStore]:
    t = FlowThread(config=str(path), skip_prechecks=kw.pop("skip_prechecks", True), **kw)
    t.start()
    store = MetadataStore(dst_client)
    assert wait_until(lambda: _paused(store, name) or not t.is_alive(), 90, 0.3), "flow never paused for the decision"
    assert t.error is None, t.error
    return t, store


def _resume(store: MetadataStore, name: str, **decision: Any) -> None:
    from prefect.flow_runs import resume_flow_run

    from flows.migrate import decision_input

    doc = store.load(name)
    resume_flow_run(doc.flow_run_id, run_input=decision_input(**decision))  # type: ignore[arg-type]


def test_cutover_through_resume_flow_run(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    tmp_path: Path,
) -> None:
    seed_writer_data(src_client, dbname)
    path = write_config(tmp_path, pair, dbname)
    name = f"flow-{dbname}"[:60]
    writer = Writer(src_client, dbname, rate_sleep=0.002)
    writer.start()
    t, store = _start(path, dst_client, name, skip_prechecks=False, report_dir=str(tmp_path / "report"))
    writer.stop()
    # Not confirmed: refused, the flow pauses again.
    _resume(store, name, action="cutover", approver="alice", reason="no box", confirm=False)
    assert wait_until(lambda: any(d.action == "cutover-refused" for d in store.load(name).decisions), 30)
    assert wait_until(lambda: _paused(store, name), 30)
    before = store.load(name).window_closes_at
    _resume(store, name, action="extend", approver="bob", reason="weekend")
    assert wait_until(lambda: store.load(name).extensions == 1, 30)
    assert (store.load(name).window_closes_at - before).total_seconds() == pytest.approx(24 * 3600, abs=5)  # type: ignore[operator]
    assert wait_until(lambda: _paused(store, name), 30)
    _resume(store, name, action="cutover", approver="carol", reason="go", confirm=True)
    t.join(120)
    assert not t.is_alive(), f"flow still running: {store.load(name).phase} {store.load(name).lag}"
    assert t.error is None, t.error
    assert t.result["phase"] == "complete"
    cut = t.result["cutover"]
    assert cut["destination_ready_at"] and cut["completed_at"] and cut["verification_equal"] is True
    doc = store.load(name)
    assert [d.action for d in doc.decisions] == ["cutover-refused", "extend", "cutover"]
    assert doc.decisions[-1].approver == "carol"
    assert store.lock_holder() is None
    assert_same_data(src_client, dst_client, [dbname])
    # unique index restored at cutover
    assert dst_client[dbname]["uniq"].index_information()["email_1"].get("unique") is True
    assert (tmp_path / "report" / "migration-report.html").exists()
    assert cut["report"] == str(tmp_path / "report" / "migration-report.html")
    assert store.last_report(name, "migration")["charts"]["lag"]["samples"] >= 1  # type: ignore[index]


def test_flow_resumes_a_cutover_whose_process_was_killed(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    tmp_path: Path,
) -> None:
    import signal

    from tests.reliability.test_cutover_resume import spawn_cutover

    seed_writer_data(src_client, dbname)
    path = write_config(tmp_path, pair, dbname, quiesce_seconds=1.5)
    name = f"flow-{dbname}"[:60]
    store = MetadataStore(dst_client)
    writer = Writer(src_client, dbname, rate_sleep=0.002)
    writer.start()
    proc = spawn_cutover(path, "frank")
    try:
        assert wait_until(lambda: (d := store.get(name)) is not None and d.phase == Phase.CUTTING_OVER, 90, 0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        writer.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # The same migration started again as a flow: the approved cutover goes on, no new pause.
    t = FlowThread(config=str(path), skip_prechecks=False)
    t.start()
    t.join(120)
    assert not t.is_alive(), f"flow still running: {store.load(name).phase}"
    assert t.error is None, t.error
    assert t.result["phase"] == "complete" and t.result["cutover"]["verification_equal"] is True
    assert [d.action for d in store.load(name).decisions] == ["cutover", "cutover-resumed"]
    assert_same_data(src_client, dst_client, [dbname])


def test_cutover_through_the_cli_and_refusal_when_not_ready(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    tmp_path: Path,
) -> None:
    src_client[dbname]["c"].insert_many([{"_id": i} for i in range(100)])
    path = write_config(tmp_path, pair, dbname)
    name = f"flow-{dbname}"[:60]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    cli = [sys.executable, "-m", "flows.cli"]
    # Before the migration exists: a clear one-line error, exit 2.
    r = subprocess.run(
        [*cli, "cutover", "--config", str(path), "--yes"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and name in r.stderr
    t, store = _start(path, dst_client, name)
    r = subprocess.run(
        [*cli, "cutover", "--config", str(path), "--yes", "--approver", "dave", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert '"queued"' in r.stdout  # no Prefect API in that process: relayed through the metadata store
    t.join(120)
    assert t.error is None, t.error
    assert t.result["phase"] == "complete"
    assert store.load(name).decisions[-1].approver == "dave"
    # A second cutover request is harmless.
    r = subprocess.run(
        [*cli, "cutover", "--config", str(path), "--yes"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert r.returncode == 0 and "already complete" in r.stdout


def test_refused_while_lagging(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    tmp_path: Path,
) -> None:
    src_client[dbname]["c"].insert_one({"_id": 1})
    path = write_config(tmp_path, pair, dbname)
    name = f"flow-{dbname}"[:60]
    t, store = _start(path, dst_client, name)
    from flows.operate import decision_cli

    store.update(name, lag={"lag_seconds": 999.0})  # as the sync reports when far behind
    time.sleep(0)  # the sync rewrites it every 2 s; the CLI reads it now
    code = decision_cli(path, "cutover", approver="erin", reason="", yes=True, as_json=True)
    assert code == 1
    _resume(store, name, action="cancel", approver="erin", reason="done testing")
    t.join(60)
    assert t.result["phase"] == "cancelled"
    assert store.lock_holder() is None


def test_window_expiry(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    tmp_path: Path,
) -> None:
    src_client[dbname]["c"].insert_one({"_id": 1})
    path = write_config(tmp_path, pair, dbname, window_hours=6 / 3600)  # a six-second window
    from flows.localservers import free_port

    port = free_port()
    data = yaml.safe_load(path.read_text())
    data["tuning"]["metrics_port"] = port
    path.write_text(yaml.safe_dump(data))
    name = f"flow-{dbname}"[:60]
    t, store = _start(path, dst_client, name)
    # While the migration waits for its decision, the Prometheus endpoint serves the named metrics.
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for metric in (
        "livemigrate_documents_copied",
        "livemigrate_events_applied",
        "livemigrate_lag_seconds",
        "livemigrate_phase",
    ):
        assert metric in body, metric
    assert f'livemigrate_documents_copied{{direction="forward",migration="{name}",namespace="{dbname}.c"}} 1.0' in body
    assert f'livemigrate_phase{{direction="forward",migration="{name}",phase="syncing"}} 1.0' in body
    t.join(60)
    assert t.error is None, t.error
    assert t.result["phase"] == "expired"
    doc = store.load(name)
    assert doc.phase == Phase.EXPIRED and "--restart" in (doc.error or "")
    assert dst_client[dbname]["c"].count_documents({}) == 1  # the destination keeps its data
    assert store.lock_holder() is None


def test_a_difference_found_during_the_sync_refuses_the_cutover_in_the_form_and_the_cli(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 17: a document changed on the destination during the sync is named (namespace and _id) before
    the cutover; `livemigrate cutover` and the form both refuse with that reason; once the destination is put
    right the same form cuts over, re-reading only what changed, and the outcome carries the downtime."""
    import json

    from flows.operate import decision_cli, describe_cli

    src_client[dbname]["c"].insert_many([{"_id": i, "v": i} for i in range(1200)])
    path = write_config(tmp_path, pair, dbname)
    cfg = yaml.safe_load(path.read_text())
    cfg["verification"] = {"interval_seconds": 0.3, "rehash_seconds": 1}  # planted after a proof: hashed again
    path.write_text(yaml.safe_dump(cfg))
    name = f"flow-{dbname}"[:60]
    t, store = _start(path, dst_client, name)
    dst_client[dbname]["c"].update_one({"_id": 600}, {"$set": {"v": "planted"}})

    def differing() -> list[dict[str, Any]]:
        return list((store.load(name).continuous_verification or {}).get("differing") or [])

    assert wait_until(lambda: bool(differing()), 60, 0.3), store.load(name).continuous_verification
    assert differing() == [{"ns": f"{dbname}.c", "_id": "600", "kind": "changed"}]
    code = decision_cli(path, "cutover", approver="erin", reason="", yes=True, as_json=True)
    assert code == 1
    capsys.readouterr()
    assert describe_cli(path, as_json=False, name=None) == 0
    shown = capsys.readouterr().out
    assert "_id 600 (changed)" in shown and "downtime estimate" in shown, shown
    assert "1 (cutover refused until resolved" in " ".join(shown.split()), shown
    from prefect.client.orchestration import get_client

    from flows.artifacts import artifact_key

    def published() -> list[Any]:
        with get_client(sync_client=True) as c:
            arts = c.read_artifacts(limit=200)
        return [a for a in arts if a.key == artifact_key(name, "differences")]

    assert wait_until(lambda: bool(published()), 20, 0.5), "no differences artifact"
    art = published()[0]
    assert str(art.flow_run_id) == store.load(name).flow_run_id and "_id `600`" in str(art.data)
    _resume(store, name, action="cutover", approver="erin", reason="go", confirm=True)
    assert wait_until(lambda: any(d.action == "cutover-refused" for d in store.load(name).decisions), 30)
    refusal = next(d for d in store.load(name).decisions if d.action == "cutover-refused")
    assert "differ with no change in flight" in refusal.reason
    dst_client[dbname]["c"].update_one({"_id": 600}, {"$set": {"v": 600}})
    assert wait_until(lambda: not differing(), 60, 0.3)
    assert wait_until(lambda: _paused(store, name), 30, 0.3)
    _resume(store, name, action="cutover", approver="erin", reason="fixed", confirm=True)
    t.join(120)
    assert t.error is None, t.error
    assert t.result["phase"] == "complete"
    down = t.result["cutover"]["downtime"]
    assert down["final_verification"] == "incremental" and down["seconds"] > 0
    assert json.loads(json.dumps(t.result["downtime"])) == down  # describe carries it too
    capsys.readouterr()
    assert describe_cli(path, as_json=False, name=None) == 0
    assert "downtime" in capsys.readouterr().out
    assert_same_data(src_client, dst_client, [dbname])


def test_a_sync_that_fails_while_paused_fails_the_run_from_the_engines_signal(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    tmp_path: Path,
) -> None:
    """The change stream's history is lost while the run waits for its decision (ChangeStreamHistoryLost,
    code 286, injected with failCommand): the relay wakes the pause, and the flow fails with the sync's own
    error, read from the engine, not from a reason string in the form's input."""
    from tasks.errors import HistoryLostError
    from tests.helpers import fail_command

    src_client[dbname]["c"].insert_one({"_id": 1})
    path = write_config(tmp_path, pair, dbname)
    name = f"flow-{dbname}"[:60]
    t, store = _start(path, dst_client, name)
    with fail_command(src_client, {"times": 20}, failCommands=["getMore"], errorCode=286, appName="livemigrate"):
        t.join(60)
    assert not t.is_alive()
    assert isinstance(t.error, HistoryLostError), t.error
    doc = store.load(name)
    assert doc.phase == Phase.FAILED and "history lost" in (doc.error or "")
    assert [d.action for d in doc.decisions] == []  # nobody decided anything: no cancel was recorded
    # The failed run says what failed, the clusters' state and the next command, where the engineer looks.
    from prefect.client.orchestration import get_client

    from flows.artifacts import artifact_key

    with get_client(sync_client=True) as c:
        outcome = [a for a in c.read_artifacts(limit=200) if a.key == artifact_key(name, "outcome")]
    assert outcome, "no outcome artifact for the failed run"
    text = str(outcome[-1].data)
    assert "failed" in text and "history lost" in text and "open for writes" in text, text
    assert f"livemigrate migrate --config {path}" in text, text
