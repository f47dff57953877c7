"""The engine's first steps, begun by `livemigrate migrate` while Prefect comes up, then handed to the flow.

Why (issue 20): before a flow's first line runs, Prefect imports itself and, with no server
configured, starts a temporary one: seconds in which nothing was copied.  The prechecks, the change
stream's start point, the partition plan and the copy need no Prefect, so `livemigrate migrate`
begins them here, in a background thread, before it imports Prefect.  The `migrate` flow, once its
run exists, claims them (:func:`claim`) and its stages wait for the work already under way instead
of starting it: the run, its task runs (prechecks, begin, clone, ...) and its artifacts are the same
as before, only the work inside them started earlier.  A step that failed raises its error inside the
flow's stage that would have met it, so the run fails (and the CLI prints its one line) as before.

The order and the rules are the flow's: no prechecks when resuming or with ``--skip-prechecks``, nothing
begun when a precheck failed, clone after begin.  Only the flow run's id is written later (when the
flow's begin stage runs); clone progress reported before the flow's progress artifact exists is handed
to it when it does, and the engine's warnings from before the run existed go to the run's log when the
flow claims the work (the terminal showed them when they happened).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from flows.common import NOT_ON_TERMINAL
from tasks.clone import Cloner, CloneStats
from tasks.config import MigrationConfig
from tasks.migration import Migration
from tasks.progress import ProgressSink
from tasks.reverse import pending_reverse
from tasks.state import TERMINAL, MigrationDoc

log = logging.getLogger(__name__)

STOP_WAIT_S = 30.0
"""How long closing waits for the head start's thread (the clone's batches in flight finish, as when a stop
reaches the clone in the flow) before it closes the clients under it (those partitions are copied again)."""

_started: dict[str, HeadStart] = {}
ENGINE_LOGGERS = ("tasks", "checks")  # what the flow's run log takes from the engine (flows/migrate._RunLogBridge)


class _HeldLogs(logging.Handler):
    """The engine's warnings made before the flow run exists, kept for its log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def attach(self) -> None:
        for name in ENGINE_LOGGERS:
            logging.getLogger(name).addHandler(self)

    def hand_to_run_log(self) -> None:
        """Stop holding; write what was held to the current flow run's log (nothing outside a flow run)."""
        for name in ENGINE_LOGGERS:
            logging.getLogger(name).removeHandler(self)
        records, self.records = self.records, []
        if not records:
            return
        try:
            from prefect import get_run_logger

            run_log = get_run_logger()
        except Exception:  # noqa: BLE001 - no flow run here: the terminal showed them
            return
        for r in records:
            run_log.log(r.levelno, "%s", r.getMessage(), extra={NOT_ON_TERMINAL: True})


class _ProgressRelay:
    """Clone progress for whatever sink the flow attaches later; reports made before are replayed to it."""

    def __init__(self) -> None:
        self.first = threading.Event()  # the first batch is copied
        self._lock = threading.Lock()
        self._target: ProgressSink | None = None
        self._last: dict[str, tuple[str, str, int, int, dict[str, float]]] = {}

    def __call__(self, stage: str, key: str, done: int, total: int, extra: dict[str, float]) -> None:
        self.first.set()
        with self._lock:
            target = self._target
            if target is None:
                self._last[key] = (stage, key, done, total, extra)
                return
        target(stage, key, done, total, extra)

    def attach(self, sink: ProgressSink) -> None:
        with self._lock:
            if self._target is sink:
                return
            self._target = sink
            replay, self._last = list(self._last.values()), {}
        for args in replay:
            sink(*args)


class HeadStartMigration(Migration):
    """A :class:`Migration` whose begin and clone run in the head start's thread; the flow's calls wait for them.

    ``begin`` and ``clone`` return (or raise) what the head start's own calls did; ``begin`` also records
    the flow run's id, which did not exist when the migration began.  ``close`` stops a clone still
    running and waits for the thread before closing the clients.
    """

    def __init__(self, cfg: MigrationConfig, head: HeadStart, relay: _ProgressRelay) -> None:
        self._head = head
        self._relay = relay
        super().__init__(cfg, progress=relay)
        self._closed = False

    def begin(self, *, restart: bool = False, flow_run_id: str | None = None) -> MigrationDoc:
        doc: MigrationDoc = self._head.wait("begin")
        if flow_run_id:
            self.store.update(self.name, flow_run_id=flow_run_id)
            doc = doc.model_copy(update={"flow_run_id": flow_run_id})
        return doc

    def clone(self, workers: int | None = None, wait_for_others_s: float = 3600.0) -> CloneStats:
        if self.progress is not self._relay:
            self._relay.attach(self.progress)  # the flow's progress artifact, set just before it calls clone()
        stats: CloneStats = self._head.wait("clone")
        return stats

    def cloner(self) -> Cloner:
        """The engine's cloner, whose ``run`` raises once the head start is stopped.

        Why: a stopped clone whose workers all ended between partitions returns from ``run`` and waits for
        other workers' partitions (Migration.clone); in the flow a signal raised in that wait, here nothing
        would, so the thread could not end.
        """
        cloner = super().cloner()
        run = cloner.run

        def run_until_stopped(workers: int | None = None) -> CloneStats:
            stats = run(workers)
            if self._head.stopping():
                raise InterruptedError("clone stopped")
            return stats

        cloner.run = run_until_stopped  # type: ignore[method-assign]
        return cloner

    def stop_clone(self) -> None:
        """Ask a clone under way to stop after its batches in flight (as Migration does when it loses the lock)."""
        if self._cloner is not None:
            self._cloner.stop_event.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._head.stop()
        super().close()


