"""Time to the first document: from `livemigrate migrate` to the first copied document on the destination.

Why (issue 20): a new user waited 17-27 s for the first document, most of it for a temporary Prefect server
and imports, while the copy itself took ~12 s for 50,000 documents.  This runs the real command
(`.venv/bin/livemigrate migrate --config F`) as a subprocess, the way a person does, and polls the
destination every 50 ms from the benchmark process: the migration record (the prechecks are over, begin has
started), its change-stream start point, its partition plan (``prepared``), the first document of any
benchmark collection and the flow run's id (the flow's begin stage records it: the orchestration is up).
Then SIGTERM stops it (a clean stop: exit 143).  Each way of running it ``runs`` times, medians:

- ``embedded``: no ``PREFECT_API_URL``, so a temporary Prefect server is needed (the default for a new user);
- ``embedded_skip_prechecks``: the same with ``--skip-prechecks``;
- ``configured_server``: ``PREFECT_API_URL`` names a Prefect server that is already running;
- ``engine_alone``: the baseline, the same steps with no CLI and no Prefect (``python -m bench.startup_bench
  engine CONFIG``: prechecks, ``Migration.begin``, ``Migration.clone``), timed the same way.

Also measured in fresh processes: the CLI's import time and how long Prefect's own temporary server
(``SubprocessASGIServer``, what a flow call starts when no API is configured) takes to answer.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import Servers, config_dict, drop_databases, median, ratio, reset_destination
from bench.data import SHAPES, seed_database
from flows.localservers import REPO_ROOT
from tasks.config import METADATA_DB

log = logging.getLogger("bench.startup")
DB = "bench_start"
POLL_S = 0.05
TARGET_S = 5.0
MODES = ("embedded", "embedded_skip_prechecks", "configured_server", "engine_alone")
MILESTONES = ("migration_record", "start_point", "partition_plan", "first_document", "flow_run_id")
CLI = REPO_ROOT / ".venv" / "bin" / "livemigrate"

SERVER_START = """
import time
t0 = time.perf_counter()
from prefect.server.api.server import SubprocessASGIServer
s = SubprocessASGIServer()
t1 = time.perf_counter()
s.start()
t2 = time.perf_counter()
print(round(t1 - t0, 3), round(t2 - t1, 3))
s.stop()
"""


def _env(api_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _python(code: str, env: dict[str, str], timeout: float = 120) -> tuple[float, str]:
    """Wall seconds of a fresh ``python -c code`` and its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"python -c failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, proc.stdout


def import_times(runs: int) -> dict[str, Any]:
    """Fresh-process wall time of a bare interpreter, the CLI module, and everything the migrate command
    imports before the engine starts (Prefect is imported later, once the first batch is copied)."""
    env = _env(None)
    codes = {
        "bare_python": "pass",
        "import_flows_cli": "import flows.cli",
        "import_migrate_command": "import flows.cli, flows.operate, flows.headstart, flows.tempserver",
        "import_prefect_flow": "import flows.migrate",
    }
    out: dict[str, Any] = {}
    for key, code in codes.items():
        samples = [_python(code, env)[0] for _ in range(runs)]
        out[key] = {"seconds": [round(x, 3) for x in samples], "median": round(median(samples), 3)}
    return out


def server_start(runs: int) -> dict[str, Any]:
    """Prefect's temporary server, as a flow call starts it: import its code, start it, wait for /health."""
    imports: list[float] = []
    healthy: list[float] = []
    for _ in range(runs):
        _, stdout = _python(SERVER_START, _env(None))
        a, b = stdout.split()
        imports.append(float(a))
        healthy.append(float(b))
    return {
        "import_seconds": [round(x, 3) for x in imports],
        "start_to_healthy_seconds": [round(x, 3) for x in healthy],
        "import_median": round(median(imports), 3),
        "start_to_healthy_median": round(median(healthy), 3),
    }


def _command(mode: str, path: Path) -> list[str]:
    if mode == "engine_alone":
        return [sys.executable, "-m", "bench.startup_bench", "engine", str(path)]
    return [str(CLI), "migrate", "--config", str(path)] + (["--skip-prechecks"] if "skip" in mode else [])


def _empty_destination(sv: Servers, colls: list[Any]) -> None:
    """Drop the copy and the metadata store; again while an insert the stopped process sent still lands."""
    for _ in range(20):
        reset_destination(sv, DB)
        time.sleep(0.5)
        if all(c.find_one({}, {"_id": 1}) is None for c in colls):
            return
    raise RuntimeError("the destination keeps receiving documents after the migrator stopped")


