"""What a real replica set does that the engine must follow, shown on the test server where it behaves the same.

- A transaction's events share one cluster time (MongoDB manual, change events, ``clusterTime``, 7.0/8.0:
  "events staged in a given oplog entry share the same clusterTime"); SecantusDB gives every event of a
  transaction the commit's cluster time too, so a batch boundary inside a transaction is real here.
- ``_id`` equality is by value (manual, "Comparison/Sort Order": numbers compare by value across types);
  SecantusDB refuses ``{_id: 1.0}`` beside ``{_id: 1}`` as MongoDB does.
- A capped collection keeps insertion order (manual, "Capped Collections"); CappedPositionLost is error
  code 136 (server source ``error_codes.yml``), injected with the ``failCommand`` fail point.
- An index build inside the apply step blocks it (``failCommand`` with ``blockConnection``, as MongoDB's
  own tests block a command).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from bson import Decimal128, Int64, Timestamp
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from tasks.apply import Applier
from tasks.migration import Migration
from tasks.mongo import USER_WRITE_FILTER, latest_optime
from tasks.namespaces import NamespaceFilter
from tests.conftest import Deployment, requires_secantus
from tests.helpers import CommandLog, assert_same_data, drain, fail_command, make_config, wait_until

pytestmark = pytest.mark.integration

EQUAL = lambda doc: {"equal": True}  # noqa: E731 - the tests compare the clusters themselves, byte for byte


def test_a_transaction_larger_than_a_batch_is_drained_whole_before_the_cutover(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    """500 inserts committed together right before the approval, batches of 20 events: all of them arrive."""
    coll = src_client[dbname]["orders"]
    coll.insert_many([{"_id": i, "v": 0} for i in range(10)])
    # Writes stopped with the commit: the cutover does not wait for the source to stand still first.
    cfg = make_config(
        pair[0].uri, pair[1].uri, dbname, tuning={"sync_batch_events": 20}, cutover={"quiesce_seconds": 0}
    )
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        assert m.wait_ready(60)
        with src_client.start_session() as s, s.start_transaction():
            coll.insert_many([{"_id": 1000 + i, "v": i} for i in range(500)], session=s)
            coll.update_one({"_id": 1}, {"$set": {"v": "in the transaction"}}, session=s)
        result = m.cutover("oncall", "a transaction just before the approval", EQUAL)
        assert result.phase.value == "complete"
    assert dst_client[dbname]["orders"].count_documents({}) == 510
    assert_same_data(src_client, dst_client, [dbname])


def test_latest_write_counts_transactions_written_as_apply_ops(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dbname: str
) -> None:
    """The latest-write filter on oplog entries as MongoDB 7.0/8.0 writes them (manual, "Replica Set Oplog";
    server source ``repl/oplog_entry.idl``): a transaction is ``applyOps`` in admin.$cmd, a large one a chain
    with ``partialTxn``, a batched delete (6.1+) ``applyOps`` without lsid, a prepared transaction's commit
    ``commitTransaction``; the server's no-ops and session bookkeeping are not writes."""
    uuid = b"\x01" * 16
    lsid = {"id": uuid, "uid": b"\x02" * 32}
    entries = [
        {"ts": Timestamp(100, 1), "op": "i", "ns": "app.c", "ui": uuid, "o": {"_id": 1}, "v": Int64(2)},
        {
            "ts": Timestamp(101, 1),
            "op": "c",
            "ns": "admin.$cmd",
            "lsid": lsid,
            "txnNumber": Int64(1),
            "o": {"applyOps": [{"op": "i", "ns": "app.c", "ui": uuid, "o": {"_id": 2}, "o2": {"_id": 2}}]},
            "prevOpTime": {"ts": Timestamp(0, 0), "t": Int64(-1)},
        },
        {"ts": Timestamp(102, 1), "op": "n", "ns": "", "o": {"msg": "periodic noop"}},
        {"ts": Timestamp(103, 1), "op": "u", "ns": "config.system.sessions", "o": {"$v": 2, "diff": {}}},
        {"ts": Timestamp(104, 1), "op": "c", "ns": "admin.$cmd", "o": {"create": "system.keys"}},
        {
            "ts": Timestamp(105, 1),
            "op": "c",
            "ns": "admin.$cmd",
            "lsid": lsid,
            "txnNumber": Int64(2),
            "o": {"applyOps": [{"op": "i", "ns": "app.c", "ui": uuid, "o": {"_id": 3}}], "partialTxn": True},
        },
        {
            "ts": Timestamp(106, 1),
            "op": "c",
            "ns": "admin.$cmd",
            "o": {"applyOps": [{"op": "d", "ns": "app.c", "o": {"_id": 3}}]},
        },
        {
            "ts": Timestamp(107, 1),
            "op": "c",
            "ns": "admin.$cmd",
            "lsid": lsid,
            "txnNumber": Int64(3),
            "o": {"commitTransaction": 1, "commitTimestamp": Timestamp(107, 1)},
        },
        {"ts": Timestamp(108, 1), "op": "i", "ns": "admin.system.users", "o": {"_id": "admin.x"}},
        {"ts": Timestamp(109, 1), "op": "c", "ns": "admin.$cmd", "o": {"renameCollection": "app.a", "to": "app.b"}},
    ]
    scratch = src_client[dbname]["oplog_shapes"]
    scratch.insert_many(entries)
    matched = sorted(e["ts"].time for e in scratch.find(USER_WRITE_FILTER))
    assert matched == [100, 101, 105, 106, 107, 109]


