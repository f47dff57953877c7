"""The clone is sampled on a clock (tasks/timeline.py), not only when a batch lands.

A batch holds up to 8 MB, so a clone of a few large batches reports progress two or three times; the
report's copy-rate chart needs a sample every ``clone_every`` seconds all the same, and none per batch.
The store here is a stand-in with the three calls the timeline makes: the plan's totals, the phase,
and the samples collection.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tasks.progress import null_sink
from tasks.timeline import Timeline

pytestmark = pytest.mark.unit


class _Samples:
    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def create_index(self, *args: Any, **kwargs: Any) -> None:
        pass

    def insert_one(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self.docs.append(doc)


class _Migrations:
    def __init__(self) -> None:
        self.phase = "cloning"

    def find_one(self, flt: dict[str, Any], projection: dict[str, Any]) -> dict[str, Any]:
        return {"_id": flt["_id"], "phase": self.phase}


class _Store:
    """A partition plan of ``n`` partitions of 5000 documents each, copied in one batch per partition."""

    def __init__(self, n: int) -> None:
        self.samples = _Samples()
        self.db = {"samples": self.samples}
        self.migrations = _Migrations()
        self.copied = [0] * n

    def land(self, i: int) -> None:
        self.copied[i] = 5000

    def clone_summary(self, name: str) -> dict[str, dict[str, int]]:
        done = sum(1 for c in self.copied if c)
        docs = sum(self.copied)
        return {
            "d.c": {"partitions": len(self.copied), "done": done, "docs": docs, "bytes": docs * 100, "est_docs": 10_000}
        }


def _sampler_stops(tl: Timeline) -> bool:
    thread = getattr(tl, "_clone_sampler", None)
    if thread is not None:
        thread.join(2)
    return thread is None or not thread.is_alive()


def test_a_clone_of_two_large_batches_is_sampled_every_interval_and_never_per_batch() -> None:
    store = _Store(2)
    tl = Timeline(store, "m", clone_every=0.05)  # type: ignore[arg-type]
    sink = tl.clone_sink(null_sink)
    tl.clone_sample(force=True)  # the plan is made, nothing copied yet
    for i in range(2000):  # a flood of progress calls within milliseconds stores one sample or two
        sink("clone", "p0", i, 5000, {})
    assert len(store.samples.docs) <= 3
    time.sleep(0.25)
    store.land(0)
    sink("clone", "p0", 5000, 5000, {})
    time.sleep(0.25)
    store.land(1)
    sink("clone", "p1", 5000, 5000, {})
    time.sleep(0.3)  # indexes are built: the chart shows the copy standing still, not a slope to the end
    tl.clone_sample(force=True)
    store.migrations.phase = "syncing"

    docs = [s["docs"] for s in store.samples.docs]
    assert len(docs) > 8, docs  # progress calls alone gave four
    assert docs[0] == 0 and docs[-1] == 10_000 and docs == sorted(docs)
    assert docs.count(10_000) >= 3
    assert _sampler_stops(tl)
    n = len(store.samples.docs)
    time.sleep(0.15)
    assert len(store.samples.docs) == n  # nothing sampled once the clone phase is over


def test_a_clone_without_progress_is_sampled_while_it_runs_and_not_after_it_stopped() -> None:
    store = _Store(2)
    tl = Timeline(store, "m", clone_every=0.05)  # type: ignore[arg-type]
    tl.clone_sample(force=True)
    time.sleep(0.3)  # a worker in another process holds the only partitions: no progress call here
    assert len(store.samples.docs) >= 3
    store.migrations.phase = "failed"  # the clone stopped with partitions left
    assert _sampler_stops(tl)
    n = len(store.samples.docs)
    time.sleep(0.15)
    assert len(store.samples.docs) == n
