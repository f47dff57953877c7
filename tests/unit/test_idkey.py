"""`_id` identity as MongoDB's `_id` index compares it (manual, "Comparison/Sort Order", 7.0/8.0), and the
per-batch write set built on it."""

from __future__ import annotations

import datetime as dt

from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp, encode
from bson.raw_bson import RawBSONDocument

from tasks.apply import Write, WriteSet
from tasks.idkey import id_key, same_bytes


def test_numbers_are_one_document_by_value() -> None:
    ones = [1, 1.0, Int64(1), Decimal128("1"), Decimal128("1.0"), Decimal128("1E0")]
    assert len({id_key(v) for v in ones}) == 1
    assert id_key(0) == id_key(-0.0) == id_key(Decimal128("-0"))
    assert id_key(float("nan")) == id_key(Decimal128("NaN")) == id_key(float("-nan"))
    assert id_key(float("inf")) == id_key(Decimal128("Infinity"))
    assert id_key(2**53 + 1) != id_key(float(2**53 + 1))  # a long beyond a double's precision is not that double
    assert id_key(0.1) != id_key(Decimal128("0.1"))  # double and decimal compare exactly


def test_types_stay_in_their_brackets() -> None:
    assert id_key(True) != id_key(1) and id_key(False) != id_key(0)
    assert id_key("1") != id_key(1)
    assert id_key(None) != id_key(MinKey()) != id_key(MaxKey())
    assert id_key(dt.datetime(2024, 1, 1)) != id_key(Timestamp(1704067200, 0))
    oid = ObjectId()
    assert id_key(oid) == id_key(ObjectId(oid.binary)) and id_key(oid) != id_key(oid.binary)
    assert id_key(Binary(b"x", 4)) != id_key(Binary(b"x", 0)) and id_key(b"x") == id_key(Binary(b"x", 0))
    assert id_key(Regex("a", "i")) != id_key(Regex("a", ""))


def test_objects_compare_field_by_field_in_order() -> None:
    assert id_key({"a": 1, "b": [1, 2.0]}) == id_key({"a": 1.0, "b": [Int64(1), 2]})
    assert id_key({"a": 1, "b": 2}) != id_key({"b": 2, "a": 1})
    raw = RawBSONDocument(encode({"k": 1.0}))
    assert id_key(raw) == id_key({"k": 1})


def test_value_equal_ids_are_one_write_and_a_new_form_resets_the_document() -> None:
    ws = WriteSet()
    ws.add(Write("db.c", 1, None))  # delete {_id: 1}
    ws.add(Write("db.c", 1.0, RawBSONDocument(encode({"_id": 1.0}))))  # insert {_id: 1.0}
    ws.add(Write("db.c", 2, RawBSONDocument(encode({"_id": 2}))))
    ws.add(Write("db.c", 2, RawBSONDocument(encode({"_id": 2, "u": 1}))))  # same bytes: no reset
    assert len(ws) == 2
    by_id = {w.id_value: w for w in ws.latest.values()}
    assert by_id[1.0].reset and by_id[1.0].doc is not None
    assert not by_id[2].reset
    assert not same_bytes(1, 1.0) and same_bytes(Int64(5), Int64(5))


def test_serial_namespaces_keep_every_write_in_order_on_one_lane() -> None:
    ws = WriteSet()
    for i in range(20):
        ws.add(Write("db.log", i, RawBSONDocument(encode({"_id": i}))), serial=True)
    ws.add(Write("db.log", 3, None), serial=True)
    for i in range(20):
        ws.add(Write("db.other", i, None))
    lanes = ws.lanes(4)
    log_lanes = [lane for lane in lanes if any(w.ns == "db.log" for w in lane)]
    assert len(log_lanes) == 1
    assert [w.id_value for w in log_lanes[0] if w.ns == "db.log"] == [*range(20), 3]
    assert sum(len(lane) for lane in lanes) == 41
