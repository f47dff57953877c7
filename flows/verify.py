"""`livemigrate verify` and the Prefect ``verify`` flow: thin wrappers around checks.verify.

Why: the engine (checks/verify.py) knows nothing of Prefect or terminals;
this module resolves secrets at the edge, renders the result for people (rich)
or machines (``--json``), publishes Prefect artifacts, and maps the outcome to
the documented exit codes (0 equal, 1 different, 2 could not run).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE as NO_CACHE
from rich.console import Console
from rich.table import Table
from rich.text import Text

from checks.verify import run_verification
from checks.verify_result import DOC_BUCKETS, VerifyResult
from flows.common import cli_guard, config_param, load_resolved
from tasks.config import MigrationConfig
from tasks.errors import EXIT_FAILED, LiveMigrateError

__all__ = ["render_table", "run_verification", "verify_cli", "verify_flow", "verify_task"]


def exit_code(result: VerifyResult) -> int:
    """1 when the data differ or the GX suite (if a report was written) did not pass."""
    if result.report is not None and not result.report.get("gx_success", False):
        return EXIT_FAILED
    return result.exit_code


_NUMBERS = {  # DataFrame column -> short header (the table must fit an 80-column terminal)
    "missing": "Miss",
    "extra": "Extra",
    "changed": "Chg",
    "field_order_only": "Order",
    "index_diffs": "Idx",
    "option_diffs": "Opt",
}


def render_table(result: VerifyResult) -> Table:
    """One row per namespace for people; differing ones in red."""
    verdict = "EQUAL" if result.equal else "DIFFERENT"
    table = Table(title=f"Verification: {verdict}", expand=False)
    table.add_column("Namespace", overflow="fold")
    table.add_column("Docs src/dst", justify="right", overflow="fold")
    for col in _NUMBERS.values():
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    for n in result.namespaces:
        r = n.row()
        name = f"{n.ns} (view)" if n.kind == "view" else n.ns
        docs = "-" if n.kind == "view" else f"{n.source_count}/{n.dest_count}"
        status = Text("equal", style="bold green") if n.equal else Text("DIFF", style="bold red")
        table.add_row(name, docs, *(str(r[k]) for k in _NUMBERS), status)
    if result.report:
        table.caption = f"Data Docs: {result.report['data_docs']}"
    return table


def _details(result: VerifyResult, console: Console) -> None:
    """The named differences under the table (ids capped as in the JSON)."""
    for n in result.different():
        console.print(f"[bold]{n.ns}[/bold]")
        for bucket in DOC_BUCKETS:
            ids = getattr(n, bucket)
            if ids.total:
                more = f" (+{ids.total - len(ids.ids)} more)" if ids.total > len(ids.ids) else ""
                listed = ", ".join(json.dumps(i) for i in ids.ids[:20])
                console.print(f"  {bucket}: {ids.total}: {listed}{more}", markup=False)
        for d in n.index_diffs:
            console.print(f"  index {d['name']}: {d['problem']} {', '.join(d['fields'])}", markup=False)
        for d in n.option_diffs:
            console.print(f"  option {d['option']}: {d['problem']}", markup=False)
        if n.source_count != n.dest_count:
            console.print(f"  counts: source {n.source_count}, destination {n.dest_count}")


@cli_guard
def verify_cli(config_path: Path, *, as_json: bool, report_dir: Path | None, ignore_field_order: bool) -> int:
    """`livemigrate verify`: compare both sides now; 0 equal, 1 different, 2 could not run."""
    config = load_resolved(config_path)
    err = Console(stderr=True)
    if not as_json and err.is_terminal:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as bar:
            job = bar.add_task("verifying documents", total=None)
            result = run_verification(
                config,
                report_dir=report_dir,
                ignore_field_order=ignore_field_order,
                progress=lambda done, total: bar.update(job, completed=done, total=total),
            )
    else:
        result = run_verification(config, report_dir=report_dir, ignore_field_order=ignore_field_order)
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        out = Console()
        out.print(render_table(result))
        _details(result, out)
        for u in result.unsupported:
            out.print(f"not verified: {u['ns']}: {u['reason']}", markup=False)
    return exit_code(result)


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retries a verification only for transient errors (network, elections)."""
    try:
        state.result()
    except LiveMigrateError as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - anything else is not worth a retry
        return False
    return False


def _artifact_key(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"verify-{name}".lower()).strip("-")[:60]


@task(
    name="verify-migration",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_transient,
)
def verify_task(config: MigrationConfig, report_dir: str | None, ignore_field_order: bool) -> VerifyResult:
    """The whole verification as one Prefect task (the hot loops stay plain Python)."""
    artifact = cast(
        UUID,
        create_progress_artifact(0.0, key=_artifact_key(config.name) + "-progress", description="documents verified"),
    )
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 5.0 and total:
            last[0] = now
            update_progress_artifact(artifact, 100.0 * done / total)

    result = run_verification(config, report_dir=report_dir, ignore_field_order=ignore_field_order, progress=progress)
    update_progress_artifact(artifact, 100.0)
    return result


@flow(name="verify", log_prints=False)
def verify_flow(
    config: str | dict[str, Any], report_dir: str | None = None, ignore_field_order: bool = False
) -> dict[str, Any]:
    """Verify a migration: one task, a table and a markdown artifact; returns the JSON summary.

    Args:
        config: Path of the migration YAML on the worker (relative to the repository root, or absolute), or the
            config itself as a mapping that names a `link` or per-endpoint `secret:` blocks. Never a URI with a
            password: credentials come from Prefect Secret blocks.
        report_dir: Directory on the worker for the Great Expectations Data Docs and the JSON summary. Empty: the
            result is only the run's artifacts.
        ignore_field_order: Treat documents whose fields differ only in order as equal (by default the bytes must
            match, as the migration copies them).
    """
    cfg = config_param(config)
    result = verify_task(cfg, report_dir, ignore_field_order)
    key = _artifact_key(cfg.name)
    rows = [{k: str(v).lower() if isinstance(v, bool) else v for k, v in n.row().items()} for n in result.namespaces]
    verdict = "equal" if result.equal else "DIFFERENT"
    create_table_artifact(rows, key=key, description=f"Verification of {cfg.name}: {verdict}")
    create_markdown_artifact(result.summary_markdown(), key=key + "-summary", description=f"Verification of {cfg.name}")
    return result.to_dict()


if __name__ == "__main__":  # pragma: no cover - manual runs
    sys.exit(verify_cli(Path(sys.argv[1]), as_json=True, report_dir=None, ignore_field_order=False))
