"""A document the destination rejects during the sync: a clear error, the migration stops, nothing is skipped.

The destination gets a constraint the source lacks after the clone: a unique index (someone added
it by hand).  Document validators are bypassed on purpose (README, data-safety invariants), so a
validator the source lacks does not stop the migration.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient

from tasks.errors import DocumentRejectedError
from tasks.metadata import MetadataStore
from tasks.migration import Migration
from tasks.mongo import latest_optime
from tasks.state import Phase
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config

pytestmark = pytest.mark.integration


def _drain(m: Migration, src: MongoClient[Any]) -> None:
    runner = m.start_sync()
    target = latest_optime(src)
    assert runner.wait(lambda st: runner.applied_through(target), 60)


def test_rejected_document_stops_the_sync_and_nothing_is_skipped(
    pair: tuple[Deployment, Deployment], src_client: MongoClient[Any], dst_client: MongoClient[Any], dbname: str
) -> None:
    coll = src_client[dbname]["people"]
    coll.insert_many([{"_id": i, "email": f"u{i}@example.com"} for i in range(20)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    store = MetadataStore(dst_client)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        dst_client[dbname]["people"].create_index("email", unique=True)  # only the destination has it
        _drain(m, src_client)
        coll.insert_one({"_id": 100, "email": "fine@example.com"})
        coll.update_one({"_id": 5}, {"$set": {"email": "u1@example.com"}})  # a duplicate on the destination only
        rejected_at = latest_optime(src_client)
        coll.insert_one({"_id": 101, "email": "after@example.com"})
        with pytest.raises(DocumentRejectedError) as info:
            m.runner.wait(lambda st: False, 30)  # type: ignore[union-attr]
    err = info.value
    assert err.ns == f"{dbname}.people" and err.doc_id == 5
    assert err.ns in err.one_line() and "5" in err.one_line()  # the message names both for a person
    doc = store.load(cfg.name)
    assert doc.phase == Phase.FAILED and err.ns in (doc.error or "")
    cp = store.load_checkpoint(cfg.name)
    assert cp is not None and cp.cluster_time is not None
    assert (cp.cluster_time["t"], cp.cluster_time["i"]) < (rejected_at.time, rejected_at.inc), "checkpoint passed it"

    # The cause is fixed on the destination; the resumed migration replays the rejected write.
    dst_client[dbname]["people"].drop_index("email_1")
    with Migration(cfg, src_client, dst_client) as m:
        assert m.begin().phase == Phase.SYNCING
        _drain(m, src_client)
        assert_same_data(src_client, dst_client, [dbname])


def test_destination_validator_is_bypassed(
    pair: tuple[Deployment, Deployment], src_client: MongoClient[Any], dst_client: MongoClient[Any], dbname: str
) -> None:
    coll = src_client[dbname]["items"]
    coll.insert_many([{"_id": i, "qty": i} for i in range(10)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        dst_client[dbname].command({"collMod": "items", "validator": {"qty": {"$type": "int"}}})
        _drain(m, src_client)
        coll.insert_one({"_id": 50, "qty": "many"})  # the destination's validator would refuse it
        coll.update_one({"_id": 1}, {"$set": {"qty": None}})
        _drain(m, src_client)
        assert m.runner is not None and m.runner.state.error is None
    data = {d["_id"]: d["qty"] for d in dst_client[dbname]["items"].find({"_id": {"$in": [1, 50]}})}
    assert data == {1: None, 50: "many"}
    assert_same_data(src_client, dst_client, [dbname])
