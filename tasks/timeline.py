"""Samples of copy progress and lag over time, kept in the metadata store for the final report's charts.

Why: "how fast did it copy, how far behind was it, and when" is what a data team
asks after a migration, and the answer must survive the process (a worker's
disk is gone after a run).  Samples are taken every second or two, never per
batch, and the interval grows with the phase's age, so even a 120-hour window
keeps only a few thousand small documents.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import PyMongoError

from tasks.metadata import MetadataStore
from tasks.progress import ProgressSink
from tasks.state import SCHEMA_VERSION, utcnow

log = logging.getLogger(__name__)

CLONE = "clone"
SYNC = "sync"
SAMPLES_PER_PHASE = 1000


class Timeline:
    """Records throttled samples: cumulative docs/bytes copied during the clone, lag and events during the sync."""

    def __init__(self, store: MetadataStore, name: str, clone_every: float = 1.0, sync_every: float = 2.0) -> None:
        self.store, self.name = store, name
        self.coll = store.db["samples"]
        self.clone_every, self.sync_every = clone_every, sync_every
        self._next = {CLONE: 0.0, SYNC: 0.0}
        self._first: dict[str, float] = {}
        self._lock = threading.Lock()
        self._index_ready = False

    def _due(self, kind: str, force: bool) -> bool:
        now = time.monotonic()
        with self._lock:
            if not force and now < self._next[kind]:
                return False
            # The interval grows with the phase's age, so a long phase keeps about SAMPLES_PER_PHASE samples.
            elapsed = now - self._first.setdefault(kind, now)
            base = self.clone_every if kind == CLONE else self.sync_every
            self._next[kind] = now + max(base, elapsed / SAMPLES_PER_PHASE)
            return True

    def _insert(self, kind: str, values: dict[str, Any]) -> None:
        try:
            if not self._index_ready:
                self.coll.create_index([("migration", ASCENDING), ("kind", ASCENDING), ("at", ASCENDING)])
                self._index_ready = True
            self.coll.insert_one(
                {"migration": self.name, "kind": kind, "at": utcnow(), "schema_version": SCHEMA_VERSION, **values}
            )
        except PyMongoError as exc:  # a lost sample must never stop the data moving
            log.debug("timeline sample not stored: %s", type(exc).__name__)

    def clone_sample(self, force: bool = False) -> None:
        """Cumulative copy totals of every worker (read from the shared partition plan)."""
        if not self._due(CLONE, force):
            return
        try:
            summary = self.store.clone_summary(self.name)
        except PyMongoError:
            return
        self._insert(
            CLONE,
            {
                "docs": sum(v["docs"] for v in summary.values()),
                "bytes": sum(v["bytes"] for v in summary.values()),
                "est_docs": sum(v["est_docs"] for v in summary.values()),
            },
        )

    def clone_sink(self, inner: ProgressSink) -> ProgressSink:
        """A progress sink that forwards to ``inner`` and samples the copy totals on the way."""

        def sink(stage: str, key: str, done: int, total: int, extra: dict[str, float]) -> None:
            inner(stage, key, done, total, extra)
            self.clone_sample()

        return sink

    def sync_sample(self, state: Any, force: bool = False) -> None:
        """Lag (optime gap), events applied per second and applied events from the sync's state."""
        if not self._due(SYNC, force):
            return
        self._insert(
            SYNC,
            {
                "lag_seconds": state.lag_seconds,
                "events_per_second": round(float(state.events_per_second), 2),
                "applied_events": int(state.applied_events),
            },
        )

    def series(self, kind: str, since: Any = None) -> list[dict[str, Any]]:
        """The samples of one kind, oldest first (``since``: the run's start, so a restarted name starts clean)."""
        flt: dict[str, Any] = {"migration": self.name, "kind": kind}
        if since is not None:
            flt["at"] = {"$gte": since}
        cur = self.coll.find(flt, {"_id": 0, "migration": 0, "kind": 0, "schema_version": 0})
        return list(cur.sort("at", ASCENDING))


def copy_rates(samples: list[dict[str, Any]]) -> list[tuple[Any, float]]:
    """Documents per second between consecutive clone samples (the copy-rate chart)."""
    out: list[tuple[Any, float]] = []
    for a, b in itertools.pairwise(samples):
        dt_s = (b["at"] - a["at"]).total_seconds()
        if dt_s > 0:
            out.append((b["at"], max(0.0, (b["docs"] - a["docs"]) / dt_s)))
    return out
