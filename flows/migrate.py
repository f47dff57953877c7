"""The `migrate` flow: prechecks, clone, sync, the approval pause, cutover and verification.

Why: a data team schedules migrations in the Prefect UI and an on-call engineer
approves the cutover in a form (or with `livemigrate cutover`); the sync keeps
running in a background thread while the flow is paused.  The flow is thin:
every step is an engine call (tasks/), wrapped in one Prefect task per stage.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from pydantic import Field

from flows.artifacts import CloneProgressArtifact, markdown, status_markdown, table
from flows.common import config_param
from tasks.config import MigrationConfig
from tasks.errors import LiveMigrateError, TerminalError
from tasks.metrics import Metrics
from tasks.migration import CutoverRefused, Migration, describe
from tasks.state import Decision, MigrationDoc, Phase

log = logging.getLogger(__name__)

CONFIRM_TEXT = "I confirm that I am ready to cut over the application to the destination cluster"
POLL_SECONDS = 1


class CutoverDecision(RunInput):
    """The form an on-call engineer fills in (Prefect UI) or `livemigrate cutover` sends."""

    action: Literal["cutover", "extend", "cancel"] = Field(
        "cutover", description="cut over now, extend the window by 24 h, or cancel"
    )
    confirm: bool = Field(False, title=CONFIRM_TEXT, description="required for a cutover")
    approver: str = Field("", description="who decides (recorded with the decision)")
    reason: str = Field("", description="why (recorded with the decision)")
    full_verification: bool = Field(
        False,
        title="Verify both clusters whole at the cutover",
        description="longer downtime; required while the continuous verification reports differences",
    )


def decision_input(
    action: str, approver: str, reason: str = "", confirm: bool = False, full_verification: bool = False
) -> dict[str, Any]:
    """The run_input the UI form sends; the CLI sends exactly this."""
    return CutoverDecision(
        action=action, confirm=confirm, approver=approver, reason=reason, full_verification=full_verification
    ).model_dump(include={"action", "confirm", "approver", "reason", "full_verification"})


@task(name="prechecks", cache_policy=NONE)
def prechecks_stage(cfg: MigrationConfig) -> dict[str, Any]:
    from checks.prechecks import run_prechecks
    from flows.prechecks import publish_artifacts, resolve_atlas_key

    report = run_prechecks(resolve_atlas_key(cfg), store=True)
    publish_artifacts(report)
    summary: dict[str, Any] = report.to_dict()
    if report.failed:
        failed = [c["id"] for c in summary.get("checks", []) if c.get("status") == "fail"]
        raise TerminalError(
            f"prechecks failed: {', '.join(failed)}", remedy="run `livemigrate validate` for evidence and remedies"
        )
    return summary


@task(name="begin", cache_policy=NONE)
def begin_stage(m: Migration, restart: bool, flow_run_id: str | None) -> str:
    return m.begin(restart=restart, flow_run_id=flow_run_id).phase.value


@task(name="clone", cache_policy=NONE)
def clone_stage(m: Migration, metrics: Metrics) -> dict[str, int]:
    from tasks.catalog import estimated_docs, list_specs
    from tasks.namespaces import NamespaceFilter

    specs, _ = list_specs(m.src, NamespaceFilter.from_rules(m.cfg.namespaces), with_indexes=False)
    total = sum(estimated_docs(m.src, s.ns) for s in specs if not s.is_view)
    bar = CloneProgressArtifact(m.name, total, metrics)
    m.progress = bar
    stats = m.clone()
    bar.finish()
    return {"docs": stats.docs, "bytes": stats.bytes, "partitions": stats.partitions}


@task(name="wait-until-ready", cache_policy=NONE)
def ready_stage(m: Migration) -> dict[str, Any]:
    runner = m.start_sync()
    while not runner.wait(lambda st: st.ready, 10.0):
        get_run_logger().info("sync catching up: lag %s s", runner.state.lag_seconds)
    d = describe(m.store, m.name)
    markdown(m.name, "ready", status_markdown(d), "ready to cut over")
    try:
        emit_event(
            "livemigrate.migration.ready",
            resource={"prefect.resource.id": f"livemigrate.migration.{m.name}", "prefect.resource.name": m.name},
            payload={"lag_seconds": d["lag"]["lag_seconds"]},
        )
    except Exception as exc:  # noqa: BLE001 - notification is best effort
        log.debug("event not emitted: %s", exc)
    return d


@task(name="cutover", cache_policy=NONE)
def cutover_stage(
    m: Migration,
    approver: str,
    reason: str,
    report_dir: str | None,
    resume: bool = False,
    full_verification: bool = False,
) -> dict[str, Any]:
    def verify(doc: MigrationDoc) -> dict[str, Any]:
        result = m.final_verification(doc, report_dir)
        summary: dict[str, Any] = result.to_dict()
        summary["equal"] = bool(result.equal)
        try:
            table(m.name, "verification", result.to_dataframe().astype(str).to_dict("records"), "final verification")
        except Exception as exc:  # noqa: BLE001
            log.debug("verification table artifact: %s", exc)
        return summary

    if resume:
        res = m.resume_cutover(verify)
    else:
        res = m.cutover(approver, reason, verify, full_verification=full_verification)
    return {
        "phase": res.phase.value,
        "destination_ready_at": res.destination_ready_at.isoformat() if res.destination_ready_at else None,
        "completed_at": res.completed_at.isoformat() if res.completed_at else None,
        "warnings": res.warnings,
        "verification_equal": (res.verification or {}).get("equal"),
        "downtime": res.downtime,
    }


class DecisionRelay:
    """Resumes this paused flow run with decisions the CLI left in the metadata store.

    Why: `livemigrate cutover` may run where the Prefect API of this flow run is
    not reachable (an ephemeral server); the flow process always is, so it
    relays the request through Prefect's API with the same input the form sends.
    It also wakes the pause when the sync fails or the window closes, so the
    error is not hidden; :attr:`signal` then says which, and the flow acts on
    that, never on what the input it resumed with says.
    """

    def __init__(self, m: Migration, flow_run_id: str) -> None:
        self.m, self.flow_run_id = m, flow_run_id
        self.signal: Literal["sync_failed", "window_expired"] | None = None
        self.paused = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="decision-relay", daemon=True)

    def __enter__(self) -> DecisionRelay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def _run(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            if not self.paused.is_set():
                continue
            try:
                runner = self.m.runner
                pending: dict[str, Any] | None
                left = self.m.window_left()
                if runner is not None and runner.state.error is not None:
                    self.signal = "sync_failed"
                    pending = decision_input("cancel", "livemigrate", "the sync stopped on an error")
                elif left is not None and left <= 0:
                    # Resume ourselves when the window closes, so the run never sits in an expired pause.
                    self.signal = "window_expired"
                    pending = decision_input("cancel", "livemigrate", "the cutover window closed")
                else:
                    pending = self.m.store.load(self.m.name).pending_decision
                if not pending:
                    continue
                resume_flow_run(self.flow_run_id, run_input=pending)  # type: ignore[arg-type]
                self.m.store.update(self.m.name, pending_decision=None)
                self.paused.clear()
            except Exception as exc:  # noqa: BLE001 - retried next tick
                log.debug("decision relay: %s", exc)


def _pause_for_decision(m: Migration, n: int, relay: DecisionRelay) -> CutoverDecision | None:
    d = describe(m.store, m.name)
    left = d["window"]["seconds_left"]
    if left is not None and left <= 0:
        return None
    form = CutoverDecision.with_initial_data(
        description=status_markdown(d)
        + "\n\nChoose **cutover** (tick the confirmation), **extend** (+24 h) or **cancel**. "
        "Stop your application's writes to the source before cutting over.",
        action="cutover",
        approver="",
    )
    relay.paused.set()
    try:
        return pause_flow_run(
            wait_for_input=form,
            timeout=max(1, int(left if left is not None else 3600)) + 120,
            poll_interval=POLL_SECONDS,
            key=f"cutover-{n}",
        )
    except FlowPauseTimeout:
        return None
    finally:
        relay.paused.clear()


def _report_differences(m: Migration, found: list[dict[str, Any]]) -> None:
    """Differences the continuous verification found: an event and an artifact at once, not at the cutover."""
    lines = [f"- `{x['ns']}` _id `{x['_id']}`: {x['kind']}" for x in found[:50]]
    markdown(
        m.name,
        "differences",
        "### Differences found during the sync\n\nThese documents differ with no change in flight. The cutover "
        "is refused until they are resolved, or a full verification is chosen.\n\n" + "\n".join(lines),
        "continuous verification: differences",
    )
    emit_event(
        "livemigrate.verification.difference",
        resource={"prefect.resource.id": f"livemigrate.migration.{m.name}", "prefect.resource.name": m.name},
        payload={"count": len(found), "differences": found[:50]},
    )


def publish_report(m: Migration, report_dir: str | None) -> str | None:
    """The final report (copy-rate and lag charts): a markdown artifact, files in ``report_dir``, the store."""
    from pathlib import Path

    from tasks.report import build_report, report_markdown, write_migration_report

    try:
        if report_dir:
            path, r = write_migration_report(m.store, m.name, Path(report_dir))
        else:
            path, r = None, build_report(m.store, m.name)
        markdown(m.name, "report", report_markdown(r), "migration report")
        r.pop("series", None)
        m.store.save_report(m.name, "migration", r)
        return str(path) if path else None
    except Exception as exc:  # noqa: BLE001 - the migration's outcome stands without its report
        log.warning("could not publish the migration report: %s", type(exc).__name__)
        return None


def _outcome(
    m: Migration, approver: str, reason: str, result: dict[str, Any], report_dir: str | None
) -> dict[str, Any]:
    """Publish the cutover's two moments ("destination ready", "complete") and return the final description."""
    result["report"] = publish_report(m, report_dir)
    d = describe(m.store, m.name)
    markdown(
        m.name,
        "outcome",
        status_markdown(d)
        + f"\n\n- **Cutover approved by:** {approver} ({reason})"
        + f"\n- **Destination ready to accept writes:** {result['destination_ready_at']}"
        + f"\n- **Migration complete:** {result['completed_at']}"
        + "".join(f"\n- **Warning:** {w}" for w in result["warnings"]),
        "migration complete",
    )
    return {**d, "cutover": result}


