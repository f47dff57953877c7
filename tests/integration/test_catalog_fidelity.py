"""The destination's catalog follows the source's through DDL: the book of index restores, collection options.

Shapes (MongoDB 7.0/8.0, server source ``op_observer_util.cpp`` makeCollModCmdObj and
``change_stream_event_transform.cpp``): a ``modify`` event names the index by ``name`` even when the user
ran collMod by ``keyPattern`` (the oplog entry is normalised to the name); a ``create`` event carries the
collection's options; ``dropIndexes``/``createIndexes`` events come in the order the source ran them.
SecantusDB emits the same events (its createIndexes events omit options; the engine reads the source's spec).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from bson import Int64, Timestamp, encode
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import BulkWriteError

from tasks.apply import Applier, ApplyStats
from tasks.catalog import INDEX_NOISE
from tasks.config import NamespaceRules
from tasks.ddl import TTL_PARKED_SECONDS, IndexChange, book_changes, converge_options, restore_indexes
from tasks.errors import TerminalError
from tasks.migration import Migration
from tasks.namespaces import Namespace, NamespaceFilter
from tasks.state import Phase
from tests.conftest import BACKEND, Deployment, requires_secantus
from tests.helpers import CommandLog, assert_same_data, drain, fail_command, make_config

pytestmark = pytest.mark.integration

RAWC = CodecOptions(document_class=RawBSONDocument)
EQUAL = lambda doc: {"equal": True}  # noqa: E731 - the tests compare the catalogs themselves


def raw_indexes(client: MongoClient[Any], db: str, coll: str) -> dict[str, dict[str, Any]]:
    """listIndexes as the server answers it, without bookkeeping; SecantusDB keeps ``prepareUnique: false``
    after a unique conversion where MongoDB removes the field (coll_mod_index.cpp), so that one is set aside."""
    out = {}
    for spec in client[db].command({"listIndexes": coll})["cursor"]["firstBatch"]:
        d = {k: v for k, v in spec.items() if k not in INDEX_NOISE}
        if d.get("prepareUnique") is False:
            d.pop("prepareUnique")
        out[spec["name"]] = d
    return out


def raw_options(client: MongoClient[Any], db: str) -> dict[str, dict[str, Any]]:
    infos = client[db].command({"listCollections": 1})["cursor"]["firstBatch"]
    return {i["name"]: {k: v for k, v in i.get("options", {}).items() if k != "uuid"} for i in infos}


def test_index_changes_in_one_batch_are_booked_in_order_and_restored_exactly(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    db = src_client[dbname]
    db["c"].insert_many([{"_id": i, "t": i, "e": i, "k": i % 3} for i in range(30)])
    db["c"].create_index("t", expireAfterSeconds=100)
    db["c"].create_index("e", unique=True)
    db["gone"].insert_one({"_id": 1, "u": 1})
    db["gone"].create_index("u", unique=True)
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        # One batch (nobody syncs meanwhile): the classic TTL change, a collMod by keyPattern, a unique
        # index dropped and re-created non-unique, and a collection dropped and re-created without its
        # unique index but with the same index name.
        db["c"].drop_index("t_1")
        db["c"].create_index("t", expireAfterSeconds=7)
        db.command({"collMod": "c", "index": {"keyPattern": {"t": 1}, "expireAfterSeconds": 9}})
        db["c"].drop_index("e_1")
        db["c"].create_index("e")
        db["c"].create_index("k", unique=False, name="k_1")
        db.drop_collection("gone")
        db["gone"].insert_many([{"_id": 1, "u": 1}, {"_id": 2, "u": 1}])  # duplicates: must stay possible
        db["gone"].create_index("u", name="u_1")
        drain(m, src_client)
        book = {(r["ns"].split(".", 1)[1], r["name"]): r for r in m.store.load(m.name).index_restores}
        assert book == {("c", "t_1"): {"ns": f"{dbname}.c", "name": "t_1", "expireAfterSeconds": 9}}
        assert m.wait_ready(30)
        result = m.cutover("oncall", "catalog", EQUAL)
        assert result.phase.value == "complete"
    for coll in ("c", "gone"):
        assert raw_indexes(dst_client, dbname, coll) == raw_indexes(src_client, dbname, coll), coll
    assert_same_data(src_client, dst_client, [dbname])


@requires_secantus("injects a fail point")
def test_a_cutover_that_dies_while_restoring_indexes_resumes_with_the_rest(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    db = src_client[dbname]
    db["c"].insert_many([{"_id": i, "a": i, "b": i, "c": i} for i in range(20)])
    for f in ("a", "b", "c"):
        db["c"].create_index(f, unique=True)
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg) as m:  # its own clients, named livemigrate: the fail point fails only them
        m.begin()
        m.clone()
        assert m.wait_ready(30)
        # Two collMods (prepareUnique, unique) restore the first index; the third fails for good.
        with fail_command(dst_client, {"skip": 2}, failCommands=["collMod"], errorCode=2, appName="livemigrate"):
            with pytest.raises(TerminalError):
                m.cutover("oncall", "first try", EQUAL)
        left = m.store.load(m.name).index_restores
        assert len(left) == 2, left  # the restored one was struck off the book
    with Migration(cfg) as m:
        m.begin()
        assert m.wait_ready(30)
        assert m.cutover("oncall", "second try", EQUAL).phase.value == "complete"
    assert raw_indexes(dst_client, dbname, "c") == raw_indexes(src_client, dbname, "c")


def test_a_collection_created_during_the_clone_keeps_its_options(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    db = src_client[dbname]
    db["first"].insert_many([{"_id": i} for i in range(10)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        cloner = m.cloner()
        cloner.prepare()
        # Created after the plan was made, with a validator and an index: the clone's index step must
        # not create it implicitly without its validator.
        db.create_collection("born", validator={"a": {"$type": "int"}}, validationAction="warn")
        db["born"].insert_one({"_id": 1, "a": 1})
        db["born"].create_index("a")
        cloner.run()
        cloner.finish()
        m.store.set_phase(m.name, Phase.SYNCING)
        drain(m, src_client)
    assert raw_options(dst_client, dbname)["born"] == raw_options(src_client, dbname)["born"]
    assert raw_indexes(dst_client, dbname, "born") == raw_indexes(src_client, dbname, "born")
    assert_same_data(src_client, dst_client, [dbname])


def test_an_existing_collection_converges_to_the_options_it_should_have(dst_client: MongoClient, dbname: str) -> None:
    db = dst_client[dbname]
    db.create_collection("v")
    converge_options(
        dst_client, Namespace(dbname, "v"), {"validator": {"a": {"$exists": True}}, "validationLevel": "moderate"}
    )
    opts = raw_options(dst_client, dbname)["v"]
    assert opts["validator"] == {"a": {"$exists": True}} and opts["validationLevel"] == "moderate"
    db.create_collection("plain")
    with pytest.raises(TerminalError) as info:
        converge_options(dst_client, Namespace(dbname, "plain"), {"capped": True, "size": 4096})
    assert f"{dbname}.plain" in str(info.value) and "capped" in str(info.value)


def test_the_book_of_restores_follows_the_changes_in_order() -> None:
    start = [{"ns": "d.c", "name": "t_1", "expireAfterSeconds": 100}, {"ns": "d.x", "name": "u_1", "unique": True}]
    changes = [
        IndexChange("drop", "d.c", "t_1"),
        IndexChange("set", "d.c", "t_1", {"expireAfterSeconds": 7}),  # dropped and re-created in one batch
        IndexChange("modify", "d.c", "t_1", {"expireAfterSeconds": 9}),
        IndexChange("set", "d.c", "e_1", {}),  # a plain index: owes nothing
        IndexChange("set", "d2.y", "v_1", {"unique": True}),
        IndexChange("drop_ns", "d.x"),
        IndexChange("drop_db", "d2"),
    ]
    assert book_changes(start, changes) == [{"ns": "d.c", "name": "t_1", "expireAfterSeconds": 9}]


@pytest.mark.parametrize(
    ("to_db_suffix", "to_coll", "in_scope"),
    [("", "b", True), ("_other", "b", True), ("", "outside", False)],
    ids=["same-db", "across-dbs", "out-of-scope"],
)
def test_a_rename_during_the_sync_is_followed(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient,
    dst_client: MongoClient,
    dbname: str,
    to_db_suffix: str,
    to_coll: str,
    in_scope: bool,
) -> None:
    src = src_client[dbname]
    src["a"].insert_many([{"_id": i, "e": f"u{i}"} for i in range(50)])
    src["a"].create_index("e", unique=True)
    src["b"].insert_one({"_id": "replaced by the rename"})
    cfg = make_config(
        pair[0].uri,
        pair[1].uri,
        dbname,
        namespaces={"include": [f"{dbname}.*", f"{dbname}_*.*"], "exclude": [f"{dbname}.outside"]},
    )
    to_db = f"{dbname}{to_db_suffix}"
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        runner = m.start_sync()
        assert runner.wait(lambda st: st.ready, 30)
        src_client.admin.command({"renameCollection": f"{dbname}.a", "to": f"{to_db}.{to_coll}", "dropTarget": True})
        src_client[to_db][to_coll].insert_one({"_id": 1000, "e": "after the rename"})
        assert runner.wait(lambda st: st.ready, 30)
        assert m.cutover("oncall", "rename", EQUAL).phase.value == "complete"
    names = set(dst_client[to_db].list_collection_names())
    assert "a" not in set(dst_client[dbname].list_collection_names())
    assert (to_coll in names) is in_scope
    if in_scope:
        assert raw_indexes(dst_client, to_db, to_coll) == raw_indexes(src_client, to_db, to_coll)
    else:
        src_client[to_db].drop_collection(to_coll)  # excluded: the comparison below is of what is in scope
    assert_same_data(src_client, dst_client, [dbname, f"{dbname}_other"] if to_db_suffix else [dbname])


def test_a_rename_while_the_collection_is_being_copied_copies_it_afresh(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    src = src_client[dbname]
    src["a"].insert_many([{"_id": i, "p": "x" * 50} for i in range(500)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        cloner = m.cloner()
        cloner.prepare()
        src["a"].rename("b")  # after the plan, before the copy: the copy of `a` finds nothing
        cloner.run()
        cloner.finish()
        m.store.set_phase(m.name, Phase.SYNCING)
        drain(m, src_client)
    assert dst_client[dbname]["b"].count_documents({}) == 500
    assert_same_data(src_client, dst_client, [dbname])


def _event(op: str, db: str, coll: str, when: Timestamp, **fields: Any) -> RawBSONDocument:
    return RawBSONDocument(
        encode(
            {
                "_id": {"_data": f"82{when.time:08X}{when.inc:08X}"},
                "operationType": op,
                "clusterTime": when,
                "ns": {"db": db, "coll": coll},
                **fields,
            }
        ),
        codec_options=RAWC,
    )


@pytest.mark.parametrize("narrow", [False, True], ids=["staging-in-scope", "staging-out-of-scope"])
def test_out_replaces_its_target_as_mongodb_writes_it(
    src_client: MongoClient, dst_client: MongoClient, dbname: str, narrow: bool
) -> None:
    """``$out`` on a replica set (MongoDB 7.0/8.0, document_source_out.cpp; change events ``create``,
    ``createIndexes``, ``insert``, ``rename``): a staging ``tmp.agg_out.<uuid>`` collection created with
    ``temp: true`` and the target's indexes, filled, then renamed over the target with ``dropTarget``.
    SecantusDB's own $out drops and refills the target instead, so the events are recorded ones."""
    tmp = "tmp.agg_out.0d3e1f0a-6c55-4b7e-9d0b-6ac1b1d1e5a7"
    # The source after the $out: the target holds the new documents and kept its indexes.
    src_client[dbname]["report"].insert_many([{"_id": i, "k": f"k{i}"} for i in range(5)])
    src_client[dbname]["report"].create_index("k", unique=True)
    dst_client[dbname]["report"].insert_many([{"_id": "stale", "k": "old"}])  # the target before the $out
    t = Timestamp(int(time.time()), 1)
    key = {"v": 2, "key": {"k": 1}, "name": "k_1", "unique": True}
    events = [
        _event(
            "create",
            dbname,
            tmp,
            t,
            operationDescription={"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}, "temp": True},
        ),
        _event("createIndexes", dbname, tmp, t, operationDescription={"indexes": [key]}),
        *[
            _event("insert", dbname, tmp, t, documentKey={"_id": i}, fullDocument={"_id": i, "k": f"k{i}"})
            for i in range(5)
        ],
        _event(
            "rename",
            dbname,
            tmp,
            t,
            to={"db": dbname, "coll": "report"},
            operationDescription={"to": {"db": dbname, "coll": "report"}, "dropTarget": b"\x01" * 16},
        ),
    ]
    rules = [f"{dbname}.report"] if narrow else [f"{dbname}.*"]
    applier = Applier(
        dst_client,
        NamespaceFilter.from_rules(NamespaceRules(include=rules)),
        lanes=2,
        source=src_client,
    )
    stats = ApplyStats()
    try:
        applier.apply(events, stats)
    finally:
        applier.close()
    assert tmp not in dst_client[dbname].list_collection_names()
    book = book_changes([], stats.index_changes)
    assert book == [{"ns": f"{dbname}.report", "name": "k_1", "unique": True}]
    restore_indexes(dst_client, book)
    assert raw_indexes(dst_client, dbname, "report") == raw_indexes(src_client, dbname, "report")
    assert_same_data(src_client, dst_client, [dbname])


def test_queryable_encryption_collections_are_skipped_by_the_sync_too(dst_client: MongoClient, dbname: str) -> None:
    """The clone reports a QE collection unsupported and skips it; its events and those of its server-managed
    state collections (``enxcol_.<coll>.esc`` / ``.ecoc``, MongoDB 7.0 QE manual) are skipped as well."""
    t = Timestamp(int(time.time()), 1)
    events = [
        _event("insert", dbname, coll, t, documentKey={"_id": 1}, fullDocument={"_id": 1})
        for coll in ("patients", "enxcol_.patients.esc", "enxcol_.patients.ecoc", "plain")
    ]
    applier = Applier(dst_client, NamespaceFilter.from_rules(None), lanes=1, excluded=frozenset({f"{dbname}.patients"}))
    stats = ApplyStats()
    try:
        applier.apply(events, stats)
    finally:
        applier.close()
    assert dst_client[dbname].list_collection_names() == ["plain"]
    assert stats.skipped == 3


def test_a_clustered_collections_own_ttl_is_parked_until_the_cutover(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    db = src_client[dbname]
    db.create_collection("events", clusteredIndex={"key": {"_id": 1}, "unique": True}, expireAfterSeconds=3600)
    db["events"].insert_many([{"_id": i} for i in range(20)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    sent = CommandLog("collMod")
    with pair[1].client(event_listeners=[sent]) as dst, Migration(cfg, src_client, dst) as m:
        m.begin()
        m.clone()
        assert raw_options(dst_client, dbname)["events"]["expireAfterSeconds"] == TTL_PARKED_SECONDS
        book = m.store.load(m.name).index_restores
        assert book == [{"ns": f"{dbname}.events", "name": "(collection)", "expireAfterSeconds": 3600}]
        assert m.wait_ready(30)
        assert m.cutover("oncall", "clustered ttl", EQUAL).phase.value == "complete"
    assert {"collMod": "events", "expireAfterSeconds": 3600} in sent.commands
    if BACKEND != "secantus":  # SecantusDB ignores collMod expireAfterSeconds on a clustered collection
        assert raw_options(dst_client, dbname)["events"] == raw_options(src_client, dbname)["events"]
    assert_same_data(src_client, dst_client, [dbname])


def test_a_collmod_of_a_collection_ttl_is_booked_not_applied(dst_client: MongoClient, dbname: str) -> None:
    """MongoDB's modify event for ``collMod {expireAfterSeconds}`` on a clustered collection carries the new
    value as given (change_stream_event_transform.cpp: the oplog ``o`` without ``collMod``).  SecantusDB
    ignores that collMod (its event is empty), so the event is a recorded one."""
    dst_client[dbname].create_collection(
        "events", clusteredIndex={"key": {"_id": 1}, "unique": True}, expireAfterSeconds=TTL_PARKED_SECONDS
    )
    t = Timestamp(int(time.time()), 1)
    ev = _event("modify", dbname, "events", t, operationDescription={"expireAfterSeconds": Int64(7200)})
    applier = Applier(dst_client, NamespaceFilter.from_rules(None), lanes=1)
    stats = ApplyStats()
    try:
        applier.apply([ev], stats)
    finally:
        applier.close()
    assert book_changes([], stats.index_changes) == [
        {"ns": f"{dbname}.events", "name": "(collection)", "expireAfterSeconds": 7200}
    ]
    assert raw_options(dst_client, dbname)["events"]["expireAfterSeconds"] == TTL_PARKED_SECONDS


def test_an_update_just_before_a_rename_is_not_lost(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    """The update's document is looked up under the old name after the rename: there it is gone, so the event
    arrives without it (updateLookup, MongoDB 7.0/8.0) and becomes a delete.  Copying the new name afresh
    brings the document back; a rename on the destination lost it.  Top-level empty timestamps survive."""
    src = src_client[dbname]
    src["old"].insert_many([{"_id": i, "v": 0, "ts": Timestamp(0, 0)} for i in range(20)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    inserts = CommandLog("insert")
    with pair[1].client(event_listeners=[inserts]) as dst, Migration(cfg, src_client, dst) as m:
        m.begin()
        m.clone()
        src["old"].update_one({"_id": 1}, {"$set": {"v": 1}})  # one batch with the rename: read after it
        src["old"].rename("new")
        drain(m, src_client)
    assert dst_client[dbname]["new"].count_documents({}) == 20
    assert any(c.get("bypassEmptyTsReplacement") and c.get("insert") == "new" for c in inserts.commands)
    assert_same_data(src_client, dst_client, [dbname])


def test_a_replayed_create_superseded_by_a_drop_and_create_does_not_stop_the_sync(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    db = src_client[dbname]
    db["first"].insert_one({"_id": 1})
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        cloner = m.cloner()
        cloner.prepare()
        db.create_collection("x", capped=True, size=1 << 16)  # t0
        db["x"].insert_one({"_id": "capped"})
        db.drop_collection("x")
        db.create_collection("x")  # t1: what the clone's finish finds and creates
        db["x"].insert_one({"_id": "plain"})
        cloner.run()
        cloner.finish()
        m.store.set_phase(m.name, Phase.SYNCING)
        drain(m, src_client)  # the t0 create meets the t1 collection on the destination
    assert raw_options(dst_client, dbname)["x"] == raw_options(src_client, dbname)["x"]
    assert_same_data(src_client, dst_client, [dbname])


def test_an_unordered_insert_keeping_empty_timestamps_sends_every_chunk(
    dst_client: MongoClient, dbname: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.emptyts as emptyts

    monkeypatch.setattr(emptyts, "MAX_COMMAND_BYTES", 200)  # a few documents a command
    coll = dst_client[dbname].get_collection("c", codec_options=RAWC)
    coll.insert_one({"_id": 0})
    docs = [RawBSONDocument(encode({"_id": i, "ts": Timestamp(0, 0), "p": "x" * 40})) for i in range(12)]
    with pytest.raises(BulkWriteError) as info:
        emptyts.insert_keeping_empty_ts(coll, f"{dbname}.c", docs, ordered=False)
    assert [e["index"] for e in info.value.details["writeErrors"]] == [0]  # _id 0 was there already
    assert coll.count_documents({}) == 12
