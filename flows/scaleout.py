"""Extra clone workers the migrate flow starts itself (``tuning.clone_workers``), through Prefect.

Why (issue 20, item 6): the `clone-worker` deployment lets Prefect workers on other machines share the
copy, but someone had to start its runs by hand.  With ``tuning.clone_workers: N`` the migrate flow
creates N runs of that deployment on its work pool as sub-runs of its own run (``run_deployment`` with
``timeout=0``: it does not wait for each), and copies alongside them.  Nothing here decides who copies
what: every copier claims partitions from the plan in the destination's metadata store, and the migrate
flow's own clone waits until every partition is done, taking over those of a worker that died (its
process is gone on this host, or its lease ran out: tasks/clone.py).  So a worker that never starts, or
is lost half-way, costs time, never data.

The runs get the migrate run's own ``config`` parameter: a path (read on the worker, as every
deployment's) or a mapping that names Secret blocks or a link.  A mapping that carries a URI or an Atlas
private key is refused, so a secret is never copied into N more flow-run parameters.

Without a `clone-worker` deployment to start (``livemigrate migrate`` on Prefect's temporary server) the
flow says so once as a warning and copies alone; a migrate *deployment* run without one, or a
`clone-worker` deployment with no work pool, is a one-line configuration error before anything starts.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from tasks.config import MigrationConfig, config_from_dict
from tasks.errors import ConfigError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

log = logging.getLogger(__name__)
DEPLOYMENT = "clone-worker/clone-worker"  # deployments/prefect.yaml: flow name / deployment name
SETTLE_SECONDS = 5.0  # after the clone: how long a clone-worker run that is still running gets to end by itself
POLL_SECONDS = 0.5
REGISTER_HINT = "register it (`python -m deployments.register`) or set tuning.clone_workers: 0"


@dataclass(frozen=True)
class Target:
    """Where the clone-worker runs go: the deployment and its work pool."""

    deployment_id: UUID
    pool: str
    config: str | dict[str, Any]  # the runs' `config` parameter


def _run_logger() -> Any:
    """The flow run's logger (the run's log in the UI, and the terminal); this module's outside a run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def check_forwardable(config: str | dict[str, Any]) -> None:
    """Refuse a ``config`` parameter that would put a secret into the clone-worker runs' parameters."""
    if not isinstance(config, dict):
        return  # a path: the worker reads the file
    raw = config_from_dict(config, "config parameter")  # not resolved: what the mapping itself holds
    for side in ("source", "destination"):
        ep = getattr(raw, side)
        field = (
            "uri" if ep.uri is not None else "atlas.api_private_key" if ep.atlas and ep.atlas.api_private_key else None
        )
        if field is not None:
            raise ConfigError(
                f"tuning.clone_workers: the config parameter holds {side}.{field}, which every clone-worker run "
                f"would store as its parameter: name a `secret:` block on {side} or a `link`, or pass the config "
                "file's path"
            )


def find_target(
    cfg: MigrationConfig, config: str | dict[str, Any], from_deployment: bool, deployment: str = DEPLOYMENT
) -> Target | None:
    """The deployment and pool to start ``tuning.clone_workers`` runs on; None to copy alone.

    Raises ConfigError (one line) when the setup cannot work: secrets in the parameter, or a migrate
    deployment run whose `clone-worker` deployment is missing or has no work pool to run on.
    """
    n = cfg.tuning.clone_workers
    if n == 0:
        return None
    check_forwardable(config)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            if from_deployment:
                raise ConfigError(
                    f"tuning.clone_workers: {n}, but the deployment {deployment!r} is not registered on "
                    f"{client.api_url}: {REGISTER_HINT}"
                ) from None
            _run_logger().warning(
                "tuning.clone_workers: %s ignored: this run is not a deployment's and the Prefect API has no %r "
                "deployment to start clone workers from; copying in this process alone (run the migrate deployment "
                "on a work pool to share the copy)",
                n,
                deployment,
            )
            return None
        pool = dep.work_pool_name
        if not pool:
            raise ConfigError(
                f"tuning.clone_workers: the deployment {deployment!r} has no work pool to run on: {REGISTER_HINT}"
            )
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise ConfigError(
                f"tuning.clone_workers: the work pool {pool!r} of the deployment {deployment!r} does not exist: "
                f"{REGISTER_HINT}"
            ) from None
        online = [w for w in client.read_workers_for_work_pool(pool) if w.status == WorkerStatus.ONLINE]
    if not online:
        _run_logger().warning(
            "no worker polls the work pool %r now: the %s clone-worker runs wait for one, and this run copies meanwhile",
            pool,
            n,
        )
    if isinstance(config, str) and not from_deployment:
        config = os.path.abspath(config)  # given relative to the terminal's directory, not the worker's checkout
    return Target(dep.id, pool, config)


