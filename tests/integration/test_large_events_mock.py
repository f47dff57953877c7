"""Change events over 16 MB, as MongoDB answers them (SecantusDB does not enforce the limit on events).

The source is mockupdb (tests/fake_mongod.py) speaking as MongoDB does, per the manual's
``$changeStreamSplitLargeEvent`` page (7.0; 6.0.9): without the stage a getMore whose next event is over
16 MB fails with BSONObjectTooLarge (10334); with it the event comes as fragments, each with its own
resume token and ``splitEvent: {fragment, of}``; a server before 6.0.9 refuses the stage itself
(40324, "Unrecognized pipeline stage name").  The destination is the real test server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from bson import Timestamp, encode
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from tasks.errors import TerminalError
from tasks.migration import Migration
from tests.conftest import Deployment
from tests.fake_mongod import FakeMongod, FakeSpec, fake_mongod
from tests.helpers import make_config

pytestmark = pytest.mark.integration

RAWC = CodecOptions(document_class=RawBSONDocument)


def big_update_event(db: str, when: Timestamp) -> dict[str, Any]:
    """A 9 MB document updated with an 8 MB $set, read with fullDocument: updateLookup (MongoDB 7.0 shape)."""
    full = {"_id": 1, "a": "y" * (8 << 20), "b": "z" * (1 << 20)}
    return {
        "_id": {"_data": f"82{when.time:08X}{when.inc:08X}2B022C0100296E5A1004"},
        "operationType": "update",
        "clusterTime": when,
        "wallTime": dt.datetime(2026, 11, 30, 12, 0, 0),
        "collectionUUID": b"\x11" * 16,
        "ns": {"db": db, "coll": "big"},
        "documentKey": {"_id": 1},
        "updateDescription": {"updatedFields": {"a": full["a"]}, "removedFields": [], "truncatedArrays": []},
        "fullDocument": full,
    }


@contextmanager
def syncing_from(
    spec: FakeSpec, pair: tuple[Deployment, Deployment], dst: MongoClient[Any], db: str
) -> Iterator[tuple[Migration, FakeMongod]]:
    with fake_mongod(spec) as fake, fake.client() as src:
        with Migration(make_config(fake.uri, pair[1].uri, db), src, dst) as m:
            m.begin()
            fake.events.append(big_update_event(db, fake.advance()))
            yield m, fake


def test_an_event_over_16_mb_is_read_in_fragments_and_joined(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    with syncing_from(FakeSpec(version="7.0.8", databases={}), pair, dst_client, dbname) as (m, fake):
        assert len(encode(fake.events[0])) > 16 << 20
        runner = m.start_sync()
        assert runner.wait(lambda st: st.applied_events >= 1, 20), runner.state.error
        streams = [d for d in fake.sent("aggregate") if d.get("pipeline")]
        assert {"$changeStreamSplitLargeEvent": {}} == dict(streams[-1]["pipeline"][-1])
    got = dst_client[dbname].get_collection("big", codec_options=RAWC).find_one({"_id": 1})
    assert got is not None and got.raw == encode(fake.events[0]["fullDocument"])


def test_a_source_that_cannot_split_names_the_event_it_cannot_send(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    with syncing_from(FakeSpec(version="6.0.5", databases={}), pair, dst_client, dbname) as (m, _fake):
        runner = m.start_sync()
        with pytest.raises(TerminalError) as info:
            runner.wait(lambda st: False, 20)
    msg = info.value.one_line()
    assert f"{dbname}.big" in msg and "_id 1" in msg and "16 MB" in msg
    assert "6.0.9" in msg and "\n" not in msg
    assert dst_client[dbname]["big"].count_documents({}) == 0
