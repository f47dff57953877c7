"""Sharded source and sharded destination steps (#4) against a scripted mongos.

SecantusDB has no sharding, so the mongos here is mockupdb (tests/fake_mongod.py)
answering like a real one: hello with ``msg: "isdbgrid"``, balancerStop/Start,
enableSharding, shardCollection (refused with InvalidOptions on a non-empty
collection without a supporting index), createIndexes with per-shard ``raw``,
and no reads of ``local``.  The metadata store and the clone's source stay on
the real SecantusDB pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from tasks.clone import Cloner
from tasks.config import MigrationConfig, config_from_dict
from tasks.errors import ConfigError, TerminalError
from tasks.metadata import MetadataStore, process_owner
from tasks.migration import Migration
from tasks.sharding import balancer_start, balancer_stop, shard_collection
from tasks.state import MigrationDoc
from tests.conftest import Deployment
from tests.fake_mongod import UNAUTHORIZED, FakeMongod, FakeSpec, fake_mongod
from tests.helpers import make_config

pytestmark = pytest.mark.integration

RANGED = {"region": 1, "customer": 1}  # compound: the order of the fields is part of the key
HASHED = {"sku": "hashed"}


@pytest.fixture
def mongos() -> Iterator[FakeMongod]:
    spec = FakeSpec(version="8.0.4", topology="sharded", databases={}, mongos_serves_oplog=False)
    with fake_mongod(spec) as srv:
        yield srv


def sharding_config(src_uri: str, dst_uri: str, db: str, *, supporting: bool) -> MigrationConfig:
    entries = [
        {"database": db, "collection": "orders", "shardCollection": {"key": RANGED}},
        {"database": db, "collection": "items", "shardCollection": {"key": HASHED}},
    ]
    return make_config(
        src_uri, dst_uri, db, sharding={"createSupportingIndexes": supporting, "shardingEntries": entries}
    )


# -- the source balancer ------------------------------------------------------------------
def test_balancer_stop_sends_balancer_stop_to_admin(mongos: FakeMongod) -> None:
    with mongos.client() as c:
        assert balancer_stop(c) is True
    (cmd,) = mongos.sent("balancerStop")
    assert cmd["balancerStop"] == 1 and cmd["$db"] == "admin"
    assert mongos.balancer_running is False


def test_balancer_stop_leaves_a_replica_set_alone() -> None:
    with fake_mongod(FakeSpec(databases={})) as rs, rs.client() as c:
        assert balancer_stop(c) is False
        assert rs.sent("balancerStop") == []


def test_balancer_start_sends_balancer_start(mongos: FakeMongod) -> None:
    with mongos.client() as c:
        balancer_stop(c)
        balancer_start(c)
    (cmd,) = mongos.sent("balancerStart")
    assert cmd["balancerStart"] == 1 and cmd["$db"] == "admin"
    assert mongos.balancer_running is True


def test_begin_stops_the_balancer_after_storing_the_start_point(
    mongos: FakeMongod, pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    cfg = make_config(mongos.uri, pair[1].uri, dbname)
    with mongos.client() as src, Migration(cfg, src, dst_client) as m:
        doc = m.begin()
    stored = MetadataStore(dst_client).load(cfg.name)
    assert doc.balancer_stopped and stored.balancer_stopped
    assert stored.start_token is not None and stored.start_time is not None
    # The change stream's start point is opened (and stored) before the balancer is touched.
    assert mongos.position("aggregate") < mongos.position("balancerStop")
    assert mongos.balancer_running is False


def test_begin_refused_balancer_stop_is_terminal(
    mongos: FakeMongod, pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    mongos.spec.overrides["balancerstop"] = UNAUTHORIZED
    cfg = make_config(mongos.uri, pair[1].uri, dbname)
    with mongos.client() as src, Migration(cfg, src, dst_client) as m, pytest.raises(TerminalError):
        m.begin()
    assert MetadataStore(dst_client).load(cfg.name).balancer_stopped is False


def test_begin_retried_after_a_refused_balancer_stop_stops_it(
    mongos: FakeMongod, pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    mongos.spec.overrides["balancerstop"] = UNAUTHORIZED
    cfg = make_config(mongos.uri, pair[1].uri, dbname)
    with mongos.client() as src:
        with Migration(cfg, src, dst_client) as first, pytest.raises(TerminalError):
            first.begin()
        del mongos.spec.overrides["balancerstop"]  # the operator grants the missing role and resumes
        with Migration(cfg, src, dst_client) as again:
            doc = again.begin()
    assert doc.balancer_stopped and mongos.balancer_running is False


# -- the destination: shardCollection per entry ----------------------------------------
@pytest.mark.parametrize("supporting", [True, False], ids=["createSupportingIndexes", "no-supporting-indexes"])
def test_shard_collection_for_each_entry(mongos: FakeMongod, supporting: bool) -> None:
    cfg = sharding_config("mongodb://src.example.net", mongos.uri, "app", supporting=supporting)
    with mongos.client() as dst:
        shard_collection(dst, cfg.sharding.shardingEntries, cfg.sharding.createSupportingIndexes)
    for coll, key in (("orders", RANGED), ("items", HASHED)):
        ns = f"app.{coll}"
        (cmd,) = [d for d in mongos.sent("shardCollection") if d["shardCollection"] == ns]
        assert list(cmd["key"].items()) == list(key.items()) and cmd["$db"] == "admin"
        assert mongos.sharded[ns] == key
        built = [d for d in mongos.sent("createIndexes") if d["createIndexes"] == coll and d["$db"] == "app"]
        if supporting:
            assert [list(i["key"].items()) for i in built[0]["indexes"]] == [list(key.items())]
            assert mongos.position("createIndexes", createIndexes=coll) < mongos.position(
                "shardCollection", shardCollection=ns
            )
        else:
            assert built == []
    assert mongos.position("enableSharding") < mongos.position("shardCollection")


def test_shard_collection_refused_names_the_namespace(mongos: FakeMongod) -> None:
    mongos.spec.overrides["shardcollection"] = UNAUTHORIZED
    cfg = sharding_config("mongodb://src.example.net", mongos.uri, "app", supporting=False)
    with mongos.client() as dst, pytest.raises(TerminalError) as err:
        shard_collection(dst, cfg.sharding.shardingEntries, False)
    assert "app.orders" in str(err.value)


@pytest.mark.parametrize("supporting", [True, False], ids=["createSupportingIndexes", "no-supporting-indexes"])
def test_clone_shards_each_collection_before_copying_into_it(
    mongos: FakeMongod,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    supporting: bool,
) -> None:
    """Cloner.prepare: create, (supporting index,) shardCollection; only then the copy inserts."""
    src_client[dbname]["orders"].insert_many([{"_id": i, "region": i % 3, "customer": i} for i in range(300)])
    src_client[dbname]["items"].insert_many([{"_id": i, "sku": f"s{i}"} for i in range(50)])
    cfg = sharding_config(pair[0].uri, mongos.uri, dbname, supporting=supporting)
    store = MetadataStore(dst_client)  # the metadata store stays on the real destination server
    store.create(MigrationDoc(id=cfg.name))
    with mongos.client() as dst:
        cloner = Cloner(cfg, src_client, dst, store, process_owner())
        cloner.prepare()
        cloner.run(2)
        cloner.finish()
    for coll, key, n in (("orders", RANGED, 300), ("items", HASHED, 50)):
        ns = f"{dbname}.{coll}"
        created = mongos.position("create", create=coll)
        sharded = mongos.position("shardCollection", shardCollection=ns)
        assert created < sharded < mongos.position("insert", insert=coll)
        if supporting:
            assert created < mongos.position("createIndexes", createIndexes=coll) < sharded
        assert mongos.sharded[ns] == key and mongos.inserted[ns] == n


@pytest.mark.parametrize("supporting", [True, False], ids=["createSupportingIndexes", "no-supporting-indexes"])
def test_clone_shards_a_collection_with_a_default_collation(
    mongos: FakeMongod,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    supporting: bool,
) -> None:
    src_client[dbname].create_collection("orders", collation={"locale": "fr", "strength": 2})
    src_client[dbname]["orders"].insert_many([{"_id": i, "region": i % 3, "customer": i} for i in range(20)])
    cfg = make_config(
        pair[0].uri,
        mongos.uri,
        dbname,
        sharding={
            "createSupportingIndexes": supporting,
            "shardingEntries": [{"database": dbname, "collection": "orders", "shardCollection": {"key": RANGED}}],
        },
    )
    store = MetadataStore(dst_client)
    store.create(MigrationDoc(id=cfg.name))
    with mongos.client() as dst:
        cloner = Cloner(cfg, src_client, dst, store, process_owner())
        cloner.prepare()
        cloner.run(1)
    ns = f"{dbname}.orders"
    assert mongos.collations[ns]["locale"] == "fr"  # the destination collection keeps the source's collation
    assert mongos.sharded[ns] == RANGED and mongos.inserted[ns] == 20
    (cmd,) = mongos.sent("shardCollection")
    assert cmd["collation"] == {"locale": "simple"}


def test_sharding_entries_need_a_mongos_destination(
    pair: tuple[Deployment, Deployment], src_client: MongoClient[Any], dst_client: MongoClient[Any], dbname: str
) -> None:
    src_client[dbname]["orders"].insert_one({"_id": 1})
    with fake_mongod(FakeSpec(databases={})) as rs, rs.client() as dst:
        cfg = sharding_config(pair[0].uri, rs.uri, dbname, supporting=True)
        store = MetadataStore(dst_client)
        store.create(MigrationDoc(id=cfg.name))
        with pytest.raises(TerminalError):
            Cloner(cfg, src_client, dst, store, process_owner()).prepare()
        assert rs.sent("shardCollection") == []


# -- the config ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "entry",
    [
        {"database": "app", "collection": "orders", "shardCollection": {"key": {}}},
        {"database": "app", "collection": "orders", "shardCollection": {"key": {"customer": -1}}},
        {"database": "app", "collection": "orders", "shardCollection": {"key": {"customer": 2}}},
        {"database": "app", "collection": "orders", "shardCollection": {"key": {"a": "hashed", "b": "hashed"}}},
        {"database": "app", "collection": "orders", "shardCollection": {"key": {"$customer": 1}}},
        {"database": "app", "collection": "", "shardCollection": {"key": {"customer": 1}}},
        {"database": "app", "shardCollection": {"key": {"customer": 1}}},
        {"database": "app", "collection": "orders", "shardCollection": {"key": {"customer": 1}, "unique": True}},
        {"database": "app", "collection": "orders", "key": {"customer": 1}},
    ],
    ids=[
        "empty-key",
        "descending",
        "not-1-or-hashed",
        "two-hashed",
        "dollar-field",
        "empty-collection",
        "no-collection",
        "unknown-option",
        "no-shardCollection",
    ],
)
def test_invalid_sharding_entry_is_a_config_error(entry: dict[str, Any]) -> None:
    data = {
        "name": "sharded",
        "source": {"uri": "mongodb://src.example.net"},
        "destination": {"uri": "mongodb://dst.example.net"},
        "sharding": {"shardingEntries": [entry]},
    }
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, "migration.yaml")
    assert "sharding.shardingEntries.0" in str(err.value)


# -- writing into a sharded destination -------------------------------------------------------
def test_sync_writes_into_a_sharded_collection_as_mongos_allows(mongos: FakeMongod) -> None:
    """The sync's writes into a collection sharded on the destination: an upsert filtered by _id alone is
    refused by mongos (ShardKeyNotFound), and one filtered by the new document's shard key would insert a
    second document when the source changed that field; so each is a delete by _id, then an insert."""
    from bson import encode
    from bson.raw_bson import RawBSONDocument

    from tasks.apply import Applier, ApplyStats
    from tasks.namespaces import NamespaceFilter

    mongos.sharded["app.orders"] = dict(RANGED)
    mongos.collections.add("app.orders")

    def event(op: str, _id: int, doc: dict[str, Any] | None) -> RawBSONDocument:
        ev: dict[str, Any] = {"operationType": op, "ns": {"db": "app", "coll": "orders"}, "documentKey": {"_id": _id}}
        if doc is not None:
            ev["fullDocument"] = doc
        return RawBSONDocument(encode(ev))

    events = [
        event("insert", 1, {"_id": 1, "region": "eu", "customer": 7}),
        event("update", 2, {"_id": 2, "region": "us", "customer": 8}),  # its region changed on the source
        event("delete", 3, None),
    ]
    with mongos.client() as dst:
        applier = Applier(dst, NamespaceFilter.from_rules(None), lanes=2)
        try:
            assert applier.write_mode("app.orders") == "sharded"
            applier.apply(events, ApplyStats())
        finally:
            applier.close()
    sent = mongos.writes["app.orders"]
    assert not any(s.get("upsert") for s in sent)
    assert sorted(s["q"]["_id"] for s in sent) == [1, 2, 3] and all(s.get("limit") == 1 for s in sent)
    assert mongos.inserted["app.orders"] == 2
