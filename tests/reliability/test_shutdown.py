"""SIGTERM and Ctrl-C stop a migrator cleanly: checkpoint of the last applied batch, lock kept, one line, resumable.

The contract (tasks/shutdown.py): the sync thread finishes the batch in hand and writes its
checkpoint; the migration keeps its phase and the destination lock; the process prints one line
on stderr (never a traceback) and exits with 128 + the signal number; running it again converges.
`livemigrate migrate`, stopped by a signal or by an error, leaves only its own lines on the terminal:
Prefect's (run created, states, the flow's traceback, "Crash detected!") go to the run's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cfg_file(tmp_path: Path, pair: tuple[Deployment, Deployment], db: str) -> tuple[Path, str]:
    name = f"stop-{db}"[:60]
    data = {
        "name": name,
        "source": {"uri": pair[0].uri},
        "destination": {"uri": pair[1].uri},
        "namespaces": {"include": [f"{db}.*"]},
        "cutover": {"max_lag_seconds": 5, "ready_after_seconds": 0.5},
        "tuning": {
            "workers": 2,
            "partition_docs": 1000,
            "partitioning": "ranges",
            "connect_timeout_seconds": 5,
            "sync_batch_events": 200,
        },
    }
    path = tmp_path / "stop.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, name


def _spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _assert_clean_stop(proc: subprocess.Popen[str], sig: signal.Signals, prefix: str) -> tuple[str, str]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{prefix} stopped by {sig.name}"), err[-3000:]
    return out, err


def _assert_only_livemigrate_lines(err: str) -> None:
    """Default terminal output: the CLI's lines and one-line warnings, nothing of Prefect's."""
    for noise in ("Beginning flow run", "Finished in state", "Crash detected!", "EventsWorker", "Traceback"):
        assert noise not in err, err[-3000:]
    assert all(line.startswith("livemigrate:") for line in err.strip().splitlines()), err[-3000:]


def _cli_env() -> dict[str, str]:
    """The test harness's Prefect server, and Prefect logging at its default level (the suite lowers it)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_LOGGING_LEVEL": "INFO"}


def _assert_checkpoint_is_last_batch(store: MetadataStore, name: str) -> int:
    """The checkpoint and the lag record written at the stop agree: nothing applied past the checkpoint."""
    cp = store.load_checkpoint(name)
    doc = store.load(name)
    assert cp is not None and cp.applied_events > 0
    assert cp.applied_events == doc.lag.applied_events, (cp.applied_events, doc.lag.applied_events)
    assert cp.cluster_time is not None and doc.lag.applied_time == cp.cluster_time["t"]
    # Consistent lock rule: the migration keeps the destination lock and its phase (not failed).
    assert doc.phase == Phase.SYNCING
    holder = store.lock_holder()
    assert holder is not None and holder["holder"] == name
    return cp.applied_events


