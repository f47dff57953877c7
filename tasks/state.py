"""The migration's state: versioned pydantic records and the phase machine.

Why: any process on any machine must be able to pick a migration up where it
stopped, so every stage reads and writes small records upserted by ``_id`` in
the metadata database on the destination.  The phase is an enum with one
table of allowed transitions (mongosync's IDLE/RUNNING/COMMITTING/COMMITTED).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.errors import PhaseError

SCHEMA_VERSION = 1


def utcnow() -> dt.datetime:
    # Millisecond precision: what BSON dates keep, so a round trip compares equal.
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Phase(StrEnum):
    CREATED = "created"
    CLONING = "cloning"
    SYNCING = "syncing"
    CUTTING_OVER = "cutting_over"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FINISHED = "finished"  # a reverse sync ended for good (`livemigrate finish`): the source stays closed
    FAILED = "failed"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.CREATED: frozenset({Phase.CLONING, Phase.CANCELLED, Phase.FAILED}),
    Phase.CLONING: frozenset({Phase.SYNCING, Phase.CANCELLED, Phase.FAILED}),
    Phase.SYNCING: frozenset({Phase.CUTTING_OVER, Phase.CANCELLED, Phase.EXPIRED, Phase.FAILED, Phase.FINISHED}),
    # A cutover that fails (writes keep arriving, differences found) is marked failed with the reason; the next
    # `migrate` resumes syncing from failed.  A crashed cutover stays here and is resumed (Migration.resume_cutover).
    Phase.CUTTING_OVER: frozenset({Phase.COMPLETE, Phase.FAILED, Phase.CANCELLED, Phase.SYNCING}),
    # A failed migration can be resumed where it stopped once the cause is fixed, or cancelled.
    Phase.FAILED: frozenset({Phase.CLONING, Phase.SYNCING, Phase.CUTTING_OVER, Phase.CANCELLED, Phase.FINISHED}),
    Phase.COMPLETE: frozenset(),
    Phase.CANCELLED: frozenset(),
    Phase.EXPIRED: frozenset(),
    Phase.FINISHED: frozenset(),
}
TERMINAL = frozenset(p for p, nxt in TRANSITIONS.items() if not nxt)
ACTIVE = frozenset({Phase.CREATED, Phase.CLONING, Phase.SYNCING, Phase.CUTTING_OVER})


def check_transition(old: Phase, new: Phase) -> None:
    """Raise PhaseError unless the table allows old -> new (staying put is allowed)."""
    if old != new and new not in TRANSITIONS[old]:
        raise PhaseError(f"migration cannot go from {old.value} to {new.value}")


class _Record(BaseModel):
    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="ignore")


class Decision(_Record):
    action: str  # cutover | extend | cancel
    approver: str
    reason: str = ""
    at: dt.datetime = Field(default_factory=utcnow)
    lag_seconds: float | None = None


class Lag(_Record):
    lag_seconds: float | None = None
    events_per_second: float = 0.0
    catch_up_seconds: float | None = None
    applied_events: int = 0
    applied_time: int | None = None  # seconds part of the last applied cluster time
    source_time: int | None = None
    last_event_time: int | None = None  # seconds part of the latest applied change event's cluster time
    ready: bool = False  # ready to cut over now (the lag is and stayed under the bound); drops when it passes it
    updated_at: dt.datetime | None = None


class MigrationDoc(_Record):
    """One document per migration in ``__livemigrate.migrations``."""

    id: str = Field(alias="_id")
    schema_version: int = SCHEMA_VERSION
    phase: Phase = Phase.CREATED
    # "reverse": the record of a reverse sync (destination -> source after the cutover, `reversible: true`),
    # named ``<name>~reverse`` (tasks/reverse.py); its cutover is the rollback
    direction: str = "forward"
    reverse_of: str | None = None  # the forward migration a reverse record belongs to
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)
    source: str = ""  # hosts only, never credentials
    destination: str = ""
    namespaces: dict[str, list[str]] = Field(default_factory=dict)
    flow_run_id: str | None = None
    start_time: dict[str, int] | None = None  # cluster time the change stream starts at {t, i}
    start_token: dict[str, Any] | None = None
    prepared: bool = False  # destination collections created and partition plan stored
    clone_namespaces: list[str] = Field(default_factory=list)
    dropped_on_destination: list[str] = Field(default_factory=list)
    clone_started_at: dt.datetime | None = None
    clone_finished_at: dt.datetime | None = None
    ready: bool = False
    ready_since: dt.datetime | None = None
    window_opens_at: dt.datetime | None = None
    window_closes_at: dt.datetime | None = None
    extensions: int = 0
    lag: Lag = Field(default_factory=Lag)
    decisions: list[Decision] = Field(default_factory=list)
    balancer_stopped: bool = False
    index_restores: list[dict[str, Any]] = Field(default_factory=list)
    unsupported: list[dict[str, str]] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    last_validation: dict[str, Any] | None = None
    last_verification: dict[str, Any] | None = None
    destination_ready_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    error: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    pending_decision: dict[str, Any] | None = None  # a CLI request the flow has not consumed yet
    write_blocked: bool = False
    destination_write_blocked: bool = False  # user writes blocked on the destination (destination_write_blocking)
    destination_writes: str | None = None  # how the destination is kept clean: "blocked" or "watched: <why>"
    fcv: dict[str, str | None] = Field(default_factory=dict)  # featureCompatibilityVersion of each side at begin
    fence: int = 0  # epoch of the destination lock held by the process that drives it (tasks/metadata.py)
    continuous_verification: dict[str, Any] | None = None  # the background verification's status (checks/continuous.py)
    downtime_estimate: dict[str, Any] | None = None  # what a cutover now would cost, by part (seconds)
    downtime: dict[str, Any] | None = None  # what the cutover cost: writes stopped -> destination ready, by part

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="python")


class Checkpoint(_Record):
    """The change stream's resume point, written only after every earlier event is applied."""

    id: str = Field(alias="_id")
    schema_version: int = SCHEMA_VERSION
    token: dict[str, Any] | None = None
    cluster_time: dict[str, int] | None = None  # {t, i} of the last applied event (or caught-up time)
    applied_events: int = 0
    fence: int = 0  # epoch of the lock its writer held: a writer with an older epoch is refused
    updated_at: dt.datetime = Field(default_factory=utcnow)
    # A reverse sync's documents that met a duplicate key, written again later (tasks/apply.py retry_deferred):
    # [{ns, _id}], so a restart from this checkpoint still owes them
    deferred: list[dict[str, Any]] = Field(default_factory=list)

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="python")


class PartitionStatus(StrEnum):
    ADDED = "added"
    PROCESSING = "processing"
    DONE = "done"


class Partition(_Record):
    """One ``_id`` range of one collection; claimed atomically by a clone worker."""

    id: str = Field(alias="_id")
    migration: str
    ns: str
    seq: int
    # [bracket, *excluded]: a $type bracket of tasks/partition.py, "*" (all), or "rest" + the brackets others cover
    types: list[str]
    lower: Any = None  # inclusive, None = open
    upper: Any = None  # exclusive, None = open
    has_lower: bool = False
    has_upper: bool = False
    est_docs: int = 0
    status: PartitionStatus = PartitionStatus.ADDED
    docs: int = 0
    bytes: int = Field(default=0, alias="bytes")
    attempts: int = 0
    owner: str | None = None
    lease_until: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="python")
