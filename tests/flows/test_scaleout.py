"""Scale-out through Prefect (issue 20, item 6): the migrate deployment starts its own clone-worker runs.

Two real `prefect worker start --type process` processes poll the project's work pool on the temporary
Prefect server; the migrate deployment runs with ``tuning.clone_workers: 2`` on the test servers.  The
destination's inserts are slowed with a fail point (``blockConnection``) so the copy lasts long enough
for the clone-worker runs to start and share it.  Half-way, one worker machine is lost: its worker
process and the clone-worker run it executes are killed with SIGKILL; the partitions that run held are
copied again by the others, and the destination still equals the source byte for byte.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from pymongo import MongoClient

from deployments import register
from flows import scaleout
from tasks.config import MigrationConfig, config_from_dict
from tasks.errors import ConfigError
from tasks.metadata import MetadataStore
from tasks.state import Phase
from tests.conftest import Deployment, requires_secantus
from tests.helpers import assert_same_data, configure_fail_command, wait_until

pytestmark = [
    pytest.mark.flows,
    pytest.mark.integration,
    pytest.mark.usefixtures("prefect_harness"),
    requires_secantus("slows the destination's inserts with a fail point"),
]

ROOT = Path(__file__).resolve().parents[2]
NAME = "scaleout"
INSERT_DELAY_MS = 150  # per insert batch of the migrator's: the copy lasts ~10 s, long enough to share
WORKER_CMD = [sys.executable, "-m", "prefect", "worker", "start", "--pool", register.POOL, "--type", "process"]
DOCS, DOC_BYTES, PARTITION_DOCS = 6000, 1000, 200  # 30 partitions


def _deploy(name: str) -> None:
    """Register one deployment as deployments/prefect.yaml says, from this checkout, on the project's pool."""
    from prefect import Flow

    spec = next(
        d
        for d in yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
        if d["name"] == name
    )
    Flow.from_source(source=str(ROOT), entrypoint=spec["entrypoint"]).deploy(
        name=name,
        work_pool_name=register.POOL,
        parameters=spec["parameters"],
        build=False,
        push=False,
        print_next_steps=False,
    )


class Workers:
    """Two `prefect worker start --type process` processes on the pool, each its own process group."""

    def __init__(self, home: Path) -> None:
        from prefect.settings import get_current_settings

        env = {
            **os.environ,
            "PREFECT_API_URL": str(get_current_settings().api.url),  # the harness's server
            "PREFECT_HOME": str(home),
            "PREFECT_WORKER_QUERY_SECONDS": "1",  # default 15: a clone-worker run would wait that long
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        }
        self.logs = [home / f"worker-{i}.log" for i in (1, 2)]
        self.procs = [
            subprocess.Popen(
                # --limit 2: the worker running the migrate flow takes at most one clone-worker run
                [*WORKER_CMD, "--name", f"scaleout-worker-{i}", "--limit", "2"],
                cwd=ROOT,
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for i, log in zip((1, 2), self.logs, strict=True)
        ]

    def online(self) -> bool:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import WorkerStatus

        with get_client(sync_client=True) as client:
            names = {
                w.name for w in client.read_workers_for_work_pool(register.POOL) if w.status == WorkerStatus.ONLINE
            }
        return {"scaleout-worker-1", "scaleout-worker-2"} <= names

    def which(self, pid: int) -> int | None:
        """The index of the worker whose process tree holds ``pid`` (a flow run's process), or None."""
        roots = {p.pid: i for i, p in enumerate(self.procs)}
        while pid > 1:
            if pid in roots:
                return roots[pid]
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return None
            pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        return None

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    register.ensure_work_pool()
    w = Workers(tmp_path_factory.mktemp("prefect-workers"))  # they start while the deployments register
    try:
        for name in ("migrate", "clone-worker"):
            _deploy(name)
        assert wait_until(w.online, 60, 0.5), "the workers did not come online: " + " | ".join(
            log.read_text()[-500:] for log in w.logs
        )
        yield w
    finally:
        w.stop()


def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _pid(run: Any) -> int | None:
    """The flow run's process id, from ``infrastructure_pid`` (``pid``, or ``host:pid`` on some workers)."""
    return int(str(run.infrastructure_pid).rsplit(":", 1)[-1]) if run.infrastructure_pid else None


def _sub_runs(client: Any, parent: UUID) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return list(
        client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
        )
    )


def _owner_pid(owner: str | None) -> int:
    return int((owner or "?:0").split(":")[1])


def _cfg(clone_workers: int = 2) -> MigrationConfig:
    return config_from_dict({"name": NAME, "link": "prod", "tuning": {"clone_workers": clone_workers}})


