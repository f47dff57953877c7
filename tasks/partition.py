"""Split a collection into ``_id`` ranges that together cover every document exactly once.

Why: MongoDB range predicates are type-bracketed (``{$gte: 5}`` never matches
a string), so plain ``[lo, hi)`` ranges would silently skip documents whose
``_id`` is of another type.  Each range here is confined to one BSON type
bracket (numbers, strings, objects, binaries, ObjectIds, ...) with ``$type``
and bounded inside it; one last "rest" range takes every ``_id`` whose
bracket was not sampled.  Clone and verification use the same ranges.

Ranges only pay where the server reads an ``_id`` range from the ``_id``
index (MongoDB does).  A server that answers every range with a full
collection scan (SecantusDB, and a MongoDB collection whose ``_id`` index
cannot serve the range) would read the whole collection once per range, so
in ``auto`` mode an ``explain`` of one range decides, and such a collection
is read in one piece.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from bson.decimal128 import Decimal128
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from tasks.mongo import RAW

log = logging.getLogger(__name__)

# $type names grouped by the comparison bracket MongoDB uses for range predicates.
BRACKETS: dict[str, tuple[str, ...]] = {
    "minKey": ("minKey",),
    "null": ("null",),
    "number": ("double", "int", "long", "decimal"),
    "string": ("string", "symbol"),
    "object": ("object",),
    "binData": ("binData",),
    "objectId": ("objectId",),
    "bool": ("bool",),
    "date": ("date",),
    "timestamp": ("timestamp",),
    "regex": ("regex",),
    "maxKey": ("maxKey",),
}
_TYPE_TO_BRACKET = {t: b for b, types in BRACKETS.items() for t in types}
ALL = "*"  # the whole collection, no filter
REST = "rest"  # every _id whose bracket is not covered by another range


@dataclass(frozen=True)
class IdRange:
    """One ``_id`` range: a bracket plus optional inclusive lower / exclusive upper bounds."""

    bracket: str  # a BRACKETS key, ALL, or REST
    lower: Any = None
    upper: Any = None
    has_lower: bool = False
    has_upper: bool = False
    rest_excludes: tuple[str, ...] = ()  # for REST: the brackets other ranges cover

    def filter(self) -> dict[str, Any]:
        """The find() filter selecting exactly this range."""
        if self.bracket == ALL:
            return {}
        if self.bracket == REST:
            types = [t for b in self.rest_excludes for t in BRACKETS[b]]
            return {"_id": {"$not": {"$type": types}}} if types else {}
        cond: dict[str, Any] = {"$type": list(BRACKETS[self.bracket])}
        if self.has_lower:
            cond["$gte"] = self.lower
        if self.has_upper:
            cond["$lt"] = self.upper
        f: dict[str, Any] = {"_id": cond}
        if self.bracket == "number" and not self.has_lower:
            # NaN sorts below every number but no range predicate matches it: the first range takes it.
            f = {"$or": [f, {"_id": {"$in": [math.nan, Decimal128("NaN")]}}]}
        return f

    def to_record(self) -> dict[str, Any]:
        return {
            "types": [self.bracket, *self.rest_excludes],
            "lower": self.lower,
            "upper": self.upper,
            "has_lower": self.has_lower,
            "has_upper": self.has_upper,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> IdRange:
        types = list(rec["types"])
        return cls(
            types[0],
            rec.get("lower"),
            rec.get("upper"),
            bool(rec.get("has_lower")),
            bool(rec.get("has_upper")),
            tuple(types[1:]),
        )


AUTO, RANGES, WHOLE = "auto", "ranges", "whole"
"""Partitioning modes: ranges where the server range-scans ``_id`` / always ranges / one piece."""
PROBE = IdRange("number", 0, 1, has_lower=True, has_upper=True)  # explained (not run) to see how ranges are read
INDEXED_STAGES = ("IXSCAN", "IDHACK", "EXPRESS")  # IXSCAN, CLUSTERED_IXSCAN, EXPRESS_IXSCAN, ...


def plan_ranges(coll: Collection[Any], target_docs: int, total: int | None = None, mode: str = AUTO) -> list[IdRange]:
    """Ranges of about ``target_docs`` documents each, from a server-side sorted ``$sample``.

    Small collections get one range covering everything, and so does every
    collection in ``whole`` mode, or in ``auto`` mode when the server would
    scan the whole collection for each range.  The plan is a pure function of
    the sample, so it can be stored and re-used by any worker.
    """
    if total is None:
        total = coll.estimated_document_count()
    if total <= target_docs or mode == WHOLE:
        return [IdRange(ALL)]
    if mode == AUTO:
        plan = range_plan(coll, PROBE)
        if plan is not None and not uses_index(plan):
            log.info(
                "%s: the server scans the whole collection for an _id range (%s); reading it in one piece",
                coll.full_name,
                _stage(plan),
            )
            return [IdRange(ALL)]
    n_parts = math.ceil(total / target_docs)
    sample_size = min(total, max(100, n_parts * 20))
    pipeline: list[dict[str, Any]] = [
        {"$sample": {"size": sample_size}},
        {"$project": {"_id": 1, "t": {"$type": "$_id"}}},
        {"$sort": {"_id": 1}},
    ]
    by_bracket: dict[str, list[Any]] = {}
    raw_coll = coll.with_options(codec_options=RAW)
    for doc in raw_coll.aggregate(pipeline, allowDiskUse=True):
        bracket = _TYPE_TO_BRACKET.get(doc["t"])
        if bracket is None:
            continue  # rare types go to the REST range
        by_bracket.setdefault(bracket, []).append(doc["_id"])
    return ranges_from_samples(by_bracket, total, sample_size, target_docs)


def range_plan(coll: Collection[Any], rng: IdRange) -> dict[str, Any] | None:
    """The server's winning plan for reading one range (``explain``, planner only), or None if it will not say."""
    try:
        res = coll.database.command(
            {"explain": {"find": coll.name, "filter": rng.filter()}, "verbosity": "queryPlanner"}
        )
    except PyMongoError as exc:
        log.debug("explain of an _id range on %s failed: %s", coll.full_name, exc)
        return None
    planner = res.get("queryPlanner") or {}
    plan = planner.get("winningPlan")
    return plan if isinstance(plan, dict) else None


