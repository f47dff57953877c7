"""Documents with a top-level ``Timestamp(0, 0)``: written so the destination keeps the value.

Why: MongoDB replaces an empty timestamp in a top-level field of an inserted document, or of a
replacement-style update or upsert, with the current time (the server's jstests ``core/empty_ts``); a copy
would change such documents.  The insert and update commands take ``bypassEmptyTsReplacement: true`` to
keep the value (jstests ``bypass_empty_ts_replacement.js``, MongoDB 5.0+), which the drivers' bulk helpers
cannot send, so these rare documents go through plain commands.  Finding them costs a byte search per
document (C speed); only a document holding a 0x11 byte anywhere has its top-level fields walked.
"""

from __future__ import annotations

import struct
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError, OperationFailure

from tasks.errors import TerminalError

EMPTY = b"\x00" * 8
MAX_COMMAND_BYTES = 15 * 1024 * 1024  # a command is one BSON document (16 MB): inserts are sent in chunks
UNKNOWN_FIELD = 40415
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}
_LENGTH_PREFIXED = {0x02: 4, 0x0D: 4, 0x0E: 4, 0x03: 0, 0x04: 0, 0x0F: 0, 0x05: 5}  # extra bytes after the length


def has_empty_ts(data: bytes | memoryview) -> bool:
    """Whether a BSON document has a top-level field holding ``Timestamp(0, 0)``."""
    raw = data if isinstance(data, bytes) else bytes(data)
    if b"\x11" not in raw:
        return False
    i, end = 4, len(raw) - 1
    while i < end:
        kind = raw[i]
        i = raw.index(b"\x00", i + 1) + 1  # past the field name
        if kind == 0x11 and raw[i : i + 8] == EMPTY:
            return True
        if kind in _FIXED:
            i += _FIXED[kind]
        elif kind in _LENGTH_PREFIXED:
            (n,) = struct.unpack_from("<i", raw, i)
            i += n + _LENGTH_PREFIXED[kind]
        elif kind == 0x0B:  # regex: two C strings
            i = raw.index(b"\x00", raw.index(b"\x00", i) + 1) + 1
        elif kind == 0x0C:  # DBPointer: string then 12 bytes
            (n,) = struct.unpack_from("<i", raw, i)
            i += 4 + n + 12
        else:
            return False  # not BSON we know: the server will say
    return False


def any_empty_ts(docs: list[Any]) -> bool:
    return any(isinstance(d, RawBSONDocument) and has_empty_ts(d.raw) for d in docs)


def _run(coll: Any, ns: str, cmd: dict[str, Any], first_id: Any) -> dict[str, Any]:
    cmd = {**cmd, "bypassDocumentValidation": True, "bypassEmptyTsReplacement": True, "writeConcern": {"w": "majority"}}
    try:
        reply: dict[str, Any] = coll.database.command(cmd)
    except OperationFailure as exc:
        if exc.code == UNKNOWN_FIELD or "bypassEmptyTsReplacement" in str(exc):
            raise TerminalError(
                f"{ns}: the document with _id {first_id!r} holds a top-level Timestamp(0, 0), which this "
                "destination would replace with the current time (it has no bypassEmptyTsReplacement)",
                remedy="migrate to MongoDB 5.0 or newer, or change that value on the source",
            ) from None
        raise
    return reply


def insert_keeping_empty_ts(coll: Any, ns: str, docs: list[RawBSONDocument], *, ordered: bool) -> None:
    """insert_many with bypassEmptyTsReplacement; failures raise BulkWriteError as insert_many's do."""
    chunk: list[RawBSONDocument] = []
    size = 0
    offset = 0
    errors: list[dict[str, Any]] = []
    concern: list[dict[str, Any]] = []
    for doc in [*docs, None]:
        if doc is not None and (not chunk or size + len(doc.raw) <= MAX_COMMAND_BYTES):
            chunk.append(doc)
            size += len(doc.raw)
            continue
        reply = _run(coll, ns, {"insert": coll.name, "documents": chunk, "ordered": ordered}, chunk[0]["_id"])
        errors += [{**e, "index": int(e.get("index", 0)) + offset} for e in reply.get("writeErrors") or []]
        concern += [reply["writeConcernError"]] if reply.get("writeConcernError") else []
        if ordered and errors:
            break  # an ordered insert stops at its first error, as insert_many does
        offset += len(chunk)
        chunk, size = ([doc], len(doc.raw)) if doc is not None else ([], 0)
    if errors or concern:  # an unordered insert sends every chunk first, as insert_many does
        raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": concern})


def write_keeping_empty_ts(coll: Any, ns: str, kind: str, _id: Any, doc: RawBSONDocument | None) -> None:
    """One sync write (``delete``, ``insert`` or ``upsert`` of a replacement) with bypassEmptyTsReplacement."""
    if kind == "delete":
        cmd = {"delete": coll.name, "deletes": [{"q": {"_id": _id}, "limit": 1}]}
    elif kind == "insert":
        cmd = {"insert": coll.name, "documents": [doc]}
    else:
        cmd = {"update": coll.name, "updates": [{"q": {"_id": _id}, "u": doc, "upsert": True}]}
    _raise_write_errors(_run(coll, ns, cmd, _id), 0)


def _raise_write_errors(reply: dict[str, Any], offset: int) -> None:
    errors = [{**e, "index": int(e.get("index", 0)) + offset} for e in reply.get("writeErrors") or []]
    wce = reply.get("writeConcernError")
    if errors or wce:
        raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": [wce] if wce else []})
