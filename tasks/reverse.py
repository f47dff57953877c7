"""The reverse sync (``reversible: true``): after the cutover, destination -> source, until a rollback or finish.

Why (issue 19): the worst hour is the one after the cutover, when the new cluster misbehaves and the old
one is stale.  With ``reversible: true`` the cutover captures the destination's change-stream start point
while user writes there are still held off (before "destination ready"), and the same flow run then syncs
the destination's history back onto the source, with the same engine (idempotent apply, checkpoints,
lag, continuous verification) while the source stays write-blocked for the application.  A rollback is
the reverse migration's cutover: drain, verify what changed, reopen the source, close the destination.
``finish`` ends the reverse sync for good (the source stays closed).

The reverse migration is a :class:`tasks.migration.Migration` of its own, named ``<name>~reverse`` (a
name no config can take: ``~`` is not allowed in one), with the two sides swapped; its record and
checkpoint live in the destination's metadata store beside the forward migration's, so ``describe`` and
the CLI read both from one place.  The source's unique indexes are real (the forward sync held the
destination's back until the cutover), so a reverse write that meets a duplicate key is deferred and
retried (tasks/apply.py, ``Applier.deferred``) rather than refused.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tasks.config import MigrationConfig, Sharding
from tasks.errors import TerminalError
from tasks.metadata import MetadataStore
from tasks.migration import ACTIONS, Migration, Verdict, VerifyFn
from tasks.privileges import CLUSTER, lacking
from tasks.progress import ProgressSink, null_sink
from tasks.state import TERMINAL, Checkpoint, Decision, MigrationDoc, Phase, utcnow
from tasks.sync import fcv, open_start_point, ts_dict
from tasks.timeline import Timeline

log = logging.getLogger(__name__)

REVERSE_SUFFIX = "~reverse"


def reverse_name(name: str) -> str:
    """The reverse record's name for the forward migration ``name``."""
    return f"{name}{REVERSE_SUFFIX}"


def forward_name(name: str) -> str:
    """The forward migration's name for a name that may be a reverse record's."""
    return name[: -len(REVERSE_SUFFIX)] if name.endswith(REVERSE_SUFFIX) else name


def reversed_config(cfg: MigrationConfig) -> MigrationConfig:
    """The reverse migration's config: the two sides swapped, its own name, nothing that acts on its own.

    ``model_copy`` keeps the resolved URIs and TLS settings of each side (no validation runs again: the
    name holds ``~`` on purpose).  No write blocking is asked of the reverse's destination (the source is
    already blocked since the cutover, and the reverse record owns that block), no sharding entries (the
    source's collections exist), no reverse of the reverse.
    """
    update: dict[str, Any] = {
        "name": reverse_name(cfg.name),
        "source": cfg.destination,
        "destination": cfg.source,
        "destination_write_blocking": False,
        "reversible": False,
        "sharding": Sharding(),
        "clear_destination": False,
    }
    return cfg.model_copy(update=update)


def capture_reverse_start(m: Migration, doc: MigrationDoc) -> MigrationDoc:
    """At the cutover, before the destination opens to the application: the reverse sync's record, whose
    change stream on the destination starts here (so every application write there reaches the source).

    Idempotent: a cutover resumed after a crash keeps the point captured before it (the destination was
    still closed then, so nothing was written there in between but the migration's own index restores,
    which the source already has).  The reverse record takes over the source's write block: its rollback
    lifts it (tasks/migration.py ``_unblock_destination`` of the reverse migration).
    """
    name = reverse_name(m.name)
    existing = m.store.get(name)
    if existing is not None and existing.reverse_of == m.name and existing.created_at >= doc.created_at:
        return existing
    if existing is not None:
        m.store.archive(name)
    versions = {"source": fcv(m.dst), "destination": fcv(m.src)}
    token, optime = open_start_point(m.dst)
    approval = next((d for d in reversed(doc.decisions) if d.action == "cutover"), None)
    now = utcnow()
    rdoc = MigrationDoc(
        id=name,
        direction="reverse",
        reverse_of=m.name,
        phase=Phase.SYNCING,
        source=doc.destination,
        destination=doc.source,
        namespaces=doc.namespaces,
        start_token=token,
        start_time=ts_dict(optime),
        fcv=versions,
        prepared=True,
        clone_started_at=now,
        clone_finished_at=now,
        destination_write_blocked=doc.write_blocked,
        destination_writes="blocked" if doc.write_blocked else "open: the source could not be write-blocked",
        decisions=[
            Decision(
                action="reverse-sync",
                approver=approval.approver if approval else "",
                reason="reversible: the destination's writes are synced back to the source from the cutover on",
            )
        ],
    )
    if not doc.write_blocked:
        rdoc.warnings.append(
            "the source is not write-blocked (it could not be at the cutover): the application must not write "
            "there during the reverse sync; a write there is overwritten by the destination's history or lost "
            "at a rollback"
        )
    m.store.create(rdoc)
    m.store.save_checkpoint(Checkpoint(id=name, token=token, cluster_time=ts_dict(optime)))
    log.info("reverse sync start point captured on the destination (cluster time %s.%s)", optime.time, optime.inc)
    return rdoc


ROLLBACK_ACTIONS = ("rollback", "extend", "finish")
_ENGINE_ACTION = {"rollback": "cutover", "finish": "cancel", "extend": "extend"}
_RECORDED = {
    "cutover": "rollback",
    "cancel": "finish",
    "cutover-refused": "rollback-refused",
    "cutover-resumed": "rollback-resumed",
    "cancel-refused": "finish-refused",
}


