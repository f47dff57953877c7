"""Property test of the applier in ``delta`` mode: update events carry MongoDB's updateDescription, not documents.

Random documents go through random changes that update operators make (fields set in place, appended,
removed; parents changing type; array elements updated, arrays appended to, truncated, replaced whole;
dotted, ``$``-prefixed and numeric field names).  Each update becomes the event MongoDB would emit
(``updateDescription`` as ``change_stream_document_diff_parser.cpp`` builds it, MongoDB 8.0: per level the
updated and new fields, then the removed ones, then the nested levels; an array's truncation before its
elements; ``disambiguatedPaths`` for a path with a dotted name anywhere or a numeric name below the top).
SecantusDB's own update events differ (no ``disambiguatedPaths`` for a dotted top-level name), so the events
are built here; the writes go to the real destination server.

Property: from a fuzzy clone (each document as the source held it at some later point), applying the events
with a crash and a replay from any earlier checkpoint ends byte for byte (field order included) in the
source's final documents.  The source collection holds those final documents: the applier looks documents up
there, as it does when a delta cannot be applied.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from bson import decode, encode
from bson.raw_bson import RawBSONDocument
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from tasks.apply import Applier, ApplyStats
from tasks.delta import delta_of
from tasks.namespaces import NamespaceFilter
from tests.helpers import RAWC

pytestmark = pytest.mark.integration

NAMES = ["x", "y", "z", "n", "w", "7", "10", "a.b", "$d"]  # a dotted and a $-prefixed name: rarely (a lookup)
IDS = [1, 2, "k"]


def same(a: Any, b: Any) -> bool:
    return encode({"v": a}) == encode({"v": b})


def name() -> st.SearchStrategy[str]:
    """A field name; one in ten is one of the two that only a lookup can write."""
    return st.integers(0, 20).map(lambda i: NAMES[i] if i < len(NAMES) else NAMES[i % 7])


@st.composite
def values(draw: st.DrawFn, depth: int = 0) -> Any:
    kinds = ["int", "str"] + (["doc", "arr"] if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        return draw(st.integers(0, 9))
    if kind == "str":
        return draw(st.sampled_from(["p", "q", "r"]))
    if kind == "doc":
        return draw(docs(depth))
    return draw(st.lists(values(depth + 1), max_size=4))


@st.composite
def docs(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    names = draw(st.lists(name(), max_size=4, unique=True))
    doc = {n: draw(values(depth + 1)) for n in names}
    if depth == 0:  # every document has an array and a sub-document to change inside
        doc["arr"] = draw(st.lists(values(2), min_size=1, max_size=4))
        doc["sub"] = draw(docs(1))
    return doc


@st.composite
def mutate(draw: st.DrawFn, doc: dict[str, Any], depth: int = 0, moves: bool = False) -> dict[str, Any]:
    """A change an update could make to ``doc``: existing fields stay in place, new ones go last; with ``moves``
    (a pipeline update, e.g. ``$replaceWith``) an existing field may also move to the end."""
    out = dict(doc)
    for _ in range(draw(st.integers(1, 2))):
        choice = draw(st.sampled_from(["set", "add", "remove", "nested", "nested", "nested", "move"]))
        existing = [k for k in out if k != "_id"]
        if choice == "move" and moves and existing:
            k = draw(st.sampled_from(existing))
            out[k] = out.pop(k)
        elif choice == "set" and existing:
            out[draw(st.sampled_from(existing))] = draw(values(depth + 1))  # may change the type of a parent
        elif choice == "remove" and existing:
            del out[draw(st.sampled_from(existing))]
        elif choice == "nested" and existing:
            k = draw(st.sampled_from(existing))
            if isinstance(out[k], dict):
                out[k] = draw(mutate(out[k], depth + 1, moves))
            elif isinstance(out[k], list):
                out[k] = draw(mutate_array(out[k], depth + 1))
        else:
            new = draw(name())
            if new not in out:
                out[new] = draw(values(depth + 1))
    return out


@st.composite
def mutate_array(draw: st.DrawFn, arr: list[Any], depth: int) -> list[Any]:
    out = list(arr)
    choice = draw(st.sampled_from(["element", "append", "truncate", "whole", "nested"]))
    if choice == "element" and out:
        out[draw(st.integers(0, len(out) - 1))] = draw(values(depth + 1))
    elif choice == "truncate" and out:
        out = out[: draw(st.integers(0, len(out) - 1))]
    elif choice == "whole":
        out = draw(st.lists(values(depth + 1), max_size=3))
    elif choice == "nested" and out:
        i = draw(st.integers(0, len(out) - 1))
        if isinstance(out[i], dict):
            out[i] = draw(mutate(out[i], depth + 1))
        else:
            out[i] = draw(values(depth + 1))
    else:
        out.extend(draw(st.lists(values(depth + 1), min_size=1, max_size=2)))
    return out


def in_place(old: Any, new: Any) -> Any:
    """``new`` as an update operator leaves it: fields that were there keep their place (a field removed and
    added again by the random changes included), new ones follow in order; the same inside."""
    if isinstance(old, dict) and isinstance(new, dict):
        kept = {k: in_place(old[k], new[k]) for k in old if k in new}
        return {**kept, **{k: v for k, v in new.items() if k not in old}}
    if isinstance(old, list) and isinstance(new, list):
        return [in_place(old[i], v) if i < len(old) else v for i, v in enumerate(new)]
    return new


class Description:
    """Builds an updateDescription as the server's diff parser does."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.updated: list[tuple[list[Any], Any]] = []
        self.removed: list[list[Any]] = []
        self.truncated: list[tuple[list[Any], int]] = []

    def doc(self, old: dict[str, Any], new: dict[str, Any], path: list[Any]) -> None:
        subs: list[tuple[str, Any, Any]] = []
        inserts = []
        for k, v in new.items():
            if k not in old:
                inserts.append(([*path, k], v))
            elif not same(old[k], v):
                both = type(old[k]) is type(v) and isinstance(v, (dict, list))
                if both and self.draw(st.booleans(), label="diff inside"):
                    subs.append((k, old[k], v))
                else:
                    self.updated.append(([*path, k], v))
        self.updated.extend(inserts)
        self.removed.extend([*path, k] for k in old if k not in new)
        for k, ov, nv in subs:
            if isinstance(nv, dict):
                self.doc(ov, nv, [*path, k])
            else:
                self.array(ov, nv, [*path, k])

    def array(self, old: list[Any], new: list[Any], path: list[Any]) -> None:
        if len(new) < len(old):
            self.truncated.append((path, len(new)))
        for i, v in enumerate(new):
            if i < len(old) and same(old[i], v):
                continue
            if i < len(old) and isinstance(v, dict) and isinstance(old[i], dict):
                self.doc(old[i], v, [*path, i])
            else:
                self.updated.append(([*path, i], v))

    def event(self) -> dict[str, Any]:
        def dotted(p: list[Any]) -> str:
            return ".".join(str(c) for c in p)

        ambiguous = {}
        for p in [p for p, _ in self.updated] + self.removed + [p for p, _ in self.truncated]:
            if any(isinstance(c, str) and ("." in c or (i > 0 and c.isdigit())) for i, c in enumerate(p)):
                ambiguous[dotted(p)] = p
        desc: dict[str, Any] = {
            "updatedFields": {dotted(p): v for p, v in self.updated},
            "removedFields": [dotted(p) for p in self.removed],
            "truncatedArrays": [{"field": dotted(p), "newSize": n} for p, n in self.truncated],
        }
        if ambiguous:
            desc["disambiguatedPaths"] = ambiguous
        return desc


