"""The destination's catalog: collections with their options, indexes in their sync-safe form, views, and
the index restores owed at cutover.

Why: the clone (after the copy) and the sync (on DDL events) build the same catalog the same way, and the
cutover undoes exactly what they held back.  Unique indexes are built non-unique and TTL indexes with a
parked expiry while the data is in flux (a fuzzy copy and an out-of-order catch-up hold transient
duplicates; the destination must delete nothing the source still has), and each such index is booked,
by namespace and name, in the order the source changed it, so a drop and re-create in one batch, a
``collMod`` or a dropped collection leave the book exactly right.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient
from pymongo.errors import CollectionInvalid, OperationFailure

from tasks.catalog import INDEX_NOISE, CollectionSpec, creation_options
from tasks.errors import TerminalError
from tasks.namespaces import Namespace

log = logging.getLogger(__name__)

TTL_PARKED_SECONDS = 2147483647  # TTL held off during the migration (about 68 years)
NAMESPACE_EXISTS = 48
# Collection options collMod can change (MongoDB manual, "collMod", 7.0/8.0).
COLLMOD_OPTIONS = frozenset(
    {"validator", "validationLevel", "validationAction", "changeStreamPreAndPostImages", "expireAfterSeconds"}
)
# What an absent option means, for the ones collMod resets by value.
OPTION_DEFAULTS: dict[str, Any] = {"validator": {}, "validationLevel": "strict", "validationAction": "error"}

COLLECTION_TTL = "(collection)"
"""The book's name for a clustered collection's own expireAfterSeconds (not an index)."""
Restore = dict[str, Any]
"""What cutover owes one index: ``{"ns", "name", "unique"?: True, "expireAfterSeconds"?: N}``."""


def index_for_sync(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The index to build during the migration, and what to restore at cutover (or None).

    Unique indexes are built non-unique (a fuzzy copy and an out-of-order catch-up
    can hold transient duplicates, as mongosync does); TTL indexes get a parked
    expireAfterSeconds so the destination deletes nothing the source still has.
    """
    build = {k: v for k, v in spec.items() if k not in INDEX_NOISE}
    restore: dict[str, Any] = {}
    if build.get("unique") and build.get("name") != "_id_":
        build.pop("unique")
        restore["unique"] = True
    if "expireAfterSeconds" in build:
        restore["expireAfterSeconds"] = build["expireAfterSeconds"]
        build["expireAfterSeconds"] = TTL_PARKED_SECONDS
    return build, (restore or None)


# -- the book of restores -------------------------------------------------------


@dataclass(frozen=True)
class IndexChange:
    """One change to the restores owed at cutover, recorded in the order the source made it.

    ``set``: the index was (re)built; ``fields`` is all it owes now (empty: nothing).  ``modify``: a
    collMod changed what it owes (merged in).  ``drop``: the index is gone.  ``drop_ns`` / ``drop_db``:
    every index of a collection / database is gone (``ns`` is then the collection or the database).
    """

    kind: str
    ns: str
    name: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


def book_changes(restores: Iterable[Restore], changes: Iterable[IndexChange]) -> list[Restore]:
    """The restores owed after ``changes``, applied in order to the stored ``restores``."""
    book: dict[tuple[str, str], Restore] = {(r["ns"], r["name"]): dict(r) for r in restores}
    for c in changes:
        key = (c.ns, c.name)
        if c.kind == "set":
            book.pop(key, None)
            if c.fields:
                book[key] = {"ns": c.ns, "name": c.name, **c.fields}
        elif c.kind == "modify":
            merged = {**book.get(key, {"ns": c.ns, "name": c.name}), **c.fields}
            book[key] = merged
        elif c.kind == "drop":
            book.pop(key, None)
        elif c.kind == "drop_ns":
            book = {k: v for k, v in book.items() if k[0] != c.ns}
        elif c.kind == "drop_db":
            book = {k: v for k, v in book.items() if not k[0].startswith(f"{c.ns}.")}
        else:  # pragma: no cover - the kinds above are all there are
            raise ValueError(f"unknown index change {c.kind!r}")
    return list(book.values())


# -- building -------------------------------------------------------------------------


