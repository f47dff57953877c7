"""The change stream's start point is the opening reply's resume token, before every event still to come.

MongoDB 4.0.7+ answers a change stream's aggregate with an empty first batch and a
``postBatchResumeToken`` (change-events manual, "Resume Tokens from aggregate and getMore"); pymongo
exposes it as ``resume_token`` before anything is read.  ``open_start_point`` used to read once more
(``try_next``) before taking the token: a write that arrived in between came back as that read's event,
the token moved past it, and resuming there skipped it.  The forward sync is covered by its clone; the
reverse sync (tasks/reverse.py) has no clone, so such a write on the destination at the cutover would
never reach the source.  The source here is mockupdb (tests/fake_mongod.py), which answers as MongoDB
7.0 does and serves the scripted event to the stream's first getMore.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from bson import Timestamp

from tasks.sync import open_start_point
from tests.fake_mongod import FakeSpec, fake_mongod

pytestmark = pytest.mark.integration


def insert_event(when: Timestamp) -> dict[str, Any]:
    """An insert as MongoDB 7.0 sends it (change-events reference, ``insert``)."""
    return {
        "_id": {"_data": f"82{when.time:08X}{when.inc:08X}2B022C0100296E5A1004"},
        "operationType": "insert",
        "clusterTime": when,
        "wallTime": dt.datetime(2026, 12, 8, 12, 0, 0),
        "collectionUUID": b"\x11" * 16,
        "ns": {"db": "app", "coll": "orders"},
        "documentKey": {"_id": 1},
        "fullDocument": {"_id": 1, "v": "written as the start point was taken"},
    }


def test_a_write_arriving_as_the_start_point_is_taken_is_not_skipped() -> None:
    with fake_mongod(FakeSpec(version="8.0.4", databases={})) as fake, fake.client() as client:
        fake.events.append(insert_event(fake.advance()))  # in the oplog, after the stream's start
        token, _ = open_start_point(client)
        assert token != fake.events[0]["_id"]
        with client.watch(resume_after=token, max_await_time_ms=50) as stream:
            event = stream.try_next()
        assert event is not None and event["documentKey"] == {"_id": 1}
