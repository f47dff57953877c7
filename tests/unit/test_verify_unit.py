"""Pure logic of verification: raw BSON walking, buckets, catalog comparison, result schema, GX report."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from bson import SON, Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp, encode
from bson.raw_bson import RawBSONDocument

from checks.verify_bson import HASH_MOD, canonical, digest, digest_int, format_hash, id_json, id_key, id_value
from checks.verify_catalog import compare_indexes, compare_options, pending_map
from checks.verify_result import DATAFRAME_COLUMNS, SCHEMA, IdList, NamespaceResult, VerifyResult
from checks.verify_scan import classify
from tasks.catalog import CollectionSpec, comparable_index
from tasks.ddl import TTL_PARKED_SECONDS
from tasks.namespaces import Namespace

pytestmark = pytest.mark.unit

ALL_TYPES: dict[str, Any] = {
    "double": 1.5,
    "string": "héllo",
    "doc": SON([("b", 1), ("a", 2)]),
    "array": [3, SON([("z", 1), ("y", 2)]), [1, 2]],
    "binary": Binary(b"\x00\x01", 4),
    "oid": ObjectId("64b7f0c2a1b2c3d4e5f60718"),
    "bool": True,
    "date": dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    "null": None,
    "regex": Regex("^a.*", "i"),
    "code": Code("function(){}"),
    "code_scope": Code("x", {"k": 1}),
    "int": 7,
    "ts": Timestamp(5, 6),
    "long": Int64(8),
    "dec": Decimal128("1.10"),
    "min": MinKey(),
    "max": MaxKey(),
    "ref": DBRef("c", 1),
}


@pytest.mark.parametrize(
    "value",
    [
        1,
        Int64(1),
        1.0,
        "s",
        ObjectId("64b7f0c2a1b2c3d4e5f60718"),
        SON([("a", 1), ("b", [1, 2])]),
        Binary(b"x", 0),
        dt.datetime(2020, 1, 1),
        Decimal128("2"),
        MinKey(),
        MaxKey(),
        None,
        True,
        Regex("a", "m"),
    ],
)
def test_id_key_is_byte_exact_and_round_trips(value: Any) -> None:
    raw = encode(SON([("_id", value), ("x", 1)]))
    key = id_key(raw)
    assert encode({"_id": id_value(key)}) == encode({"_id": value})  # the query value keeps type and field order
    assert json.dumps(id_json(key))  # nameable in a JSON report


def test_id_key_distinguishes_numeric_types_and_finds_a_late_id() -> None:
    keys = {id_key(encode({"_id": v})) for v in (1, Int64(1), 1.0)}
    assert len(keys) == 3
    late = encode(SON([("a", ALL_TYPES), ("_id", "late")]))
    assert id_json(id_key(late)) == "late"
    with pytest.raises(ValueError):
        id_key(encode({"a": 1}))


def test_id_json_names_ids_readably() -> None:
    assert id_json(id_key(encode({"_id": 5}))) == 5
    assert id_json(id_key(encode({"_id": ObjectId("64b7f0c2a1b2c3d4e5f60718")}))) == {
        "$oid": "64b7f0c2a1b2c3d4e5f60718"
    }
    assert id_json(id_key(encode({"_id": SON([("b", 1), ("a", 2)])}))) == {"b": 1, "a": 2}


def test_canonical_sorts_nested_fields_but_keeps_array_order_and_types() -> None:
    a = encode(SON([("_id", 1), ("x", SON([("p", 1), ("q", [SON([("m", 1), ("n", 2)])])])), ("a", 1)]))
    b = encode(SON([("a", 1), ("_id", 1), ("x", SON([("q", [SON([("n", 2), ("m", 1)])]), ("p", 1)]))]))
    assert a != b and canonical(a) == canonical(b)
    assert len(canonical(a)) == len(a)
    assert canonical(encode({"_id": 1, "l": [1, 2]})) != canonical(encode({"_id": 1, "l": [2, 1]}))
    assert canonical(encode({"_id": 1, "v": 1})) != canonical(encode({"_id": 1, "v": 1.0}))
    assert canonical(encode({"_id": 1, "v": 1})) != canonical(encode({"_id": 1, "v": Int64(1)}))


def test_canonical_walks_every_bson_type() -> None:
    doc = SON([("_id", 1), *ALL_TYPES.items()])
    shuffled = SON([("_id", 1), *reversed(list(ALL_TYPES.items()))])
    assert canonical(encode(doc)) == canonical(encode(shuffled))
    decoded = RawBSONDocument(canonical(encode(doc)))
    assert list(decoded.keys()) == sorted(["_id", *ALL_TYPES])
    assert encode(decoded["doc"]) == encode(SON([("a", 2), ("b", 1)]))


def test_classify_buckets() -> None:
    a, b = encode(SON([("_id", 1), ("x", 1), ("y", 2)])), encode(SON([("_id", 1), ("y", 2), ("x", 1)]))
    assert classify(a, None, False) == "missing"
    assert classify(None, a, False) == "extra"
    assert classify(a, a, False) is None
    assert classify(a, b, False) == "changed"
    assert classify(a, b, True) == "field_order_only"
    assert classify(a, encode({"_id": 1, "x": 2, "y": 2}), True) == "changed"
    assert classify(None, None, True) is None


def test_partition_hash_is_order_independent() -> None:
    docs = [encode({"_id": i, "v": "x" * i}) for i in range(50)]
    fwd = sum(digest_int(digest(d)) for d in docs) % HASH_MOD
    rev = sum(digest_int(digest(d)) for d in reversed(docs)) % HASH_MOD
    assert fwd == rev and len(format_hash(fwd)) == 32
    changed = sum(digest_int(digest(d)) for d in docs[:-1]) + digest_int(digest(encode({"_id": 49, "v": "y"})))
    assert changed % HASH_MOD != fwd


def _idx(**spec: Any) -> dict[str, Any]:
    spec.setdefault("v", 2)
    return comparable_index(spec)


def test_compare_indexes_names_missing_extra_and_different() -> None:
    src = [
        _idx(key=SON([("_id", 1)]), name="_id_"),
        _idx(key=SON([("a", 1)]), name="a_1", unique=True),
        _idx(key=SON([("b", 1)]), name="b_1"),
    ]
    dst = [
        _idx(key=SON([("_id", 1)]), name="_id_"),
        _idx(key=SON([("a", 1)]), name="a_1"),
        _idx(key=SON([("c", 1)]), name="c_1"),
    ]
    diffs = {d["name"]: d for d in compare_indexes("db.c", src, dst, {})}
    assert {n: d["problem"] for n, d in diffs.items()} == {"a_1": "different", "b_1": "missing", "c_1": "extra"}
    assert diffs["a_1"]["fields"] == ["unique"]
    assert diffs["b_1"]["source"] == {"key": {"b": 1}, "name": "b_1"}


def test_compare_indexes_key_order_matters() -> None:
    src = [_idx(key=SON([("a", 1), ("b", 1)]), name="ab")]
    dst = [_idx(key=SON([("b", 1), ("a", 1)]), name="ab")]
    assert [d["fields"] for d in compare_indexes("db.c", src, dst, {})] == [["key"]]


def test_pending_restores_apply_to_the_destination_only() -> None:
    src = [
        _idx(key=SON([("a", 1)]), name="a_1", unique=True),
        _idx(key=SON([("t", 1)]), name="t_1", expireAfterSeconds=60),
    ]
    dst = [
        _idx(key=SON([("a", 1)]), name="a_1"),
        _idx(key=SON([("t", 1)]), name="t_1", expireAfterSeconds=TTL_PARKED_SECONDS),
    ]
    pending = pending_map(
        [
            {"ns": "db.c", "name": "a_1", "unique": True},
            {"ns": "db.c", "name": "t_1", "expireAfterSeconds": 60},
            {"name": "no-ns"},
        ]
    )
    assert compare_indexes("db.c", src, dst, pending) == []
    assert len(compare_indexes("db.other", src, dst, pending)) == 2  # restores are per namespace
    assert len(compare_indexes("db.c", dst, src, pending)) == 2  # a non-unique or parked source index still differs


def _spec(kind: str = "collection", **options: Any) -> CollectionSpec:
    return CollectionSpec(Namespace("db", "c"), kind, options)


def test_compare_options() -> None:
    assert compare_options(_spec(validator={"a": 1}), _spec(validator={"a": 1})) == []
    assert compare_options(_spec(validator={"a": 1}), _spec(validator={"a": 2}))[0]["problem"] == "different"
    assert compare_options(_spec(validator={"a": 1}), _spec())[0] == {
        "option": "validator",
        "problem": "missing",
        "source": {"a": 1},
        "destination": None,
    }
    assert compare_options(_spec(), _spec(capped=True))[0]["problem"] == "extra"
    assert compare_options(_spec("view", viewOn="c", pipeline=[]), None)[0]["option"] == "(namespace)"
    assert compare_options(None, _spec())[0]["problem"] == "extra"
    assert compare_options(_spec("view"), _spec())[0]["option"] == "(kind)"


def _result(**over: Any) -> VerifyResult:
    ns = NamespaceResult("db.c", "collection", 10, 10, "ab" * 16, "ab" * 16, partitions=1)
    for k, v in over.items():
        setattr(ns, k, v)
    res = VerifyResult([ns], settings={"ignore_field_order": False})
    res.finished_at = res.started_at + dt.timedelta(seconds=1)
    return res


def test_result_verdicts() -> None:
    assert _result().equal and _result().exit_code == 0
    assert _result(missing=IdList(1, [3])).exit_code == 1
    assert not _result(dest_count=9).equal
    assert not _result(dest_hash="cd" * 16).equal  # a hash difference alone is a difference
    assert not _result(index_diffs=[{"name": "a", "problem": "missing"}]).equal
    assert not _result(option_diffs=[{"option": "validator", "problem": "different"}]).equal
    assert _result(dest_hash="cd" * 16, field_order_only=IdList(1, [1])).equal  # explained by field order only
    assert not _result(dest_hash="cd" * 16, field_order_only=IdList(1, [1]), changed=IdList(1, [2])).equal


def test_result_dict_schema_and_dataframe() -> None:
    res = _result(missing=IdList(3, [1, 2]))
    d = res.to_dict()
    assert d["schema"] == SCHEMA and d["exit_code"] == 1 and d["duration_seconds"] == 1.0
    assert set(d) == {
        "schema",
        "equal",
        "exit_code",
        "started_at",
        "finished_at",
        "duration_seconds",
        "settings",
        "recheck_generations_used",
        "totals",
        "namespaces",
        "unsupported",
        "report",
    }
    assert d["namespaces"][0]["missing"] == {"total": 3, "ids": [1, 2], "truncated": True}
    assert d["totals"]["missing"] == 3 and d["totals"]["namespaces_different"] == 1
    json.dumps(d)
    df = res.to_dataframe()
    assert list(df.columns) == list(DATAFRAME_COLUMNS) and df.loc[0, "missing"] == 3
    assert "db.c" in res.summary_markdown()


def test_gx_report_pass_and_fail(tmp_path: Path) -> None:
    from checks.gx_report import write_report

    index, ok = write_report(_result(), tmp_path / "ok")
    assert ok and index.is_file() and index.name == "index.html"
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["report"]["gx_success"] is True

    bad = _result(extra=IdList(1, ["x"]), dest_count=11, option_diffs=[{"option": "validator", "problem": "different"}])
    index, ok = write_report(bad, tmp_path / "bad")
    assert not ok and bad.report is not None
    assert set(bad.report["gx_failed_expectations"]) == {
        "expect_column_pair_values_to_be_equal",
        "expect_column_values_to_be_in_set",
    }
    html = "".join(p.read_text(errors="ignore") for p in (tmp_path / "bad" / "data_docs").rglob("*.html"))
    assert re.search("livemigrate_verify", html)


def test_prepare_unique_left_by_the_restore_is_a_named_note_not_a_silent_match() -> None:
    src = [comparable_index({"v": 2, "key": SON([("e", 1)]), "name": "e_1", "unique": True})]
    dst = [comparable_index({"v": 2, "key": SON([("e", 1)]), "name": "e_1", "unique": True, "prepareUnique": False})]
    notes: list[str] = []
    assert compare_indexes("db.c", src, dst, {}, notes) == []
    assert len(notes) == 1 and "e_1" in notes[0] and "prepareUnique" in notes[0]
    # Anything else about prepareUnique is a difference: true on one side, or on an index that is not unique.
    dst_true = [{**dst[0], "prepareUnique": True}]
    assert [d["fields"] for d in compare_indexes("db.c", src, dst_true, {}, notes)] == [["prepareUnique"]]
    plain = [comparable_index({"v": 2, "key": SON([("e", 1)]), "name": "e_1", "prepareUnique": False})]
    src_plain = [comparable_index({"v": 2, "key": SON([("e", 1)]), "name": "e_1"})]
    assert len(compare_indexes("db.c", src_plain, plain, {}, notes)) == 1


def test_the_index_that_supports_the_destinations_shard_key_is_a_note() -> None:
    src: list[dict[str, Any]] = []
    shard_index = comparable_index(
        {"v": 2, "key": SON([("region", 1), ("customer", 1)]), "name": "region_1_customer_1"}
    )
    notes: list[str] = []
    key = [("region", 1), ("customer", 1)]
    assert compare_indexes("db.orders", src, [shard_index], {}, notes, key) == []
    assert len(notes) == 1 and "shard key" in notes[0]
    # Another extra index is still a difference, and so is this one where the destination is not sharded on it.
    assert len(compare_indexes("db.orders", src, [shard_index], {}, notes, [("region", 1)])) == 1
    assert len(compare_indexes("db.orders", src, [shard_index], {})) == 1