def _resume_and_compare(cfg: Path, src: MongoClient[Any], dst: MongoClient[Any], db: str) -> None:
    proc = _spawn(["tests.migrator_proc", str(cfg), "drain"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert_same_data(src, dst, [db])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_sync_stops_cleanly_then_resumes(
    sig: signal.Signals,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    tmp_path: Path,
) -> None:
    seed_writer_data(src_client, dbname)
    cfg, name = _cfg_file(tmp_path, pair, dbname)
    store = MetadataStore(dst_client)
    writer = Writer(src_client, dbname, seed=3, rate_sleep=0.002)
    proc = _spawn(["tests.migrator_proc", str(cfg), "sync"])
    try:
        assert proc.stdout is not None
        while "SYNCING" not in (line := proc.stdout.readline()):
            assert line, proc.stderr.read() if proc.stderr else "migrator exited"
        writer.start()
        assert wait_until(lambda: (cp := store.load_checkpoint(name)) is not None and cp.applied_events > 50, 30)
        proc.send_signal(sig)
        out, _ = _assert_clean_stop(proc, sig, "migrator:")
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = [ln for ln in out.splitlines() if ln.startswith("STOPPED")]
    assert stopped, out
    fields = dict(kv.split("=") for kv in stopped[0].split()[1:])
    assert fields["stopped_cleanly"] == "True"
    # What the process applied is exactly what its last checkpoint says.
    assert fields["applied"] == fields["checkpoint"]
    assert _assert_checkpoint_is_last_batch(store, name) == int(fields["checkpoint"])
    time.sleep(0.5)  # the source moves on while nobody syncs
    writer.stop()
    _resume_and_compare(cfg, src_client, dst_client, dbname)


@pytest.mark.flows
def test_cli_migrate_sigterm_stops_cleanly_then_resumes(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    tmp_path: Path,
) -> None:
    """The real `livemigrate migrate` (Prefect flow in the CLI process), stopped while it syncs."""
    seed_writer_data(src_client, dbname)
    cfg, name = _cfg_file(tmp_path, pair, dbname)
    store = MetadataStore(dst_client)
    env = _cli_env()
    writer = Writer(src_client, dbname, seed=4, rate_sleep=0.002)
    writer.start()
    proc = _spawn(["flows.cli", "migrate", "--config", str(cfg), "--skip-prechecks"], env)
    try:
        synced = lambda: (d := store.get(name)) is not None and d.ready and d.lag.applied_events > 50  # noqa: E731
        assert wait_until(synced, 90, 0.2), proc.stderr.read() if proc.poll() is not None and proc.stderr else "no sync"
        proc.send_signal(signal.SIGTERM)
        _, err = _assert_clean_stop(proc, signal.SIGTERM, "livemigrate:")
        _assert_only_livemigrate_lines(err)
    finally:
        if proc.poll() is None:
            proc.kill()
        writer.stop_event.set()
    _assert_checkpoint_is_last_batch(store, name)
    writer.stop()
    # The run itself: stopped, not crashed (no "Crash detected!" at ERROR in its log either).
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = [
            r
            for r in client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=20)
            if r.parameters.get("config") == str(cfg)
        ]
        assert len(runs) == 1 and runs[0].state is not None, runs
        assert runs[0].state.is_cancelled(), runs[0].state
        assert "stopped by SIGTERM" in (runs[0].state.message or ""), runs[0].state.message
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])))
    # The flow run itself never logs a crash.  A task run the signal lands in still does: Prefect's task engine
    # reports every TerminationSignal inside a task as "Crash detected!" (prefect/task_engine.py handle_crash);
    # the flow then ends Cancelled.  Known gap, in the issue notes.
    flow_crash = [x.message for x in logs if "Crash detected" in x.message and x.task_run_id is None]
    assert not flow_crash, [x.message for x in logs]
    _resume_and_compare(cfg, src_client, dst_client, dbname)


@pytest.mark.flows
def test_cli_migrate_error_is_one_line_and_prefect_logs_go_to_the_run(
    prefect_harness: None, pair: tuple[Deployment, Deployment], dbname: str, tmp_path: Path
) -> None:
    """A flow that fails (the source is unreachable): one error line on the terminal, the run log keeps Prefect's."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    cfg = tmp_path / "unreachable.yaml"
    data = {
        "name": f"err-{dbname}"[:60],
        "source": {"uri": "mongodb://127.0.0.1:1/?directConnection=true"},  # nothing listens on port 1
        "destination": {"uri": pair[1].uri},
        "namespaces": {"include": [f"{dbname}.*"]},
        "tuning": {"connect_timeout_seconds": 0.5},
    }
    cfg.write_text(yaml.safe_dump(data))
    proc = _spawn(["flows.cli", "migrate", "--config", str(cfg), "--skip-prechecks"], _cli_env())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-3000:]
    _assert_only_livemigrate_lines(err)
    assert err.strip().splitlines()[-1].startswith("livemigrate: error: source (127.0.0.1:1): cannot connect"), err
    with get_client(sync_client=True) as client:
        runs = [
            r
            for r in client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=20)
            if r.parameters.get("config") == str(cfg)
        ]
        assert len(runs) == 1 and runs[0].state is not None and runs[0].state.is_failed()
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])))
    messages = "\n".join(log.message for log in logs)
    assert "Beginning flow run" in messages and "Finished in state Failed" in messages, messages