def uses_index(plan: Any) -> bool:
    """Whether a winning plan reads an index (or clustered-collection bounds) rather than scanning everything.

    Walks the whole plan, so a sharded plan (``shards[].winningPlan``) and an
    SBE plan (``queryPlan``) count when any part of it is bounded.
    """
    if isinstance(plan, dict):
        stage = str(plan.get("stage", ""))
        if any(s in stage for s in INDEXED_STAGES) or "minRecord" in plan or "maxRecord" in plan:
            return True
        return any(uses_index(v) for k, v in plan.items() if k != "rejectedPlans")
    if isinstance(plan, list):
        return any(uses_index(v) for v in plan)
    return False


def _stage(plan: dict[str, Any]) -> str:
    inner = plan.get("queryPlan", plan)
    return str(inner.get("stage", "?")) if isinstance(inner, dict) else "?"


def ranges_from_samples(
    by_bracket: dict[str, list[Any]], total: int, sample_size: int, target_docs: int
) -> list[IdRange]:
    """Turn sorted samples per bracket into ranges (pure; unit-tested)."""
    out: list[IdRange] = []
    for bracket in BRACKETS:  # canonical BSON order
        samples = by_bracket.get(bracket)
        if not samples:
            continue
        if bracket == "number":
            samples = [s for s in samples if not _is_nan(s)]
        est = total * len(by_bracket[bracket]) / max(sample_size, 1)
        parts = max(1, math.ceil(est / target_docs))
        bounds: list[Any] = []
        if parts > 1 and samples:
            step = len(samples) / parts
            for i in range(1, parts):
                b = samples[min(len(samples) - 1, int(i * step))]
                if not bounds or not _same(bounds[-1], b):
                    bounds.append(b)
        lows: list[tuple[bool, Any]] = [(False, None)] + [(True, b) for b in bounds]
        highs: list[tuple[bool, Any]] = [(True, b) for b in bounds] + [(False, None)]
        for (hl, lo), (hu, hi) in zip(lows, highs, strict=True):
            out.append(IdRange(bracket, lo, hi, hl, hu))
    covered = tuple(b for b in BRACKETS if by_bracket.get(b))
    if not out:
        return [IdRange(ALL)]
    out.append(IdRange(REST, rest_excludes=covered))
    return out


def _is_nan(v: Any) -> bool:
    if isinstance(v, float):
        return math.isnan(v)
    if isinstance(v, Decimal128):
        return v.to_decimal().is_nan()
    return False


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # noqa: BLE001 - incomparable values are simply different
        return False
