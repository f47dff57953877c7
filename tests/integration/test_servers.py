"""Smoke tests: the real server pairs accept writes, reads and change streams; known backend limits."""

from __future__ import annotations

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from tests.conftest import BACKEND, Deployment, requires_secantus

pytestmark = pytest.mark.integration


def _insert_read_watch(dep: Deployment, db: str) -> None:
    with dep.client() as c:
        coll = c[db]["smoke"]
        with coll.watch() as stream:
            coll.insert_one({"_id": 1, "v": "hello"})
            change = stream.try_next()
            for _ in range(20):
                if change is not None:
                    break
                change = stream.try_next()
        assert coll.find_one({"_id": 1}) == {"_id": 1, "v": "hello"}
        assert change is not None and change["operationType"] == "insert"
        assert change["documentKey"] == {"_id": 1}
        c.drop_database(db)


def test_plain_pair_insert_read_watch(pair: tuple[Deployment, Deployment], dbname: str) -> None:
    for dep in pair:
        _insert_read_watch(dep, dbname)


def test_auth_pair_insert_read_watch(auth_pair: tuple[Deployment, Deployment]) -> None:
    src, dst = auth_pair
    # The migration user can read but, holding only backup + readAnyDatabase, cannot write app data:
    with MongoClient(src.extra["root_uri"], serverSelectionTimeoutMS=5000) as root:
        _insert_read_watch(Deployment("source", src.extra["root_uri"]), "smoke_auth")
        root["smoke_auth"]["x"].insert_one({"_id": 1})
    with src.client() as c:
        assert c["smoke_auth"]["x"].find_one({"_id": 1}) == {"_id": 1}
        with c.watch() as stream:
            assert stream.resume_token is not None
    with MongoClient(
        src.server.uri("migrator", "wrong-password", authSource="admin"), serverSelectionTimeoutMS=3000
    ) as bad:  # type: ignore[union-attr]
        with pytest.raises(OperationFailure):
            bad.admin.command("ping")
    _insert_read_watch(dst, "smoke_auth_dst")


def test_tls_pair_insert_read_watch(tls_pair: tuple[Deployment, Deployment]) -> None:
    for dep in tls_pair:
        _insert_read_watch(dep, "smoke_tls")


@requires_secantus("SecantusDB's documented limits")
class TestSecantusKnownLimits:
    """Backend limits asserted as such, so a SecantusDB upgrade that lifts one is noticed."""

    def test_reports_version_8_2_11(self, src_client: MongoClient) -> None:
        assert src_client.server_info()["version"] == "8.2.11"

    def test_replica_set_hello(self, src_client: MongoClient) -> None:
        assert src_client.admin.command("hello")["setName"] == "secantus"

    @pytest.mark.parametrize(
        "command",
        [{"dbHash": 1}, {"setUserWriteBlockMode": 1, "global": True}, {"fsync": 1, "lock": True}],
        ids=["dbHash", "setUserWriteBlockMode", "fsyncLock"],
    )
    def test_missing_commands(self, src_client: MongoClient, command: dict) -> None:
        with pytest.raises(OperationFailure):
            src_client.admin.command(command)

    @pytest.mark.parametrize("kind", ["text", "hashed"])
    def test_no_text_or_hashed_index(self, src_client: MongoClient, dbname: str, kind: str) -> None:
        with pytest.raises(OperationFailure):
            src_client[dbname]["c"].create_index([("f", kind)])

    def test_wildcard_index_stored_but_not_used(self, src_client: MongoClient, dbname: str) -> None:
        coll = src_client[dbname]["c"]
        coll.create_index([("$**", 1)])  # accepted and listed ...
        assert "$**_1" in coll.index_information()
        coll.insert_one({"a": 1})
        plan = coll.find({"a": 1}).explain()["queryPlanner"]["winningPlan"]
        assert plan["stage"] == "COLLSCAN"  # ... but never used

    def test_default_collation_stored_not_applied(self, src_client: MongoClient, dbname: str) -> None:
        db = src_client[dbname]
        db.create_collection("coll", collation={"locale": "en", "strength": 2})
        opts = db["coll"].options()
        assert opts["collation"]["locale"] == "en"
        db["coll"].insert_many([{"_id": 1, "s": "abc"}, {"_id": 2, "s": "ABC"}])
        # With the collation applied (real MongoDB), strength 2 would match both.
        assert db["coll"].count_documents({"s": "abc"}) == 1

    def test_time_series_listed_as_collection(self, src_client: MongoClient, dbname: str) -> None:
        db = src_client[dbname]
        db.create_collection("ts", timeseries={"timeField": "t"})
        info = next(db.list_collections(filter={"name": "ts"}))
        assert info["type"] == "collection"

    def test_id_ranges_are_collection_scans(self, src_client: MongoClient, dbname: str) -> None:
        # Every _id range reads the whole collection (MongoDB reads it from the _id index): why
        # partitioning "auto" copies and verifies a collection in one piece here.
        coll = src_client[dbname]["c"]
        coll.insert_many([{"_id": i} for i in range(100)])
        res = coll.database.command(
            {"explain": {"find": "c", "filter": {"_id": {"$gte": 10, "$lt": 20}}}, "verbosity": "executionStats"}
        )
        assert res["queryPlanner"]["winningPlan"]["stage"] == "COLLSCAN"
        assert res["executionStats"]["totalDocsExamined"] == 100

    def test_no_sharding(self, src_client: MongoClient) -> None:
        assert src_client.admin.command("hello").get("msg") != "isdbgrid"
        with pytest.raises(OperationFailure):
            src_client.admin.command("listShards")

    def test_no_create_event_for_implicit_creation(self, src_client: MongoClient, dbname: str) -> None:
        db = src_client[dbname]
        with db.watch(show_expanded_events=True) as stream:
            db["implicit"].insert_one({"_id": 1})
            events = [stream.try_next() for _ in range(5)]
        kinds = [e["operationType"] for e in events if e]
        assert "insert" in kinds and "create" not in kinds

    def test_dbstats_has_no_fs_sizes(self, src_client: MongoClient, dbname: str) -> None:
        src_client[dbname]["c"].insert_one({})
        stats = src_client[dbname].command("dbStats")
        assert "fsTotalSize" not in stats and "fsUsedSize" not in stats


def test_backend_is_known() -> None:
    assert BACKEND in {"secantus", "docker", "uri"}