class RawDescription:
    """Builds a ``$v: 2`` oplog diff (``rawUpdateDescription``) as the server's ``computeDocDiff`` does: per
    level ``d`` (removed), ``u`` (changed in place), ``i`` (new, or moved: appended in order), ``s<name>``
    (a diff inside); arrays ``{a: true, l: new length (when shorter), u<index>, s<index>}``."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def doc(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        removed = {k: False for k in old if k not in new}
        # The post-image is the kept fields in their old order, then the inserted ones: fields stay while they
        # come in the old order; from the first new or moved field on, every field is inserted.
        stay: set[str] = set()
        last = -1
        positions = {k: i for i, k in enumerate(old)}
        for k in new:
            if k not in positions or positions[k] < last:
                break
            stay.add(k)
            last = positions[k]
        update, insert, subs = {}, {}, {}
        for k, v in new.items():
            if k not in stay:
                insert[k] = v
            elif not same(old[k], v):
                both = type(old[k]) is type(v) and isinstance(v, (dict, list))
                if both and self.draw(st.booleans(), label="raw diff inside"):
                    subs["s" + k] = self.doc(old[k], v) if isinstance(v, dict) else self.array(old[k], v)
                else:
                    update[k] = v
        for name, section in (("d", removed), ("u", update), ("i", insert)):
            if section:
                out[name] = section
        out.update(subs)
        return out

    def array(self, old: list[Any], new: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"a": True}
        if len(new) < len(old):
            out["l"] = len(new)
        for i, v in enumerate(new):
            if i < len(old) and same(old[i], v):
                continue
            if i < len(old) and isinstance(v, dict) and isinstance(old[i], dict):
                out[f"s{i}"] = self.doc(old[i], v)
            else:
                out[f"u{i}"] = v
        return out


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[Any, dict[str, Any] | None]]]:
    """Events in MongoDB's shape, and the documents after each event (the states a fuzzy clone may copy)."""
    state: dict[Any, dict[str, Any] | None] = dict.fromkeys(IDS)
    events: list[dict[str, Any]] = []
    states = [copy.deepcopy(state)]
    # A stream sends every update in one form: MongoDB 6.0+ asked for showRawUpdateDescription sends the oplog's
    # diffs; else updateDescription, which cannot say that a pipeline update moved a field (so no moves then).
    raw = draw(st.booleans(), label="raw descriptions")
    for _ in range(draw(st.integers(1, 30))):
        key = draw(st.sampled_from(IDS))
        doc = state[key]
        base = {"ns": {"db": "", "coll": "d"}, "documentKey": {"_id": key}}
        if doc is None:
            new = {"_id": key, **draw(docs())}
            events.append({**base, "operationType": "insert", "fullDocument": new})
        else:
            kind = draw(st.sampled_from(["update", "update", "update", "replace", "delete"]))
            if kind == "delete":
                new = None
                events.append({**base, "operationType": "delete"})
            elif kind == "replace":
                new = {"_id": key, **draw(docs())}
                events.append({**base, "operationType": "replace", "fullDocument": new})
            else:
                new = draw(mutate(doc, moves=raw))
                if not raw:
                    new = in_place(doc, new)
                if raw:
                    diff = RawDescription(draw).doc(doc, new)
                    events.append({**base, "operationType": "update", "rawUpdateDescription": {"$v": 2, "diff": diff}})
                else:
                    d = Description(draw)
                    d.doc(doc, new, [])
                    events.append({**base, "operationType": "update", "updateDescription": d.event()})
        state[key] = new
        states.append(copy.deepcopy(state))
    return events, states


