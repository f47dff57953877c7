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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout, TerminationSignal
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled
from pydantic import Field

from flows.artifacts import CloneProgressArtifact, LiveStatus, artifact_key, markdown, table
from flows.common import config_param
from flows.headstart import ENGINE_LOGGERS, HeadStart, claim
from flows.metrics import Metrics
from flows.scaleout import CloneWorkers, find_target
from flows.status import cutover_plan_markdown, live_status_markdown, status_markdown
from tasks.config import MigrationConfig
from tasks.errors import LiveMigrateError, TerminalError
from tasks.migration import CutoverRefused, Migration
from tasks.reverse import ReverseMigration, pending_reverse
from tasks.shutdown import ShutdownRequested, note_stop
from tasks.state import Decision, MigrationDoc, Phase
from tasks.status import describe

log = logging.getLogger(__name__)

CONFIRM_TEXT = "I confirm that I am ready to cut over the application to the destination cluster"
POLL_SECONDS = 1
STATUS_SECONDS = 5.0  # the live status artifact's refresh


class CutoverDecision(RunInput):
    """The form an on-call engineer fills in (Prefect UI) or `livemigrate cutover` sends."""

    # Required, and nothing preselected: the engineer chooses (Prefect's form marks the rest "(Optional)").
    action: Literal["cutover", "extend", "cancel"] = Field(
        description="cutover: stop writes and finish now; extend: add 24 h to the window; cancel: stop the migration"
    )
    confirm: bool = Field(title=CONFIRM_TEXT, description="must be ticked for a cutover")
    approver: str = Field(min_length=1, description="who decides (recorded with the decision)")
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


ROLLBACK_CONFIRM_TEXT = "I confirm that I am ready to move the application back to the source cluster"


class RollbackDecision(RunInput):
    """The form of a reversible migration after its cutover (Prefect UI), or what `livemigrate rollback` and
    `livemigrate finish` send: the reverse sync keeps the source following the destination meanwhile."""

    action: Literal["rollback", "extend", "finish"] = Field(
        description="rollback: close the destination, drain the reverse sync, verify and reopen the source; "
        "extend: add 24 h to the rollback window; finish: end the reverse sync for good (the source stays closed)"
    )
    confirm: bool = Field(title=ROLLBACK_CONFIRM_TEXT, description="must be ticked for a rollback")
    approver: str = Field(min_length=1, description="who decides (recorded with the decision)")
    reason: str = Field("", description="why (recorded with the decision)")
    full_verification: bool = Field(
        False,
        title="Verify both clusters whole at the rollback",
        description="longer downtime; required while the continuous verification reports differences",
    )


def rollback_input(
    action: str, approver: str, reason: str = "", confirm: bool = False, full_verification: bool = False
) -> dict[str, Any]:
    """The run_input the rollback form sends; `livemigrate rollback` and `finish` send exactly this."""
    return RollbackDecision(
        action=action, confirm=confirm, approver=approver, reason=reason, full_verification=full_verification
    ).model_dump(include={"action", "confirm", "approver", "reason", "full_verification"})


@dataclass(frozen=True)
class _Words:
    """What the decision loop calls its actions and form: the cutover's, or the rollback's (tasks/reverse.py)."""

    approve: str  # the action that cuts over
    end: str  # the action that ends without cutting over
    form: type[RunInput]
    make_input: Callable[..., dict[str, Any]]
    ended: str  # said of the end action


FORWARD = _Words("cutover", "cancel", CutoverDecision, decision_input, "Migration cancelled")
REVERSE = _Words(
    "rollback", "finish", RollbackDecision, rollback_input, "Reverse sync finished (the source stays closed)"
)


@task(name="prechecks", cache_policy=NONE)
def prechecks_stage(cfg: MigrationConfig, head: HeadStart | None = None) -> dict[str, Any]:
    from checks.prechecks import run_prechecks
    from flows.prechecks import publish_artifacts, resolve_atlas_key

    report = head.prechecks() if head is not None else run_prechecks(resolve_atlas_key(cfg), store=True)
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


def _rules(m: Migration) -> dict[str, float]:
    return {"max_lag_seconds": m.cfg.cutover.max_lag_seconds, "ready_after_seconds": m.cfg.cutover.ready_after_seconds}


