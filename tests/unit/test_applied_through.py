"""What a batch and an empty reply prove applied (tasks/sync.py), on the shapes MongoDB gives.

Resume tokens: MongoDB's start with ``82`` and the big-endian cluster time (server source
``resume_token.cpp`` KeyString encoding); a high-water-mark token sorts before every event token of its
own time.  A transaction's events share one cluster time (change events reference, ``clusterTime``).
"""

from __future__ import annotations

import threading
from typing import Any

from bson import Timestamp

from tasks.sync import SyncRunner, batch_through, just_before, seen_through


def hwm(ts: Timestamp) -> dict[str, str]:
    return {"_data": f"82{ts.time:08X}{ts.inc:08X}2B0229296E04"}


T = Timestamp(1_700_000_000, 5)


def test_a_batch_proves_only_what_came_before_its_last_event() -> None:
    assert batch_through(T, None, None, sharded=False) == Timestamp(T.time, 4)
    assert just_before(Timestamp(10, 0)) == Timestamp(9, 0xFFFFFFFF)
    # Never behind what earlier batches proved.
    later = Timestamp(T.time + 1, 0)
    assert batch_through(T, None, later, sharded=False) == later


def test_an_empty_reply_proves_the_last_event_whole_on_a_replica_set_only() -> None:
    seen = seen_through(hwm(T), None, sharded=False)
    assert seen == T
    assert batch_through(T, seen, None, sharded=False) == T
    # Through mongos, another shard may still send events of time T (a cross-shard transaction).
    seen_s = seen_through(hwm(T), None, sharded=True)
    assert seen_s == just_before(T)
    assert batch_through(T, seen_s, None, sharded=True) == just_before(T)
    # A high-water mark past the last event proves the last event on both.
    assert batch_through(T, seen_through(hwm(Timestamp(T.time + 3, 1)), None, sharded=True), None, sharded=True) > T


def test_without_a_mongodb_token_the_reply_time_proves_only_what_came_before_it() -> None:
    opaque = {"_data": "3400000010730003000000117400070000001f"}  # SecantusDB's own token format
    assert seen_through(opaque, T, sharded=False) == just_before(T)
    assert seen_through(opaque, None, sharded=False) is None


class _ReopeningStream:
    """Answers like pymongo's ChangeStream after a resumable error: it reopens (a new cursor) and the new
    aggregate's first batch is empty, with the last event read as its resume token."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = list(events)
        self._cursor = object()
        self.reopen_after = 2

    def try_next(self) -> dict[str, Any] | None:
        if self.reopen_after == 0:
            self.reopen_after = -1
            self._cursor = object()  # reopened
            return None
        self.reopen_after -= 1
        return self.events.pop(0) if self.events else None


def test_the_empty_first_batch_of_a_reopened_stream_is_not_caught_up() -> None:
    runner = SyncRunner.__new__(SyncRunner)  # only the collecting logic, no servers
    runner.stop_event = threading.Event()
    stream = _ReopeningStream([{"clusterTime": T, "operationType": "insert"}] * 5)
    batch, caught_up = runner._collect(stream, 100, None, None)  # type: ignore[arg-type]
    assert len(batch) == 2 and caught_up is False
    batch, caught_up = runner._collect(stream, 100, None, None)  # type: ignore[arg-type]
    assert len(batch) == 3 and caught_up is True  # a real empty getMore of the same cursor