def _why(exc: BaseException) -> str:
    return type(exc).__name__  # never the message: an HTTP error may quote the request, parameters included


class CloneWorkers:
    """The clone-worker runs one migrate run started: start them, let them end, cancel what is left."""

    def __init__(self, run_ids: list[UUID]) -> None:
        self.run_ids = run_ids

    @classmethod
    def start(cls, target: Target, n: int, name: str) -> CloneWorkers:
        """Create ``n`` runs as sub-runs of the current flow run and return at once.

        Best effort: the setup was checked by :func:`find_target`; if the API fails now, the runs
        started so far go on, and the migrate run copies what nobody else does (a warning says so).
        """
        from prefect.deployments import run_deployment

        ids: list[UUID] = []
        try:
            for i in range(1, n + 1):
                run = run_deployment(
                    target.deployment_id,
                    parameters={"config": target.config},
                    timeout=0,  # do not wait: the migrate flow copies meanwhile and waits for the plan to be done
                    as_subflow=True,  # shown under the migrate run in the UI; Prefect cancels it with its parent
                    flow_run_name=f"{name}-clone-worker-{i}",
                    tags=["livemigrate", "clone", f"migration:{name}"],
                )
                ids.append(cast("FlowRun", run).id)  # called from sync code: the run, never a coroutine
        except Exception as exc:  # noqa: BLE001 - more copiers are a speed-up; the migration goes on without them
            _run_logger().warning(
                "started %s of %s clone-worker runs (%s): this run copies what they do not", len(ids), n, _why(exc)
            )
        else:
            _run_logger().info("started %s clone-worker runs on the work pool %r", n, target.pool)
        return cls(ids)

    def _states(self, client: Any) -> dict[UUID, Any]:
        return {i: client.read_flow_run(i).state for i in self.run_ids}

    def settle(self, grace_s: float = SETTLE_SECONDS) -> dict[str, int]:
        """After the clone (every partition done): wait briefly for the runs to end, cancel the rest.

        A run still Scheduled was never picked up by a worker, so it is cancelled at once; a running one
        has nothing left to claim and normally ends within a second.  Returns the count per state.
        Best effort: the clone is complete, so a Prefect API error here is a warning, never a failure.
        """
        from prefect.client.orchestration import get_client

        logger = _run_logger()
        deadline = time.monotonic() + grace_s
        counts: dict[str, int] = {}
        try:
            with get_client(sync_client=True) as client:
                while True:
                    states = self._states(client)
                    waiting = [st for st in states.values() if st is not None and (st.is_running() or st.is_pending())]
                    if not waiting or time.monotonic() > deadline:
                        break
                    time.sleep(POLL_SECONDS)
                self._cancel(client, states, "the clone is complete")
                for i, st in self._states(client).items():
                    name = st.name if st is not None else "Unknown"
                    counts[name] = counts.get(name, 0) + 1
                    if st is not None and (st.is_failed() or st.is_crashed()):
                        logger.warning(
                            "clone-worker run %s ended %s: the partitions it held were copied again by the others",
                            i,
                            name,
                        )
        except Exception as exc:  # noqa: BLE001 - the clone is done whatever the runs' states say
            logger.warning("could not settle the clone-worker runs (%s): cancel any left in the UI", _why(exc))
            return counts
        logger.info("clone-worker runs: %s", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none")
        return counts

    def cancel(self, why: str) -> None:
        """Cancel every run not finished yet (the migrate run failed or stops); best effort."""
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                self._cancel(client, self._states(client), why)
        except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more than this cleanup
            _run_logger().warning("could not cancel the clone-worker runs (%s): cancel them in the UI", _why(exc))

    def _cancel(self, client: Any, states: dict[UUID, Any], why: str) -> None:
        from prefect.states import Cancelling

        for run_id, st in states.items():
            if st is None or not (st.is_final() or st.is_cancelling()):
                # Cancelling: a worker stops the process; a run nobody picked up becomes Cancelled at once (server rule).
                client.set_flow_run_state(run_id, Cancelling(message=why), force=True)


__all__ = ["DEPLOYMENT", "CloneWorkers", "Target", "check_forwardable", "find_target"]