def one_run(sv: Servers, tmp: Path, name: str, mode: str, api_url: str | None, wait_flow: bool) -> dict[str, Any]:
    """Start the command, watch the destination until the first document (and the flow run), stop it."""
    colls = [sv.dst[DB][s.name] for s in SHAPES]
    _empty_destination(sv, colls)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_dict(sv, name, DB)))
    migrations = sv.dst[METADATA_DB]["migrations"]
    wanted = {"first_document", "flow_run_id"} if wait_flow and mode != "engine_alone" else {"first_document"}
    seen: dict[str, float] = {}
    stderr_path = tmp / f"{name}.stderr"
    with stderr_path.open("w") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(  # noqa: S603 - our own CLI or module
            _command(mode, path),
            cwd=REPO_ROOT,
            env=_env(api_url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            while not wanted <= seen.keys():
                now = time.perf_counter() - t0
                if proc.poll() is not None:
                    raise RuntimeError(f"{mode} exited {proc.returncode}: {stderr_path.read_text()[-2000:]}")
                if now > 180:
                    raise RuntimeError(f"{mode}: {sorted(wanted - seen.keys())} not seen in 180 s")
                doc = migrations.find_one({"_id": name}, {"start_time": 1, "prepared": 1, "flow_run_id": 1})
                if doc is not None:
                    seen.setdefault("migration_record", now)
                    for key, field in (("start_point", "start_time"), ("partition_plan", "prepared")):
                        if doc.get(field):
                            seen.setdefault(key, now)
                    if doc.get("flow_run_id"):
                        seen.setdefault("flow_run_id", now)
                if "first_document" not in seen and any(c.find_one({}, {"_id": 1}) is not None for c in colls):
                    seen["first_document"] = now
                time.sleep(POLL_S)
        finally:
            stopped = time.perf_counter()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    out = {k: round(seen[k], 3) for k in MILESTONES if k in seen}
    return {**out, "exit_code": code, "stop_seconds": round(time.perf_counter() - stopped, 3)}


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": samples,
        **{
            f"{k}_median": round(median([x[k] for x in samples]), 3) for k in MILESTONES if all(k in x for x in samples)
        },
        "exit_codes": sorted({x["exit_code"] for x in samples}),
    }


def run(
    sv: Servers, tmp: Path, docs: int, runs: int, modes: tuple[str, ...], wait_flow: bool, timing_runs: int
) -> dict[str, Any]:
    """Every mode ``runs`` times, interleaved (mode after mode, then again), on ``docs`` seeded documents."""
    drop_databases(sv.src, DB)
    seed_database(sv.src, DB, docs, seed=9)
    out: dict[str, Any] = {"docs": docs, "runs": runs, "modes": list(modes), "target_seconds": TARGET_S}
    if timing_runs:
        out["imports"] = import_times(timing_runs)
        out["temporary_server"] = server_start(timing_runs)
    server = None
    if "configured_server" in modes:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start(timeout=120)
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for r in range(runs):
            for mode in modes:
                api = server.api_url if server is not None and mode == "configured_server" else None
                x = one_run(sv, tmp, f"bench-start-{mode.replace('_', '-')}-{r}", mode, api, wait_flow)
                log.info("%s run %d: %s", mode, r + 1, x)
                samples[mode].append(x)
    finally:
        if server is not None:
            server.stop()
    for mode in modes:
        out[mode] = _summary(samples[mode])
    drop_databases(sv.src, DB)
    reset_destination(sv, DB)
    cli = "embedded" if "embedded" in modes else modes[0]
    out["headline_mode"] = cli
    out["first_document_median"] = out[cli]["first_document_median"]
    if "engine_alone" in modes and cli != "engine_alone":
        out["ratio_first_document_to_engine"] = ratio(
            out[cli]["first_document_median"], out["engine_alone"]["first_document_median"]
        )
    return out


def engine(config_path: str) -> int:
    """The baseline process: prechecks, begin and clone with the engine alone (stopped by the benchmark)."""
    from checks.prechecks import run_prechecks
    from tasks.config import load_config
    from tasks.migration import Migration

    cfg = load_config(config_path)
    if run_prechecks(cfg, store=True).failed:
        return 1
    with Migration(cfg) as m:
        m.begin()
        m.clone()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "engine":
        sys.exit(engine(sys.argv[2]))
    sys.exit("usage: python -m bench.startup_bench engine CONFIG")