def raw_docs(client: MongoClient, db: str, coll: str) -> dict[Any, bytes]:
    return {d["_id"]: d.raw for d in client[db].get_collection(coll, codec_options=RAWC).find()}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories(), data=st.data())
def test_delta_replay_from_any_checkpoint_converges(
    src_client: MongoClient, dst_client: MongoClient, dbname: str, history: Any, data: st.DataObject
) -> None:
    events, states = history
    final = states[-1]
    src, dst = src_client[dbname]["d"], dst_client[dbname]["d"]
    src.delete_many({})
    dst.delete_many({})
    live = [d for d in final.values() if d is not None]
    if live:
        src.insert_many(live)  # what a lookup reads: the source as it is now, after every event
    assert {d["_id"]: encode(d) for d in live} == raw_docs(src_client, dbname, "d")
    n = len(events)
    # The fuzzy clone: each document as the source held it at some point at or after the start.
    clone = []
    for key in IDS:
        doc = states[data.draw(st.integers(0, n), label=f"clone of {key!r} after event")][key]
        if doc is not None:
            clone.append(doc)
    if clone:
        dst.insert_many(clone)
    raw = [RawBSONDocument(encode({**e, "ns": {"db": dbname, "coll": "d"}}), codec_options=RAWC) for e in events]
    applier = Applier(dst_client, NamespaceFilter.from_rules(None), lanes=2, source=src_client, update_mode="delta")
    try:
        crash = data.draw(st.integers(0, n), label="crash after")
        checkpoint = data.draw(st.integers(0, crash), label="last checkpoint")
        batch = data.draw(st.integers(1, 8), label="batch size")
        stats = ApplyStats()
        for i in range(0, crash, batch):
            applier.apply(raw[i : min(i + batch, crash)], stats)
        for i in range(checkpoint, n, batch):
            applier.apply(raw[i : i + batch], stats)
    finally:
        applier.close()
    got, want = raw_docs(dst_client, dbname, "d"), raw_docs(src_client, dbname, "d")
    assert got == want, {
        k: (decode(got[k]) if k in got else None, decode(v)) for k, v in want.items() if got.get(k) != v
    }