def test_a_config_mapping_that_carries_a_secret_is_never_forwarded() -> None:
    password = "hunter2-Pa55word"
    for side, endpoint in [
        ("source", {"uri": f"mongodb://u:{password}@db1:27017/"}),
        (
            "destination",
            {"secret": "d", "atlas": {"project_id": "p", "cluster_name": "c", "api_private_key": password}},
        ),
    ]:
        mapping = {"name": NAME, "link": "prod", side: endpoint}
        with pytest.raises(ConfigError) as info:
            scaleout.find_target(_cfg(), mapping, from_deployment=True)
        assert password not in info.value.one_line() and side in info.value.one_line()
    scaleout.check_forwardable({"name": NAME, "link": "prod"})  # a link or secret blocks: fine
    scaleout.check_forwardable("migrations/orders.yaml")  # a path: the worker reads the file
    assert scaleout.find_target(_cfg(0), {"name": NAME, "source": {"uri": "mongodb://u:p@h/"}}, True) is None


def test_without_a_clone_worker_deployment_a_local_run_copies_alone_and_a_deployment_run_is_refused() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("flows.scaleout").addHandler(handler)  # Prefect's logging setup keeps caplog out
    absent = "clone-worker/not-registered"
    try:
        assert scaleout.find_target(_cfg(), "m.yaml", from_deployment=False, deployment=absent) is None
    finally:
        logging.getLogger("flows.scaleout").removeHandler(handler)
    assert any("copying in this process alone" in r.getMessage() for r in records)
    with pytest.raises(ConfigError) as info:
        scaleout.find_target(_cfg(), "m.yaml", from_deployment=True, deployment=absent)
    assert absent in str(info.value) and "deployments.register" in info.value.one_line()


def test_a_clone_worker_deployment_with_no_work_pool_is_refused() -> None:
    with _client() as client:
        client.create_deployment(client.create_flow_from_name("clone-worker"), "scaleout-no-pool")
    with pytest.raises(ConfigError) as info:
        scaleout.find_target(_cfg(), "m.yaml", from_deployment=True, deployment="clone-worker/scaleout-no-pool")
    assert "no work pool to run on" in str(info.value)


def test_runs_nobody_picks_up_are_sub_runs_and_are_cancelled_after_the_clone() -> None:
    """On a pool no worker polls: a warning, the runs stay Scheduled, and settle() cancels them."""
    from prefect import flow

    pool = "scaleout-idle-pool"
    register.ensure_work_pool(pool)
    with _client() as client:
        client.create_deployment(client.create_flow_from_name("clone-worker"), "scaleout-idle", work_pool_name=pool)

    local = scaleout.find_target(_cfg(), "m.yaml", from_deployment=False, deployment="clone-worker/scaleout-idle")
    assert local is not None and local.config == str(Path.cwd() / "m.yaml")  # a terminal's relative path: absolute

    @flow(name="scaleout-parent")
    def parent() -> tuple[str, list[UUID], dict[str, int]]:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        assert ctx is not None and ctx.flow_run is not None
        target = scaleout.find_target(_cfg(), "m.yaml", from_deployment=True, deployment="clone-worker/scaleout-idle")
        assert target is not None and target.pool == pool
        assert target.config == "m.yaml"  # a deployment's run: the path as given, read in the worker's checkout
        helpers = scaleout.CloneWorkers.start(target, 2, NAME)
        return str(ctx.flow_run.id), helpers.run_ids, helpers.settle(grace_s=0.5)

    parent_id, run_ids, counts = parent()
    assert counts == {"Cancelled": 2}
    with _client() as client:
        subs = _sub_runs(client, UUID(parent_id))
    assert {s.id for s in subs} == set(run_ids)
    assert all(s.state.is_cancelled() and s.parameters["config"] == "m.yaml" for s in subs)


