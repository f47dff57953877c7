"""Samples of copy progress and lag over time, kept in the metadata store for the final report's charts.

Why: "how fast did it copy, how far behind was it, and when" is what a data team
asks after a migration, and the answer must survive the process (a worker's
disk is gone after a run).  Samples are taken every second or two, never per
batch, and the interval grows with the phase's age, so even a 120-hour window
keeps only a few thousand small documents.  The clone is sampled on a clock, not
only when a batch lands: a batch holds up to 8 MB (a small collection is one
batch) and partitions may be copied by workers in other processes, so progress
calls alone gave a minute-long clone one to three samples.
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
from tasks.state import SCHEMA_VERSION, Phase, utcnow

log = logging.getLogger(__name__)

CLONE = "clone"
SYNC = "sync"
SAMPLES_PER_PHASE = 1000
CLONE_STALLED_SECONDS = 300.0
"""The clone sampler stops after this long without progress (past the partition lease, 60 s, a dead
worker's partition is taken over); the next batch that lands starts it again."""


class Timeline:
    """Records throttled samples: cumulative docs/bytes copied during the clone, lag and events during the sync."""

    def __init__(self, store: MetadataStore, name: str, clone_every: float = 1.0, sync_every: float = 2.0) -> None:
        self.store, self.name = store, name
        self.coll = store.db["samples"]
        self.clone_every, self.sync_every = clone_every, sync_every
        self._next = {CLONE: 0.0, SYNC: 0.0}
        self._first: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clone_read = threading.Lock()  # one clone sample at a time: stored order is reading order
        self._clone_sampler: threading.Thread | None = None
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
        """Cumulative copy totals of every worker (read from the shared partition plan).

        A sample that finds partitions still to copy keeps a background sampler running, so the copy
        is sampled every ``clone_every`` seconds however rarely a batch lands.
        """
        if not self._due(CLONE, force):
            return
        taken = self._take_clone_sample()
        if taken is not None and taken[1] > 0:
            self._keep_sampling_clone()

    def _take_clone_sample(self) -> tuple[int, int] | None:
        """Store one clone sample; returns (documents copied, partitions left), or None if the plan was unreadable."""
        with self._clone_read:
            try:
                summary = self.store.clone_summary(self.name)
            except PyMongoError:
                return None
            docs = sum(v["docs"] for v in summary.values())
            self._insert(
                CLONE,
                {
                    "docs": docs,
                    "bytes": sum(v["bytes"] for v in summary.values()),
                    "est_docs": sum(v["est_docs"] for v in summary.values()),
                },
            )
        return docs, sum(v["partitions"] - v["done"] for v in summary.values())

    def _keep_sampling_clone(self) -> None:
        with self._lock:
            if self._clone_sampler is not None and self._clone_sampler.is_alive():
                return
            self._clone_sampler = threading.Thread(
                target=self._sample_clone_until_done, name=f"timeline-{self.name}", daemon=True
            )
            self._clone_sampler.start()

    def _sample_clone_until_done(self) -> None:
        """Sample the copy on a clock until the clone phase ends (index builds included) or stalls."""
        last_docs, moved_at = -1, time.monotonic()
        while True:
            time.sleep(min(max(self._next[CLONE] - time.monotonic(), 0.01), 1.0))
            if not self._due(CLONE, False):
                continue  # a progress call took this one, or a long phase samples less often (see _due)
            if not self._cloning():
                return
            taken = self._take_clone_sample()
            if taken is None:
                return
            if taken[0] != last_docs:
                last_docs, moved_at = taken[0], time.monotonic()
            elif time.monotonic() - moved_at > CLONE_STALLED_SECONDS:
                return

    def _cloning(self) -> bool:
        """Whether the migration is still cloning (copying or building indexes); a failed clone is not."""
        try:
            raw = self.store.migrations.find_one({"_id": self.name}, {"phase": 1})
        except PyMongoError:
            return False
        return raw is not None and raw.get("phase") == Phase.CLONING.value

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