@task(name="wait-until-ready", cache_policy=NONE)
def ready_stage(m: Migration) -> dict[str, Any]:
    runner = m.start_sync()
    while not runner.wait(lambda st: st.ready, 10.0):
        get_run_logger().info("sync catching up: lag %s s", runner.state.lag_seconds)
    runner.status.persist(force=True)  # the window opens with the first ready state: record it before the snapshot
    d = describe(m.store, m.name)
    markdown(m.name, "ready", status_markdown(d, _rules(m)), "ready to cut over (snapshot; live: the status artifact)")
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

    try:
        if resume:
            res = m.resume_cutover(verify)
        else:
            res = m.cutover(approver, reason, verify, full_verification=full_verification)
    except CutoverRefused as exc:  # e.g. writes keep arriving: nothing changed, the flow pauses again
        return {"refused": exc.one_line()}
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

    def __init__(self, m: Migration, flow_run_id: str, words: _Words = FORWARD) -> None:
        self.m, self.flow_run_id, self.words = m, flow_run_id, words
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
                    pending = self.words.make_input(self.words.end, "livemigrate", "the sync stopped on an error")
                elif left is not None and left <= 0:
                    # Resume ourselves when the window closes, so the run never sits in an expired pause.
                    self.signal = "window_expired"
                    pending = self.words.make_input(self.words.end, "livemigrate", "the window closed")
                else:
                    pending = self.m.store.load(self.m.name).pending_decision
                if not pending:
                    continue
                resume_flow_run(self.flow_run_id, run_input=pending)  # type: ignore[arg-type]
                self.m.store.update(self.m.name, pending_decision=None)
                self.paused.clear()
            except Exception as exc:  # noqa: BLE001 - retried next tick
                log.debug("decision relay: %s", exc)


def form_description(m: Migration) -> str:
    """The pause form's text: the status as of now, what a cutover will do here, and what to choose."""
    d = describe(m.store, m.name)
    blocks, how = m.write_block_plan()
    doc = m.store.load(m.name)
    plan = cutover_plan_markdown(
        blocks=blocks,
        how=how,
        drain_timeout=m.cfg.cutover.drain_timeout_seconds,
        final_verification=m.cfg.cutover.final_verification,
        restores=doc.index_restores,
        destination_writes=doc.destination_writes,
    )
    return (
        status_markdown(d, _rules(m))
        + f"\n\nThe figures above are a snapshot; the **`{artifact_key(m.name, 'status')}`** artifact (Artifacts tab)"
        f" is rewritten every {STATUS_SECONDS:g} s with the lag, the latest write and the time left.\n\n"
        + plan
        + "\n\nChoose **cutover** (tick the confirmation; stop the application's writes first), **extend**"
        f" (+{m.cfg.cutover.extension_hours:g} h) or **cancel**. A refused request is logged in the run's log with"
        " its reason, and the run pauses again."
    )


def rollback_form_description(rm: Migration) -> str:
    """The rollback form's text: the reverse sync's status now, and what a rollback does."""
    d = describe(rm.store, rm.name)
    blocks, how = rm.write_block_plan()
    return (
        status_markdown(d, _rules(rm))
        + "\n\n### What a rollback does\n\n"
        + f"1. **The destination's writes stop:** {how.replace('source', 'destination')}.\n"
        + "2. **Drain:** the reverse sync applies the destination's last writes to the source"
        + f" (up to {rm.cfg.cutover.drain_timeout_seconds:g} s).\n"
        + f"3. **Verification:** {rm.cfg.cutover.final_verification} (what changed since the cutover is read again).\n"
        + "4. **The source reopens** for the application's writes; the destination stays write-blocked"
        + (" (where it could be blocked)." if blocks else ".")
        + "\n\nChoose **rollback** (tick the confirmation; stop the application's writes to the destination first),"
        f" **extend** (+{rm.cfg.cutover.extension_hours:g} h) or **finish** (end the reverse sync; the source stays"
        " closed). A refused request is logged in the run's log with its reason, and the run pauses again."
    )