def build_indexes(dst: MongoClient[Any], ns: Namespace, indexes: list[dict[str, Any]]) -> list[IndexChange]:
    """Create indexes on the destination in their sync-safe form; return each one's entry for the book."""
    changes: list[IndexChange] = []
    models = []
    for spec in indexes:
        if spec.get("name") == "_id_" or spec.get("clustered"):
            continue
        build, restore = index_for_sync(spec)
        key = build.pop("key")
        key_list = list(key.items()) if isinstance(key, Mapping) else [tuple(k) for k in key]
        models.append({"key": dict(key_list), **build})
        changes.append(IndexChange("set", ns.full, str(spec["name"]), restore or {}))
    if models:
        try:
            dst[ns.db].command({"createIndexes": ns.coll, "indexes": models})
        except OperationFailure as exc:
            # One at a time, so a single unsupported index is named and the rest still get built.
            for m in models:
                try:
                    dst[ns.db].command({"createIndexes": ns.coll, "indexes": [m]})
                except OperationFailure as one:
                    if one.code in (85, 86):  # IndexOptionsConflict / IndexKeySpecsConflict: already there
                        continue
                    raise TerminalError(
                        f"{ns}: cannot build index {m.get('name')!r} on the destination: {one.details.get('errmsg') if one.details else one}"
                    ) from None
            log.debug("batch index build fell back to one-by-one: %s", exc)
    return changes


def park_collection_ttl(ns: Namespace, options: dict[str, Any]) -> tuple[dict[str, Any], list[IndexChange]]:
    """A clustered collection's own ``expireAfterSeconds``, parked like an index TTL and booked for cutover.

    A TTL on the collection deletes on the destination documents the source may still hold (its TTL
    monitor runs on its own clock); it gets its real value at cutover.  ``"off"`` deletes nothing.
    """
    ttl = options.get("expireAfterSeconds")
    if ttl is None or ttl == "off":
        return options, [IndexChange("set", ns.full, COLLECTION_TTL, {})] if ttl == "off" else []
    parked = {**options, "expireAfterSeconds": TTL_PARKED_SECONDS}
    return parked, [IndexChange("set", ns.full, COLLECTION_TTL, {"expireAfterSeconds": ttl})]


def create_collection(dst: MongoClient[Any], spec: CollectionSpec) -> list[IndexChange]:
    """Create a collection with its source options (a collection TTL parked); one that exists is brought to
    them.  Returns what the book of restores owes for it."""
    opts, changes = park_collection_ttl(spec.ns, creation_options(spec))
    try:
        # No listCollections first (the driver's check_exists): a collection that exists answers
        # NamespaceExists (48) and is converged below; one round trip per collection, not two.
        dst[spec.ns.db].create_collection(spec.ns.coll, check_exists=False, **opts)
    except CollectionInvalid:
        converge_options(dst, spec.ns, opts)
    except OperationFailure as exc:
        if exc.code != NAMESPACE_EXISTS:
            raise TerminalError(
                f"cannot create {spec.ns} on the destination: {exc.details.get('errmsg') if exc.details else exc}"
            ) from None
        converge_options(dst, spec.ns, opts)
    return changes


