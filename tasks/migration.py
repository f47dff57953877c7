"""One migration from start to finish, as plain Python: begin, clone, sync, cut over, cancel, expire.

Why: flows, the CLI, the demo and the tests all drive the same engine object;
Prefect only wraps these calls.  Each step records its effect in the metadata
store before the next starts, so a crash at any point resumes from there.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from tasks.apply import QE_STATE_PREFIX
from tasks.clone import Cloner, CloneStats
from tasks.config import MigrationConfig
from tasks.ddl import Restore, restore_index
from tasks.errors import LiveMigrateError, LockHeldError, PhaseError, TerminalError
from tasks.metadata import LockHeartbeat, MetadataStore, process_owner
from tasks.mongo import access_control_enforced, connect_side, describe_endpoint, latest_optime
from tasks.namespaces import NamespaceFilter
from tasks.progress import ProgressSink, null_sink
from tasks.retry import retry_transient
from tasks.sharding import balancer_start, balancer_stop
from tasks.state import ACTIVE, TERMINAL, Checkpoint, Decision, MigrationDoc, Phase, utcnow
from tasks.sync import SyncRunner, fcv, open_start_point, ts_dict
from tasks.timeline import Timeline

if TYPE_CHECKING:
    from checks.continuous import ContinuousVerifier

log = logging.getLogger(__name__)


class CutoverRefused(LiveMigrateError):  # noqa: N818 - a refusal, not a failure
    """The cutover was asked for at a moment it cannot safely happen (lag too high, wrong phase)."""

    exit_code = 1


@dataclass
class CutoverResult:
    destination_ready_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    warnings: list[str] = field(default_factory=list)
    verification: dict[str, Any] | None = None
    phase: Phase = Phase.CUTTING_OVER
    downtime: dict[str, Any] | None = None


ACTIONS = ("cutover", "extend", "cancel")


@dataclass
class Verdict:
    """What :func:`judge_decision` says about a cutover, extend or cancel request."""

    status: str  # accepted | refused | already
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


def judge_decision(
    doc: MigrationDoc,
    cfg: MigrationConfig,
    action: str,
    *,
    approver: str,
    confirm: bool,
    lag: float | None,
    ready: bool | None,
    full_verification: bool = False,
    differences: int = 0,
) -> Verdict:
    """The one set of rules for accepting a decision, used by the flow's form and by `livemigrate cutover`.

    ``lag`` and ``ready`` are the freshest known (the running sync's, or the stored record's); ``ready``
    None means readiness is not required (an engine call).  ``differences``: documents the continuous
    verification found differing with no change in flight; a cutover is refused while there are any,
    unless the engineer asks for a full verification inside the window.
    """
    name = doc.id
    if action not in ACTIONS:
        return Verdict("refused", f"unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
    if action == "cutover" and doc.phase in (Phase.CUTTING_OVER, Phase.COMPLETE):
        return Verdict("already", f"migration {name} is already {doc.phase.value}: nothing to do")
    if doc.phase in TERMINAL:
        return Verdict("refused", f"migration {name} has ended ({doc.phase.value})")
    if action == "cancel":
        return Verdict("accepted")
    if doc.phase != Phase.SYNCING:
        return Verdict("refused", f"{action} refused: migration {name} is {doc.phase.value}, not syncing")
    if action == "extend":
        return Verdict("accepted")
    if not approver.strip():
        return Verdict("refused", "no approver name was given")
    if not confirm:
        return Verdict("refused", "the confirmation box was not ticked")
    limit = cfg.cutover.max_lag_seconds
    if lag is None or lag > limit:
        shown = "unknown" if lag is None else f"{lag:.1f} s"
        return Verdict("refused", f"lag is {shown}, above max_lag_seconds {limit:g}")
    if ready is False:
        return Verdict("refused", f"not ready to cut over yet: the lag must stay under {limit:g} s for a while")
    if differences and not full_verification:
        return Verdict(
            "refused",
            f"the continuous verification found {differences} document(s) that differ with no change in flight "
            "(see `livemigrate describe`): fix the destination, or choose a full verification at the cutover",
        )
    return Verdict("accepted")


USER_WRITES_BLOCKED = 371  # MongoDB error code: a user write refused by setUserWriteBlockMode
DRAIN_REPORT_SECONDS = 10.0  # a drain that waits says so (a WARNING in the run's log) this often

VerifyFn = Callable[[MigrationDoc], dict[str, Any]]
"""Runs the final verification; returns a summary with at least {"equal": bool}."""


class Migration:
    """Drives one named migration between two connected deployments."""

    # What the operator calls each side in messages (a reverse sync's source is the forward destination).
    side_names: dict[str, str] = {"source": "source", "destination": "destination"}

    def __init__(
        self,
        config: MigrationConfig,
        source: MongoClient[Any] | None = None,
        dest: MongoClient[Any] | None = None,
        *,
        progress: ProgressSink = null_sink,
    ) -> None:
        self.cfg = config
        self.name = config.name
        self._own_clients = source is None or dest is None
        self.src = source if source is not None else connect_side(config, "source")
        self.dst = dest if dest is not None else connect_side(config, "destination")
        self.store = MetadataStore(self.dst)
        self.owner = process_owner()
        self.progress = progress
        self.runner: SyncRunner | None = None
        self.on_tick: Callable[[Any], None] | None = None  # e.g. metrics, fed from the sync thread
        self._heartbeat: LockHeartbeat | None = None
        self._cloner: Cloner | None = None
        self.lock_lost: LockHeldError | None = None
        self.timeline = Timeline(self.store, self.name)
        self.verifier: ContinuousVerifier | None = None  # the background verification, once the sync is ready
        self.on_difference: Callable[[list[dict[str, Any]]], None] | None = None  # e.g. a Prefect event
        self._verifying = True  # the background verification may (re)start; cleared when a cutover begins
        self._full_verification = False  # the approved cutover asked for a full verification
        self._status_at = 0.0
        self._write_plan: tuple[bool, str] | None = None
        self._access_control: dict[str, tuple[bool | None, str]] = {}  # per side, asked once (block_would_not_hold)
        self._watch_dest = False  # destination_write_blocking could not block: watch the destination instead
        self.destination_watch: DestinationWatch | None = None
        self.last_estimate: dict[str, Any] | None = None  # the downtime estimate last published
        self.last_status: dict[str, Any] | None = None  # the background verification's status last published

    def close(self) -> None:
        self._verifying = False  # a last sync tick must not start the verification again
        if self.runner is not None:
            self.runner.stop()
        if self.destination_watch is not None:
            self.destination_watch.stop()
        if self.verifier is not None:
            self.verifier.close()
        if self._heartbeat is not None:
            self._heartbeat.stop()
            try:
                self.store.disown_lock(self.name, self.owner)
            except PyMongoError as exc:  # the lock then expires with its heartbeat, or its process is gone
                log.warning("could not hand back the destination lock: %s", type(exc).__name__)
        if self._own_clients:
            self.src.close()
            self.dst.close()

    def __enter__(self) -> Migration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- begin ------------------------------------------------------------------
    def begin(self, *, restart: bool = False, flow_run_id: str | None = None) -> MigrationDoc:
        """Create (or resume) the migration record, take the lock, store the change-stream start point."""
        doc = self.store.get(self.name)
        if doc is not None and doc.phase in TERMINAL and not restart:
            raise TerminalError(
                f"migration {self.name!r} already ended ({doc.phase.value})",
                remedy="use --restart (with clear_destination: true) or a new name to migrate again",
            )
        timeout = self.cfg.tuning.lock_timeout_seconds
        epoch = self.store.acquire_lock(self.name, self.owner, timeout)  # before archiving: one driver does it
        self._heartbeat = LockHeartbeat(
            self.store, self.name, self.owner, timeout / 4, on_lost=self._lock_lost, lease_s=timeout
        )
        self._heartbeat.__enter__()
        doc = self.store.get(self.name)
        if doc is not None and doc.phase in TERMINAL:
            archived = self.store.archive(self.name)
            log.info("archived ended migration %s as %s", self.name, archived)
            doc = None
        if doc is None:
            from tasks.reverse import REVERSE_SUFFIX

            if not self.name.endswith(REVERSE_SUFFIX):
                stale = self.store.archive(self.name + REVERSE_SUFFIX)  # the reverse sync of an earlier migration
                if stale:
                    log.info("archived the reverse sync of an earlier migration %s as %s", self.name, stale)
            rules = self.cfg.namespaces
            doc = self.store.create(
                MigrationDoc(
                    id=self.name,
                    source=describe_endpoint(self.cfg.source_uri()),
                    destination=describe_endpoint(self.cfg.destination_uri()),
                    namespaces={"include": list(rules.include), "exclude": list(rules.exclude)},
                )
            )
        self.store.fence(self.name, epoch)  # from here on, a process that takes over refuses our writes
        if flow_run_id:
            doc = self.store.update(self.name, flow_run_id=flow_run_id)
        if doc.phase == Phase.FAILED:
            doc = self.store.set_phase(
                self.name, Phase.CLONING if not doc.clone_finished_at else Phase.SYNCING, error=None
            )
        if doc.start_token is None and doc.start_time is None:
            # Before reading any data: every write from here on reaches the destination through the sync.
            versions = {"source": fcv(self.src), "destination": fcv(self.dst)}  # a change stops the sync
            token, optime = open_start_point(self.src)
            doc = self.store.update(self.name, start_token=token, start_time=ts_dict(optime), fcv=versions)
            self.store.save_checkpoint(Checkpoint(id=self.name, token=token, cluster_time=ts_dict(optime)))
        if not doc.balancer_stopped:
            # Not only with the start point: a begin retried after a refused or interrupted stop must stop it.
            try:
                if balancer_stop(self.src):
                    doc = self.store.update(self.name, balancer_stopped=True)
            except OperationFailure as exc:
                raise TerminalError(
                    f"cannot stop the source balancer: {exc.details.get('errmsg') if exc.details else exc}"
                ) from None
        if self.cfg.destination_write_blocking:
            doc = self._keep_destination_clean(doc)
        if doc.phase == Phase.CREATED:
            doc = self.store.set_phase(self.name, Phase.CLONING)
        return doc

    # -- a clean destination ------------------------------------------------------------
    def _keep_destination_clean(self, doc: MigrationDoc) -> MigrationDoc:
        """destination_write_blocking: block user writes on the destination until "destination ready".

        MongoDB 6.0+ (manual, "setUserWriteBlockMode"): a client with ``bypassWriteBlockingMode`` (the
        migration user) still writes; everyone else gets UserWritesBlocked (371).  With access control
        off every client bypasses the block (server: AuthorizationSessionImpl, mayBypassWriteBlockingMode
        is true without auth), so blocking would protect nothing; there, and where the user lacks the
        privileges or the server lacks the command, the destination is watched instead (see
        :class:`DestinationWatch`).  The block is recorded before it is sent, as for the source.
        """
        possible, why = self._destination_block_possible()
        if not possible:
            return self._watch_destination(doc, why)
        self.store.update(self.name, destination_write_blocked=True)
        try:
            self.dst.admin.command({"setUserWriteBlockMode": 1, "global": True})
        except OperationFailure as exc:
            self.store.update(self.name, destination_write_blocked=False)
            return self._watch_destination(doc, f"the destination refused setUserWriteBlockMode (code {exc.code})")
        try:
            doc = self.store.update(self.name, destination_writes="blocked")  # our own write, through the block
        except OperationFailure as exc:
            if exc.code != USER_WRITES_BLOCKED:
                raise
            self.dst.admin.command({"setUserWriteBlockMode": 1, "global": False})
            self.store.update(self.name, destination_write_blocked=False)
            raise TerminalError(
                "the destination's write block stops the migration's own writes (UserWritesBlocked)",
                remedy="grant the migration user bypassWriteBlockingMode on the destination's cluster resource, "
                "or set destination_write_blocking: false",
            ) from None
        log.info("user writes on the destination are blocked until the destination is ready")
        return doc

    def _destination_block_possible(self) -> tuple[bool, str]:
        """Whether a write block on the destination would hold others off and let this migration write.

        From ``connectionStatus {showPrivileges: true}`` (MongoDB manual, "connectionStatus":
        ``authInfo.authenticatedUsers`` and ``authenticatedUserPrivileges`` [{resource, actions}]).
        """
        try:
            status = self.dst.admin.command({"connectionStatus": 1, "showPrivileges": True})
        except PyMongoError as exc:
            return False, f"connectionStatus failed on the destination ({type(exc).__name__})"
        off = self.block_would_not_hold("destination")
        if off:
            return False, off
        info = status.get("authInfo") or {}
        actions: set[str] = set()
        for p in info.get("authenticatedUserPrivileges") or []:
            resource = p.get("resource") or {}
            if resource.get("cluster") or resource.get("anyResource"):
                actions |= set(p.get("actions") or [])
        if "anyAction" in actions:
            return True, ""
        missing = [a for a in ("setUserWriteBlockMode", "bypassWriteBlockingMode") if a not in actions]
        if missing:
            return False, f"the migration user lacks {' and '.join(missing)} on the destination's cluster resource"
        return True, ""

    def block_would_not_hold(self, side: Literal["source", "destination"]) -> str:
        """Why a write block on ``side`` would hold no client off, or "" when it would.

        With access control off every client bypasses setUserWriteBlockMode, so a block the server accepts
        proves nothing: trusting it at a cutover would let the application's writes after the drain be
        lost.  Whether access control is on is asked of an unauthenticated connection
        (:func:`tasks.mongo.access_control_enforced`), once per side; where it cannot be told, the block
        is not trusted either.
        """
        if side not in self._access_control:
            ep = self.cfg.source if side == "source" else self.cfg.destination
            uri = self.cfg.source_uri() if side == "source" else self.cfg.destination_uri()
            timeout = self.cfg.tuning.connect_timeout_seconds
            self._access_control[side] = access_control_enforced(
                uri, side=side, tls_ca_file=ep.tls_ca_file, timeout_s=timeout
            )
        enforced, why = self._access_control[side]
        named = self.side_names[side]
        if enforced is True:
            return ""
        if enforced is False:
            return f"access control is off on the {named}, so every client would bypass a write block"
        return f"whether the {named} enforces access control is unknown ({why}), so a write block might hold no one off"

    def _watch_destination(self, doc: MigrationDoc, why: str) -> MigrationDoc:
        msg = (
            f"destination writes are not blocked ({why}): livemigrate watches the migrated namespaces on the "
            "destination instead, and a write by anything other than the sync is reported as a difference"
        )
        if doc.destination_writes != f"watched: {why}":
            log.warning(msg)
            self.store.push(self.name, "warnings", msg)
        self._watch_dest = True
        return self.store.update(self.name, destination_writes=f"watched: {why}")

    def _unblock_destination(self, doc: MigrationDoc) -> None:
        """At "destination ready" (or a cancel, or the window's end): the application may write there."""
        if doc.destination_write_blocked:
            self._lift_block("destination", destination_write_blocked=False, destination_writes="unblocked")

    def _lift_block(self, side: Literal["source", "destination"], **cleared: Any) -> None:
        """setUserWriteBlockMode {global: false} on ``side``, then the record's ``cleared`` fields; a failure
        is a warning with the command to run by hand.  A driver that was taken over leaves the block alone."""
        try:
            self.store.check_fence(self.name)
        except LockHeldError:
            log.warning("not unblocking the %s's writes: another process drives this migration now", side)
            return
        client = self.src if side == "source" else self.dst
        try:
            client.admin.command({"setUserWriteBlockMode": 1, "global": False})
            self.store.update(self.name, **cleared)
            log.info("user writes on the %s are unblocked", side)
        except PyMongoError as exc:
            msg = (
                f"could not unblock writes on the {side} ({type(exc).__name__}): run "
                "db.adminCommand({setUserWriteBlockMode: 1, global: false}) on it"
            )
            self.store.push(self.name, "warnings", msg)
            log.error(msg)

    def _lock_lost(self, why: str) -> None:
        """Called from the heartbeat thread: the lock is not provably ours any more; stop writing at once."""
        self.lock_lost = LockHeldError(
            f"migration {self.name!r} lost the destination lock ({why}): it stopped writing",
            remedy="find out which process holds the destination (livemigrate describe); run the migration "
            "again once it is the only one",
        )
        if self._cloner is not None:
            self._cloner.stop_event.set()
        if self.runner is not None:
            self.runner.abort(self.lock_lost)

    # -- clone ------------------------------------------------------------------
    def cloner(self) -> Cloner:
        return Cloner(self.cfg, self.src, self.dst, self.store, self.owner, self.timeline.clone_sink(self.progress))

    def clone(self, workers: int | None = None, wait_for_others_s: float = 3600.0) -> CloneStats:
        """Prepare, copy every partition (with other workers, if any), then build indexes and views."""
        doc = self.store.load(self.name)
        if doc.phase != Phase.CLONING:
            return CloneStats()
        cloner = self._cloner = self.cloner()
        self._retrying("clone prepare", cloner.prepare)
        self.timeline.clone_sample(force=True)
        stats = cloner.run(workers)
        deadline = time.monotonic() + wait_for_others_s
        while self.store.unfinished_partitions(self.name):
            if self.lock_lost is not None:
                raise self.lock_lost
            if time.monotonic() > deadline:
                raise TerminalError("clone partitions held by other workers did not finish in time")
            time.sleep(0.5)
            stats2 = cloner.run(1)  # reclaim partitions of workers that died
            stats.docs += stats2.docs
            stats.bytes += stats2.bytes
        if self.lock_lost is not None:
            raise self.lock_lost
        self._retrying("clone finish", cloner.finish)
        self.timeline.clone_sample(force=True)
        self.store.set_phase(self.name, Phase.SYNCING)
        return stats

    def _retrying(self, what: str, step: Callable[[], Any]) -> Any:
        """Run an idempotent step again after a transient error (election, dropped connection), with backoff."""
        tuning = self.cfg.tuning
        return retry_transient(what, lambda _attempt: step(), tuning.retry_attempts, tuning.retry_max_seconds)

    # -- sync -------------------------------------------------------------------
    def start_sync(self, on_tick: Callable[[Any], None] | None = None) -> SyncRunner:
        if self.runner is None or not self.runner.alive():
            outer = on_tick or self.on_tick

            def tick(state: Any) -> None:
                self.timeline.sync_sample(state)
                if state.ready and self.verifier is not None and self._verifying and not self.verifier.running():
                    self.verifier.start()  # the clone is done and the sync has caught up
                    if self._watch_dest and self.destination_watch is None:
                        self.destination_watch = DestinationWatch(
                            self.dst,
                            NamespaceFilter.from_rules(self.cfg.namespaces),
                            self.verifier.dirty,
                            self.cfg.metadata_db,
                        )
                        self.destination_watch.start()
                if state.ready and self._verifying:
                    try:
                        self._publish_verification()  # the downtime estimate stays fresh for the form and describe
                    except Exception:  # a status figure never stops the sync
                        log.exception("could not publish the verification status and downtime estimate")
                if outer is not None:
                    outer(state)

            verifier = self._continuous_verifier()
            self.runner = SyncRunner(
                self.cfg,
                self.src,
                self.dst,
                self.store,
                on_tick=tick,
                on_failure=self.fail,
                observer=verifier.dirty if verifier is not None else None,
            )
            self.runner.start()
        return self.runner

    # -- continuous verification ------------------------------------------------------
    def _continuous_verifier(self) -> ContinuousVerifier | None:
        if not self.cfg.verification.continuous:
            return None
        if self.verifier is None:
            from checks.continuous import ContinuousVerifier

            def wait_applied(target: Timestamp, timeout: float) -> bool:
                runner = self.runner
                if runner is None or not runner.alive():
                    return False
                try:
                    return runner.wait(lambda st: runner.applied_through(target), timeout)
                except LiveMigrateError:
                    return False

            v = self.cfg.verification
            self.verifier = ContinuousVerifier(
                self.src,
                self.dst,
                NamespaceFilter.from_rules(self.cfg.namespaces),
                wait_applied,
                dirty_limit=v.dirty_limit,
                interval_seconds=v.interval_seconds,
                rehash_seconds=v.rehash_seconds,
                partition_docs=self.cfg.tuning.partition_docs,
                partitioning=self.cfg.tuning.partitioning,
                on_difference=self._differences_found,
                on_progress=self._publish_verification,
                unobserved=self._unobserved,
                sync_behind=self._sync_behind,
                max_docs_per_second=v.max_docs_per_second,
                sync_busy=self._sync_busy,
                duty_cycle=v.duty_cycle,
            )
        return self.verifier

    def _sync_behind(self) -> bool:
        """The sync's lag is past half the cutover bound: the background verification waits for it."""
        runner = self.runner
        lag = runner.state.lag_seconds if runner is not None else None
        return lag is not None and lag > self.cfg.cutover.max_lag_seconds / 2

    def _sync_busy(self) -> bool:
        """The application is writing: the sync applied events over the last seconds."""
        runner = self.runner
        return runner is not None and runner.state.events_per_second > 0

    def _unobserved(self, ns: str) -> bool:
        """A namespace whose change events the sync does not apply (Queryable Encryption's state collections)."""
        return ns.split(".", 1)[-1].startswith(QE_STATE_PREFIX)

    def _differences_found(self, found: list[dict[str, Any]]) -> None:
        """Persistent differences: recorded (describe), warned, and handed to the flow (event, artifact)."""
        first = found[0]
        msg = (
            f"continuous verification: {len(found)} document(s) differ with no change in flight, "
            f"e.g. {first['ns']} _id {first['_id']} ({first['kind']}); the cutover is refused until they are "
            "resolved or a full verification is chosen"
        )
        log.warning(msg)
        self._publish_verification(force=True)
        if self.on_difference is not None:
            try:
                self.on_difference(found)
            except Exception as exc:  # noqa: BLE001 - notification is best effort
                log.debug("difference notification failed: %s", exc)

    def _publish_verification(self, force: bool = False) -> None:
        """The background verification's status and the downtime estimate, in the record (at most every 2 s)."""
        if not force and time.monotonic() - self._status_at < 2.0:
            return
        self._status_at = time.monotonic()
        try:
            self.last_estimate = self.downtime_estimate()
            fields: dict[str, Any] = {"downtime_estimate": self.last_estimate}
            if self.verifier is not None:
                self.last_status = fields["continuous_verification"] = self.verifier.status()
            self.store.update(self.name, **fields)
        except (PyMongoError, LiveMigrateError) as exc:
            log.debug("verification status not stored: %s", exc)

    def verification_differences(self) -> int:
        """Persistent differences known now (the live verifier's, else the stored status's)."""
        if self.verifier is not None:
            return self.verifier.difference_count()
        stored = self.store.load(self.name).continuous_verification or {}
        return int(stored.get("differences") or 0)

    def downtime_estimate(self) -> dict[str, Any]:
        """What a cutover approved now would cost, by part, in seconds (shown before the approval)."""
        doc = self.store.load(self.name)
        clone = self.store.clone_summary(self.name)
        docs = {ns: int(v.get("docs", 0)) for ns, v in clone.items()}
        lag = self.runner.state.lag_seconds if self.runner is not None else doc.lag.lag_seconds
        scan = (self.verifier.scan_docs_per_s if self.verifier else None) or 20_000.0
        incremental = self.cfg.cutover.final_verification == "incremental" and self.verifier is not None
        checks = (
            self.verifier.estimate_final_seconds(docs) if incremental and self.verifier else sum(docs.values()) / scan
        )
        restores = sum((docs.get(r["ns"], 0) / scan if r.get("unique") else 0.0) + 0.05 for r in doc.index_restores)
        parts = {
            "drain": round((lag or 0.0) + 0.5, 1),
            "final_checks": round(checks, 1),
            "index_restores": round(restores, 1),
            "finalize": 0.5,
        }
        return {
            "seconds": round(sum(parts.values()), 1),
            "parts": parts,
            "final_verification": "incremental" if incremental else "full",
            "if_writes_cannot_be_blocked": f"+{self.cfg.cutover.quiesce_seconds:g} s of watching the source stand still",
            "at": utcnow().isoformat(),
        }

    def final_verification(self, doc: MigrationDoc, report_dir: str | None = None) -> Any:
        """The cutover's verification (a VerifyResult): incremental when the background one ran, else full."""
        from checks.verify import run_verification

        v = self.verifier
        if (
            self.cfg.cutover.final_verification == "full"
            or self._full_verification
            or v is None
            or v.started_at is None  # never ran in this process (e.g. a cutover resumed after a crash)
            or not v.usable  # its thread could not be stopped
            or v.dirty.failed  # a write could not be recorded
        ):
            return run_verification(self.cfg, report_dir=report_dir, pending_index_restores=doc.index_restores)
        result = v.final_check(doc.index_restores)
        if report_dir is not None:
            from pathlib import Path

            from checks.gx_report import write_report

            write_report(result, Path(report_dir))
        return result

    def wait_ready(self, timeout: float) -> bool:
        runner = self.start_sync()
        return runner.wait(lambda st: st.ready, timeout)

    # -- decisions ----------------------------------------------------------------
    def record_decision(self, decision: Decision) -> None:
        self.store.push(self.name, "decisions", decision)

    def extend(self, approver: str, reason: str = "") -> MigrationDoc:
        doc = self.store.load(self.name)
        if doc.phase != Phase.SYNCING:
            raise CutoverRefused(
                f"migration {self.name!r} is {doc.phase.value}: only a syncing migration's window can be extended"
            )
        closes = (doc.window_closes_at or utcnow()).replace(tzinfo=dt.UTC) + dt.timedelta(
            hours=self.cfg.cutover.extension_hours
        )
        self.record_decision(
            Decision(action="extend", approver=approver, reason=reason, lag_seconds=doc.lag.lag_seconds)
        )
        return self.store.update(self.name, window_closes_at=closes, extensions=doc.extensions + 1)

    def window_left(self) -> float | None:
        doc = self.store.load(self.name)
        if doc.window_closes_at is None:
            return None
        return (doc.window_closes_at.replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)).total_seconds()

    def _wind_down(self, doc: MigrationDoc, warnings: list[str]) -> None:
        """Stop the sync, restart the balancer (warn on failure), release the lock.

        A driver that was taken over acts on neither cluster (the check raises LockHeldError).
        """
        if self.runner is not None:
            self.runner.stop()
        self.store.check_fence(self.name)
        if doc.balancer_stopped:
            try:
                balancer_start(self.src)
                self.store.update(self.name, balancer_stopped=False)
            except PyMongoError as exc:
                msg = f"the source balancer could not be restarted ({type(exc).__name__}): restart it by hand with sh.startBalancer()"
                warnings.append(msg)
                self.store.push(self.name, "warnings", msg)
                log.warning(msg)
        self.store.release_lock(self.name, self.owner if self._heartbeat is not None else None)
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def cancel(self, approver: str, reason: str = "") -> MigrationDoc:
        doc = self.store.load(self.name)
        if doc.phase in TERMINAL:
            return doc
        self.record_decision(
            Decision(action="cancel", approver=approver, reason=reason, lag_seconds=doc.lag.lag_seconds)
        )
        warnings: list[str] = []
        self._unblock_destination(doc)
        self._wind_down(doc, warnings)
        self._unblock_writes(doc)
        return self.store.set_phase(self.name, Phase.CANCELLED, completed_at=utcnow())

    def expire(self) -> MigrationDoc:
        doc = self.store.load(self.name)
        if doc.phase in TERMINAL:
            return doc
        warnings: list[str] = []
        self._unblock_destination(doc)
        self._wind_down(doc, warnings)
        return self.store.set_phase(
            self.name,
            Phase.EXPIRED,
            error="the cutover window passed without a cutover: the sync stopped; the destination keeps its data. "
            "To migrate again, run `livemigrate migrate --config FILE --restart` with clear_destination: true",
        )

    def fail(self, exc: LiveMigrateError) -> None:
        try:
            doc = self.store.load(self.name)
            if doc.phase in ACTIVE:
                self.store.set_phase(self.name, Phase.FAILED, error=exc.one_line())
        except (PyMongoError, LiveMigrateError):
            log.warning("could not record the failure in the metadata store")

    # -- cutover ----------------------------------------------------------------
    def judge(
        self,
        action: str,
        approver: str,
        *,
        confirm: bool = True,
        full_verification: bool = False,
        require_ready: bool = True,
    ) -> Verdict:
        """:func:`judge_decision` with this process's live numbers (the running sync's lag and readiness)."""
        doc = self.store.load(self.name)
        live = self.runner.state if self.runner is not None and self.runner.alive() else None
        lag = live.lag_seconds if live is not None else doc.lag.lag_seconds
        ready = (live.ready if live is not None else doc.lag.ready) if require_ready else None
        return judge_decision(
            doc,
            self.cfg,
            action,
            approver=approver,
            confirm=confirm,
            lag=lag,
            ready=ready,
            full_verification=full_verification,
            differences=self.verification_differences() if action == "cutover" else 0,
        )

    def check_cutover_allowed(self, full_verification: bool = False) -> MigrationDoc:
        verdict = self.judge("cutover", "engine", full_verification=full_verification, require_ready=False)
        if verdict.status == "already" or not verdict.accepted:
            raise CutoverRefused(
                f"cutover refused: {verdict.reason}",
                remedy="see `livemigrate describe` (lag, phase, verification), then ask again",
            )
        return self.store.load(self.name)

    def cutover(
        self, approver: str, reason: str, verify: VerifyFn, *, full_verification: bool = False
    ) -> CutoverResult:
        """Block writes (or watch them stop), drain to zero optime gap, verify, finalize."""
        doc = self.check_cutover_allowed(full_verification)
        self._full_verification = full_verification
        self.block_would_not_hold("source")  # asked now, not inside the downtime it would add to
        estimate = self.downtime_estimate()
        self.record_decision(
            Decision(
                action="cutover",
                approver=approver,
                reason=reason + (" (full verification chosen)" if full_verification else ""),
                lag_seconds=doc.lag.lag_seconds,
            )
        )
        self.store.set_phase(self.name, Phase.CUTTING_OVER, downtime_estimate=estimate)
        return self._finish_cutover(verify, already_blocked=False)

    def interrupted_cutover(self) -> Decision | None:
        """The approval of a cutover whose process stopped (crash, kill -9, SIGTERM) before it finished."""
        doc = self.store.load(self.name)
        if doc.phase != Phase.CUTTING_OVER:
            return None
        approvals = [d for d in doc.decisions if d.action == "cutover"]
        return approvals[-1] if approvals else Decision(action="cutover", approver="", reason="")

    def resume_cutover(self, verify: VerifyFn) -> CutoverResult:
        """Carry on an approved cutover after a crash: the approval stands, so it is not asked for again.

        Why: a cutover stopped mid-drain leaves the source possibly write-blocked and
        the application stopped; asking for a new approval (which requires a low lag
        while the sync restarts) would keep the outage going.  The drain, the final
        verification and the finalization are all idempotent, so they are redone.
        """
        approval = self.interrupted_cutover()
        if approval is None:
            raise CutoverRefused(f"migration {self.name!r} has no interrupted cutover to resume")
        self.record_decision(
            Decision(
                action="cutover-resumed",
                approver=approval.approver,
                reason="the process driving the approved cutover stopped before it finished",
            )
        )
        log.warning("resuming the cutover approved by %s", approval.approver or "(unnamed)")
        doc = self.store.load(self.name)
        if doc.destination_ready_at is not None:
            # Stopped past the point of no return: drained, verified and declared ready already; the
            # application may be writing to the destination, so nothing is synced or verified again.
            self._unblock_destination(doc)
            done = CutoverResult(
                destination_ready_at=doc.destination_ready_at, downtime=doc.downtime, verification=doc.last_verification
            )
            return self._complete(done, doc)
        return self._finish_cutover(verify, already_blocked=doc.write_blocked)

    def _finish_cutover(self, verify: VerifyFn, *, already_blocked: bool) -> CutoverResult:
        # Prepared before writes stop: the background verification stops at its next batch (its proofs and
        # the dirty set stay; the sync goes on recording what it writes until the drain ends).
        self._verifying = False
        runner = self.start_sync()
        result = CutoverResult()
        if self.verifier is not None:
            self.verifier.freeze()
        clock = _Stopwatch()
        opened = False  # the destination was declared ready: past the point of no return
        try:
            blocked = already_blocked or self._block_writes()
            clock.lap("write_block")
            if not blocked:
                try:
                    self._wait_source_quiet(result)
                except CutoverRefused:
                    self._back_to_syncing()
                    raise
                clock.lap("quiesce")
            target = latest_optime(self.src)
            drained = self._drain(runner, target)
            if not drained:
                raise TerminalError(
                    f"the sync did not reach the source's last write within {self.cfg.cutover.drain_timeout_seconds:g}s",
                    remedy="check the lag with `livemigrate describe` and ask for the cutover again",
                )
            if not runner.stop():
                raise TerminalError(
                    "the sync did not stop after the drain (a write to the destination hangs)",
                    remedy="check the destination, then ask for the cutover again",
                )
            if runner.state.error is not None:
                raise runner.state.error
            self._settle_deferred(runner)
            clock.lap("drain")
            self.timeline.sync_sample(runner.state, force=True)
            doc = self.store.load(self.name)
            summary = verify(doc)
            result.verification = summary
            self.store.update(self.name, last_verification=summary)
            clock.lap("final_checks")
            if not summary.get("equal"):
                raise TerminalError(
                    "final verification found differences between source and destination",
                    remedy="see the verification report; the migration is marked failed and nothing was finalized",
                )
            self._restore_indexes(doc.index_restores)
            clock.lap("index_restores")
            if self.destination_watch is not None:
                self.destination_watch.stop()  # from here the application writes there
            if self.cfg.reversible:
                # Before the destination opens: every application write there reaches the source (tasks/reverse.py).
                from tasks.reverse import capture_reverse_start

                self._retrying(
                    "reverse sync start point", lambda: capture_reverse_start(self, self.store.load(self.name))
                )
                clock.lap("reverse_start")
            # The point of no return, recorded before the destination opens (as a write block is recorded
            # before it is sent): from here the application may write to the destination, so a failure must
            # neither reopen the source (both clusters would take writes) nor let the migration sync forward
            # again (replayed source events would overwrite the application's writes).  A resumed cutover
            # only finishes what follows (resume_cutover).
            ready_at = utcnow()
            self._retrying("destination ready", lambda: self.store.update(self.name, destination_ready_at=ready_at))
            opened = True
            self._unblock_destination(self.store.load(self.name))
            result.destination_ready_at = ready_at
            clock.lap("finalize")
            result.downtime = clock.record(
                ready_at,
                final_verification=str((summary.get("settings") or {}).get("mode") or "full"),
                final_checks_detail=(summary.get("settings") or {}).get("timings"),
                estimate=self.store.load(self.name).downtime_estimate,
                blocked=blocked,
            )
            self.store.update(self.name, downtime=result.downtime)
            log.info("destination ready to accept writes (downtime %.1f s)", result.downtime["seconds"])
            return self._complete(result, doc)
        except BaseException as exc:
            if opened:
                log.error(
                    "the cutover stopped after the destination was declared ready (%s): the source stays closed; "
                    "run the same command again to finish it",
                    type(exc).__name__,
                )
                raise
            self._unblock_writes(self.store.load(self.name))  # whatever the record says is blocked
            if isinstance(exc, LiveMigrateError) and not isinstance(exc, CutoverRefused):
                self.fail(exc)
            raise

    def _complete(self, result: CutoverResult, doc: MigrationDoc) -> CutoverResult:
        """After "destination ready": stop the sync, restart the balancer, release the lock, complete."""
        self._wind_down(doc, result.warnings)
        result.completed_at = utcnow()
        self.store.set_phase(self.name, Phase.COMPLETE, completed_at=result.completed_at)
        result.phase = Phase.COMPLETE
        log.info("migration complete")
        return result

    def _drain(self, runner: SyncRunner, target: Timestamp) -> bool:
        """Wait until the sync has applied the source's last write; say so every 10 s while it waits."""
        timeout = self.cfg.cutover.drain_timeout_seconds
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if runner.wait(lambda st: runner.applied_through(target), max(0.0, min(DRAIN_REPORT_SECONDS, left))):
                return True
            if time.monotonic() >= deadline:
                return False
            st = runner.state
            behind = target.time - st.applied_time.time if st.applied_time is not None else None
            log.warning(
                "the drain is still waiting for the source's last write: %s s of history left to apply, "
                "%.0f s before the cutover fails (drain_timeout_seconds %g)",
                "?" if behind is None else behind,
                max(0.0, deadline - time.monotonic()),
                timeout,
            )

    def _settle_deferred(self, runner: SyncRunner) -> None:
        """A reverse sync's drain: no document may still wait for a duplicate key to clear (tasks/apply.py).

        Every event is applied and the stream stopped, so what is still deferred is tried once more; what
        is refused then is a conflict no later event will resolve, and the rollback stops naming it.
        """
        owed = runner.deferred()
        if not owed or runner._applier is None:
            return
        runner._applier.retry_deferred()
        left = runner.deferred()
        if left:
            ns, key = left[0]
            raise TerminalError(
                f"{ns}: _id {key!r} cannot be written: it meets a duplicate key on a unique index "
                f"({len(left) - 1} more document(s) likewise)",
                remedy="compare that document on both clusters (`livemigrate verify`), fix it, then ask again",
            )

    def _back_to_syncing(self) -> None:
        """A refused cutover (the source never stood still): nothing was blocked or changed; sync on, ask again."""
        self.store.set_phase(self.name, Phase.SYNCING)
        self._verifying = True
        if self.verifier is not None:
            self.verifier.thaw()

    def _restore_indexes(self, restores: list[Restore]) -> None:
        """Each owed index restored, retried on transient errors, and struck off the book once done, so a
        cutover that dies half-way resumes with the indexes it had not reached.

        Collections are restored in parallel (``tuning.workers``), each collection's indexes in book order:
        a unique conversion scans its index, and the window should not pay for the collections one by one.
        """
        tuning = self.cfg.tuning
        by_ns: dict[str, list[Restore]] = {}
        for r in restores:
            by_ns.setdefault(r["ns"], []).append(r)

        def one_collection(rs: list[Restore]) -> None:
            for r in rs:
                what = f"{r['ns']}: restore of index {r['name']!r}"
                step = functools.partial(_restore_step, self.dst, r)
                retry_transient(what, step, tuning.retry_attempts, tuning.retry_max_seconds)
                self.store.pull_index_restore(self.name, r["ns"], r["name"])

        if len(by_ns) <= 1:
            for rs in by_ns.values():
                one_collection(rs)
            return
        with ThreadPoolExecutor(min(tuning.workers, len(by_ns)), thread_name_prefix="restore") as pool:
            futures = [pool.submit(one_collection, rs) for rs in by_ns.values()]
            wait(futures)
            for f in futures:
                f.result()  # the first error, after every collection has finished or failed

    def write_block_plan(self) -> tuple[bool, str]:
        """Whether the cutover will block the source's writes, and why (said on the approval form).

        MongoDB 6.0+ has setUserWriteBlockMode (manual: "setUserWriteBlockMode", MongoDB 6.0/7.0/8.0
        reference); ``listCommands`` says whether this server has it.  A server that cannot tell is
        expected to refuse it, and the cutover then watches the source stand still.  Asked once.
        """
        if self._write_plan is None:
            watch = (
                f"livemigrate watches the source stand still for {self.cfg.cutover.quiesce_seconds:g} s (up to "
                f"{self.cfg.cutover.quiesce_timeout_seconds:g} s, else the cutover is refused and the run pauses "
                "again), so stop your application's writes first"
            )
            try:
                commands = self.src.admin.command("listCommands").get("commands", {})
            except PyMongoError:
                self._write_plan = (
                    False,
                    f"this source does not list its commands, so it cannot block writes: {watch}",
                )
            else:
                off = self.block_would_not_hold("source") if "setUserWriteBlockMode" in commands else ""
                if off:
                    self._write_plan = (False, f"not blocked on the {self.side_names['source']}: {off}; {watch}")
                elif "setUserWriteBlockMode" in commands:
                    self._write_plan = (
                        True,
                        "blocked on the source with setUserWriteBlockMode (MongoDB 6.0+) once you approve; should the"
                        f" migration user lack the privilege, {watch}",
                    )
                else:
                    self._write_plan = (False, f"this source has no setUserWriteBlockMode (before 6.0): {watch}")
        return self._write_plan

    def _block_writes(self) -> bool:
        """setUserWriteBlockMode on the source where supported and permitted.

        Recorded before it is sent: a reply lost to a network error may hide a block the
        server applied, and the record is what makes a failed cutover or a cancel unblock.  Not sent where
        the block would hold no client off (access control off, :meth:`block_would_not_hold`): the
        cutover then watches the source stand still, as on a server without the command.
        """
        off = self.block_would_not_hold("source")
        if off:
            named = self.side_names["source"]
            log.warning("the %s's writes are not blocked (%s): livemigrate watches it stand still", named, off)
            return False
        self.store.update(self.name, write_blocked=True)
        try:
            self.src.admin.command({"setUserWriteBlockMode": 1, "global": True})
        except OperationFailure as exc:
            self.store.update(self.name, write_blocked=False)  # refused: nothing was blocked
            log.info("source write blocking unavailable (%s): watching the source's optime instead", exc.code)
            return False
        return True

    def _unblock_writes(self, doc: MigrationDoc) -> None:
        if doc.write_blocked:
            self._lift_block("source", write_blocked=False)

    def _wait_source_quiet(self, result: CutoverResult) -> None:
        """Without write blocking: the application was stopped; confirm the source's optime stands still."""
        quiet = self.cfg.cutover.quiesce_seconds
        waited = self.cfg.cutover.quiesce_timeout_seconds
        deadline = time.monotonic() + waited
        last: Timestamp = latest_optime(self.src)
        still_since = time.monotonic()
        warned = False
        while time.monotonic() - still_since < quiet:
            if time.monotonic() > deadline:
                raise CutoverRefused(
                    f"writes keep arriving on the source (its latest write moved during the {waited:g} s waited; "
                    "livemigrate cannot block writes on this source): stop the application before cutting over",
                    remedy="stop every writer to the source, then ask for the cutover again; the sync goes on",
                )
            time.sleep(min(0.5, quiet / 2 or 0.1))
            now = latest_optime(self.src)
            if now != last:
                if not warned:
                    msg = f"writes are still arriving on the source (optime moved {last.time}.{last.inc} -> {now.time}.{now.inc})"
                    log.warning(msg)
                    result.warnings.append(msg)
                    warned = True
                last, still_since = now, time.monotonic()