@requires_secantus("reads the oplog the suite's own server writes")
def test_latest_optime_of_a_transaction_is_its_commit(src_client: MongoClient, dbname: str) -> None:
    coll = src_client[dbname]["c"]
    with src_client.start_session() as s, s.start_transaction():
        coll.insert_many([{"_id": i} for i in range(3)], session=s)
    commit = src_client.local["oplog.rs"].find_one({"ns": f"{dbname}.c"}, sort=[("$natural", -1)])
    assert commit is not None and latest_optime(src_client) >= commit["ts"]


@pytest.mark.parametrize("lanes", [1, 4])
def test_value_equal_ids_are_one_document(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str, lanes: int
) -> None:
    """ "delete {_id: 1}, insert {_id: 1.0}" in one batch is one document, and the source's bytes win."""
    coll = src_client[dbname]["c"]
    coll.insert_many(
        [{"_id": 1, "t": "int"}, {"_id": 2.0, "t": "double"}, {"_id": Decimal128("3"), "t": "dec"}, {"_id": {"k": 4}}]
    )
    cfg = make_config(pair[0].uri, pair[1].uri, dbname, tuning={"sync_lanes": lanes})
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        # Written while nobody syncs, so they arrive in one batch.
        coll.delete_one({"_id": 1})
        coll.insert_one({"_id": 1.0, "t": "double now"})
        coll.delete_one({"_id": 2})  # the mirror: a double replaced by an int
        coll.insert_one({"_id": Int64(2), "t": "long now"})
        coll.update_one({"_id": 2}, {"$set": {"u": 1}})
        coll.delete_one({"_id": 3.0})
        coll.insert_one({"_id": 3, "t": "int now"})
        coll.insert_one({"_id": 5, "t": "kept"})
        coll.delete_one({"_id": 5.0})  # inserted then deleted under another number type: gone
        coll.delete_one({"_id": {"k": 4.0}})
        coll.insert_one({"_id": {"k": Int64(4)}, "t": "object with a long"})
        drain(m, src_client)
    assert dst_client[dbname]["c"].count_documents({}) == 4
    assert_same_data(src_client, dst_client, [dbname])