@flow(name="migrate", log_prints=False)
def migrate_flow(
    config: str | dict[str, Any], restart: bool = False, report_dir: str | None = None, skip_prechecks: bool = False
) -> dict[str, Any]:
    """Migrate one deployment into another with an approval-gated cutover.

    ``config`` is the path of the YAML file on the worker (or a mapping without
    URIs that names a `link`); credentials never travel as flow parameters.
    """
    logger = get_run_logger()
    cfg = config_param(config)
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    m = Migration(cfg)
    metrics = Metrics()

    def tick(st: Any) -> None:
        metrics.sync_tick(cfg.name, st)
        metrics.verification(cfg.name, m.last_status, m.last_estimate)  # as published (every 2 s at most)

    m.on_tick = tick
    flow_context = contextvars.copy_context()  # the run's context, for artifacts made by background threads
    m.on_difference = lambda found: flow_context.copy().run(_report_differences, m, found)
    if cfg.tuning.metrics_port is not None:
        _, port = metrics.serve(cfg.tuning.metrics_port)
        logger.info("Prometheus metrics on http://127.0.0.1:%s/metrics", port)
    existing = m.store.get(cfg.name)
    resuming = existing is not None and existing.phase not in (Phase.COMPLETE, Phase.CANCELLED, Phase.EXPIRED)
    if not skip_prechecks and not resuming:
        try:
            prechecks_stage(cfg)
        except BaseException:
            m.close()
            raise
    try:
        metrics.phase(cfg.name, begin_stage(m, restart, flow_run_id))
        clone_stage(m, metrics)
        interrupted = m.interrupted_cutover()
        if interrupted is not None:
            # An approved cutover whose process stopped: carry it on, do not ask again.
            logger.warning("resuming the cutover approved by %s", interrupted.approver or "(unnamed)")
            metrics.phase(cfg.name, Phase.CUTTING_OVER.value)
            result = cutover_stage(m, interrupted.approver, interrupted.reason, report_dir, resume=True)
            return _outcome(
                m, interrupted.approver, interrupted.reason + " (resumed after a crash)", result, report_dir
            )
        metrics.phase(cfg.name, Phase.SYNCING.value)
        ready_stage(m)
        n = 0
        with DecisionRelay(m, flow_run_id or "") as relay:
            while True:
                n += 1
                decision = _pause_for_decision(m, n, relay)
                if m.runner is not None and m.runner.state.error is not None:
                    raise m.runner.state.error  # the sync failed while paused (the relay woke the pause)
                if decision is None or relay.signal == "window_expired":
                    m.expire()
                    publish_report(m, report_dir)
                    d = describe(m.store, m.name)
                    markdown(m.name, "outcome", status_markdown(d) + f"\n\n**Expired.** {d['error']}", "window expired")
                    logger.warning("cutover window expired: the sync stopped")
                    return d
                logger.info("decision: %s by %s", decision.action, decision.approver or "(unnamed)")
                verdict = m.judge(
                    decision.action,
                    decision.approver,
                    confirm=decision.confirm,
                    full_verification=decision.full_verification,
                )
                if not verdict.accepted:
                    m.record_decision(
                        Decision(action=f"{decision.action}-refused", approver=decision.approver, reason=verdict.reason)
                    )
                    markdown(m.name, "decision", f"{decision.action.capitalize()} refused: {verdict.reason}.")
                    logger.warning("%s refused: %s", decision.action, verdict.reason)
                    continue
                if decision.action == "extend":
                    m.extend(decision.approver, decision.reason)
                    markdown(
                        m.name,
                        "decision",
                        f"Window extended by {cfg.cutover.extension_hours:g} h by **{decision.approver}**: {decision.reason}",
                    )
                    continue
                if decision.action == "cancel":
                    m.cancel(decision.approver, decision.reason)
                    publish_report(m, report_dir)
                    markdown(m.name, "decision", f"Migration cancelled by **{decision.approver}**: {decision.reason}")
                    return describe(m.store, m.name)
                markdown(
                    m.name,
                    "decision",
                    f"Cutover approved by **{decision.approver}**: {decision.reason}"
                    + (" (full verification)" if decision.full_verification else ""),
                )
                try:
                    result = cutover_stage(
                        m, decision.approver, decision.reason, report_dir, full_verification=decision.full_verification
                    )
                except CutoverRefused as exc:  # the numbers moved between the judgement and the cutover
                    m.record_decision(Decision(action="cutover-refused", approver=decision.approver, reason=str(exc)))
                    markdown(m.name, "decision", f"Cutover refused: {exc.one_line()}")
                    logger.warning("cutover refused: %s", exc.one_line())
                    continue
                return _outcome(m, decision.approver, decision.reason, result, report_dir)
    except LiveMigrateError as exc:
        m.fail(exc)
        raise
    finally:
        doc = m.store.get(cfg.name)
        if doc is not None:
            metrics.phase(cfg.name, doc.phase.value)
            metrics.downtime(cfg.name, doc.downtime)
        metrics.stop()
        m.close()


__all__ = ["CONFIRM_TEXT", "CutoverDecision", "Phase", "decision_input", "migrate_flow"]
