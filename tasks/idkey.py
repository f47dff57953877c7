"""Document identity as MongoDB compares it: ``_id`` values that are equal by value are one document.

Why: the sync keeps only the last write per document in a batch and spreads documents over parallel lanes.
MongoDB's ``_id`` index compares by value, not by bytes: ``1``, ``1.0``, ``NumberLong(1)`` and
``NumberDecimal("1")`` (and ``-0.0`` and ``0``) are the same document, so "delete {_id: 1}" followed by
"insert {_id: 1.0}" touches one document and must be applied in that order.  Keyed by raw bytes, the two
writes landed as two documents in any order and the destination could end up empty.

The rules follow the BSON comparison order of the MongoDB manual ("Comparison/Sort Order", 7.0/8.0):
numbers of every type compare by exact value (a double and a decimal compare exactly, so the double 0.1
is not Decimal128("0.1")); every NaN equals every other NaN; strings and symbols compare as strings
(under the simple collation: a collection with another default collation is applied in order instead,
see ``tasks.apply``); objects compare field by field, names and values, in order; arrays element by
element; binaries by subtype and bytes; booleans, dates, timestamps, ObjectIds and regexes by value, each
in its own type bracket (``true`` is never the number 1).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Mapping
from decimal import Decimal
from typing import Any

from bson import encode
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

_NAN = ("num", "NaN")


def id_key(value: Any) -> Hashable:
    """A hashable key equal for two ``_id`` values exactly when MongoDB's ``_id`` index holds them as one."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):  # before int: True is an int in Python, never a number in BSON
        return ("bool", value)
    if isinstance(value, int):  # int32 and Int64
        return ("num", int(value))
    if isinstance(value, float):
        return _NAN if value != value else ("num", value)  # Python's 1 == 1.0 == Decimal(1), hashes equal
    if isinstance(value, Decimal128):
        d = value.to_decimal()
        return _NAN if d.is_nan() else ("num", d if d.is_finite() else float(d))
    if isinstance(value, Code):  # a str subclass: checked before str
        return ("code", str(value), id_key(value.scope) if value.scope is not None else None)
    if isinstance(value, str):
        return ("str", str(value))
    if isinstance(value, ObjectId):
        return ("oid", value.binary)
    if isinstance(value, bytes):  # Binary subtype 0 decodes to bytes
        return ("bin", 0 if not isinstance(value, Binary) else value.subtype, bytes(value))
    if isinstance(value, dt.datetime):
        return ("date", int(DatetimeMS(value)))
    if isinstance(value, DatetimeMS):
        return ("date", int(value))
    if isinstance(value, Timestamp):
        return ("ts", value.time, value.inc)
    if isinstance(value, MinKey):
        return ("min",)
    if isinstance(value, MaxKey):
        return ("max",)
    if isinstance(value, Regex):
        return ("regex", str(value.pattern), str(value.flags))
    if isinstance(value, DBRef):
        return id_key(value.as_doc())
    if isinstance(value, Mapping):
        return ("obj", tuple((str(k), id_key(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("arr", tuple(id_key(v) for v in value))
    if isinstance(value, Decimal):
        return _NAN if value.is_nan() else ("num", value)
    return ("raw", encode({"_id": value}))  # anything else: equal only byte for byte


def same_bytes(a: Any, b: Any) -> bool:
    """Whether two value-equal ``_id`` values are also the same BSON bytes (type and representation)."""
    return encode({"_id": a}) == encode({"_id": b})