def _pause_for_decision(m: Migration, n: int, relay: DecisionRelay, words: _Words = FORWARD) -> Any:
    left = m.window_left()
    if left is not None and left <= 0:
        return None
    text = rollback_form_description(m) if words is REVERSE else form_description(m)
    form = words.form.with_initial_data(description=text)
    relay.paused.set()
    try:
        return pause_flow_run(
            wait_for_input=form,
            timeout=max(1, int(left if left is not None else 3600)) + 120,
            poll_interval=POLL_SECONDS,
            key=f"{words.approve}-{n}",
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

    from flows.report import build_report, report_markdown, write_migration_report

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
    m: Migration,
    approver: str,
    reason: str,
    result: dict[str, Any],
    report_dir: str | None,
    words: _Words | None = None,
) -> dict[str, Any]:
    """Publish the cutover's two moments ("destination ready", "complete") and return the final description."""
    # A rollback's report is the forward migration's, published with the reverse sync in it (_reverse_result).
    result["report"] = publish_report(m, report_dir) if words is not REVERSE else None
    d = describe(m.store, m.name)
    markdown(
        m.name,
        "outcome",
        status_markdown(d)
        + f"\n\n- **{(words or FORWARD).approve.capitalize()} approved by:** {approver} ({reason})"
        + "".join(f"\n- **Warning:** {w}" for w in result["warnings"]),
        "rolled back" if words is REVERSE else "migration complete",
    )
    return {**d, "cutover": result}


def _config_hint(config: str | dict[str, Any]) -> str:
    return f"--config {config}" if isinstance(config, str) else "--config <your config file>"


def _failure_outcome(m: Migration, exc: BaseException, config: str | dict[str, Any]) -> None:
    """A failed run says what failed, the state both clusters are in, and the next command to run."""
    what = exc.one_line() if isinstance(exc, LiveMigrateError) else f"{type(exc).__name__}: {exc}"
    try:
        doc = m.store.get(m.name)
        d = describe(m.store, m.name) if doc is not None else None
    except Exception:  # noqa: BLE001 - the destination may be the thing that failed
        doc, d = None, None
    if doc is None:
        state = "- **Clusters:** nothing was copied or changed (the migration record was not created)."
    else:
        blocked = (
            "**write-blocked** (run `db.adminCommand({setUserWriteBlockMode: 1, global: false})` on it to reopen it)"
            if doc.write_blocked
            else "open for writes (livemigrate does not hold it blocked)"
        )
        dest_blocked = (
            " User writes there are **blocked** (destination_write_blocking) until the migration reaches"
            " 'destination ready' or is cancelled."
            if doc.destination_write_blocked
            else ""
        )
        state = (
            f"- **Phase:** {doc.phase.value}\n- **Source:** unchanged by livemigrate except its writes: {blocked}.\n"
            f"- **Destination:** holds a partial copy ({d['clone']['docs'] if d else '?'} documents copied); it must"
            f" not take application writes.{dest_blocked}"
        )
    hint = _config_hint(config)
    markdown(
        m.name,
        "outcome",
        f"### Migration `{m.name}` failed\n\n- **What failed:** {what}\n{state}\n\n"
        f"**Next:** fix the cause, then run `livemigrate migrate {hint}` (or run this deployment again with the same"
        f" `config`): it resumes from its checkpoint. `livemigrate describe {hint}` shows the details;"
        f" `livemigrate cancel {hint} --approver <you>` gives up (the destination keeps what was copied).",
        "migration failed",
    )


class _RunLogBridge(logging.Handler):
    """The engine's warnings (drain waits, "writes keep arriving", retries) in the flow run's log in the UI.

    Why: the engine logs with the standard library (it runs without Prefect too); the Prefect run
    log only receives its own loggers.  Records from background threads (the sync) carry no run
    context, so they go through the run logger captured when the flow started.
    """

    def __init__(self, run_logger: Any) -> None:
        super().__init__(logging.WARNING)
        self.run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_logger.log(record.levelno, "%s", record.getMessage())
        except Exception:  # noqa: BLE001 - logging never breaks the migration
            self.handleError(record)


