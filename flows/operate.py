"""CLI commands that run or steer a migration: migrate, describe, cutover/extend/cancel, clone-worker.

Why: an on-call engineer's terminal must give the same decisions as the Prefect
UI form.  A decision goes through Prefect's API when this process can reach the
flow run's server, and otherwise through the metadata store, where the running
flow picks it up and resumes itself with the same input.

`livemigrate migrate` stops cleanly on SIGTERM and Ctrl-C (tasks/shutdown.py):
the sync stops after its last applied batch and saves its checkpoint, the
migration keeps the destination lock and its phase, and the command prints one
line and exits with 143 (SIGTERM) or 130 (SIGINT); running it again resumes.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flows.common import cli_guard, load_resolved
from flows.status import status_rows, status_title, utc_text
from tasks.errors import EXIT_FAILED, EXIT_OK
from tasks.metadata import MetadataStore
from tasks.mongo import connect_side
from tasks.shutdown import ShutdownRequested, graceful_shutdown, stopped_by
from tasks.status import describe

log = logging.getLogger(__name__)
HEAD_START_WAIT_S = 10.0  # the longest Prefect waits for the first copied batch before it starts anyway
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@cli_guard
def migrate_cli(config: Path, *, restart: bool, skip_prechecks: bool, report_dir: Path | None) -> int:
    from flows.headstart import HeadStart
    from flows.tempserver import TempServer

    cfg = load_resolved(config)  # fail fast, with exit 2, on a broken file or link
    with connect_side(cfg, "destination") as dst:  # a second driver is refused before Prefect starts
        from tasks.reverse import pending_reverse, reverse_name

        store = MetadataStore(dst)
        driven = reverse_name(cfg.name) if not restart and pending_reverse(store, cfg.name) else cfg.name
        store.check_lock(driven, None, cfg.tuning.lock_timeout_seconds)
    err.print(
        f"[bold]livemigrate[/]: starting the migrate flow for {config} (approve with `livemigrate cutover --config {config}`)"
    )
    with graceful_shutdown():
        # Issue 20: the engine's first steps (prechecks, start point, plan, copy) begin at once in a thread and a
        # temporary Prefect server (when none is configured) in a process of its own; the flow claims the steps.
        server = TempServer.start()
        head = HeadStart(cfg, restart=restart, skip_prechecks=skip_prechecks).start()
        try:
            from flows.console import live_progress

            with live_progress(cfg, err):
                # Prefect's imports and its flow engine compete with the first steps for this process (one
                # interpreter lock) and a small machine's CPU: they start once the first batch is copied.
                head.copying(HEAD_START_WAIT_S)
                if server is not None:
                    server.use()
                from flows.migrate import migrate_flow

                result: dict[str, Any] = migrate_flow(
                    config=str(config),
                    restart=restart,
                    skip_prechecks=skip_prechecks,
                    report_dir=str(report_dir) if report_dir else None,
                )
        except BaseException as exc:
            # The flow's own cleanup has run (Migration.close: sync stopped, checkpoint written).
            stop = _clean_stop(exc)
            if stop is None:
                raise  # an error, or a run cancelled from the Prefect UI
            hint = f"run `livemigrate migrate --config {config}` to resume"
            print(f"livemigrate: {stop.one_line(cfg.name, hint)}", file=sys.stderr, flush=True)
            return stop.exit_code
        finally:
            head.close()  # stops and closes what no flow claimed (a stop before the flow ran, a failed start)
    phase = result.get("phase")
    out.print(f"migration [bold]{result.get('name')}[/] ended: [bold]{phase}[/]")
    cut = result.get("cutover") or {}
    if cut:
        out.print(f"destination ready to accept writes: {cut.get('destination_ready_at')}")
        out.print(f"migration complete: {cut.get('completed_at')}")
        for w in cut.get("warnings", []):
            out.print(f"[yellow]warning:[/] {w}")
        if cut.get("report"):
            out.print(f"migration report: {cut['report']}")
    back = result.get("rollback") or {}
    if back:
        out.print(f"rolled back: the source reopened for writes at {back.get('destination_ready_at')}")
        out.print(f"rollback complete: {back.get('completed_at')}")
        if back.get("report"):
            out.print(f"migration report: {back['report']}")
        for w in back.get("warnings", []):
            out.print(f"[yellow]warning:[/] {w}")
    elif result.get("reverse_phase"):
        out.print(f"reverse sync ended: [bold]{result['reverse_phase']}[/]")
    return EXIT_OK if phase in ("complete", "cancelled") else EXIT_FAILED


def _clean_stop(exc: BaseException) -> ShutdownRequested | None:
    """The stop a SIGTERM/SIGINT made of ``exc`` (Prefect reports it as a cancelled run), else None."""
    if isinstance(exc, ShutdownRequested):
        return exc
    if "prefect.exceptions" not in sys.modules:
        return None  # Prefect never ran here, so no run was cancelled
    from prefect.exceptions import CancelledRun

    signum = stopped_by()
    return ShutdownRequested(signum) if isinstance(exc, CancelledRun) and signum is not None else None


@cli_guard
def describe_cli(config: Path, *, as_json: bool, name: str | None) -> int:
    cfg = load_resolved(config)
    with connect_side(cfg, "destination") as dst:
        d = describe(MetadataStore(dst), name or cfg.name)
    if as_json:
        print(json.dumps(d, default=str))
        return EXIT_OK
    t = Table(title=f"migration {status_title(d)} (as of {utc_text(dt.datetime.now(dt.UTC))})", show_header=False)
    rules = {"max_lag_seconds": cfg.cutover.max_lag_seconds, "ready_after_seconds": cfg.cutover.ready_after_seconds}
    rows = [(k if k.startswith("  ") else k.lower(), v.replace("`", "")) for k, v in status_rows(d, rules)]
    rows.append(("last validation", json.dumps(d["last_validation"], default=str) if d["last_validation"] else "none"))
    for k, v in rows:
        t.add_row(k, str(v))
    out.print(t)
    for w in d["warnings"]:
        out.print(f"[yellow]warning:[/] {w}")
    return EXIT_OK


def _prefect_api_configured() -> bool:
    try:
        from prefect.settings import PREFECT_API_URL

        return bool(PREFECT_API_URL.value())
    except Exception:  # noqa: BLE001
        return False


def _resume_through_api(flow_run_id: str, payload: dict[str, Any]) -> bool:
    """Resume the paused flow run with the form's input; False when this process cannot reach it."""
    if not flow_run_id or not _prefect_api_configured():
        return False
    try:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.flow_runs import resume_flow_run

        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(UUID(flow_run_id))
            if fr.state is None or not fr.state.is_paused():
                return False
        resume_flow_run(UUID(flow_run_id), run_input=payload)
        return True
    except Exception as exc:  # noqa: BLE001 - fall back to the metadata store
        log.info("resume through the Prefect API failed (%s); queueing the decision", type(exc).__name__)
        return False