@pytest.mark.slow
def test_migrate_deployment_starts_clone_workers_that_share_the_copy_and_survive_a_lost_worker(
    workers: Workers,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    tmp_path: Path,
) -> None:
    from prefect.flow_runs import resume_flow_run

    from flows.migrate import decision_input

    src_client[dbname]["items"].insert_many([{"_id": i, "p": "x" * DOC_BYTES} for i in range(DOCS)])
    config = tmp_path / "migration.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": NAME,
                "source": {"uri": pair[0].uri},
                "destination": {"uri": pair[1].uri},
                "namespaces": {"include": [f"{dbname}.*"]},
                "cutover": {"max_lag_seconds": 5, "ready_after_seconds": 0.5, "quiesce_seconds": 0.5},
                "tuning": {
                    "workers": 1,
                    "clone_workers": 2,
                    "partition_docs": PARTITION_DOCS,
                    "partitioning": "ranges",
                    "batch_bytes": 65536,
                    "connect_timeout_seconds": 5,
                },
            }
        )
    )
    store = MetadataStore(dst_client)
    t0 = time.monotonic()
    configure_fail_command(
        dst_client,
        "alwaysOn",
        failCommands=["insert"],
        blockConnection=True,
        blockTimeMS=INSERT_DELAY_MS,
        appName="livemigrate",
    )
    try:
        with _client() as client:
            dep = client.read_deployment_by_name("migrate/migrate")
            run_id = client.create_flow_run_from_deployment(
                dep.id, parameters={"config": str(config), "skip_prechecks": True}
            ).id

            # Lose a worker machine mid-copy: a clone-worker run that has copied some partitions and holds more.
            victim: Any = None
            runner_of: dict[UUID, int | None] = {}

            def held_by(pid: int) -> set[str]:
                rows = store.partitions.find({"migration": NAME, "status": "processing"}, {"owner": 1})
                return {p["_id"] for p in rows if _owner_pid(p.get("owner")) == pid}

            def pick_victim() -> bool:
                nonlocal victim, held
                migrate = client.read_flow_run(run_id)
                assert not migrate.state.is_final(), f"the migrate run ended early: {migrate.state}"
                if _pid(migrate) is not None:
                    runner_of[run_id] = workers.which(_pid(migrate) or 0)
                done = {
                    _owner_pid(p.get("owner")) for p in store.partitions.find({"migration": NAME, "status": "done"})
                }
                running = [s for s in _sub_runs(client, run_id) if _pid(s) is not None and s.state.is_running()]
                for sub in running:
                    runner_of[sub.id] = workers.which(_pid(sub) or 0)
                for sub in running:
                    pid = _pid(sub) or 0
                    if pid not in done or runner_of[sub.id] == runner_of.get(run_id):
                        continue
                    os.kill(pid, signal.SIGSTOP)  # frozen: what it holds now is what it holds when killed
                    held = held_by(pid)
                    if held:
                        victim = sub
                        return True
                    os.kill(pid, signal.SIGCONT)  # between two partitions: let it claim the next one
                return False

            held: set[str] = set()
            assert wait_until(pick_victim, 90, 0.2), "no clone-worker run got to copy on the other worker"
            lost_pid = _pid(victim) or 0
            lost_worker = runner_of[victim.id]
            assert lost_worker is not None
            os.kill(lost_pid, signal.SIGKILL)
            os.killpg(workers.procs[lost_worker].pid, signal.SIGKILL)
            workers.procs[lost_worker].wait(10)
            killed_at = time.monotonic() - t0

            def cloned() -> bool:
                for sub in _sub_runs(client, run_id):  # a run that starts after the kill: which worker runs it
                    if _pid(sub) is not None and sub.state.is_running() and sub.id not in runner_of:
                        runner_of[sub.id] = workers.which(_pid(sub) or 0)
                return store.load(NAME).phase != Phase.CLONING

            assert wait_until(cloned, 120, 0.3), "the clone did not finish"
            configure_fail_command(dst_client, "off")
            cloned_at = time.monotonic() - t0

            def paused() -> bool:
                st = client.read_flow_run(run_id).state
                assert not st.is_final(), f"the migrate run ended: {st.type} {st.message}"
                return bool(st.is_paused())

            assert wait_until(paused, 90, 0.3), "the migrate run never paused for the cutover"
            paused_at = time.monotonic() - t0
            assert_same_data(src_client, dst_client, [dbname])

            parts = list(store.partitions.find({"migration": NAME}))
            subs = _sub_runs(client, run_id)
            resume_flow_run(run_id, run_input=decision_input("cutover", "sam", "scale-out test", confirm=True))
            assert wait_until(lambda: client.read_flow_run(run_id).state.is_final(), 90, 0.3)
            final = client.read_flow_run(run_id).state
            done_at = time.monotonic() - t0
    finally:
        configure_fail_command(dst_client, "off")
    assert final.is_completed(), f"{final.type}: {final.message}"
    assert store.load(NAME).phase == Phase.COMPLETE
    assert_same_data(src_client, dst_client, [dbname])

    # The clone-worker runs are sub-runs of the migrate run, started on the deployment.
    assert len(subs) == 2 and {s.name for s in subs} == {f"{NAME}-clone-worker-1", f"{NAME}-clone-worker-2"}
    clone_dep = client_dep = None
    with _client() as client:
        clone_dep = client.read_deployment_by_name("clone-worker/clone-worker").id
        client_dep = client.read_flow_run(run_id)
    assert all(s.deployment_id == clone_dep for s in subs)
    assert all(s.parameters == {"config": str(config), "workers": None} for s in subs)  # a path, never a URI
    assert client_dep.parameters["config"] == str(config)

    # Every partition is done, once each, except those the lost run held: copied again by another.
    assert len(parts) >= 25 and all(p["status"] == "done" for p in parts)
    assert held, "the lost run held no partition when it was killed"
    for p in parts:
        if p["_id"] in held:
            assert p["attempts"] >= 2 and _owner_pid(p["owner"]) != lost_pid
    by_pid: dict[int, int] = {}
    for p in parts:
        by_pid[_owner_pid(p["owner"])] = by_pid.get(_owner_pid(p["owner"]), 0) + 1
    assert by_pid.get(lost_pid, 0) >= 1, "the lost run's finished partitions stay its own"
    # Each worker machine copied some: the lost one (before it was lost) and the one that stayed.
    copied_on = {runner_of.get(r.id) for r in [client_dep, *subs] if _pid(r) in by_pid}
    assert {0, 1} <= copied_on, (copied_on, runner_of, by_pid)
    print(
        f"scale-out: {len(parts)} partitions by process {by_pid}; lost worker {lost_worker} killed at {killed_at:.1f} s"
        f" holding {len(held)}; clone done at {cloned_at:.1f} s; paused at {paused_at:.1f} s; complete at {done_at:.1f} s; sub-runs {[(s.name, s.state_name) for s in subs]}"
    )
