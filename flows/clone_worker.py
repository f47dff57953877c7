"""The `clone-worker` flow: an extra worker that copies partitions of a running migration's plan.

Why: a large clone spreads across Prefect workers on several machines; each
claims partitions atomically from the plan in the destination's metadata
store, so workers never copy the same partition twice.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.common import config_param
from tasks.clone import Cloner
from tasks.config import MigrationConfig
from tasks.errors import TerminalError
from tasks.metadata import MetadataStore, process_owner
from tasks.mongo import connect_side
from tasks.state import Phase


def run_clone_worker(cfg: MigrationConfig, workers: int | None = None, wait_s: float = 120.0) -> dict[str, int]:
    """Join the migration's clone: wait for its plan, then copy partitions until none are left."""
    import time

    src, dst = connect_side(cfg, "source"), connect_side(cfg, "destination")
    try:
        store = MetadataStore(dst)
        deadline = time.monotonic() + wait_s
        while True:
            doc = store.get(cfg.name)
            if doc is not None and doc.phase != Phase.CLONING and doc.phase != Phase.CREATED:
                return {"docs": 0, "bytes": 0, "partitions": 0}  # the clone is already over
            if doc is not None and doc.prepared:
                break
            if time.monotonic() > deadline:
                raise TerminalError(
                    f"migration {cfg.name!r} has no clone plan yet", remedy="start `livemigrate migrate` first"
                )
            time.sleep(0.5)
        cloner = Cloner(cfg, src, dst, store, process_owner())
        stats = cloner.run(workers)
        return {"docs": stats.docs, "bytes": stats.bytes, "partitions": stats.partitions}
    finally:
        src.close()
        dst.close()


@task(name="copy-partitions", cache_policy=NONE)
def _copy(cfg: MigrationConfig, workers: int | None) -> dict[str, int]:
    return run_clone_worker(cfg, workers)


@flow(name="clone-worker")
def clone_worker_flow(config: str | dict[str, Any], workers: int | None = None) -> dict[str, int]:
    """Copy partitions of the named migration's plan alongside its main flow.

    Args:
        config: Path of the migration YAML on the worker (relative to the repository root, or absolute), or the
            config itself as a mapping that names a `link` or per-endpoint `secret:` blocks. Never a URI with a
            password: credentials come from Prefect Secret blocks.
        workers: Copy threads in this run. Empty: the config's `tuning.workers`.
    """
    cfg = config_param(config)
    stats = _copy(cfg, workers)
    get_run_logger().info("copied %s documents in %s partitions", stats["docs"], stats["partitions"])
    return stats
