"""An update event's ``updateDescription`` as update operators that converge when replayed.

Why: with ``sync.update_mode: delta`` the change stream carries no looked-up document, so the source is
not read a second time for every update (``fullDocument: updateLookup`` is a query per event on the
production source).  The destination is told what changed instead, as mongosync does.

Shape (MongoDB 6.1+ change events, ``update``; server source ``change_stream_document_diff_parser.cpp``):

- ``updatedFields``: dotted path -> new value; array elements by index (``arr.3``), appended ones too;
- ``removedFields``: dotted paths;
- ``truncatedArrays``: ``[{field, newSize}]``, arrays shortened from the end; an element of such an
  array may still appear in ``updatedFields`` (``arr.1.b``), so truncations go first, in their own write;
- ``disambiguatedPaths`` (6.1+, with ``showExpandedEvents``; 8.2+ always): for every path that names a
  field containing a dot, or a numeric field name below the top level, the path's real components
  (strings for field names, integers for array indexes).

Every part is an assignment (a value, a removal, a length), never an increment, so replaying events over
a *later* state of the document converges: whatever a later event changed, the later event is replayed
too and sets it again.  What cannot be said with update operators is left to a lookup of the whole
document on the source (its current state, later than the event: the same convergence argument as
``updateLookup``): a path component containing a dot (``$set`` would nest it) or starting with ``$``
(update operators refuse it), an empty component, and a top-level ``Timestamp(0, 0)`` value (the server
may replace it, tasks/emptyts.py).  The applier also looks a document up when a delta fails on the
destination (a parent that changed type in a later event: ``PathNotViable``, 28) or matches nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import UpdateOne

from tasks.emptyts import has_empty_ts

EMPTY_TS = Timestamp(0, 0)


@dataclass(frozen=True)
class Delta:
    """One update event's change: array truncations (each its own write, in order), then update documents.

    The first update document sets fields in place and removes fields; the ones after it append fields, in
    the order the source appended them (see ``_in_order``).
    """

    truncations: tuple[tuple[str, int], ...]
    updates: tuple[dict[str, Any], ...]

    def ops(self, id_value: Any) -> list[UpdateOne]:
        flt = {"_id": id_value}
        out = [UpdateOne(flt, {"$push": {path: {"$each": [], "$slice": size}}}) for path, size in self.truncations]
        out.extend(UpdateOne(flt, update) for update in self.updates if update)
        return out


def _numeric(name: str) -> bool:
    return name.isdigit() and name.isascii()


def _before(a: str, b: str) -> bool:
    """Whether one ``$set`` applies field ``a`` before its sibling ``b`` (MongoDB 5.0+: names in lexicographic
    order, numeric names in numeric order; the update-operators page, "Behavior"); unknown (mixed): no."""
    if _numeric(a) and _numeric(b):
        return int(a) < int(b)
    if _numeric(a) or _numeric(b):
        return False
    return a.encode() < b.encode()


def _in_order(fields: Any) -> list[Any]:
    """``updatedFields`` as ``$set`` documents that append new fields in the order the event lists them.

    Why: the source appended new fields in that order (an update operator sorts them; a pipeline update
    keeps its own order), and one ``$set`` sorts its fields, so siblings listed out of sorted order go in
    separate writes.  Fields that exist keep their place either way.  Mostly one document: the event's own.
    """
    keys = list(fields.keys())
    runs: list[list[str]] = [[]]
    last: dict[str, str] = {}
    for key in keys:
        parent, _, name = key.rpartition(".")
        prev = last.get(parent)
        if prev is not None and not _before(prev, name):
            runs.append([])
            last = {}
        runs[-1].append(key)
        last[parent] = name
    if len(runs) == 1:
        return [fields]
    return [{k: fields[k] for k in run} for run in runs]


def _plain(path: str) -> bool:
    """A dotted path whose components update operators read as the source meant them."""
    return all(part and not part.startswith("$") for part in path.split("."))


def _components_plain(parts: Iterable[Any]) -> bool:
    return all(not isinstance(p, str) or (p and "." not in p and not p.startswith("$")) for p in parts)


def delta_of(event: Any) -> Delta | None:
    """The update event's change as a Delta, or None when only a lookup of the document can apply it.

    The raw form (``rawUpdateDescription``, asked for with ``showRawUpdateDescription``) is exact, field
    order included; the public ``updateDescription`` does not say which fields a pipeline update moved.
    """
    raw = event.get("rawUpdateDescription")
    if raw is not None:
        return _raw_delta(raw)
    desc = event.get("updateDescription")
    if desc is None:
        return None
    updated = desc.get("updatedFields") or {}
    removed = tuple(desc.get("removedFields") or ())
    truncated = tuple((str(t["field"]), int(t["newSize"])) for t in desc.get("truncatedArrays") or ())
    ambiguous = desc.get("disambiguatedPaths") or {}
    for parts in ambiguous.values():
        if not _components_plain(parts):
            return None
    for path in (*updated.keys(), *removed, *(p for p, _ in truncated)):
        if path not in ambiguous and not _plain(path):
            return None
    if has_empty_ts(updated.raw) if isinstance(updated, RawBSONDocument) else EMPTY_TS in updated.values():
        return None
    runs = _in_order(updated) if updated else [{}]
    unset = {"$unset": dict.fromkeys(removed, "")} if removed else {}
    first = {**({"$set": runs[0]} if runs[0] else {}), **unset}
    return Delta(truncated, (first, *({"$set": run} for run in runs[1:])))


class _RawDiff:
    """A ``$v: 2`` oplog diff (MongoDB 5.0+, ``update/document_diff_serialization.h``) as update operators.

    A document level: ``d`` removes fields, ``u`` sets fields in place (appended if missing), ``i`` moves
    a field to the end or appends it (in order), ``s<name>`` is a diff of a sub-document or array, ``b``
    a binary diff.  An array (``a: true``): ``l`` its new length, ``u<index>`` an element, ``s<index>`` a
    diff of one.  The server's applier (``document_diff_applier.cpp``) is followed: ``i`` fields are
    removed first and appended after, siblings in the diff's order.
    """

    def __init__(self) -> None:
        self.truncations: list[tuple[str, int]] = []
        self.sets: dict[str, Any] = {}
        self.unsets: list[str] = []
        self.appends: list[tuple[str, Any]] = []

    def document(self, diff: Any, prefix: str) -> bool:
        for key, value in diff.items():
            names = list(value) if key in ("d", "u", "i") else [key[1:]]
            if not _components_plain(names):
                return False  # a field name with a dot or a leading $: no path can name it
            if key == "d":
                self.unsets.extend(prefix + name for name in value)
            elif key == "u":
                self.sets.update((prefix + name, v) for name, v in value.items())
            elif key == "i":
                for name, v in value.items():
                    self.unsets.append(prefix + name)
                    self.appends.append((prefix + name, v))
            elif key.startswith("s") and len(key) > 1:
                sub = prefix + key[1:]
                ok = self.array(value, sub + ".") if value.get("a") is True else self.document(value, sub + ".")
                if not ok:
                    return False
            else:
                return False  # "b" (a binary diff) or a section this code does not know: look it up
        return True

    def array(self, diff: Any, prefix: str) -> bool:
        for key, value in diff.items():
            if key == "a":
                continue
            if key == "l":
                self.truncations.append((prefix[:-1], int(value)))
            elif key.startswith("u") and key[1:].isdigit():
                self.sets[prefix + key[1:]] = value
            elif key.startswith("s") and key[1:].isdigit():
                sub = prefix + key[1:]
                ok = self.array(value, sub + ".") if value.get("a") is True else self.document(value, sub + ".")
                if not ok:
                    return False
            else:
                return False
        return True


def _raw_delta(raw: Any) -> Delta | None:
    diff = raw.get("diff") if raw.get("$v") == 2 else None
    if diff is None:
        return None  # not a delta oplog entry (a replacement-style or $v 1 update): look it up
    out = _RawDiff()
    if not out.document(diff, ""):
        return None
    top = [v for p, v in [*out.sets.items(), *out.appends] if "." not in p]
    if any(isinstance(v, Timestamp) and v == EMPTY_TS for v in top):
        return None
    first: dict[str, Any] = {}
    if out.sets:
        first["$set"] = out.sets
    if out.unsets:
        first["$unset"] = dict.fromkeys(out.unsets, "")
    runs = _in_order(dict(out.appends)) if out.appends else []
    return Delta(tuple(out.truncations), (first, *({"$set": run} for run in runs)))
