"""Property test of the event applier on its own: random operations on a small key space, random
crash-and-replay points; the destination always converges to the source's final state."""

from __future__ import annotations

from typing import Any

import pytest
from bson import encode
from bson.raw_bson import RawBSONDocument
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from tasks.apply import Applier, ApplyStats
from tasks.namespaces import NamespaceFilter
from tests.helpers import RAWC

pytestmark = pytest.mark.integration

KEYS = st.sampled_from([1, 2, 3, "a", "b"])
OPS = st.lists(
    st.tuples(st.sampled_from(["insert", "update", "replace", "delete"]), KEYS, st.integers(0, 1000)),
    min_size=1,
    max_size=40,
)


def events_for(ops: list[tuple[str, Any, int]], db: str) -> tuple[list[RawBSONDocument], dict[Any, dict[str, Any]]]:
    """Change events as the source emits them (update events carry the document as looked up later)."""
    state: dict[Any, dict[str, Any]] = {}
    history: list[tuple[str, Any, dict[str, Any] | None]] = []
    for kind, key, val in ops:
        if kind == "insert" and key not in state:
            state[key] = {"_id": key, "v": val}
        elif kind == "update" and key in state:
            state[key] = {**state[key], "u": val}
        elif kind == "replace" and key in state:
            state[key] = {"_id": key, "r": val}
        elif kind == "delete" and key in state:
            del state[key]
        else:
            continue
        history.append((kind, key, dict(state[key]) if key in state else None))
    events = []
    for i, (kind, key, doc) in enumerate(history):
        if kind == "update":
            # updateLookup returns the document as it is when the event is read: any later state, or nothing.
            later = [d for k, kk, d in history[i:] if kk == key]
            doc = later[-1] if later else None
        ev: dict[str, Any] = {"operationType": kind, "ns": {"db": db, "coll": "p"}, "documentKey": {"_id": key}}
        if kind != "delete":
            ev["fullDocument"] = doc
        events.append(RawBSONDocument(encode(ev), codec_options=RAWC))
    return events, state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, data=st.data())
def test_any_replayed_suffix_converges(
    dst_client: MongoClient, dbname: str, ops: list[tuple[str, Any, int]], data: st.DataObject
) -> None:
    events, final = events_for(ops, dbname)
    coll = dst_client[dbname]["p"]
    coll.delete_many({})
    applier = Applier(dst_client, NamespaceFilter.from_rules(None), lanes=2)
    try:
        n = len(events)
        crash = data.draw(st.integers(0, n), label="crash after")
        checkpoint = data.draw(st.integers(0, crash), label="last checkpoint")
        batch = data.draw(st.integers(1, 8), label="batch size")
        stats = ApplyStats()
        for i in range(0, crash, batch):  # applied before the crash
            applier.apply(events[i : min(i + batch, crash)], stats)
        for i in range(checkpoint, n, batch):  # replay from the checkpoint to the end
            applier.apply(events[i : i + batch], stats)
    finally:
        applier.close()
    got = {d["_id"]: d for d in coll.find()}
    assert got == final
