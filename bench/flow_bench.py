"""Orchestration overhead: the whole `migrate` flow against the engine alone, on the same data.

Why: Prefect must cost little on top of the engine (one task per stage, never
per batch).  Both runs do the same work on the clone data: begin, clone,
sync until ready, cut over (drain, final verification, index restores).  The
engine alone is timed as begin->ready plus the cutover; the flow is timed
from the call to its return, minus the approval pause (from the end of its
`wait-until-ready` task run to the start of its `cutover` task run, read from
the Prefect API), because that wait is a person's, not Prefect's.  The
approval is sent as soon as the run is paused.  The temporary Prefect server
(`prefect_test_harness`) is started before either is timed.  Prechecks are
skipped in the flow: the engine alone has none.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import Servers, Timer, config_dict, engine_config, median, ratio, reset_destination
from tasks.metadata import MetadataStore
from tasks.migration import Migration
from tasks.state import MigrationDoc

log = logging.getLogger("bench.flow")


def engine_alone(sv: Servers, db: str, name: str) -> dict[str, float]:
    """begin -> clone -> ready, then the cutover with the same final verification the flow runs."""
    from checks.verify import run_verification

    cfg = engine_config(sv, name, db)
    t0 = time.perf_counter()
    with Migration(cfg) as m:
        m.begin()
        m.clone()
        if not m.wait_ready(600):
            raise RuntimeError("the engine's sync never became ready")
        t_ready = time.perf_counter()

        def verify(doc: MigrationDoc) -> dict[str, Any]:
            result = run_verification(m.cfg, pending_index_restores=doc.index_restores)
            summary: dict[str, Any] = result.to_dict()
            summary["equal"] = bool(result.equal)
            return summary

        with Timer() as cut:
            res = m.cutover("bench", "benchmark", verify)
        if res.phase.value != "complete":
            raise RuntimeError(f"engine cutover ended {res.phase.value}")
    return {"to_ready": t_ready - t0, "cutover": cut.seconds, "total": t_ready - t0 + cut.seconds}


class _FlowThread(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name="bench-flow")
        self.path = path
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from flows.migrate import migrate_flow

        try:
            self.result = migrate_flow(config=str(self.path), skip_prechecks=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc


def _paused(store: MetadataStore, name: str) -> str | None:
    """The flow run id once the run is paused for its decision."""
    from prefect.client.orchestration import get_client

    doc = store.get(name)
    if doc is None or not doc.flow_run_id or not doc.ready:
        return None
    with get_client(sync_client=True) as c:
        fr = c.read_flow_run(doc.flow_run_id)  # type: ignore[arg-type]
    return doc.flow_run_id if fr.state and fr.state.is_paused() else None


def _stage_times(flow_run_id: str) -> dict[str, Any]:
    """Start/end times of the flow run's task runs, by task name (waits for the API to record them)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as c:
        while True:
            runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))  # type: ignore[list-item]
            by_name = {r.name.rsplit("-", 1)[0]: r for r in runs}
            ready, cut = by_name.get("wait-until-ready"), by_name.get("cutover")
            if ready and cut and ready.end_time and cut.start_time and cut.end_time:
                return {"ready_end": ready.end_time, "cutover_start": cut.start_time, "runs": by_name}
            if time.monotonic() > deadline:
                raise RuntimeError(f"task runs of flow run {flow_run_id} not recorded: {sorted(by_name)}")
            time.sleep(0.5)


def whole_flow(sv: Servers, db: str, name: str, tmp: Path) -> dict[str, float]:
    from prefect.flow_runs import resume_flow_run

    from flows.migrate import decision_input

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config_dict(sv, name, db)))
    store = MetadataStore(sv.dst)
    t0 = time.perf_counter()
    thread = _FlowThread(path)
    thread.start()
    flow_run_id = None
    while thread.is_alive() and flow_run_id is None:
        time.sleep(0.2)
        flow_run_id = _paused(store, name)
    if flow_run_id is None:
        raise RuntimeError(f"the migrate flow ended before its pause: {thread.error or thread.result}")
    resume_flow_run(flow_run_id, run_input=decision_input("cutover", "bench", "benchmark", confirm=True))  # type: ignore[arg-type]
    thread.join(1800)
    total = time.perf_counter() - t0
    if thread.error is not None or not thread.result or thread.result.get("phase") != "complete":
        raise RuntimeError(f"the migrate flow did not complete: {thread.error or thread.result}")
    st = _stage_times(flow_run_id)
    pause = (st["cutover_start"] - st["ready_end"]).total_seconds()
    return {"wall": total, "pause": pause, "total": total - pause}


def run(sv: Servers, db: str, runs: int, tmp: Path) -> dict[str, Any]:
    """Alternate the engine alone and the whole flow ``runs`` times each, under one temporary Prefect server."""
    from prefect.testing.utilities import prefect_test_harness

    engine: list[dict[str, float]] = []
    flows: list[dict[str, float]] = []
    t_start = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=60):
        startup = time.perf_counter() - t_start
        for r in range(runs):
            reset_destination(sv, db)
            engine.append(engine_alone(sv, db, f"bench-engine-{r}"))
            log.info("engine alone run %d: %s", r + 1, engine[-1])
            reset_destination(sv, db)
            flows.append(whole_flow(sv, db, f"bench-flow-{r}", tmp))
            log.info("whole flow run %d: %s", r + 1, flows[-1])
    reset_destination(sv, db)
    e, f = median([x["total"] for x in engine]), median([x["total"] for x in flows])
    return {
        "runs": runs,
        "prefect_server_startup_seconds": round(startup, 2),
        "engine_seconds": [round(x["total"], 3) for x in engine],
        "engine_to_ready_seconds": [round(x["to_ready"], 3) for x in engine],
        "engine_cutover_seconds": [round(x["cutover"], 3) for x in engine],
        "flow_seconds": [round(x["total"], 3) for x in flows],
        "flow_wall_seconds": [round(x["wall"], 3) for x in flows],
        "flow_pause_seconds": [round(x["pause"], 3) for x in flows],
        "engine_seconds_median": round(e, 3),
        "flow_seconds_median": round(f, 3),
        "overhead": round(f / e - 1, 3) if e else 0.0,
        "ratio_flow_to_engine": ratio(f, e),
    }