@cli_guard
def decision_cli(
    config: Path,
    action: str,
    *,
    approver: str | None,
    reason: str,
    yes: bool,
    as_json: bool,
    full_verification: bool = False,
) -> int:
    from flows.migrate import CONFIRM_TEXT, ROLLBACK_CONFIRM_TEXT, decision_input, rollback_input
    from tasks.migration import judge_decision
    from tasks.reverse import pending_reverse, reverse_name, rollback_words

    cfg = load_resolved(config)
    who = approver or getpass.getuser()
    with connect_side(cfg, "destination") as dst:
        store = MetadataStore(dst)
        # rollback and finish act on the reverse sync (tasks/reverse.py); so does extend once it runs.
        reverse = action in ("rollback", "finish") or (
            action == "extend" and pending_reverse(store, cfg.name) is not None
        )
        name = reverse_name(cfg.name) if reverse else cfg.name
        found = store.get(name) if reverse else store.load(cfg.name)
        if found is None:
            msg = (
                f"{action} refused: migration {cfg.name} has no reverse sync (it is not `reversible: true`, or it "
                "has not been cut over yet)"
            )
            if as_json:
                print(json.dumps({"migration": cfg.name, "action": action, "status": "refused", "message": msg}))
            else:
                err.print(msg)
            return EXIT_FAILED
        doc = found

        def say(status: str, message: str, code: int) -> int:
            if as_json:
                print(json.dumps({"migration": cfg.name, "action": action, "status": status, "message": message}))
            else:
                (out if code == 0 else err).print(message)
            return code

        differences = int((doc.continuous_verification or {}).get("differences") or 0)
        # The same rules as the flow's form (tasks/migration.judge_decision), on the stored numbers;
        # the flow judges again with its live ones when the decision reaches it.
        verdict = judge_decision(
            doc,
            cfg,
            {"rollback": "cutover", "finish": "cancel"}.get(action, action),
            approver=who,
            confirm=True,
            lag=doc.lag.lag_seconds,
            ready=doc.lag.ready,
            full_verification=full_verification,
            differences=differences,
        )
        if reverse:
            verdict = type(verdict)(verdict.status, rollback_words(verdict.reason))
        elif action == "cancel" and pending_reverse(store, cfg.name) is not None:
            verdict = type(verdict)(
                "refused",
                f"migration {cfg.name} is complete and its reverse sync runs: `livemigrate rollback` moves the "
                "application back, `livemigrate finish` ends the reverse sync",
            )
        if verdict.status == "already":
            return say("already", verdict.reason, EXIT_OK)
        if not verdict.accepted:
            reason_text = verdict.reason
            if not reason_text.startswith(action):
                reason_text = f"{action} refused: {reason_text}"
            return say("refused", reason_text, EXIT_FAILED)
        confirm_text = ROLLBACK_CONFIRM_TEXT if action == "rollback" else CONFIRM_TEXT
        if action in ("cutover", "rollback") and not yes and not (sys.stdin.isatty() and _confirm(confirm_text)):
            return say("refused", f"{action} not confirmed (pass --yes, or answer the prompt)", EXIT_FAILED)
        make = rollback_input if reverse else decision_input
        payload = make(action, who, reason, confirm=True, full_verification=full_verification)
        if _resume_through_api(doc.flow_run_id or "", payload):
            return say(
                "sent", f"{action} sent to flow run {doc.flow_run_id} through the Prefect API (approver {who})", EXIT_OK
            )
        store.update(name, pending_decision=payload)
        return say(
            "queued",
            f"{action} queued for the running migrate flow of {cfg.name} (approver {who}); "
            "follow it with `livemigrate describe`",
            EXIT_OK,
        )


def _confirm(text: str) -> bool:
    import typer

    return bool(typer.confirm(text, default=False))


@cli_guard
def clone_worker_cli(config: Path, *, workers: int | None) -> int:
    from flows.clone_worker import run_clone_worker

    cfg = load_resolved(config)
    stats = run_clone_worker(cfg, workers)
    out.print(
        f"clone worker copied {stats['docs']} documents ({stats['bytes']} bytes) in {stats['partitions']} partitions"
    )
    return EXIT_OK