@flow(name="migrate", log_prints=False)
def migrate_flow(
    config: str | dict[str, Any], restart: bool = False, report_dir: str | None = None, skip_prechecks: bool = False
) -> dict[str, Any]:
    """Migrate one deployment into another with an approval-gated cutover.

    Args:
        config: Path of the migration YAML on the worker (relative to the repository root, or absolute), or the
            config itself as a mapping that names a `link` or per-endpoint `secret:` blocks. Never a URI with a
            password: credentials come from Prefect Secret blocks.
        restart: Discard the stored migration of the same name and start again from the beginning. Leave off to
            resume a stopped or failed migration where it left off.
        report_dir: Directory on the worker for the verification and migration reports (HTML). Empty: the
            reports are only artifacts and records in the destination's metadata.
        skip_prechecks: Do not run the prechecks first (they always run unless the migration is resuming).
    """
    logger = get_run_logger()
    cfg = config_param(config)
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    # Before anything starts: a scale-out that cannot work is a one-line error (flows/scaleout.py).
    helpers_at = find_target(cfg, config, from_deployment=bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id))
    helpers: CloneWorkers | None = None
    head = claim(cfg)  # `livemigrate migrate` began the engine's first steps while Prefect came up (flows/headstart.py)
    m = head.migration() if head is not None else Migration(cfg)
    metrics = Metrics()

    def tick(st: Any) -> None:
        metrics.sync_tick(cfg.name, st)
        metrics.verification(cfg.name, m.last_status, m.last_estimate)  # as published (every 2 s at most)

    m.on_tick = tick
    flow_context = contextvars.copy_context()  # the run's context, for artifacts made by background threads
    m.on_difference = lambda found: flow_context.copy().run(_report_differences, m, found)
    bridge = _RunLogBridge(logger)
    engine_loggers = [logging.getLogger(name) for name in ENGINE_LOGGERS]
    for lg in engine_loggers:
        lg.addHandler(bridge)
    live: LiveStatus | None = None
    if cfg.tuning.metrics_port is not None:
        _, port = metrics.serve(cfg.tuning.metrics_port)
        logger.info("Prometheus metrics on http://127.0.0.1:%s/metrics", port)
    existing = head.existing() if head is not None else m.store.get(cfg.name)
    resuming = existing is not None and existing.phase not in (Phase.COMPLETE, Phase.CANCELLED, Phase.EXPIRED)

    def live_status() -> LiveStatus:
        return LiveStatus(
            cfg.name, lambda: live_status_markdown(describe(m.store, m.name), _rules(m), STATUS_SECONDS), STATUS_SECONDS
        ).start()

    try:
        if not restart and pending_reverse(m.store, cfg.name) is not None:
            # Past the cutover of a reversible migration: the run goes on with its reverse sync (tasks/reverse.py).
            live = live_status()
            return _reverse(m, flow_run_id or "", report_dir, metrics, live, forward=None)
        if not skip_prechecks and not resuming:
            prechecks_stage(cfg, head)
        metrics.phase(cfg.name, begin_stage(m, restart, flow_run_id))
        live = live_status()
        if helpers_at is not None and m.store.load(cfg.name).phase == Phase.CLONING:
            helpers = CloneWorkers.start(helpers_at, cfg.tuning.clone_workers, cfg.name)  # they claim as this run does
        clone_stage(m, metrics)  # returns once every partition is done, whoever copied it
        if helpers is not None:
            helpers.settle()
        interrupted = m.interrupted_cutover()
        if interrupted is not None:
            # An approved cutover whose process stopped: carry it on, do not ask again.
            logger.warning("resuming the cutover approved by %s", interrupted.approver or "(unnamed)")
            metrics.phase(cfg.name, Phase.CUTTING_OVER.value)
            result = cutover_stage(m, interrupted.approver, interrupted.reason, report_dir, resume=True)
            if "refused" not in result:
                done = _outcome(
                    m, interrupted.approver, interrupted.reason + " (resumed after a crash)", result, report_dir
                )
                return _after_cutover(m, flow_run_id or "", report_dir, metrics, live, done)
            m.record_decision(
                Decision(action="cutover-refused", approver=interrupted.approver, reason=result["refused"])
            )
            markdown(m.name, "decision", f"Resumed cutover refused: {result['refused']}")
            logger.warning("resumed cutover refused: %s; the sync goes on and asks again", result["refused"])
        metrics.phase(cfg.name, Phase.SYNCING.value)
        ready_stage(m)
        done = _decide(m, relay_id=flow_run_id or "", report_dir=report_dir, metrics=metrics, live=live)
        return _after_cutover(m, flow_run_id or "", report_dir, metrics, live, done)
    except (ShutdownRequested, TerminationSignal) as exc:
        # A clean stop (tasks/shutdown.py; Prefect's own SIGTERM bridge raises TerminationSignal): the finally
        # below stops the sync after its last applied batch and keeps the checkpoint; the run is cancelled,
        # not crashed, and the same migration run again resumes.
        stop = exc if isinstance(exc, ShutdownRequested) else ShutdownRequested(exc.signal)
        note_stop(stop.signum)
        message = stop.one_line(cfg.name, "run the same migration again to resume")
        logger.info(message)  # not a warning: the terminal already says it once (flows/operate.py)
        return Cancelled(message=message)  # type: ignore[return-value]  # Prefect makes a returned state the run's
    except BaseException as exc:
        if isinstance(exc, LiveMigrateError) and m.store.get(m.name) is not None:
            m.fail(exc)
        if isinstance(exc, Exception):
            _failure_outcome(m, exc, config)
        raise
    finally:
        if helpers is not None:
            helpers.cancel("the migrate run stopped before its clone was complete")  # no-op once they ended
        for lg in engine_loggers:
            lg.removeHandler(bridge)
        doc = m.store.get(cfg.name)
        if doc is not None:
            metrics.phase(cfg.name, doc.phase.value)
            metrics.downtime(cfg.name, doc.downtime)
        if live is not None:
            live.stop()
        metrics.stop()
        m.close()


