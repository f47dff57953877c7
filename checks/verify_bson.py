"""Raw BSON helpers for verification: digests, ``_id`` keys and key-sorted forms, without decoding.

Why: verification must compare documents byte for byte (int 1, long 1 and
double 1.0 are different documents), so it never decodes them into Python
values, where ``1 == 1.0``.  These helpers walk the BSON element structure
directly: the ``_id`` element is sliced out as bytes (type byte + value) to key
a document, and the "ignore field order" mode re-orders the elements of every
embedded document by key name while keeping every value's bytes and type.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bson import decode as bson_decode
from bson import json_util
from bson.raw_bson import RawBSONDocument

from tasks.mongo import RAW

HASH_BITS = 128
HASH_MOD = 1 << HASH_BITS

# BSON element types whose value has a fixed size.
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0xFF: 0, 0x7F: 0}
_STRINGLIKE = frozenset({0x02, 0x0D, 0x0E})  # string, JavaScript code, symbol: int32 length + bytes
_SIZED = frozenset({0x03, 0x04, 0x0F})  # document, array, code with scope: int32 total size first
_DOC, _ARRAY = 0x03, 0x04
_RELAXED = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED)


def digest(raw: bytes | memoryview) -> bytes:
    """A 128-bit digest of one document's raw bytes (the bytes include ``_id``)."""
    return hashlib.blake2b(raw, digest_size=16).digest()


def digest_int(d: bytes | None) -> int:
    """A digest as the integer the order-independent partition hash sums (None counts as 0)."""
    return int.from_bytes(d, "big") if d else 0


def format_hash(total: int) -> str:
    """The hex form reported for a namespace or partition hash."""
    return f"{total % HASH_MOD:032x}"


def _int32(raw: bytes, pos: int) -> int:
    return int.from_bytes(raw[pos : pos + 4], "little", signed=True)


def value_end(raw: bytes, pos: int, btype: int) -> int:
    """Offset just past the value of type ``btype`` that starts at ``pos``."""
    fixed = _FIXED.get(btype)
    if fixed is not None:
        return pos + fixed
    if btype in _STRINGLIKE:
        return pos + 4 + _int32(raw, pos)
    if btype in _SIZED:
        return pos + _int32(raw, pos)
    if btype == 0x05:  # binary: int32 length, subtype byte, bytes
        return pos + 5 + _int32(raw, pos)
    if btype == 0x0B:  # regex: pattern cstring, options cstring
        return raw.index(b"\x00", raw.index(b"\x00", pos) + 1) + 1
    if btype == 0x0C:  # DBPointer: string + 12-byte ObjectId
        return pos + 4 + _int32(raw, pos) + 12
    raise ValueError(f"unknown BSON element type 0x{btype:02x} at offset {pos}")


def id_key(raw: bytes) -> bytes:
    """The ``_id`` element's type byte and value bytes: a byte-exact key for one document.

    ``_id`` is first in every stored document, so this almost always reads
    only the first element.
    """
    pos, end = 4, len(raw) - 1
    while pos < end:
        btype = raw[pos]
        kend = raw.index(b"\x00", pos + 1)
        vstart = kend + 1
        vend = value_end(raw, vstart, btype)
        if raw[pos + 1 : kend] == b"_id":
            return bytes((btype,)) + raw[vstart:vend]
        pos = vend
    raise ValueError("document has no _id")


def _wrap(key: bytes) -> bytes:
    """A one-field BSON document ``{_id: <value>}`` built from an id key."""
    body = key[:1] + b"_id\x00" + key[1:]
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"


def id_value(key: bytes) -> Any:
    """The ``_id`` value for a query; embedded documents stay raw so their field order is kept."""
    return RawBSONDocument(_wrap(key), RAW)["_id"]


def id_json(key: bytes) -> Any:
    """The ``_id`` as a JSON-compatible value (relaxed Extended JSON) to name it in a report."""
    value = bson_decode(_wrap(key))["_id"]
    return json.loads(json_util.dumps(value, json_options=_RELAXED))


def jsonable(value: Any) -> Any:
    """Any BSON-ish value (index spec, option) as plain JSON-compatible data."""
    return json.loads(json_util.dumps(value, json_options=_RELAXED))


def canonical(raw: bytes) -> bytes:
    """The document with every embedded document's fields sorted by name (arrays keep their order).

    Values keep their exact bytes and types, so two documents that differ only
    in field order have equal canonical forms and nothing else does.
    """
    return _canon(raw, 0, is_array=False)


def _canon(raw: bytes, start: int, *, is_array: bool) -> bytes:
    end = start + _int32(raw, start) - 1  # offset of the trailing NUL
    pos = start + 4
    elems: list[tuple[bytes, bytes]] = []
    while pos < end:
        btype = raw[pos]
        kend = raw.index(b"\x00", pos + 1)
        key = raw[pos + 1 : kend]
        vstart = kend + 1
        vend = value_end(raw, vstart, btype)
        value = _canon(raw, vstart, is_array=btype == _ARRAY) if btype in (_DOC, _ARRAY) else raw[vstart:vend]
        elems.append((key, raw[pos:vstart] + value))
        pos = vend
    if not is_array:
        elems.sort(key=lambda e: e[0])
    body = b"".join(e[1] for e in elems)
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"
