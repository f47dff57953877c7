"""Register livemigrate's deployments: create the process work pool, then `prefect deploy`.

Why: one idempotent command (``python -m deployments.register``, used by
``scripts/ui.sh`` and ``make ui``) that a person or CI runs after each upgrade.
The pool is created through the client API because ``prefect work-pool create``
looks up worker types in Prefect's online collection registry, which an offline
machine cannot reach; the deployments themselves are read by ``prefect deploy``
from ``deployments/prefect.yaml`` so there is exactly one description of them.
``prefect deploy`` runs from the repository root because it records its working
directory as the place process workers import ``flows/`` from.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = Path("deployments/prefect.yaml")
POOL = "livemigrate-pool"


def ensure_work_pool(name: str = POOL) -> bool:
    """Create the process work pool ``name`` unless it exists; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
    log.info("created process work pool %s", name)
    return True


def _child_env() -> dict[str, str]:
    """The environment for `prefect deploy`: ours, plus the API URL of the active settings.

    Why: settings given in-process (a profile, a test harness) are not in
    ``os.environ``; without this the child could talk to a different server.
    """
    from prefect.settings import get_current_settings

    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    api_url = get_current_settings().api.url
    if api_url and "PREFECT_API_URL" not in env:
        env["PREFECT_API_URL"] = str(api_url)
    return env


def deploy_command(names: Sequence[str] = (), prefect_file: Path = PREFECT_FILE, pool: str = POOL) -> list[str]:
    """The `prefect deploy` command line: every deployment, or only ``names``; another pool overrides the file's."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    if pool != POOL:
        cmd += ["--pool", pool]
    if names:
        for n in names:
            cmd += ["--name", n]
    else:
        cmd.append("--all")
    return cmd


def register(names: Sequence[str] = (), pool: str = POOL, prefect_file: Path = PREFECT_FILE) -> int:
    """Ensure the pool, then deploy; returns `prefect deploy`'s exit code."""
    ensure_work_pool(pool)
    result = subprocess.run(deploy_command(names, prefect_file, pool), cwd=REPO_ROOT, env=_child_env(), check=False)  # noqa: S603
    return result.returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m deployments.register [--name NAME ...] [--pool POOL]``."""
    parser = argparse.ArgumentParser(prog="python -m deployments.register", description=__doc__.splitlines()[0])
    parser.add_argument("--name", "-n", action="append", default=[], help="deploy only this deployment (repeatable)")
    parser.add_argument("--pool", default=POOL, help="process work pool to create if missing (default %(default)s)")
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_FILE, help="relative to the repository root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return register(args.name, args.pool, args.prefect_file)


if __name__ == "__main__":
    sys.exit(main())