def _decide(
    m: Migration,
    relay_id: str,
    report_dir: str | None,
    metrics: Metrics,
    live: LiveStatus | None = None,
    words: _Words = FORWARD,
) -> dict[str, Any]:
    """Pause for decisions until one ends the migration (or its reverse sync): cutover or rollback, cancel or
    finish, or the window's end."""
    logger = get_run_logger()
    cfg = m.cfg
    n = 0
    with DecisionRelay(m, relay_id, words) as relay:
        while True:
            n += 1
            if live is not None:
                live.refresh()  # the live artifact agrees with the form from the first second of the pause
            decision = _pause_for_decision(m, n, relay, words)
            if m.runner is not None and m.runner.state.error is not None:
                raise m.runner.state.error  # the sync failed while paused (the relay woke the pause)
            if decision is None or relay.signal == "window_expired":
                m.expire()
                if words is FORWARD:
                    publish_report(m, report_dir)
                d = describe(m.store, m.name)
                markdown(m.name, "outcome", status_markdown(d) + f"\n\n**Expired.** {d['error']}", "window expired")
                logger.warning("%s window expired: the sync stopped", words.approve)
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
                logger.warning("%s refused: %s; the run pauses again", decision.action, verdict.reason)
                continue
            if decision.action == "extend":
                m.extend(decision.approver, decision.reason)
                markdown(
                    m.name,
                    "decision",
                    f"Window extended by {cfg.cutover.extension_hours:g} h by **{decision.approver}**: {decision.reason}",
                )
                logger.info("window extended by %g h by %s", cfg.cutover.extension_hours, decision.approver)
                continue
            if decision.action == words.end:
                m.cancel(decision.approver, decision.reason)
                if words is FORWARD:
                    publish_report(m, report_dir)
                markdown(m.name, "decision", f"{words.ended} by **{decision.approver}**: {decision.reason}")
                d = describe(m.store, m.name)
                markdown(
                    m.name, "outcome", status_markdown(d) + f"\n\n**{words.ended}** by {decision.approver}.", words.end
                )
                return d
            markdown(
                m.name,
                "decision",
                f"{words.approve.capitalize()} approved by **{decision.approver}**: {decision.reason}"
                + (" (full verification)" if decision.full_verification else ""),
            )
            metrics.phase(m.name, Phase.CUTTING_OVER.value)
            try:
                result = cutover_stage.with_options(name=words.approve)(
                    m, decision.approver, decision.reason, report_dir, full_verification=decision.full_verification
                )
            except CutoverRefused as exc:  # the numbers moved between the judgement and the cutover
                result = {"refused": exc.one_line()}
            if "refused" in result:
                metrics.phase(m.name, Phase.SYNCING.value)
                m.record_decision(
                    Decision(action="cutover-refused", approver=decision.approver, reason=result["refused"])
                )
                markdown(m.name, "decision", f"{words.approve.capitalize()} refused: {result['refused']}")
                logger.warning("%s refused: %s; the run pauses again", words.approve, result["refused"])
                continue
            return _outcome(m, decision.approver, decision.reason, result, report_dir, words)


