"""`livemigrate validate` and the `prechecks` flow: the same checks, the same report.

Why here: secrets (URIs, the Atlas API key) are resolved only at the edge,
and Prefect (artifacts, task, flow state) lives only in flows/.  The engine
part is :func:`checks.prechecks.run_prechecks`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pydantic import SecretStr
from rich.console import Console

from checks.prechecks import PrecheckReport, PrechecksFailedError, run_prechecks
from checks.results import render_table, to_markdown
from flows.common import cli_guard, config_param, load_resolved, read_secret_block
from tasks.config import MigrationConfig
from tasks.errors import ConfigError


def resolve_atlas_key(config: MigrationConfig) -> MigrationConfig:
    """Fill destination.atlas API keys from its Secret block ('public:private') when the file names one."""
    atlas = config.destination.atlas
    if atlas is None or atlas.api_key_secret is None or atlas.api_private_key is not None:
        return config
    value = read_secret_block(atlas.api_key_secret)
    public, sep, private = value.partition(":")
    if not sep or not public or not private:
        raise ConfigError(
            f"destination.atlas.api_key_secret: block {atlas.api_key_secret!r} must hold 'public:private'"
        )
    new_atlas = atlas.model_copy(update={"api_public_key": public, "api_private_key": SecretStr(private)})
    new_dest = config.destination.model_copy(update={"atlas": new_atlas})
    return config.model_copy(update={"destination": new_dest})


@cli_guard
def validate_cli(config_path: Path, *, as_json: bool) -> int:
    """Run the prechecks and print the table (or JSON); exit 0 ok, 1 a check failed, 2 could not run."""
    config = resolve_atlas_key(load_resolved(config_path))
    report = run_prechecks(config, store=True)
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        console = Console()
        console.print(render_table(report))
        if not report.stored:
            console.print("[dim]report not stored: the destination's metadata store was not reachable[/dim]")
    return report.exit_code


def _artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "prechecks-" + (re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "migration")


def publish_artifacts(report: PrecheckReport) -> None:
    """A table artifact (one row per check) and a markdown artifact with the evidence."""
    key = _artifact_key(report.migration)
    rows = [
        {
            "check": c.id,
            "status": c.status.value,
            "summary": c.summary,
            "remedy": c.remedy if c.status.value != "pass" else "",
        }
        for c in report.checks
    ]
    desc = f"Prechecks for {report.migration}: {report.status.value}"
    create_table_artifact(table=rows, key=key, description=desc)
    create_markdown_artifact(markdown=to_markdown(report), key=f"{key}-report", description=desc)


@task(name="run-prechecks", cache_policy=NONE, retries=0)
def run_prechecks_task(config: MigrationConfig) -> dict[str, Any]:
    """One Prefect task for the whole precheck stage (one unit of real work, STYLE.md principle 2)."""
    report = run_prechecks(config, store=True)
    publish_artifacts(report)
    return report.to_dict()


@flow(name="prechecks", log_prints=False)
def prechecks_flow(config: str | dict[str, Any]) -> dict[str, Any]:
    """Validate a migration config from Prefect; the run fails when a check fails.

    Returns the report (the documented JSON shape) when nothing failed.

    Args:
        config: Path of the migration YAML on the worker (relative to the repository root, or absolute), or the
            config itself as a mapping that names a `link` or per-endpoint `secret:` blocks. Never a URI with a
            password: credentials come from Prefect Secret blocks.
    """
    cfg = resolve_atlas_key(config_param(config))
    report = run_prechecks_task(cfg)
    if report["failed"]:
        raise PrechecksFailedError(
            f"prechecks failed for {report['migration']}: {', '.join(report['failed'])}; "
            f"counts {json.dumps(report['counts'])}"
        )
    return report