def test_delta_of_follows_mongodb_shapes() -> None:
    """Which recorded MongoDB 8.0 update descriptions are applied as changes and which are looked up."""

    def docs_of(delta: Any) -> list[dict[str, Any]]:
        return [decode(encode(op._doc)) for op in delta.ops(1)]

    def ev(desc: dict[str, Any]) -> RawBSONDocument:
        return RawBSONDocument(encode({"operationType": "update", "updateDescription": desc}), codec_options=RAWC)

    plain = delta_of(ev({"updatedFields": {"a.b": 2, "arr.3.x": 9}, "removedFields": ["n"], "truncatedArrays": []}))
    assert plain is not None and docs_of(plain) == [{"$set": {"a.b": 2, "arr.3.x": 9}, "$unset": {"n": ""}}]
    trunc = delta_of(
        ev({"updatedFields": {"arr.1.b": 3}, "removedFields": [], "truncatedArrays": [{"field": "arr", "newSize": 2}]})
    )
    assert trunc is not None and docs_of(trunc) == [
        {"$push": {"arr": {"$each": [], "$slice": 2}}},
        {"$set": {"arr.1.b": 3}},
    ]
    # a numeric field name below the top level is applied ($set reads it as the source did)
    numeric = {"updatedFields": {"a.0": 6}, "removedFields": [], "disambiguatedPaths": {"a.0": ["a", "0"]}}
    assert delta_of(ev(numeric)) is not None
    # a dotted field name, or a $-prefixed one: looked up
    assert delta_of(ev({"updatedFields": {"d.o.t": 1}, "disambiguatedPaths": {"d.o.t": ["d.o.t"]}})) is None
    assert delta_of(ev({"updatedFields": {"$dol": 1}, "removedFields": []})) is None
    assert delta_of(ev({"updatedFields": {}, "removedFields": ["x.$y"]})) is None
    # new fields listed out of sorted order (a pipeline $set) are appended one run at a time
    piped = delta_of(ev({"updatedFields": {"z": 1, "a": 2, "b": 3}, "removedFields": []}))
    assert piped is not None and docs_of(piped) == [{"$set": {"z": 1}}, {"$set": {"a": 2, "b": 3}}]


def test_delta_that_cannot_apply_is_looked_up(src_client: MongoClient, dst_client: MongoClient, dbname: str) -> None:
    """A document missing on the destination, and a parent whose type changed (PathNotViable, 28): both are
    read from the source and written whole; a delta that applies reads nothing."""
    src, dst = src_client[dbname]["d"], dst_client[dbname]["d"]
    src.insert_many([{"_id": 5, "a": 1}, {"_id": 6, "p": {"x": 1}}, {"_id": 7, "q": 2}])
    dst.insert_many([{"_id": 6, "p": 5}, {"_id": 7, "q": 1}])  # 5 is missing; 6's p is not a document

    def update(key: int, fields: dict[str, Any]) -> RawBSONDocument:
        ev = {
            "operationType": "update",
            "ns": {"db": dbname, "coll": "d"},
            "documentKey": {"_id": key},
            "updateDescription": {"updatedFields": fields, "removedFields": [], "truncatedArrays": []},
        }
        return RawBSONDocument(encode(ev), codec_options=RAWC)

    applier = Applier(dst_client, NamespaceFilter.from_rules(None), lanes=1, source=src_client, update_mode="delta")
    stats = ApplyStats()
    try:
        applier.apply([update(5, {"a": 1}), update(6, {"p.x": 1}), update(7, {"q": 2})], stats)
    finally:
        applier.close()
    assert raw_docs(dst_client, dbname, "d") == raw_docs(src_client, dbname, "d")
    assert (stats.deltas, stats.lookups) == (1, 2)
