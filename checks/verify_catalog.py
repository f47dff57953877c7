"""Compare what the two sides say about a namespace: existence, kind, options, views and indexes.

Why: equal documents are not enough - a missing unique index or validator
changes what the application can write after cutover.  Index specs go through
:func:`tasks.catalog.comparable_index` (the same normalisation clone uses); an
index that the migration deliberately built non-unique or with a parked TTL
(``pending_index_restores``) is compared as if it were already restored, so a
verification during the sync does not flag what cutover will fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from checks.verify_bson import jsonable
from tasks.catalog import CollectionSpec
from tasks.ddl import COLLECTION_TTL

PendingRestores = dict[tuple[str, str], dict[str, Any]]
NAMESPACE = "(namespace)"
KIND = "(kind)"


def pending_map(pending: Iterable[dict[str, Any]] | None) -> PendingRestores:
    """Index the restore list by (ns, index name); entries without both are ignored."""
    out: PendingRestores = {}
    for item in pending or ():
        ns, name = item.get("ns"), item.get("name")
        if isinstance(ns, str) and isinstance(name, str):
            out[(ns, name)] = {k: v for k, v in item.items() if k in ("unique", "expireAfterSeconds")}
    return out


def as_restored(ns: str, spec: dict[str, Any], pending: PendingRestores) -> dict[str, Any]:
    """The destination index spec with the pending cutover restore applied."""
    restore = pending.get((ns, str(spec.get("name"))))
    if not restore:
        return spec
    out = dict(spec)
    if restore.get("unique"):
        out["unique"] = True
    if "expireAfterSeconds" in restore:
        out["expireAfterSeconds"] = restore["expireAfterSeconds"]
    return out


PREPARE_UNIQUE_NOTE = (
    "index {name!r}: prepareUnique: false on the {side} only, left by the collMod that made it unique "
    "again at cutover (this server keeps the field; MongoDB 7.0+ removes it, coll_mod_index.cpp)"
)


SHARD_KEY_INDEX_NOTE = (
    "index {name!r} on {key} is on the destination only: it supports the destination's shard key (sharding "
    "needs it; createSupportingIndexes built it before the copy)"
)


def compare_indexes(
    ns: str,
    src: list[dict[str, Any]],
    dst: list[dict[str, Any]],
    pending: PendingRestores,
    notes: list[str] | None = None,
    shard_key: list[tuple[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Index differences by name: missing or extra on the destination, or a different spec.

    One difference is named rather than counted, in ``notes``: a ``prepareUnique: false`` that only the
    destination shows (docs/verify.md, "Notes").  It is never dropped silently.
    """
    by_src = {str(i.get("name")): i for i in src}
    by_dst = {str(i.get("name")): as_restored(ns, i, pending) for i in dst}
    out: list[dict[str, Any]] = []
    for name in sorted(by_src.keys() | by_dst.keys()):
        s, d = by_src.get(name), by_dst.get(name)
        if s == d:
            continue
        problem = "missing" if d is None else "extra" if s is None else "different"
        if problem == "extra" and shard_key and list((d or {}).get("key", [])) == shard_key:
            if notes is not None:
                notes.append(SHARD_KEY_INDEX_NOTE.format(name=name, key=dict(shard_key)))
            continue
        fields = sorted(k for k in (s or {}).keys() | (d or {}).keys() if (s or {}).get(k) != (d or {}).get(k))
        if problem == "different" and fields == ["prepareUnique"]:
            # Either way round: a reverse sync (tasks/reverse.py) compares the destination as its source.
            has, lacks, side = (
                ((s or {}), (d or {}), "source")
                if "prepareUnique" in (s or {})
                else ((d or {}), (s or {}), "destination")
            )
            if lacks.get("prepareUnique") is None and has.get("prepareUnique") is False and has.get("unique"):
                if notes is not None:
                    notes.append(PREPARE_UNIQUE_NOTE.format(name=name, side=side))
                continue
        out.append(
            {
                "name": name,
                "problem": problem,
                "fields": fields if problem == "different" else [],
                "source": _index_json(s),
                "destination": _index_json(d),
            }
        )
    return out


def _index_json(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    out = dict(spec)
    out["key"] = {str(k): v for k, v in spec.get("key", [])}  # comparable_index keeps key order as pairs
    result: dict[str, Any] = jsonable(out)
    return result


def compare_options(src: CollectionSpec | None, dst: CollectionSpec | None) -> list[dict[str, Any]]:
    """Existence, kind and option differences (validator, collation, capped, view definition...)."""
    if src is None and dst is None:
        return []
    if src is None or dst is None:
        return [
            {
                "option": NAMESPACE,
                "problem": "missing" if dst is None else "extra",
                "source": src.kind if src else None,
                "destination": dst.kind if dst else None,
            }
        ]
    out: list[dict[str, Any]] = []
    if src.kind != dst.kind:
        out.append({"option": KIND, "problem": "different", "source": src.kind, "destination": dst.kind})
    for key in sorted(src.options.keys() | dst.options.keys()):
        s, d = src.options.get(key), dst.options.get(key)
        if key in src.options and key in dst.options and s == d:
            continue
        problem = "missing" if key not in dst.options else "extra" if key not in src.options else "different"
        out.append({"option": key, "problem": problem, "source": jsonable(s), "destination": jsonable(d)})
    return out


def compare_namespace(
    ns: str,
    src: CollectionSpec | None,
    dst: CollectionSpec | None,
    pending: PendingRestores,
    shard_key: list[tuple[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(index differences, option differences, notes) for one namespace; views have options only.

    A clustered collection's own TTL parked for the sync (``COLLECTION_TTL`` in the book) is compared as if
    it were already restored, as parked index TTLs are.
    """
    owed = pending.get((ns, COLLECTION_TTL))
    if dst is not None and owed and "expireAfterSeconds" in owed:
        dst = replace(dst, options={**dst.options, "expireAfterSeconds": owed["expireAfterSeconds"]})
    options = compare_options(src, dst)
    notes: list[str] = []
    indexes = compare_indexes(ns, src.indexes if src else [], dst.indexes if dst else [], pending, notes, shard_key)
    return indexes, options, notes