class ReverseMigration(Migration):
    """The reverse sync of a reversible migration: a Migration from the destination to the source.

    ``cfg`` is the forward migration's config and ``source``/``dest`` its clients (forward source and
    destination); the engine runs with the sides swapped (:func:`reversed_config`), its record and
    checkpoint in the destination's metadata store.  Its cutover is the rollback: the destination is
    write-blocked (where it can be; else it must stand still), the reverse sync drains, what changed is
    verified, the source reopens.  ``finish`` (and the window's end) stops it with the source still closed.
    """

    side_names = {"source": "destination", "destination": "source"}  # the engine's sides are swapped

    def __init__(
        self,
        cfg: MigrationConfig,
        source: MongoClient[Any] | None = None,
        dest: MongoClient[Any] | None = None,
        *,
        progress: ProgressSink = null_sink,
    ) -> None:
        self.forward_name = cfg.name
        super().__init__(reversed_config(cfg), dest, source, progress=progress)
        self.store = MetadataStore(self.src)  # the forward destination's: both records in one place
        self.timeline = Timeline(self.store, self.name)

    def begin(self, *, restart: bool = False, flow_run_id: str | None = None) -> MigrationDoc:
        if self.store.get(self.name) is None:
            raise TerminalError(
                f"migration {self.forward_name!r} has no reverse sync (it is not reversible, or its cutover did "
                "not reach the destination's start point)",
                remedy="`livemigrate describe` shows the migration's state",
            )
        return super().begin(restart=False, flow_run_id=flow_run_id)

    def record_decision(self, decision: Decision) -> None:
        super().record_decision(decision.model_copy(update={"action": _RECORDED.get(decision.action, decision.action)}))

    def judge(
        self,
        action: str,
        approver: str,
        *,
        confirm: bool = True,
        full_verification: bool = False,
        require_ready: bool = True,
    ) -> Verdict:
        engine_action = _ENGINE_ACTION.get(action, action)  # the engine's own calls say "cutover"
        if engine_action not in ACTIONS:
            return Verdict("refused", f"unknown action {action!r}: choose one of {', '.join(ROLLBACK_ACTIONS)}")
        verdict = super().judge(
            engine_action,
            approver,
            confirm=confirm,
            full_verification=full_verification,
            require_ready=require_ready,
        )
        return Verdict(verdict.status, rollback_words(verdict.reason))

    def cutover(self, approver: str, reason: str, verify: VerifyFn, *, full_verification: bool = False) -> Any:
        """The rollback; afterwards the forward record says its source is open again."""
        result = super().cutover(approver, reason, verify, full_verification=full_verification)
        self._source_reopened()
        return result

    rollback = cutover

    def resume_cutover(self, verify: VerifyFn) -> Any:
        result = super().resume_cutover(verify)
        self._source_reopened()
        return result

    def _source_reopened(self) -> None:
        doc = self.store.load(self.name)
        if doc.phase == Phase.COMPLETE and not doc.destination_write_blocked:
            self.store.update(self.forward_name, write_blocked=False)

    def _block_writes(self) -> bool:
        """The rollback closes the destination only where this migration can go on writing its own records
        there (its metadata store is on the destination): with ``bypassWriteBlockingMode``.  Without it, the
        destination is watched standing still instead, as on a server without write blocking."""
        try:
            status = self.src.admin.command({"connectionStatus": 1, "showPrivileges": True})
        except PyMongoError:
            status = {}
        info = status.get("authInfo") or {}
        privileges = info.get("authenticatedUserPrivileges") or []
        if info.get("authenticatedUsers") and lacking(privileges, [("bypassWriteBlockingMode", CLUSTER)]):
            log.warning(
                "the rollback does not block the destination's writes: the migration user lacks "
                "bypassWriteBlockingMode there and could not write its own records through the block; stop "
                "the application's writes to the destination (livemigrate watches it stand still)"
            )
            return False
        return super()._block_writes()

    def cancel(self, approver: str, reason: str = "") -> MigrationDoc:
        return self.finish(approver, reason)

    def finish(self, approver: str, reason: str = "") -> MigrationDoc:
        """End the reverse sync for good: the source stays closed (write-blocked) and stops following."""
        doc = self.store.load(self.name)
        if doc.phase in TERMINAL:
            return doc
        self.record_decision(
            Decision(action="finish", approver=approver, reason=reason, lag_seconds=doc.lag.lag_seconds)
        )
        self._wind_down(doc, [])
        log.info("reverse sync finished: the source stays write-blocked and no longer follows the destination")
        return self.store.set_phase(self.name, Phase.FINISHED, completed_at=utcnow())

    def expire(self) -> MigrationDoc:
        doc = self.store.load(self.name)
        if doc.phase in TERMINAL:
            return doc
        self._wind_down(doc, [])
        return self.store.set_phase(
            self.name,
            Phase.EXPIRED,
            error="the rollback window passed: the reverse sync stopped and the source no longer follows the "
            "destination (it stays write-blocked)",
        )


def rollback_words(text: str) -> str:
    """A cutover's wording for its reverse: the rollback."""
    return text.replace("cut over", "roll back").replace("cutover", "rollback")


def pending_reverse(store: MetadataStore, name: str) -> MigrationDoc | None:
    """The reverse sync a run of the forward migration ``name`` should go on with: its forward record is
    complete and its reverse record has not ended (syncing, rolling back, or failed and resumable)."""
    forward = store.get(name)
    if forward is None or forward.phase != Phase.COMPLETE:
        return None
    rdoc = store.get(reverse_name(name))
    if rdoc is None or rdoc.reverse_of != name or rdoc.phase in TERMINAL:
        return None
    return rdoc