class DestinationWatch:
    """Where the destination's writes cannot be blocked: every write there in the migrated namespaces is
    handed to the continuous verification's dirty set, so it is re-read on both sides within
    ``verification.interval_seconds``; a write by anything other than the sync then differs with no
    change in flight and is reported (describe, the differences artifact and event) and the cutover is
    refused.  The sync's own writes come back here too: they are only re-read once more.  Writes made
    before the watch starts are found by the background verification's first full pass, which starts
    with it.
    """

    def __init__(self, dst: MongoClient[Any], nsfilter: NamespaceFilter, dirty: Any, metadata_db: str) -> None:
        self.dst, self.nsfilter, self.dirty, self.metadata_db = dst, nsfilter, dirty, metadata_db
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="destination-watch", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        pipeline = [{"$match": {"ns.db": {"$ne": self.metadata_db}, "documentKey": {"$exists": True}}}]
        resume: Any = None
        while not self._stop.is_set():
            try:
                with self.dst.watch(pipeline, resume_after=resume, max_await_time_ms=500) as stream:
                    while not self._stop.is_set():
                        event = stream.try_next()
                        if event is None:
                            continue
                        resume = stream.resume_token
                        ns = event.get("ns") or {}
                        if self.nsfilter.matches(str(ns.get("db", "")), str(ns.get("coll", ""))):
                            self.dirty.touched(f"{ns['db']}.{ns['coll']}", [event["documentKey"]])
            except PyMongoError as exc:
                log.warning("watching the destination for foreign writes: %s; retrying", type(exc).__name__)
                self._stop.wait(2)


class _Stopwatch:
    """The cutover's downtime, part by part: from the moment writes stop to "destination ready"."""

    def __init__(self) -> None:
        self.started_at = utcnow()
        self.t0 = self.last = time.monotonic()
        self.parts: dict[str, float] = {}

    def lap(self, part: str) -> None:
        now = time.monotonic()
        self.parts[part] = round(self.parts.get(part, 0.0) + now - self.last, 3)
        self.last = now

    def record(self, ready_at: dt.datetime, **extra: Any) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "destination_ready_at": ready_at.isoformat(),
            "seconds": round(time.monotonic() - self.t0, 3),
            "parts": dict(self.parts),
            **extra,
        }


def _restore_step(dst: MongoClient[Any], r: Restore, _attempt: int) -> bool:
    return restore_index(dst, r)


__all__ = ["CutoverRefused", "CutoverResult", "Migration", "PhaseError", "Verdict", "judge_decision"]