def converge_options(dst: MongoClient[Any], ns: Namespace, wanted: dict[str, Any], *, recreate: bool = False) -> None:
    """Make an existing collection's options those of ``wanted``: collMod what it can change, else refuse.

    What collMod cannot change (capped, the default collation, a clustered index) must already be as
    wanted; a difference there is a TerminalError naming the namespace and the option, unless
    ``recreate``: for a ``create`` event, the collection is dropped and created as the event says (every
    document of a collection created after the change stream's start point comes back through its own
    events; a replayed create that a later drop and create supersede must not stop the sync).  Sizes the
    server rounds (a capped collection's ``size``) and bookkeeping (``idIndex``, ``uuid``) are not compared.
    """
    info = next(iter(dst[ns.db].list_collections(filter={"name": ns.coll})), None)
    if info is None:
        dst[ns.db].create_collection(ns.coll, **wanted)
        return
    have = dict(info.get("options") or {})
    fixed = [k for k in ("capped", "clusteredIndex", "timeseries") if bool(wanted.get(k)) != bool(have.get(k))]
    want_coll, have_coll = dict(wanted.get("collation") or {}), dict(have.get("collation") or {})
    if any(have_coll.get(k) != v for k, v in want_coll.items()) or (
        not want_coll and have_coll.get("locale", "simple") != "simple"
    ):
        fixed.append("collation")
    if fixed and recreate:
        log.warning("%s: re-created as its create event says (%s differed)", ns, ", ".join(fixed))
        dst[ns.db].drop_collection(ns.coll)
        dst[ns.db].create_collection(ns.coll, **wanted)
        return
    if fixed:
        key = fixed[0]
        raise TerminalError(
            f"{ns}: exists on the destination with another {key} ({have.get(key)!r}; the source has "
            f"{wanted.get(key)!r}), which collMod cannot change",
            remedy="drop it on the destination (or exclude it) and restart the migration",
        )
    cmd: dict[str, Any] = {}
    for key in COLLMOD_OPTIONS:
        want = wanted.get(key, OPTION_DEFAULTS.get(key))
        if want is not None and have.get(key, OPTION_DEFAULTS.get(key)) != want:
            cmd[key] = want
    if cmd:
        log.info("%s: bringing the destination's options to the source's (%s)", ns, ", ".join(sorted(cmd)))
        dst[ns.db].command({"collMod": ns.coll, **cmd})


def create_views(dst: MongoClient[Any], views: list[CollectionSpec]) -> None:
    """Create views, retrying in rounds so a view on another view finds its source."""
    pending = list(views)
    for _ in range(len(pending) + 1):
        if not pending:
            return
        left = []
        for v in pending:
            opts = creation_options(v)
            try:
                dst[v.ns.db].command({"create": v.ns.coll, **opts})
            except OperationFailure as exc:
                if exc.code == NAMESPACE_EXISTS:
                    continue
                left.append(v)
        if len(left) == len(pending):
            break
        pending = left
    if pending:
        raise TerminalError(f"cannot create views on the destination: {', '.join(v.ns.full for v in pending)}")


# -- cutover ----------------------------------------------------------------------------


def restore_index(dst: MongoClient[Any], r: Restore) -> bool:
    """At cutover: give one index its real expiry and make it unique again; False when it is gone.

    Idempotent (a cutover that died half-way redoes it): what the index already has is not asked again.
    """
    ns = Namespace.parse(r["ns"])
    if r["name"] == COLLECTION_TTL:
        info = next(iter(dst[ns.db].list_collections(filter={"name": ns.coll})), None)
        if info is None:
            return False
        if dict(info.get("options") or {}).get("expireAfterSeconds") != r["expireAfterSeconds"]:
            dst[ns.db].command({"collMod": ns.coll, "expireAfterSeconds": r["expireAfterSeconds"]})
        return True
    db = dst[ns.db]
    current = (
        next((dict(i) for i in db[ns.coll].list_indexes() if i["name"] == r["name"]), None)
        if ns.coll in db.list_collection_names(filter={"name": ns.coll})
        else None
    )
    if current is None:
        return False
    if "expireAfterSeconds" in r and current.get("expireAfterSeconds") != r["expireAfterSeconds"]:
        db.command({"collMod": ns.coll, "index": {"name": r["name"], "expireAfterSeconds": r["expireAfterSeconds"]}})
    if r.get("unique") and not current.get("unique"):
        db.command({"collMod": ns.coll, "index": {"name": r["name"], "prepareUnique": True}})
        try:
            db.command({"collMod": ns.coll, "index": {"name": r["name"], "unique": True}})
        except OperationFailure as exc:
            raise TerminalError(
                f"{ns}: index {r['name']!r} cannot be made unique again: the destination holds duplicates ({exc.code})",
                remedy="the destination differs from the source; run `livemigrate verify` to see where",
            ) from None
    return True


def restore_indexes(dst: MongoClient[Any], restores: list[Restore]) -> list[str]:
    """Restore every owed index in turn (the cutover itself strikes each off the book as it goes:
    ``Migration._restore_indexes``).  Returns the indexes restored, as ``db.coll.name``."""
    return [f"{r['ns']}.{r['name']}" for r in restores if restore_index(dst, r)]
