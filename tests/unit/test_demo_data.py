"""The demo's sample (flows/demo.py) is dated relative to now, so none of it expires while the demo runs.

Fixed dates once sat past the events' one-year TTL: the source's TTL monitor deleted them during the
demo, which then copied 60% of what it said it loaded.  A stand-in client records what would be written.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import pytest

from flows.demo import load_sample

pytestmark = pytest.mark.unit


class _Coll:
    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []
        self.ttl: dict[str, int] = {}

    def insert_many(self, docs: list[dict[str, Any]]) -> None:
        self.docs.extend(docs)

    def create_index(self, keys: Any, **options: Any) -> None:
        if "expireAfterSeconds" in options:
            assert isinstance(keys, str)
            self.ttl[keys] = options["expireAfterSeconds"]


class _Db(defaultdict[str, _Coll]):
    def __init__(self) -> None:
        super().__init__(_Coll)

    def create_collection(self, name: str, **options: Any) -> None:
        self[name]


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)  # pymongo stores a naive datetime as UTC


def test_no_sample_document_is_older_than_its_ttl_and_the_counts_are_what_was_written() -> None:
    client: defaultdict[str, _Db] = defaultdict(_Db)
    before = dt.datetime.now(dt.UTC)
    counts = load_sample(client, 1000)  # type: ignore[arg-type]
    after = dt.datetime.now(dt.UTC)

    ttls = [(coll, field, secs) for db in client.values() for coll in db.values() for field, secs in coll.ttl.items()]
    assert ttls, "the sample has a TTL index"
    for coll, field, secs in ttls:
        dates = [_utc(d[field]) for d in coll.docs]
        assert min(dates) > before - dt.timedelta(seconds=secs) + dt.timedelta(days=30)  # a month to spare
        assert max(dates) <= after
    written = {f"{db}.{name}": len(c.docs) for db, colls in client.items() for name, c in colls.items() if c.docs}
    assert counts == written
