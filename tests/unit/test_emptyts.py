"""Finding a top-level Timestamp(0, 0) in raw BSON (what MongoDB replaces on insert: jstests core/empty_ts)."""

from __future__ import annotations

import datetime as dt
import uuid

from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp, encode

from tasks.emptyts import has_empty_ts


def test_a_top_level_empty_timestamp_is_found_after_any_other_type() -> None:
    before = {
        "d": 1.5,
        "s": "x\x11y",
        "o": {"ts": Timestamp(0, 0)},
        "a": [Timestamp(0, 0)],
        "b": Binary(b"\x11" * 9, 0),
        "u": Binary(uuid.uuid4().bytes, 4),
        "oid": ObjectId(),
        "t": True,
        "dt": dt.datetime(2024, 1, 1),
        "n": None,
        "re": Regex("a\x11", "i"),
        "c": Code("x"),
        "cs": Code("x", {"k": Timestamp(0, 0)}),
        "i": 17,
        "ts": Timestamp(17, 17),
        "l": Int64(17),
        "dec": Decimal128("17"),
        "min": MinKey(),
        "max": MaxKey(),
    }
    assert not has_empty_ts(encode({"_id": 1, **before}))  # nested empty timestamps and 0x11 bytes elsewhere
    assert has_empty_ts(encode({"_id": 1, **before, "z": Timestamp(0, 0)}))
    assert has_empty_ts(encode({"_id": Timestamp(0, 0)}))
    assert not has_empty_ts(encode({"_id": 1, "z": Timestamp(0, 1)}))
