"""What exists on a deployment: in-scope collections and views with options and indexes.

Why: clone, prechecks ("unsupported", "destination-data"), the sync's DDL
handling and verification all need the same normalised view of a
collection's options and index specifications.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pymongo import MongoClient

from tasks.namespaces import Namespace, NamespaceFilter

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Index spec fields that describe the server's bookkeeping, not the index.
INDEX_NOISE = frozenset({"v", "ns", "background", "ok"})
# Collection options that are read-only identity, not settings.
_OPTION_NOISE = frozenset({"uuid"})


@dataclass
class CollectionSpec:
    """One in-scope collection or view, as listCollections/listIndexes describe it."""

    ns: Namespace
    kind: str  # "collection", "view" or "timeseries"
    options: dict[str, Any] = field(default_factory=dict)
    indexes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_view(self) -> bool:
        return self.kind == "view"


@dataclass(frozen=True)
class Unsupported:
    """A namespace the pipeline cannot migrate, and why (reported, never dropped silently)."""

    ns: str
    reason: str
    severity: str = "warn"  # warn: skipped with a warning; fail: the migration must not start


def comparable_index(spec: dict[str, Any]) -> dict[str, Any]:
    """An index spec without server bookkeeping, with key order kept (it matters)."""
    out = {k: v for k, v in spec.items() if k not in INDEX_NOISE}
    out["key"] = list(dict(spec["key"]).items())
    return out


def comparable_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _OPTION_NOISE}


def list_specs(
    client: MongoClient[Any], nsfilter: NamespaceFilter, *, with_indexes: bool = True, workers: int = 1
) -> tuple[list[CollectionSpec], list[Unsupported]]:
    """Every in-scope namespace (views last, so their sources exist first) and the unsupported ones.

    One ``listCollections`` per database; with ``with_indexes`` one ``listIndexes`` per collection (no
    command lists several collections' indexes), on ``workers`` threads.
    """
    specs: list[CollectionSpec] = []
    unsupported: list[Unsupported] = []
    for db in sorted(client.list_database_names()):
        if not nsfilter.db_in_scope(db):
            continue
        for info in client[db].list_collections():
            name = info["name"]
            if not nsfilter.matches(db, name):
                continue
            ns = Namespace(db, name)
            kind = info.get("type", "collection")
            options = comparable_options(dict(info.get("options", {})))
            if kind == "timeseries" or "timeseries" in options:
                kind = "timeseries"
            reason = unsupported_reason(kind, options)
            if reason:
                unsupported.append(Unsupported(ns.full, reason, "warn"))
                continue
            specs.append(CollectionSpec(ns, "view" if kind == "view" else kind, options))
    if with_indexes:
        colls = [s for s in specs if not s.is_view]
        listed = for_each(lambda s: list(client[s.ns.db][s.ns.coll].list_indexes()), colls, workers, "list-indexes")
        for spec, indexes in zip(colls, listed, strict=True):
            spec.indexes = [comparable_index(dict(i)) for i in indexes]
    specs.sort(key=lambda s: (s.is_view, s.ns.db, s.ns.coll))
    return specs, unsupported


def existing_namespaces(client: MongoClient[Any], dbs: Iterable[str]) -> set[str]:
    """``db.coll`` of every collection and view in these databases: one ``listCollections`` per database."""
    return {f"{db}.{name}" for db in sorted(set(dbs)) for name in client[db].list_collection_names()}


def for_each(fn: Callable[[T], R], items: Sequence[T], workers: int, name: str) -> list[R]:
    """``fn`` of every item, on up to ``workers`` threads, results in the items' order; the first error is raised.

    Why: per-namespace reads and DDL (counts, index listings, index builds) are each a round trip; with
    thousands of namespaces, waiting for them one after another is most of the time on a remote server.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix=name) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()  # the first error stops what has not started
            raise


def collection_spec(client: MongoClient[Any], ns: Namespace) -> CollectionSpec | None:
    """One namespace's spec as :func:`list_specs` builds it, or None when it does not exist."""
    info = next(iter(client[ns.db].list_collections(filter={"name": ns.coll})), None)
    if info is None:
        return None
    options = comparable_options(dict(info.get("options", {})))
    kind = info.get("type", "collection")
    spec = CollectionSpec(ns, "view" if kind == "view" else kind, options)
    if not spec.is_view:
        spec.indexes = [comparable_index(dict(i)) for i in client[ns.db][ns.coll].list_indexes()]
    return spec


def unsupported_reason(kind: str, options: dict[str, Any]) -> str | None:
    """Why a namespace cannot be migrated by this pipeline, or None."""
    if "encryptedFields" in options:
        return (
            "Queryable Encryption collections are not migrated (their encrypted state collections are server-managed)"
        )
    if kind not in ("collection", "view", "timeseries"):
        return f"collections of type {kind!r} are not migrated"
    return None


def creation_options(spec: CollectionSpec) -> dict[str, Any]:
    """Options for create on the destination (views: viewOn + pipeline + collation)."""
    opts = dict(spec.options)
    opts.pop("autoIndexId", None)
    return opts


def estimated_docs(client: MongoClient[Any], ns: Namespace) -> int:
    """The collection's document count from its metadata (``count`` without a filter); 0 if unavailable.

    Not collStats: some servers (SecantusDB) walk the whole collection to answer it.
    """
    try:
        return int(client[ns.db][ns.coll].estimated_document_count())
    except Exception:  # noqa: BLE001 - an estimate only feeds planning, progress and ETA
        return 0