class HeadStart:
    """Prechecks, begin and clone of one migration, run in a background thread until a flow claims them."""

    STEPS = ("migration", "existing", "prechecks", "begin", "clone")

    def __init__(self, cfg: MigrationConfig, *, restart: bool, skip_prechecks: bool) -> None:
        self.cfg, self.restart, self.skip_prechecks = cfg, restart, skip_prechecks
        self._steps: dict[str, Future[Any]] = {step: Future() for step in self.STEPS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="head-start", daemon=True)
        self._migration: HeadStartMigration | None = None
        self._relay = _ProgressRelay()
        self._held_logs = _HeldLogs()

    def start(self) -> HeadStart:
        _started[self.cfg.name] = self
        self._held_logs.attach()
        self._thread.start()
        return self

    # -- what the flow asks for ----------------------------------------------------
    def hand_over(self) -> None:
        """The flow run claims the work: the engine's warnings held until now go to its log."""
        self._held_logs.hand_to_run_log()

    def migration(self) -> HeadStartMigration:
        """The migration the flow drives from here on (it closes it); raises what constructing it raised."""
        m: HeadStartMigration = self.wait("migration")
        return m

    def existing(self) -> MigrationDoc | None:
        """The stored migration as it was before the head start began it (the flow decides "resuming" from it)."""
        doc: MigrationDoc | None = self.wait("existing")
        return doc

    def prechecks(self) -> Any:
        """The precheck report (checks.results.PrecheckReport) of the head start's run."""
        return self.wait("prechecks")

    def copying(self, timeout: float) -> bool:
        """Wait until the first batch is copied or the head start ended (done, failed); False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not (self._relay.first.is_set() or not self._thread.is_alive()):
            if time.monotonic() >= deadline:
                return False
            self._relay.first.wait(0.05)
        return True

    def wait(self, step: str) -> Any:
        """The step's result once it is done, or its error (the error of an earlier step, if that one failed)."""
        return self._steps[step].result()

    # -- the work ------------------------------------------------------------------
    def _run(self) -> None:
        step = self.STEPS[0]
        try:
            m = self._migration = HeadStartMigration(self.cfg, self, self._relay)
            self._steps[step].set_result(m)
            step = "existing"
            existing = m.store.get(self.cfg.name)
            self._steps[step].set_result(existing)
            step = "prechecks"
            if pending_reverse(m.store, self.cfg.name) is not None:
                # A reversible migration past its cutover: the flow goes on with the reverse sync (tasks/reverse.py).
                for rest in ("prechecks", "begin", "clone"):
                    self._steps[rest].set_result(None)
                return
            # The flow's rule: prechecks unless skipped or resuming; nothing begins after a failed precheck.
            resuming = existing is not None and existing.phase not in TERMINAL
            if self.skip_prechecks or resuming:
                self._steps[step].set_result(None)
            else:
                report = self._run_prechecks()
                self._steps[step].set_result(report)
                if report.failed:
                    raise _NotBegunError("prechecks failed")
            for step, work in (("begin", self._begin), ("clone", self._clone)):
                if self._stop.is_set():
                    raise _NotBegunError("stopped before " + step)
                self._steps[step].set_result(work(m))
        except BaseException as exc:  # noqa: BLE001 - handed to the flow, which raises it in its stage
            for rest in self.STEPS[self.STEPS.index(step) :]:
                if not self._steps[rest].done():
                    self._steps[rest].set_exception(exc)

    def _run_prechecks(self) -> Any:
        from checks.prechecks import run_prechecks

        cfg = self.cfg
        atlas = cfg.destination.atlas
        if atlas is not None and atlas.api_key_secret is not None:  # a Secret block: read through Prefect
            from flows.prechecks import resolve_atlas_key

            cfg = resolve_atlas_key(cfg)
        return run_prechecks(cfg, store=True)

    def _begin(self, m: HeadStartMigration) -> MigrationDoc:
        return Migration.begin(m, restart=self.restart)

    def _clone(self, m: HeadStartMigration) -> CloneStats:
        return Migration.clone(m)

    # -- stopping ------------------------------------------------------------------
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Begin nothing more, stop a clone under way, and wait (bounded) for the thread to end."""
        self._stop.set()
        deadline = time.monotonic() + STOP_WAIT_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            m = self._migration
            if m is not None:
                m.stop_clone()
            self._thread.join(0.2)
        if self._thread.is_alive():
            log.debug("head start still running after %.0f s; closing its clients", STOP_WAIT_S)

    def close(self) -> None:
        """The CLI's last word: when no flow claimed the migration, stop it and close it here."""
        _started.pop(self.cfg.name, None)
        self._held_logs.hand_to_run_log()  # no-op once claimed; outside a flow run it only stops holding
        if self._migration is not None:
            self._migration.close()  # a no-op when the flow closed it
        else:
            self.stop()


class _NotBegunError(Exception):
    """A later step that never ran (a precheck failed, or the migration was stopped first)."""


def claim(cfg: MigrationConfig) -> HeadStart | None:
    """The head start `livemigrate migrate` began for this migration in this process, once; else None.

    Called by the flow in its run, which then takes the engine's warnings into its log from here on.
    """
    head = _started.pop(cfg.name, None)
    if head is not None:
        head.hand_over()
    return head


__all__ = ["ENGINE_LOGGERS", "HeadStart", "HeadStartMigration", "claim"]