def _natural_ids(client: MongoClient[Any], db: str) -> list[Any]:
    return [d["_id"] for d in client[db]["log"].find({}, {"_id": 1}).sort("$natural", 1)]


def test_capped_collection_is_applied_in_insertion_order(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    src_client[dbname].create_collection("log", capped=True, size=1 << 20)
    src_client[dbname]["log"].insert_many([{"_id": f"seed{i}"} for i in range(5)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname, tuning={"sync_lanes": 4})
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        for i in range(200):  # one batch, spread over every lane by _id if the order were not kept
            src_client[dbname]["log"].insert_one({"_id": f"e{i:03d}", "i": i})
        drain(m, src_client)
    assert _natural_ids(dst_client, dbname) == _natural_ids(src_client, dbname)
    assert_same_data(src_client, dst_client, [dbname])


@requires_secantus("injects a fail point")
def test_capped_position_lost_during_the_clone_copies_that_collection_again(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    src_client[dbname].create_collection("log", capped=True, size=1 << 20)
    src_client[dbname]["log"].insert_many([{"_id": i, "p": "x" * 50} for i in range(3000)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    error = {"errorCode": 136, "failCommands": ["getMore"], "appName": "livemigrate"}
    with Migration(cfg) as m:  # its own clients, named livemigrate: the fail point fails only them
        m.begin()
        with fail_command(src_client, {"times": 1}, **error):
            stats = m.clone()
        assert stats.docs >= 3000
        drain(m, src_client)
    assert _natural_ids(dst_client, dbname) == _natural_ids(src_client, dbname)
    assert_same_data(src_client, dst_client, [dbname])


@requires_secantus("injects a fail point")
def test_lag_keeps_growing_while_an_index_build_blocks_the_apply(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    coll = src_client[dbname]["c"]
    coll.insert_many([{"_id": i, "a": i} for i in range(50)])
    cutover = {"max_lag_seconds": 2, "ready_after_seconds": 0.2}
    cfg = make_config(pair[0].uri, pair[1].uri, dbname, cutover=cutover)
    with Migration(cfg) as m:  # its own clients, named livemigrate: the fail point blocks only them
        m.begin()
        m.clone()
        runner = m.start_sync()
        assert runner.wait(lambda st: st.ready, 30)
        block = {"failCommands": ["createIndexes"], "blockConnection": True, "blockTimeMS": 7000}
        with fail_command(dst_client, {"times": 1}, **block, appName="livemigrate"):
            coll.create_index("a")  # the apply step builds it on the destination: blocked for 7 s
            start = time.monotonic()
            while time.monotonic() - start < 5.5:  # the application keeps writing meanwhile
                coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
                time.sleep(0.05)
            assert runner.state.lag_seconds is not None and runner.state.lag_seconds > 2, runner.state
            assert not runner.state.ready, "still 'ready to cut over' while the apply is blocked"
            assert wait_until(lambda: not m.store.load(m.name).lag.ready, 5), "describe still says ready"
        assert runner.wait(lambda st: st.ready, 30), "ready again once the build finished"
        drain(m, src_client)
    assert_same_data(src_client, dst_client, [dbname])


def test_an_update_event_over_16_mb_arrives_split_and_is_joined(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    """A 9 MB document updated with an 8 MB $set: with the looked-up document the event is over 16 MB."""
    coll = src_client[dbname]["big"]
    coll.insert_one({"_id": 1, "a": "x" * (9 << 20), "b": 1})
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        runner = m.start_sync()
        assert runner.wait(lambda st: st.ready, 30)
        coll.update_one({"_id": 1}, {"$set": {"a": "y" * (8 << 20)}})
        coll.insert_one({"_id": 2, "after": True})
        drain(m, src_client)
        assert runner._split is True
    raw = CodecOptions(document_class=RawBSONDocument)
    got = dst_client[dbname].get_collection("big", codec_options=raw).find_one({"_id": 1})
    assert got is not None and got["a"].startswith("y")
    assert_same_data(src_client, dst_client, [dbname])


def test_capped_and_collated_namespaces_are_applied_in_order(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    """Which namespaces keep every write in order is read from the destination's catalog, made from the source's."""
    db = src_client[dbname]
    db.create_collection("log", capped=True, size=1 << 16)
    db.create_collection("names", collation={"locale": "en", "strength": 2})
    db.create_collection("simple", collation={"locale": "simple"})
    db["plain"].insert_one({"_id": 1})
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
    applier = Applier(dst_client, NamespaceFilter.from_rules(cfg.namespaces), lanes=2)
    try:
        serial = {c: applier.is_serial(f"{dbname}.{c}") for c in ("log", "names", "simple", "plain", "absent")}
    finally:
        applier.close()
    assert serial == {"log": True, "names": True, "simple": False, "plain": False, "absent": False}


def test_a_collated_collection_is_written_delete_then_insert_in_order(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    """Under a collation a replacement whose _id bytes differ from the stored one's is refused by MongoDB
    (ImmutableField 66, object_replace_executor.cpp compares without the collation), so such namespaces are
    written as delete + insert, in source order.  (SecantusDB stores but does not apply the collation.)"""
    db = src_client[dbname]
    db.create_collection("names", collation={"locale": "en", "strength": 2})
    db["names"].insert_many([{"_id": "Bob", "n": 0}, {"_id": "carol", "n": 0}])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        db["names"].insert_one({"_id": "Ann", "n": 1})
        db["names"].update_one({"_id": "Ann"}, {"$inc": {"n": 1}})
        db["names"].delete_one({"_id": "Ann"})
        db["names"].insert_one({"_id": "ann", "n": 3})
        db["names"].replace_one({"_id": "Bob"}, {"_id": "Bob", "replaced": True})
        db["names"].delete_one({"_id": "carol"})
        drain(m, src_client)
    assert_same_data(src_client, dst_client, [dbname])


def test_a_top_level_empty_timestamp_is_written_so_the_destination_keeps_it(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    """MongoDB replaces a top-level Timestamp(0, 0) on insert and on a replacement upsert with the current time
    (jstests core/empty_ts); such documents are written with bypassEmptyTsReplacement (jstests
    bypass_empty_ts_replacement.js).  SecantusDB never replaces it: the commands sent are what is checked."""
    coll = src_client[dbname]["c"]
    coll.insert_many([{"_id": 1, "ts": Timestamp(0, 0)}, {"_id": 2, "ts": Timestamp(5, 1)}])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    inserts, updates = CommandLog("insert"), CommandLog("update")
    with pair[1].client(event_listeners=[inserts, updates]) as dst, Migration(cfg, src_client, dst) as m:
        m.begin()
        m.clone()
        coll.update_one({"_id": 2}, {"$set": {"ts": Timestamp(0, 0)}})  # an update event whose document has one
        coll.insert_one({"_id": 3, "x": 1})
        drain(m, src_client)
    keeping = [c for c in inserts.commands + updates.commands if c.get("bypassEmptyTsReplacement")]
    assert {c.get("insert") or c.get("update") for c in keeping} == {"c"}
    # One insert (the clone's batch holding _id 1) and one replacement of _id 2.  _id 3 may ride in a command
    # with the flag when the sync puts it in the same batch and lane as _id 2: harmless, the flag only keeps
    # empty timestamps, and it has none.
    assert len([c for c in keeping if "insert" in c]) == 1
    replaced = [u["q"] for c in keeping if "update" in c for u in c["updates"]]
    assert replaced.count({"_id": 2}) == 1 and set(map(str, replaced)) <= {"{'_id': 2}", "{'_id': 3}"}
    assert not any(
        c.get("bypassEmptyTsReplacement") for c in inserts.commands if c.get("documents", [{}])[0].get("_id") == 3
    )
    assert_same_data(src_client, dst_client, [dbname])
