"""deployments/start_run.py, the CI starter: it fails when the run it started fails, and sends the reviewed config.

The flow run is driven by the test through the Prefect API (states and the stage task
runs the migrate flow creates), so no worker or database is needed; the script is the
real one, against the temporary Prefect server.
"""

from __future__ import annotations

import ast
import contextvars
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from deployments import start_run

pytestmark = [pytest.mark.flows, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deployments" / "start_run.py"
DEPLOYMENT = "migrate/start-run-test"
CONFIG = {"name": "orders-to-atlas", "link": "prod", "namespaces": {"include": ["shop.*"]}}
PASSWORD = "hunter2-Pa55word"


class Started:
    """The script's main() in a thread, as the CI job runs it; the test plays the worker."""

    def __init__(self, argv: list[str], outputs: Path) -> None:
        self.code: int | None = None
        self.outputs = outputs
        ctx = contextvars.copy_context()  # the harness's Prefect settings live in a context variable
        self.thread = threading.Thread(target=lambda: ctx.run(self._run, argv), daemon=True)
        self.thread.start()

    def _run(self, argv: list[str]) -> None:
        self.code = start_run.main(argv)

    def flow_run_id(self, timeout: float = 10.0) -> UUID:
        """The run the script created, from the step output it writes for GitHub."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.outputs.read_text() if self.outputs.exists() else ""
            for line in text.splitlines():
                if line.startswith("flow_run_id="):
                    return UUID(line.split("=", 1)[1])
            assert self.thread.is_alive(), f"the script exited ({self.code}) before creating a run"
            time.sleep(0.02)
        raise AssertionError("the script created no flow run")

    def still_waiting(self, seconds: float = 0.3) -> bool:
        """True when the script has not exited after a few of its polls."""
        self.thread.join(seconds)
        return self.thread.is_alive()

    def result(self, timeout: float = 15.0) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the script is still waiting"
        return self.code


@pytest.fixture(scope="module")
def deployment() -> str:
    """A deployment of a flow named `migrate`, on no pool: nothing runs it but the test."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("migrate")
        client.create_deployment(flow_id, DEPLOYMENT.split("/")[1], parameters={"restart": False})
    return DEPLOYMENT


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "orders.yaml"
    p.write_text("# approved in review\n" + yaml.safe_dump(CONFIG))
    return p


@pytest.fixture
def github(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    files = {"GITHUB_OUTPUT": tmp_path / "out.txt", "GITHUB_STEP_SUMMARY": tmp_path / "summary.md"}
    for k, v in files.items():
        monkeypatch.setenv(k, str(v))
    yield files


def _argv(config: Path, deployment: str, *extra: str) -> list[str]:
    return ["--config", str(config), "--deployment", deployment, "--poll-interval", "0.05", *extra]


def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _task_run(client: Any, flow_run_id: UUID, name: str, state: Any) -> UUID:
    """A stage task run as the migrate flow names it (``<task>-<key>``); one task key for all, so one dynamic key each."""
    from prefect import task

    @task(name=name)
    def stage() -> None:  # pragma: no cover - never runs; gives the task run its name and key
        return None

    return UUID(str(client.create_task_run(stage, flow_run_id, name, name=f"{name}-0", state=state).id))


def test_a_run_whose_prechecks_fail_fails_the_job_with_one_line(
    deployment: str, config_file: Path, github: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.states import Failed, Running

    started = Started(
        _argv(config_file, deployment, "--timeout", "30", "--tag", "github-run-7"), github["GITHUB_OUTPUT"]
    )
    run_id = started.flow_run_id()
    with _client() as client:
        run = client.read_flow_run(run_id)
        assert run.parameters["config"] == CONFIG  # inline: the worker reads exactly the reviewed content
        assert run.parameters["restart"] is False
        assert "github-run-7" in run.tags
        assert any(t.startswith("config-sha256:") for t in run.tags)
        client.set_flow_run_state(run_id, Running(), force=True)
        prechecks = _task_run(client, run_id, "prechecks", Running())
        assert started.still_waiting(), "exited while the prechecks were running"
        client.set_task_run_state(prechecks, Failed(message="prechecks failed: versions, oplog-window"), force=True)
        client.set_flow_run_state(
            run_id,
            Failed(
                message="Flow run encountered an exception: TerminalError: prechecks failed: versions, oplog-window"
            ),
            force=True,
        )
        name = run.name
    assert started.result() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert name in err[0] and str(run_id) in err[0]
    assert "Failed" in err[0] and "prechecks failed: versions, oplog-window" in err[0]
    assert "Traceback" not in err[0]
    assert "Not reached" in github["GITHUB_STEP_SUMMARY"].read_text()


def test_a_run_that_reaches_the_sync_passes_only_then(
    deployment: str, config_file: Path, github: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from prefect.states import Completed, Running

    started = Started(_argv(config_file, deployment, "--timeout", "30", "--restart"), github["GITHUB_OUTPUT"])
    run_id = started.flow_run_id()
    with _client() as client:
        assert client.read_flow_run(run_id).parameters["restart"] is True
        client.set_flow_run_state(run_id, Running(), force=True)
        for stage in ("prechecks", "begin"):
            _task_run(client, run_id, stage, Completed())
        _task_run(client, run_id, "clone", Running())
        assert started.still_waiting(), "exited before the sync started"
        _task_run(client, run_id, "wait-until-ready", Running())
    assert started.result() == 0
    out = capsys.readouterr().out
    assert "reached sync: task wait-until-ready is Running" in out
    sha = hashlib.sha256(config_file.read_bytes()).hexdigest()
    summary = github["GITHUB_STEP_SUMMARY"].read_text()
    assert sha in out and sha in summary and str(run_id) in summary
    assert f"config_sha256={sha}" in github["GITHUB_OUTPUT"].read_text()


def test_until_paused_waits_past_the_sync_for_the_cutover_form(
    deployment: str, config_file: Path, github: dict[str, Path]
) -> None:
    from prefect.states import Paused, Running

    started = Started(_argv(config_file, deployment, "--until", "paused", "--timeout", "30"), github["GITHUB_OUTPUT"])
    run_id = started.flow_run_id()
    with _client() as client:
        client.set_flow_run_state(run_id, Running(), force=True)
        _task_run(client, run_id, "wait-until-ready", Running())
        assert started.still_waiting(), "exited at the sync, not at the pause"
        client.set_flow_run_state(run_id, Paused(), force=True)
    assert started.result() == 0


def test_a_run_nobody_picks_up_times_out_with_exit_1(
    deployment: str, config_file: Path, github: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    started = Started(_argv(config_file, deployment, "--timeout", "0.5"), github["GITHUB_OUTPUT"])
    assert started.result() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "timed out after 0.5 s waiting for sync" in err[0] and "Scheduled" in err[0], err


def _flow_runs(deployment: str) -> int:
    with _client() as client:
        dep = client.read_deployment_by_name(deployment)
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        return len(client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))))


@pytest.mark.parametrize(
    "config",
    [
        {**CONFIG, "source": {"uri": f"mongodb://migrator:{PASSWORD}@db1:27017/"}},
        {**CONFIG, "destination": {"atlas": {"project_id": "p", "cluster_name": "c", "api_private_key": PASSWORD}}},
        {**CONFIG, "namespaces": {"include": [f"mongodb+srv://u:{PASSWORD}@x/"]}},
        {"name": "no-credentials", "source": {"secret": "src"}},
    ],
    ids=["uri", "atlas-key", "uri-elsewhere", "no-secret-or-link"],
)
def test_a_config_with_credentials_is_refused_before_any_run(
    deployment: str, tmp_path: Path, config: dict[str, Any]
) -> None:
    """Run as CI runs it: `python deployments/start_run.py`; exit 2, one line, nothing echoed, no run created."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    before = _flow_runs(deployment)
    from prefect.settings import get_current_settings

    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}  # the harness's server
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(path), "--deployment", deployment],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("start_run: error: "), proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
    assert _flow_runs(deployment) == before


def test_a_missing_deployment_is_exit_2(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert start_run.main(["--config", str(config_file), "--deployment", "migrate/nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'migrate/nowhere' not found" in err[0], err


def test_the_script_needs_only_prefect_and_pyyaml() -> None:
    """CI installs only `prefect==3.9.1`: no livemigrate package may be imported."""
    tree = ast.parse(SCRIPT.read_text())
    roots = {
        (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert roots - set(sys.stdlib_module_names) <= {"prefect", "yaml"}, roots


def test_the_stage_policy() -> None:
    """judge(): what each --until accepts, on one poll's facts."""
    snap = start_run.Snapshot
    running = ("RUNNING", "Running", "")
    done = ("COMPLETED", "Completed", "")
    clone_running = snap(*running, (("prechecks", *done), ("begin", *done), ("clone", *running)))
    assert start_run.judge(clone_running, "clone").kind == "reached"
    assert start_run.judge(clone_running, "sync").kind == "waiting"
    assert start_run.judge(snap("PAUSED", "Suspended", "", ()), "sync").kind == "reached"
    assert start_run.judge(snap(*running, (("cutover", *running),)), "sync").kind == "reached"  # a resumed cutover
    assert start_run.judge(snap(*running, (("wait-until-ready", *running),)), "paused").kind == "waiting"
    completed = start_run.judge(snap("COMPLETED", "Completed", "", (("cutover", *done),)), "paused")
    assert completed.kind == "ended" and "Completed" in completed.line
    pending_clone = snap(*running, (("prechecks", *done), ("clone", "PENDING", "Pending", "")))
    assert start_run.judge(pending_clone, "clone").kind == "waiting"
    failed = start_run.judge(snap(*running, (("prechecks", "FAILED", "Failed", "prechecks failed: fcv"),)), "sync")
    assert failed.kind == "task-failed" and "prechecks failed: fcv" in failed.line
    assert start_run.stage_of("wait-until-ready-0") == "wait-until-ready"
    assert start_run.stage_of("clone-3f2") == "clone"
    assert start_run.stage_of("run-prechecks-0") is None


def test_a_failed_stage_task_ends_the_wait_even_if_the_run_never_reports_failed() -> None:
    """The grace for the run's own final state is bounded; five API errors in a row end the wait too."""
    ticks = iter(range(0, 1000, 3))
    stuck = start_run.Snapshot("RUNNING", "Running", "", (("prechecks", "FAILED", "Failed", "prechecks failed: fcv"),))
    code, line = start_run.wait_for(lambda: stuck, "sync", 600, 0, lambda _: None, clock=lambda: float(next(ticks)))
    assert code == 1 and line.startswith("task prechecks Failed: prechecks failed: fcv"), line

    def down() -> start_run.Snapshot:
        raise ConnectionError("refused")

    code, line = start_run.wait_for(down, "sync", 600, 0, lambda _: None)
    assert code == 1 and "lost the Prefect API (ConnectionError: refused)" in line