def _after_cutover(
    m: Migration,
    flow_run_id: str,
    report_dir: str | None,
    metrics: Metrics,
    live: LiveStatus | None,
    done: dict[str, Any],
) -> dict[str, Any]:
    """A reversible migration that completed goes on with its reverse sync; anything else is done."""
    if m.cfg.reversible and pending_reverse(m.store, m.name) is not None:
        return _reverse(m, flow_run_id, report_dir, metrics, live, forward=done)
    return done


def _reverse(
    m: Migration,
    flow_run_id: str,
    report_dir: str | None,
    metrics: Metrics,
    live: LiveStatus | None,
    forward: dict[str, Any] | None,
) -> dict[str, Any]:
    """A reversible migration after its cutover: the reverse sync, until a rollback, finish or the window's end.

    The same flow run goes on (tasks/reverse.py): the destination's writes reach the source while the source
    stays closed to the application; the decision loop is the cutover's with the rollback's words and form.
    """
    logger = get_run_logger()
    rm = ReverseMigration(m.cfg, m.src, m.dst)

    def tick(st: Any) -> None:
        metrics.sync_tick(rm.name, st)
        metrics.verification(rm.name, rm.last_status, rm.last_estimate)

    rm.on_tick = tick
    flow_context = contextvars.copy_context()
    rm.on_difference = lambda found: flow_context.copy().run(_report_differences, rm, found)
    try:
        metrics.phase(rm.name, begin_stage.with_options(name="reverse-begin")(rm, False, flow_run_id))
        interrupted = rm.interrupted_cutover()
        if interrupted is not None:
            logger.warning("resuming the rollback approved by %s", interrupted.approver or "(unnamed)")
            result = cutover_stage.with_options(name="rollback")(
                rm, interrupted.approver, interrupted.reason, report_dir, resume=True
            )
            if "refused" not in result:
                out = _outcome(rm, interrupted.approver, interrupted.reason + " (resumed)", result, report_dir, REVERSE)
                return _reverse_result(m, forward, out, report_dir)
        logger.info(
            "reverse sync: the destination's writes reach the source until a rollback (`livemigrate rollback`) "
            "or finish (`livemigrate finish`); the source stays closed to the application meanwhile"
        )
        metrics.phase(rm.name, Phase.SYNCING.value)
        ready_stage.with_options(name="reverse-sync-ready")(rm)
        out = _decide(rm, relay_id=flow_run_id, report_dir=report_dir, metrics=metrics, live=live, words=REVERSE)
        return _reverse_result(m, forward, out, report_dir)
    finally:
        doc = rm.store.get(rm.name)
        if doc is not None:
            metrics.phase(rm.name, doc.phase.value)
            metrics.downtime(rm.name, doc.downtime)
        rm.close()


def _reverse_result(
    m: Migration, forward: dict[str, Any] | None, out: dict[str, Any], report_dir: str | None
) -> dict[str, Any]:
    """The run's result after a reverse sync: the forward migration's description, its cutover, and how the
    reverse ended (``rollback``: the rollback's two moments, when there was one)."""
    path = publish_report(m, report_dir)  # the forward report, with the reverse sync in it
    if out.get("cutover"):
        out["cutover"]["report"] = path
    d = describe(m.store, m.name)
    return {
        **d,
        "cutover": (forward or {}).get("cutover"),
        "rollback": out.get("cutover"),
        "reverse_phase": out.get("phase"),
    }


__all__ = ["CONFIRM_TEXT", "CutoverDecision", "Phase", "decision_input", "form_description", "migrate_flow"]
