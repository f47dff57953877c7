"""Verification against a real server pair: equal data passes, each kind of difference is named.

Each test writes identical data to both sides with pymongo, then introduces
exactly one kind of difference and asserts the exact ``_id`` or index named.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from bson import SON, Decimal128, Int64, ObjectId
from pymongo import MongoClient

from checks.verify import verify
from checks.verify_result import SCHEMA, VerifyResult
from flows.verify import verify_cli
from tasks.config import NamespaceRules
from tasks.ddl import TTL_PARKED_SECONDS
from tasks.namespaces import NamespaceFilter
from tests.conftest import Deployment

pytestmark = pytest.mark.integration

Clients = tuple[MongoClient[Any], MongoClient[Any]]


@pytest.fixture
def both(src_client: MongoClient[Any], dst_client: MongoClient[Any]) -> Clients:
    return src_client, dst_client


def _seed(both: Clients, db: str, coll: str, docs: list[dict[str, Any]]) -> None:
    for c in both:
        c[db][coll].insert_many([d.copy() for d in docs])


def _run(both: Clients, db: str, **kw: Any) -> VerifyResult:
    kw.setdefault("partition_docs", 100)
    kw.setdefault("partitioning", "ranges")
    kw.setdefault("batch_size", 50)
    return verify(both[0], both[1], NamespaceFilter.from_rules(NamespaceRules(include=[f"{db}.*"])), **kw)


def _docs(n: int) -> list[dict[str, Any]]:
    return [{"_id": i, "name": f"user{i}", "n": i, "tags": ["a", "b"], "sub": {"x": i, "y": "z"}} for i in range(n)]


def test_equal_data_passes(both: Clients, dbname: str) -> None:
    mixed: list[dict[str, Any]] = [
        {"_id": 1, "v": 1},
        {"_id": Int64(2), "v": Int64(2)},
        {"_id": 2.5, "v": 1.0},
        {"_id": "s", "v": Decimal128("1.0")},
        {"_id": ObjectId(), "v": None},
        {"_id": {"a": 1, "b": 2}, "v": [1, {"x": 1}]},
        {"_id": b"\x01\x02", "v": True},
    ]
    _seed(both, dbname, "mixed", mixed)
    _seed(both, dbname, "users", _docs(1000))
    for c in both:
        c[dbname]["users"].create_index([("name", 1), ("n", -1)], unique=True, name="name_n")
        c[dbname].create_collection("valid", validator={"$jsonSchema": {"bsonType": "object", "required": ["a"]}})
        c[dbname].command({"create": "active", "viewOn": "users", "pipeline": [{"$match": {"n": {"$gt": 5}}}]})
    res = _run(both, dbname)
    assert res.equal, res.to_dict()
    assert res.exit_code == 0
    users = res.namespace(f"{dbname}.users")
    assert (users.source_count, users.dest_count) == (1000, 1000)
    assert users.partitions > 5  # really partitioned (partition_docs=100)
    assert users.source_hash == users.dest_hash and len(users.source_hash) == 32
    assert res.namespace(f"{dbname}.mixed").source_count == len(mixed)
    assert res.namespace(f"{dbname}.active").kind == "view"
    assert {n.ns for n in res.namespaces} == {f"{dbname}.{c}" for c in ("mixed", "users", "valid", "active")}


def test_missing_extra_and_changed_documents_are_named(both: Clients, dbname: str) -> None:
    _seed(both, dbname, "c", _docs(500))
    dst = both[1][dbname]["c"]
    dst.delete_one({"_id": 123})
    dst.insert_one({"_id": 10_000, "name": "intruder"})
    dst.update_one({"_id": 321}, {"$set": {"name": "changed"}})
    res = _run(both, dbname)
    ns = res.namespace(f"{dbname}.c")
    assert not res.equal and res.exit_code == 1
    assert (ns.missing.total, ns.missing.ids) == (1, [123])
    assert (ns.extra.total, ns.extra.ids) == (1, [10_000])
    assert (ns.changed.total, ns.changed.ids) == (1, [321])
    assert ns.field_order_only.total == 0
    assert (ns.source_count, ns.dest_count) == (500, 500)
    assert ns.source_hash != ns.dest_hash


@pytest.mark.parametrize("kind", ["missing", "extra", "changed"])
def test_single_difference_fails_verification(both: Clients, dbname: str, kind: str) -> None:
    _seed(both, dbname, "c", _docs(300))
    dst = both[1][dbname]["c"]
    if kind == "missing":
        dst.delete_one({"_id": 299})
    elif kind == "extra":
        dst.insert_one({"_id": "zzz"})
    else:
        dst.update_one({"_id": 0}, {"$set": {"tags": ["a", "c"]}})
    ns = _run(both, dbname).namespace(f"{dbname}.c")
    expected = {"missing": [299], "extra": ["zzz"], "changed": [0]}[kind]
    assert getattr(ns, kind).ids == expected
    assert not ns.equal
    others = {"missing", "extra", "changed"} - {kind}
    assert all(getattr(ns, o).total == 0 for o in others)


def test_changed_type_with_equal_value_is_a_difference(both: Clients, dbname: str) -> None:
    """int 1, long 1 and double 1.0 compare equal in queries and Python; verification is byte-exact."""
    src, dst = both
    src[dbname]["t"].insert_many(
        [{"_id": "int", "v": 1}, {"_id": "long", "v": 1}, {"_id": "double", "v": 1}, {"_id": "same", "v": 1}]
    )
    dst[dbname]["t"].insert_many(
        [{"_id": "int", "v": 1}, {"_id": "long", "v": Int64(1)}, {"_id": "double", "v": 1.0}, {"_id": "same", "v": 1}]
    )
    ns = _run(both, dbname).namespace(f"{dbname}.t")
    assert sorted(ns.changed.ids) == ["double", "long"]
    assert ns.missing.total == ns.extra.total == 0


def test_field_order_difference_has_its_own_bucket(both: Clients, dbname: str) -> None:
    src, dst = both
    src[dbname]["f"].insert_many(
        [
            SON([("_id", 1), ("a", 1), ("b", 2)]),
            SON([("_id", 2), ("s", SON([("x", 1), ("y", 2)]))]),
            {"_id": 3, "a": 1},
            {"_id": 4, "a": 1},
        ]
    )
    dst[dbname]["f"].insert_many(
        [
            SON([("_id", 1), ("b", 2), ("a", 1)]),
            SON([("_id", 2), ("s", SON([("y", 2), ("x", 1)]))]),
            {"_id": 3, "a": 1},
            {"_id": 4, "a": 2},
        ]
    )
    strict = _run(both, dbname).namespace(f"{dbname}.f")
    assert sorted(strict.changed.ids) == [1, 2, 4]
    assert strict.field_order_only.total == 0

    relaxed = _run(both, dbname, ignore_field_order=True).namespace(f"{dbname}.f")
    assert sorted(relaxed.field_order_only.ids) == [1, 2]
    assert relaxed.changed.ids == [4]
    assert not relaxed.equal


def test_field_order_only_is_equal_when_ignored(both: Clients, dbname: str) -> None:
    src, dst = both
    src[dbname]["f"].insert_one(SON([("_id", 1), ("a", 1), ("b", [SON([("p", 1), ("q", 2)])])]))
    dst[dbname]["f"].insert_one(SON([("_id", 1), ("b", [SON([("q", 2), ("p", 1)])]), ("a", 1)]))
    res = _run(both, dbname, ignore_field_order=True)
    assert res.equal and res.exit_code == 0
    assert res.namespace(f"{dbname}.f").field_order_only.ids == [1]
    assert not _run(both, dbname).equal


def test_missing_index_is_named(both: Clients, dbname: str) -> None:
    _seed(both, dbname, "c", _docs(10))
    both[0][dbname]["c"].create_index("name", name="by_name")
    ns = _run(both, dbname).namespace(f"{dbname}.c")
    assert [(d["name"], d["problem"]) for d in ns.index_diffs] == [("by_name", "missing")]
    assert ns.index_diffs[0]["source"]["key"] == {"name": 1}
    assert not ns.equal and ns.missing.total == 0


def test_index_with_different_option_is_named(both: Clients, dbname: str) -> None:
    _seed(both, dbname, "c", _docs(10))
    both[0][dbname]["c"].create_index("name", name="by_name", unique=True)
    both[1][dbname]["c"].create_index("name", name="by_name")
    both[0][dbname]["c"].create_index("n", name="ttl", expireAfterSeconds=3600)
    both[1][dbname]["c"].create_index("n", name="ttl", expireAfterSeconds=60)
    ns = _run(both, dbname).namespace(f"{dbname}.c")
    diffs = {d["name"]: d for d in ns.index_diffs}
    assert set(diffs) == {"by_name", "ttl"}
    assert diffs["by_name"]["problem"] == "different" and diffs["by_name"]["fields"] == ["unique"]
    assert diffs["ttl"]["fields"] == ["expireAfterSeconds"]


def test_pending_index_restores_are_compared_as_restored(both: Clients, dbname: str) -> None:
    """During the sync the destination holds non-unique / TTL-parked indexes; that is not a difference."""
    _seed(both, dbname, "c", _docs(10))
    both[0][dbname]["c"].create_index("name", name="by_name", unique=True)
    both[0][dbname]["c"].create_index("n", name="ttl", expireAfterSeconds=3600)
    both[1][dbname]["c"].create_index("name", name="by_name")
    both[1][dbname]["c"].create_index("n", name="ttl", expireAfterSeconds=TTL_PARKED_SECONDS)
    ns = f"{dbname}.c"
    assert not _run(both, dbname).equal
    pending = [{"ns": ns, "name": "by_name", "unique": True}, {"ns": ns, "name": "ttl", "expireAfterSeconds": 3600}]
    assert _run(both, dbname, pending_index_restores=pending).equal
    wrong = [{"ns": ns, "name": "by_name", "unique": True}, {"ns": ns, "name": "ttl", "expireAfterSeconds": 60}]
    res = _run(both, dbname, pending_index_restores=wrong)
    assert [d["name"] for d in res.namespace(ns).index_diffs] == ["ttl"]


def test_different_validator_is_named(both: Clients, dbname: str) -> None:
    both[0][dbname].create_collection("v", validator={"$jsonSchema": {"required": ["a"]}})
    both[1][dbname].create_collection("v", validator={"$jsonSchema": {"required": ["b"]}})
    ns = _run(both, dbname).namespace(f"{dbname}.v")
    assert [(d["option"], d["problem"]) for d in ns.option_diffs] == [("validator", "different")]
    assert ns.option_diffs[0]["source"] == {"$jsonSchema": {"required": ["a"]}}
    assert not ns.equal


def test_missing_view_and_different_view_are_named(both: Clients, dbname: str) -> None:
    _seed(both, dbname, "c", _docs(5))
    src, dst = both
    src[dbname].command({"create": "gone", "viewOn": "c", "pipeline": []})
    src[dbname].command({"create": "differs", "viewOn": "c", "pipeline": [{"$match": {"n": 1}}]})
    dst[dbname].command({"create": "differs", "viewOn": "c", "pipeline": [{"$match": {"n": 2}}]})
    res = _run(both, dbname)
    gone = res.namespace(f"{dbname}.gone")
    assert gone.kind == "view"
    assert gone.option_diffs == [{"option": "(namespace)", "problem": "missing", "source": "view", "destination": None}]
    assert [(d["option"], d["problem"]) for d in res.namespace(f"{dbname}.differs").option_diffs] == [
        ("pipeline", "different")
    ]
    assert res.namespace(f"{dbname}.c").equal


def test_missing_collection_lists_every_document(both: Clients, dbname: str) -> None:
    both[0][dbname]["only_src"].insert_many(_docs(250))
    ns = _run(both, dbname, max_listed=5).namespace(f"{dbname}.only_src")
    assert ns.missing.total == 250 and len(ns.missing.ids) == 5
    assert ns.missing.to_dict()["truncated"] is True
    assert ns.option_diffs[0]["problem"] == "missing"
    assert (ns.source_count, ns.dest_count) == (250, 0)


def test_recheck_resolves_events_in_flight(both: Clients, dbname: str) -> None:
    """A difference the sync is about to apply is rechecked, not reported."""
    _seed(both, dbname, "c", _docs(300))
    src, dst = both
    src[dbname]["c"].insert_one({"_id": 5000, "late": True})  # not yet applied on the destination
    src[dbname]["c"].update_one({"_id": 7}, {"$set": {"name": "renamed"}})
    calls: list[int] = []

    def recheck() -> None:  # stands in for "wait until the sync applied what was in flight"
        calls.append(1)
        dst[dbname]["c"].insert_one({"_id": 5000, "late": True})
        dst[dbname]["c"].update_one({"_id": 7}, {"$set": {"name": "renamed"}})

    res = _run(both, dbname, recheck=recheck)
    ns = res.namespace(f"{dbname}.c")
    assert res.equal, res.to_dict()
    assert calls == [1] and res.recheck_generations_used == 1
    assert (ns.source_count, ns.dest_count) == (301, 301)
    assert ns.source_hash == ns.dest_hash  # figures describe the settled state


def test_recheck_reports_what_stays_different(both: Clients, dbname: str) -> None:
    _seed(both, dbname, "c", _docs(50))
    both[1][dbname]["c"].delete_one({"_id": 3})
    calls: list[int] = []
    res = _run(both, dbname, recheck=lambda: calls.append(1), recheck_generations=3)
    assert len(calls) == 3 and res.recheck_generations_used == 3
    assert res.namespace(f"{dbname}.c").missing.ids == [3]
    assert _run(both, dbname, recheck=lambda: calls.append(1)).exit_code == 1


def test_large_collection_verifies_in_flat_memory(both: Clients, dbname: str) -> None:
    """~30 MB in 6000 documents: the peak Python allocation stays far below the collection size.

    Batches of 20 documents (~100 KB) and partitions of 1000 (one of them
    drilled into) bound what is held; the collection is 300 batches.
    """
    n, pad = 6000, "x" * 5000
    for c in both:
        coll = c[dbname]["big"]
        for start in range(0, n, 2000):
            coll.insert_many(
                [{"_id": i, "pad": pad, "i": i} for i in range(start, min(n, start + 2000))], ordered=False
            )
    both[1][dbname]["big"].delete_one({"_id": 1777})  # one partition must be drilled into
    collection_bytes = n * (len(pad) + 30)
    tracemalloc.start()
    try:
        res = _run(both, dbname, partition_docs=1000, batch_size=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    ns = res.namespace(f"{dbname}.big")
    assert ns.missing.ids == [1777] and (ns.source_count, ns.dest_count) == (n, n - 1)
    assert ns.partitions >= 5
    assert peak < collection_bytes / 8, f"peak {peak} bytes for a {collection_bytes}-byte collection"


def _config_file(tmp_path: Path, pair: tuple[Deployment, Deployment], db: str, **tuning: Any) -> Path:
    cfg = {
        "name": "verify-test",
        "source": {"uri": pair[0].uri},
        "destination": {"uri": pair[1].uri},
        "namespaces": {"include": [f"{db}.*"]},
        "tuning": {"partition_docs": 100, "partitioning": "ranges", "connect_timeout_seconds": 2, **tuning},
    }
    path = tmp_path / "migration.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_json_and_exit_codes(
    both: Clients, dbname: str, pair: tuple[Deployment, Deployment], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(both, dbname, "c", _docs(200))
    path = _config_file(tmp_path, pair, dbname)
    assert verify_cli(path, as_json=True, report_dir=None, ignore_field_order=False) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == SCHEMA and out["equal"] is True and out["totals"]["source_documents"] == 200

    both[1][dbname]["c"].delete_one({"_id": 42})
    assert verify_cli(path, as_json=True, report_dir=None, ignore_field_order=False) == 1
    text = capsys.readouterr().out
    assert "mongodb://" not in text  # no connection strings in reports
    assert json.loads(text)["namespaces"][0]["missing"]["ids"] == [42]

    assert verify_cli(path, as_json=False, report_dir=None, ignore_field_order=False) == 1
    assert "DIFFERENT" in capsys.readouterr().out


def test_cli_exit_2_when_it_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {
        "name": "unreachable",
        "source": {"uri": "mongodb://127.0.0.1:1/?directConnection=true"},
        "destination": {"uri": "mongodb://127.0.0.1:1/?directConnection=true"},
        "tuning": {"connect_timeout_seconds": 0.5},
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert verify_cli(path, as_json=True, report_dir=None, ignore_field_order=False) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "ConnectError"
    assert verify_cli(tmp_path / "absent.yaml", as_json=False, report_dir=None, ignore_field_order=False) == 2


def test_cli_report_dir_has_data_docs_and_summary(
    both: Clients, dbname: str, pair: tuple[Deployment, Deployment], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(both, dbname, "c", _docs(50))
    both[1][dbname]["c"].update_one({"_id": 9}, {"$set": {"n": -1}})
    report = tmp_path / "report"
    assert (
        verify_cli(_config_file(tmp_path, pair, dbname), as_json=True, report_dir=report, ignore_field_order=False) == 1
    )
    capsys.readouterr()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["schema"] == SCHEMA and summary["namespaces"][0]["changed"]["ids"] == [9]
    assert summary["report"]["gx_success"] is False
    assert "expect_column_pair_values_to_be_equal" in summary["report"]["gx_failed_expectations"]
    assert (report / "data_docs" / "index.html").is_file()
