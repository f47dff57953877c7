"""Clone and continuous sync against the real server pair: byte-for-byte round trips."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import bson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from pymongo import MongoClient, monitoring

from tasks.errors import TerminalError
from tasks.migration import Migration
from tasks.partition import ALL, PROBE, IdRange, plan_ranges, range_plan, uses_index
from tasks.state import Phase
from tests.conftest import Deployment
from tests.helpers import Writer, assert_same_data, make_config, seed_writer_data, wait_until

pytestmark = pytest.mark.integration


def every_bson_type() -> dict[str, Any]:
    return {
        "double": 1.5,
        "neg_zero": -0.0,
        "nan": float("nan"),
        "string": "héllo ✓",
        "doc": {"b": 1, "a": {"z": [1, 2]}},
        "array": [1, "two", {"three": 3}, [4]],
        "bin0": Binary(b"\x00\x01", 0),
        "bin_old": Binary(b"\x00\x01\x02\x03", 2),
        "uuid4": Binary(uuid.uuid4().bytes, 4),
        "uuid3": Binary(uuid.uuid4().bytes, 3),
        "md5": Binary(b"0123456789abcdef", 5),
        "user_bin": Binary(b"x", 128),
        "oid": ObjectId(),
        "true": True,
        "date": dt.datetime(2024, 2, 29, 12, 0, 0, 123000),
        "old_date": bson.datetime_ms.DatetimeMS(-(2**40)),
        "null": None,
        "regex": Regex("^a.*b$", "imx"),
        "code": Code("function(){return 1}"),
        "code_scope": Code("function(){return x}", {"x": 1}),
        "int32": 42,
        "ts": Timestamp(1700000000, 7),
        "int64": Int64(42),
        "dec": Decimal128("1234.5678901234567890"),
        "minkey": MinKey(),
        "maxkey": MaxKey(),
        "dbref_like": {"$ref": "other", "$id": 5, "$db": "x", "extra": 1},
    }


MIXED_IDS: list[Any] = [
    1,
    2.5,
    Int64(3),
    Decimal128("4.5"),
    -7,
    "a",
    "b",
    "zzz",
    ObjectId(),
    ObjectId(),
    Binary(uuid.uuid4().bytes, 4),
    Binary(b"raw", 0),
    {"k": 1},
    {"k": 2, "j": 1},
    None,
    True,
    False,
    dt.datetime(2020, 1, 1),
    Timestamp(5, 5),
    MinKey(),
    MaxKey(),
]


def _migrate_until_synced(cfg: Any, src: MongoClient, dst: MongoClient) -> Migration:
    m = Migration(cfg, src, dst)
    m.begin()
    m.clone()
    assert m.wait_ready(60), "sync never became ready"
    return m


def _drain(m: Migration, src: MongoClient) -> None:
    from tasks.mongo import latest_optime

    target = latest_optime(src)
    assert m.runner is not None
    assert m.runner.wait(lambda st: m.runner.applied_through(target), 60), "sync did not drain"  # type: ignore[union-attr]


def test_every_bson_type_and_mixed_ids_round_trip(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    db = src_client[dbname]
    db["types"].insert_many([{"_id": i, **every_bson_type()} for i in range(50)])
    db["mixed"].insert_many([{"_id": v, "i": n} for n, v in enumerate(MIXED_IDS)])
    db["many"].insert_many([{"_id": i if i % 3 else f"s{i:05d}", "x": "y" * 50} for i in range(3000)])
    db.create_collection("empty")
    src_client[f"{dbname}_emptydb"].create_collection("nothing")
    cfg = make_config(
        pair[0].uri, pair[1].uri, dbname, tuning={"partition_docs": 400, "partitioning": "ranges", "workers": 3}
    )
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        stats = m.clone()
        parts = m.store.clone_summary(cfg.name)
    assert stats.docs == 50 + len(MIXED_IDS) + 3000
    assert parts[f"{dbname}.many"]["partitions"] > 2, "large collection was not split"
    assert assert_same_data(src_client, dst_client, [dbname, f"{dbname}_emptydb"]) == stats.docs
    src_client.drop_database(f"{dbname}_emptydb")
    dst_client.drop_database(f"{dbname}_emptydb")


def test_options_indexes_views_capped(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    db = src_client[dbname]
    db.create_collection("capped", capped=True, size=1 << 20, max=100)
    db["capped"].insert_many([{"_id": i, "n": i} for i in range(150)])
    db.create_collection(
        "validated", validator={"$jsonSchema": {"required": ["a"]}}, validationLevel="moderate", validationAction="warn"
    )
    db.create_collection("collated", collation={"locale": "fr", "strength": 2})
    db.create_collection("clustered", clusteredIndex={"key": {"_id": 1}, "unique": True})
    db.create_collection("images", changeStreamPreAndPostImages={"enabled": True})
    db["people"].insert_many(
        [
            {"_id": i, "email": f"u{i}@x", "age": i, "loc": [i % 180, i % 90], "t": dt.datetime(2024, 1, 1)}
            for i in range(200)
        ]
    )
    db["people"].create_index("email", unique=True)
    db["people"].create_index([("age", 1), ("email", -1)], name="compound")
    db["people"].create_index("t", expireAfterSeconds=3600)
    db["people"].create_index("age", sparse=True, name="sparse_age")
    db["people"].create_index("email", partialFilterExpression={"age": {"$gt": 5}}, name="partial")
    db["people"].create_index([("loc", "2d")])
    db["people"].create_index("age", hidden=True, name="hidden_age")
    db["people"].create_index("email", collation={"locale": "en", "strength": 1}, name="email_ci")
    db.create_collection("adults", viewOn="people", pipeline=[{"$match": {"age": {"$gte": 18}}}])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        restores = m.store.load(cfg.name).index_restores
    for name in ("capped", "validated", "collated", "clustered", "images", "adults"):
        s = src_client[dbname][name].options()
        d = dst_client[dbname][name].options()
        assert s == d, name
    # Unique and TTL are held back during the sync and restored at cutover.
    by_name = {r["name"]: r for r in restores}
    assert by_name["email_1"] == {"ns": f"{dbname}.people", "name": "email_1", "unique": True}
    assert by_name["t_1"]["expireAfterSeconds"] == 3600
    dst_idx = dst_client[dbname]["people"].index_information()
    assert "unique" not in dst_idx["email_1"]
    assert dst_idx["t_1"]["expireAfterSeconds"] == 2147483647
    from tasks.ddl import restore_indexes

    restore_indexes(dst_client, restores)
    src_idx = src_client[dbname]["people"].index_information()
    dst_idx = dst_client[dbname]["people"].index_information()
    for name, spec in src_idx.items():
        d = {k: v for k, v in dst_idx[name].items() if k != "prepareUnique"}
        assert {k: v for k, v in spec.items()} == d, name
    # capped: the same 100 newest documents, in natural order
    assert [d["_id"] for d in src_client[dbname]["capped"].find()] == [
        d["_id"] for d in dst_client[dbname]["capped"].find()
    ]
    assert list(dst_client[dbname]["adults"].find()) == list(src_client[dbname]["adults"].find())
    assert_same_data(src_client, dst_client, [dbname])


def test_fifteen_megabyte_document(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    big = "x" * (15 * 1024 * 1024)
    src_client[dbname]["big"].insert_many([{"_id": 1, "blob": big}, {"_id": 2, "blob": big[:1000]}])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
    assert_same_data(src_client, dst_client, [dbname])


def test_namespace_filters_and_existing_destination(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    for c in ("keep", "skip", "other"):
        src_client[dbname][c].insert_one({"_id": 1, "c": c})
    dst_client[dbname]["keep"].insert_one({"_id": "stale"})
    cfg = make_config(
        pair[0].uri,
        pair[1].uri,
        dbname,
        namespaces={"include": [f"{dbname}.*"], "exclude": [f"{dbname}.skip", f"/^{dbname}\\.oth/"]},
    )
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        with pytest.raises(TerminalError):
            m.clone()
    dst_client.drop_database("__livemigrate")
    cfg = cfg.model_copy(update={"clear_destination": True})
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        assert m.store.load(cfg.name).dropped_on_destination == [f"{dbname}.keep"]
    assert sorted(dst_client[dbname].list_collection_names()) == ["keep"]
    assert list(dst_client[dbname]["keep"].find()) == [{"_id": 1, "c": "keep"}]


@pytest.mark.parametrize("update_mode", ["lookup", "delta"])
def test_concurrent_writer_through_clone_and_sync(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    update_mode: str,
) -> None:
    seed_writer_data(src_client, dbname)
    src_client[dbname]["bulk"].insert_many([{"_id": i, "p": "q" * 200} for i in range(5000)])
    writer = Writer(src_client, dbname, one_new_field=update_mode == "delta")
    writer.start()
    cfg = make_config(
        pair[0].uri,
        pair[1].uri,
        dbname,
        tuning={"partition_docs": 500, "partitioning": "ranges"},
        sync={"update_mode": update_mode},
    )
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        m.start_sync()
        assert wait_until(lambda: m.runner is not None and m.runner.state.applied_events > 50, 30)
        ops = writer.stop()
        _drain(m, src_client)
        assert ops > 100
        assert_same_data(src_client, dst_client, [dbname])
        assert m.runner is not None and m.runner.update_mode == update_mode
        if update_mode == "delta":  # updates applied as their changes, not looked up
            assert m.runner.state.stats.deltas > 50
        m.runner.stop()


def test_ddl_during_sync(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    src_client[dbname]["a"].insert_one({"_id": 1})
    src_client[dbname]["gone"].insert_one({"_id": 1})
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        m.start_sync()
        db = src_client[dbname]
        db.create_collection("made", validator={"x": {"$exists": True}})
        db["a"].create_index("f", name="f_1")
        db["a"].create_index("g", unique=True, name="g_1")
        db["a"].create_index("h", name="h_1")
        db["a"].drop_index("h_1")
        db["gone"].drop()
        db.command({"collMod": "made", "validator": {"y": {"$exists": True}}, "validationLevel": "moderate"})
        db["made"].insert_one({"_id": 1, "y": 1})
        _drain(m, src_client)
        assert dst_client[dbname]["made"].options()["validator"] == {"y": {"$exists": True}}
        assert dst_client[dbname]["made"].options()["validationLevel"] == "moderate"
        idx = dst_client[dbname]["a"].index_information()
        assert "f_1" in idx and "g_1" in idx and "h_1" not in idx
        assert "unique" not in idx["g_1"]  # made unique at cutover
        assert "gone" not in dst_client[dbname].list_collection_names()
        restores = m.store.load(cfg.name).index_restores
        assert any(r["name"] == "g_1" and r.get("unique") for r in restores)
        assert_same_data(src_client, dst_client, [dbname])


def test_resume_from_checkpoint_after_stop(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    src_client[dbname]["c"].insert_many([{"_id": i} for i in range(100)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        m.start_sync()
        src_client[dbname]["c"].insert_many([{"_id": i} for i in range(100, 200)])
        _drain(m, src_client)
        m.runner.stop()  # type: ignore[union-attr]
    # writes while nobody syncs
    src_client[dbname]["c"].update_many({}, {"$set": {"later": True}})
    src_client[dbname]["c"].delete_many({"_id": {"$lt": 10}})
    with Migration(cfg, src_client, dst_client) as m2:
        doc = m2.begin()
        assert doc.phase == Phase.SYNCING
        m2.start_sync()
        _drain(m2, src_client)
        assert_same_data(src_client, dst_client, [dbname])


def test_auto_partitioning_follows_how_the_source_reads_id_ranges(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    """`auto` splits only where an explain shows the `_id` index serving a range; either way nothing is lost."""
    coll = src_client[dbname]["big"]
    coll.insert_many([{"_id": i if i % 4 else f"k{i:05d}", "pad": "x" * 100} for i in range(2500)])
    indexed = uses_index(range_plan(coll, PROBE))
    auto = plan_ranges(coll, 500, mode="auto")
    assert (len(auto) > 1) == indexed
    assert len(plan_ranges(coll, 500, mode="ranges")) > 1
    assert plan_ranges(coll, 500, mode="whole") == [IdRange(ALL)]
    tuning = {"partition_docs": 500, "partitioning": "auto", "workers": 2}
    cfg = make_config(pair[0].uri, pair[1].uri, dbname, tuning=tuning)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        stats = m.clone()
        parts = m.store.clone_summary(cfg.name)
    assert parts[f"{dbname}.big"]["partitions"] == len(auto)
    assert assert_same_data(src_client, dst_client, [dbname]) == stats.docs == 2500


class _Writes(monitoring.CommandListener):
    """Records the write concern of every data write sent to one database."""

    def __init__(self, db: str) -> None:
        self.db, self.seen = db, []  # type: ignore[var-annotated]

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.db and event.command_name in ("insert", "update", "delete"):
            self.seen.append((event.command_name, dict(event.command.get("writeConcern") or {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_migrated_data_is_written_with_majority_write_concern(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dbname: str
) -> None:
    """Clone inserts and sync lane writes are majority writes, like the checkpoints that follow them."""
    listener = _Writes(dbname)
    dst = MongoClient(pair[1].uri, event_listeners=[listener])
    try:
        src_client[dbname]["c"].insert_many([{"_id": i, "v": i} for i in range(300)])
        cfg = make_config(pair[0].uri, pair[1].uri, dbname)
        m = _migrate_until_synced(cfg, src_client, dst)
        try:
            src_client[dbname]["c"].update_one({"_id": 1}, {"$set": {"v": "new"}})
            src_client[dbname]["c"].delete_one({"_id": 2})
            src_client[dbname]["c"].insert_one({"_id": 1000})
            _drain(m, src_client)
        finally:
            m.close()
        assert assert_same_data(src_client, dst, [dbname]) == 300  # 300 - 1 deleted + 1 inserted
    finally:
        dst.close()
    kinds = {name for name, _ in listener.seen}
    assert {"insert", "update"} <= kinds  # the clone's inserts and the lanes' upserts/deletes
    assert all(wc.get("w") == "majority" for _, wc in listener.seen), listener.seen
