"""The sync's status and policy: lag, readiness, the cutover window, and the versions it must not see change.

Why: following the change stream (tasks/sync.py: read, apply, checkpoint) is one job; deciding what the
numbers mean is another.  This module turns "the source's latest write" and "applied through" into the
lag, says whether the migration is ready to cut over (and stops saying so when the lag passes the bound
again), opens the cutover window once, and watches featureCompatibilityVersion.  It never changes the
migration's phase: that is :class:`tasks.migration.Migration`'s alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tasks.apply import ApplyStats
from tasks.config import MigrationConfig
from tasks.errors import FCVChangedError, LiveMigrateError
from tasks.metadata import MetadataStore
from tasks.progress import RateMeter
from tasks.state import Lag, utcnow

log = logging.getLogger(__name__)

FCV_POLL_SECONDS = 10.0
"""How often the sync compares both sides' featureCompatibilityVersion with the versions at begin."""
PERSIST_SECONDS = 2.0
"""How often the lag is written to the migration record (describe, watch and the flow read it there)."""


@dataclass
class SyncState:
    """Live numbers the runner exposes (read by flows, describe and metrics)."""

    applied_events: int = 0
    applied_time: Timestamp | None = None  # every event at or before this cluster time is applied
    source_time: Timestamp | None = None
    last_event_time: Timestamp | None = None  # the cluster time of the latest change event applied ("writes arriving?")
    lag_seconds: float | None = None
    events_per_second: float = 0.0
    catch_up_seconds: float | None = None
    under_lag_since: float | None = None
    ready: bool = False  # the lag has stayed under max_lag_seconds for ready_after_seconds, and still does
    error: LiveMigrateError | None = None
    running: bool = False
    stats: ApplyStats = field(default_factory=ApplyStats)
    checkpoint_events: int | None = None  # applied_events recorded with the last stored checkpoint
    checkpoint_time: Timestamp | None = None  # its cluster time
    failures: int = 0  # consecutive transient failures (reset by every checkpointed batch)
    reconnects: int = 0  # transient failures ridden out since start


def catch_up_estimate(lag_seconds: float, applied_speed: float) -> float | None:
    """Seconds until the lag reaches zero, or None while it is not closing.

    ``applied_speed`` is how many seconds of the source's history the sync
    applies per wall-clock second; the source writes one second of history
    per second, so the gap closes at ``applied_speed - 1``.
    """
    if lag_seconds <= 0:
        return 0.0
    closing = applied_speed - 1.0
    if closing <= 0.05:
        return None
    return round(lag_seconds / closing, 1)


def fcv(client: MongoClient[Any]) -> str | None:
    try:
        res = client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
        return str(res["featureCompatibilityVersion"]["version"])
    except (PyMongoError, KeyError):
        return None


class SyncStatus:
    """Lag, readiness and the cutover window of one migration, computed from what the runner observes."""

    def __init__(self, config: MigrationConfig, store: MetadataStore, state: SyncState) -> None:
        self.cfg = config
        self.name = config.name
        self.store = store
        self.state = state
        self._rate = RateMeter()
        self._applied_clock: RateMeter | None = None  # seconds of source history applied per wall-clock second
        self._last_persist = 0.0
        self._window_open = False  # the stored record already says the window is open

    def observe(self, source_time: Timestamp | None, idle: bool) -> None:
        """Lag = the source's latest write minus the applied time; zero once a read came back empty.

        While a batch is being applied (an index build can take minutes) the runner keeps calling
        this with the source's latest write, so the lag grows and readiness drops as it should.
        """
        st = self.state
        st.source_time = source_time or st.source_time
        if idle and st.applied_time is not None:
            st.lag_seconds = 0.0  # nothing left to read: everything written before the read is applied
        elif st.source_time is not None and st.applied_time is not None:
            st.lag_seconds = float(max(0, st.source_time.time - st.applied_time.time))
        st.events_per_second = self._rate.update(st.applied_events)
        if st.lag_seconds is not None:
            st.catch_up_seconds = catch_up_estimate(st.lag_seconds, self._applied_speed())
            now = time.monotonic()
            if st.lag_seconds <= self.cfg.cutover.max_lag_seconds:
                st.under_lag_since = st.under_lag_since or now
                st.ready = now - st.under_lag_since >= self.cfg.cutover.ready_after_seconds
            else:
                if st.ready:
                    log.warning(
                        "no longer ready to cut over: lag %.0fs is above max_lag_seconds %g",
                        st.lag_seconds,
                        self.cfg.cutover.max_lag_seconds,
                    )
                st.under_lag_since = None
                st.ready = False
        self.persist()

    def _applied_speed(self) -> float:
        """Seconds of the source's history applied per second (smoothed); 0 until measured."""
        t = self.state.applied_time
        if t is None:
            return 0.0
        if self._applied_clock is None:
            self._applied_clock = RateMeter(_last_v=float(t.time))
            return 0.0
        return self._applied_clock.update(float(t.time))

    def persist(self, force: bool = False) -> None:
        """Write the lag (and, the first time the sync is ready, the opened window) to the migration record."""
        now = time.monotonic()
        if not force and now - self._last_persist < PERSIST_SECONDS:
            return
        self._last_persist = now
        st = self.state
        lag = Lag(
            lag_seconds=st.lag_seconds,
            events_per_second=round(st.events_per_second, 2),
            catch_up_seconds=st.catch_up_seconds,
            applied_events=st.applied_events,
            applied_time=st.applied_time.time if st.applied_time else None,
            source_time=st.source_time.time if st.source_time else None,
            last_event_time=st.last_event_time.time if st.last_event_time else None,
            ready=st.ready,
            updated_at=utcnow(),
        )
        fields: dict[str, Any] = {"lag": lag}
        try:
            if st.ready and not self._window_open:
                doc = self.store.load(self.name)
                if not doc.ready:
                    now_dt = utcnow()
                    fields.update(
                        ready=True,
                        ready_since=now_dt,
                        window_opens_at=now_dt,
                        window_closes_at=now_dt + dt.timedelta(hours=self.cfg.cutover.window_hours),
                    )
            self._window_open = self.store.update(self.name, **fields).ready
        except PyMongoError as exc:
            log.warning("could not persist lag: %s", type(exc).__name__)


class FCVWatch:
    """Stops the sync when either side's featureCompatibilityVersion differs from the one recorded at begin."""

    def __init__(self, source: MongoClient[Any], dest: MongoClient[Any], store: MetadataStore, name: str) -> None:
        self.src, self.dst, self.store, self.name = source, dest, store, name
        self._last_check = 0.0
        self._fcv: tuple[str | None, str | None] | None = None

    def check(self) -> None:
        now = time.monotonic()
        if now - self._last_check < FCV_POLL_SECONDS:
            return
        self._last_check = now
        cur = (fcv(self.src), fcv(self.dst))
        if self._fcv is None:  # the versions recorded at begin, so a change during the clone counts too
            began = self.store.load(self.name).fcv
            self._fcv = (began.get("source"), began.get("destination"))
        # A side that could not be read (then or now) is compared from its first reading on.
        self._fcv = (self._fcv[0] or cur[0], self._fcv[1] or cur[1])
        changed = [
            f"{side} {was} -> {new}"
            for side, was, new in zip(("source", "destination"), self._fcv, cur, strict=True)
            if new is not None and new != was
        ]
        if changed:
            raise FCVChangedError(f"featureCompatibilityVersion changed during the migration ({', '.join(changed)})")
