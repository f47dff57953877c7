"""Turn change events into destination writes that converge when replayed.

Why: after a crash the sync replays every event after the last checkpoint, and
the clone it runs over is fuzzy.  Every data event therefore becomes a write
that converges over any later state of its document: a full-state write
(replace-with-upsert of the inserted, replacing or looked-up document, or a
delete), or with ``sync.update_mode: delta`` an update's changes as
assignments (tasks/delta.py), with the document looked up on the source where
those cannot be applied.  Applying any suffix of the stream, any number of
times, ends in the source's state.  Within a batch a full-state write voids
what came before it for that document, deltas follow it in order, and
different documents go to parallel lanes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from bson import decode
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, CollectionInvalid, OperationFailure

from tasks.catalog import collection_spec, comparable_options, unsupported_reason
from tasks.concurrency import WriteGate
from tasks.ddl import (
    IndexChange,
    build_indexes,
    converge_options,
    create_collection,
    create_views,
    index_for_sync,
    park_collection_ttl,
)
from tasks.delta import Delta, delta_of
from tasks.emptyts import any_empty_ts, insert_keeping_empty_ts, write_keeping_empty_ts
from tasks.errors import DocumentRejectedError, TerminalError, TransientError, classify
from tasks.idkey import id_key, same_bytes
from tasks.mongo import DATA_WRITE_CONCERN, RAW, is_mongos
from tasks.namespaces import Namespace, NamespaceFilter
from tasks.sharding import shard_collection

log = logging.getLogger(__name__)

SERIAL_MODES = frozenset({"capped", "collation"})  # every write, in source order
REWRITE_MODES = frozenset({"collation", "sharded"})  # a replacement is written as delete then insert
QE_STATE_PREFIX = "enxcol_."  # Queryable Encryption's state collections (enxcol_.<coll>.esc/.ecoc), server-managed
LANE_MIN_WRITES = 200  # a batch is split over another lane only for this many more writes
LOOKUP_BATCH = 1000  # documents looked up on the source per query (delta mode's fallback)
COPY_BATCH_BYTES = 8 * 1024 * 1024  # a collection copied afresh after a rename goes in inserts of this size
DATA_EVENTS = frozenset({"insert", "update", "replace", "delete"})
DDL_EVENTS = frozenset(
    {"create", "createIndexes", "dropIndexes", "drop", "dropDatabase", "modify", "rename", "invalidate"}
)
SHARDING_EVENTS = frozenset({"shardCollection", "reshardCollection", "refineCollectionShardKey"})
IGNORED_EVENTS = SHARDING_EVENTS | {"startIndexBuild", "abortIndexBuild"}


class ApplyObserver(Protocol):
    """Told what the sync wrote, after it is written (checks/continuous.py's DirtySet)."""

    def touched(self, ns: str, document_keys: list[Any]) -> None: ...

    def reset(self, ns: str, why: str) -> None: ...

    def reset_db(self, db: str, why: str) -> None: ...


@dataclass
class Write:
    """What one batch owes one document: a full-state write (a replacement, or None for a delete), then deltas.

    ``reset``: an earlier write of the same batch named this document by a value-equal ``_id`` of other
    bytes (``1`` then ``1.0``): the destination may hold the old form, so it is deleted first and the
    document written anew, which leaves the source's bytes.

    ``base`` False: no full-state write, only ``deltas`` on what the destination holds (update events in
    ``delta`` mode).  ``lookup``: the document's state is read from the source when the write is applied
    (a delta that update operators cannot express, or a namespace written as delete then insert).
    """

    ns: str
    id_value: Any
    doc: RawBSONDocument | None
    reset: bool = False
    deltas: list[Delta] = field(default_factory=list)
    base: bool = True
    lookup: bool = False


class WriteSet:
    """What one batch owes the destination: the last write per document, or every write in order.

    Documents are keyed by ``_id`` value (tasks/idkey.py), so value-equal ``_id``s are one document.  A
    *serial* namespace (capped, or with a non-simple default collation) keeps every write in source order
    instead: a capped collection's natural order and trimming follow insertion order, and under a
    collation two different strings can be one ``_id``, which no byte or value key can tell.
    """

    def __init__(self) -> None:
        self.latest: dict[tuple[str, Hashable], Write] = {}
        self.serial: dict[str, list[Write]] = {}

    def __bool__(self) -> bool:
        return bool(self.latest) or bool(self.serial)

    def __len__(self) -> int:
        return len(self.latest) + sum(len(v) for v in self.serial.values())

    def add(self, w: Write, *, serial: bool = False) -> None:
        if serial:
            self.serial.setdefault(w.ns, []).append(w)
            return
        key = (w.ns, id_key(w.id_value))
        before = self.latest.get(key)
        if before is not None and not w.base:
            # An update's delta goes on top of what the batch already owes the document, in order.
            before.deltas.extend(w.deltas)
            before.lookup = before.lookup or w.lookup
            return
        if before is not None:
            w.reset = before.reset or not same_bytes(before.id_value, w.id_value)
            del self.latest[key]  # re-inserted: the dict's order stays the order of last writes
        self.latest[key] = w

    def lanes(self, n: int) -> list[list[Write]]:
        """Split over ``n`` lanes: a document always to the same lane, a serial namespace whole to one."""
        out: list[list[Write]] = [[] for _ in range(n)]
        for key, w in self.latest.items():
            out[hash(key) % n].append(w)
        for ns, writes in self.serial.items():
            out[hash(ns) % n].extend(writes)
        return out


def _dollar_top_level(doc: Any) -> bool:
    """Whether a document has a top-level field whose name starts with ``$`` (cheap for raw BSON: a byte test
    first, the names decoded only when a ``$`` is there at all)."""
    if isinstance(doc, RawBSONDocument) and b"$" not in doc.raw:
        return False
    return any(str(k).startswith("$") for k in doc.keys())


_DUP_INDEX = re.compile(r" index: (\S+)")


def duplicate_id(err: Any) -> bool:
    """Whether a write error is a duplicate key on ``_id`` (not on another unique index).

    MongoDB 4.2+ attaches the index's ``keyPattern`` to a DuplicateKey (11000) write error
    (storage/duplicate_key_error_info.cpp); the errmsg names the index (``... index: NAME dup key: {...}``),
    which is what is read where ``keyPattern`` is missing.  A bare ``"_id_" in errmsg`` test took an index
    named ``account_id_1``, or a key value holding ``_id_``, for the ``_id`` index (found by the reverse
    sync's property test).
    """
    if err.get("code") not in (11000, 11001):
        return False
    pattern = err.get("keyPattern")
    if pattern is not None:
        return list(dict(pattern)) == ["_id"]
    m = _DUP_INDEX.search(str(err.get("errmsg", "")))
    return m is not None and m.group(1) == "_id_"


class _Replacement(RawBSONDocument):
    """A full document written as it is: always true, so pymongo's ``if replacement`` check does not decode it.

    Why: the truth value of a Mapping calls ``len()``, which makes a RawBSONDocument decode every field; the
    profile of the apply path (bench/NOTES.md) showed that decoding as its largest client-side cost, about
    26 of 30 microseconds per replacement.  The bytes sent are the same.
    """

    __slots__ = ()

    def __bool__(self) -> bool:
        return True


@dataclass
class ApplyStats:
    upserts: int = 0
    deletes: int = 0
    updates: int = 0  # update events (in lookup mode each one was a read of its document on the source)
    deltas: int = 0  # update events applied as their changes (delta mode)
    lookups: int = 0  # documents read from the source because a delta could not be applied
    ddl: int = 0
    skipped: int = 0
    index_changes: list[IndexChange] = field(default_factory=list)  # for the book of restores, in order


def event_ns(event: Any) -> tuple[str, str] | None:
    ns = event.get("ns")
    if not ns:
        return None
    return ns.get("db", ""), ns.get("coll", "") or ""


def rename_target(event: Any) -> Any:
    """A rename event's new name ``{db, coll}``: top level ``to``, or in ``operationDescription`` (7.0/8.0)."""
    return event.get("to") or (event.get("operationDescription") or {}).get("to") or {}


def data_write(event: Any, *, delta: bool = False) -> Write:
    """The converging write for a data event; ``delta``: the stream carries updates' changes, not documents."""
    db, coll = event_ns(event) or ("", "")
    op = event["operationType"]
    id_value = event["documentKey"]["_id"]
    ns = f"{db}.{coll}"
    if op == "update" and delta:
        # The update's changes, or a lookup when update operators cannot say them (tasks/delta.py).
        change = delta_of(event)
        if change is None:
            return Write(ns, id_value, None, base=False, lookup=True)
        return Write(ns, id_value, None, deltas=[change], base=False)
    doc = None if op == "delete" else event.get("fullDocument")
    # update with fullDocument None: the document was deleted after the update; deleting converges.
    return Write(ns, id_value, doc)


class Applier:
    """Applies batches of change events to the destination."""

    def __init__(
        self,
        dest: MongoClient[Any],
        nsfilter: NamespaceFilter,
        lanes: int = 4,
        source: MongoClient[Any] | None = None,
        excluded: frozenset[str] = frozenset(),
        shard_entries: list[Any] | None = None,
        supporting_indexes: bool = False,
        update_mode: str = "lookup",
    ) -> None:
        self.dst = dest
        self.update_mode = update_mode  # "delta": update events carry their changes (sync.update_mode)
        self.shard_entries = list(shard_entries or [])  # sharding.shardingEntries: for collections re-created
        self.supporting_indexes = supporting_indexes
        self.excluded = excluded  # namespaces the clone reported unsupported and skipped: the sync skips them too
        self.src = source
        self.nsfilter = nsfilter
        self.lanes = max(1, lanes)
        self._pool = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="apply") if self.lanes > 1 else None
        self._serial: dict[str, str] = {}  # namespace -> "" or why it is written in source order (is_serial)
        self._mongos: bool | None = None  # the destination is a mongos (asked once)
        self.halt: Exception | None = None  # set when the migration must stop writing at once (lock lost)
        self.observer: ApplyObserver | None = None  # told each document and namespace written, once written
        # None: a duplicate key on a unique index stops the sync (the forward destination holds its unique indexes
        # back until the cutover, so one means a real conflict).  A dict (the reverse sync, tasks/reverse.py):
        # the document is deferred and written again, as the source holds it then, once the batch is applied
        # (see retry_deferred); keyed by (ns, _id key), valued by the _id as the event carried it.
        self.deferred: dict[tuple[str, Hashable], tuple[str, Any]] | None = None
        self.deferrals = 0  # how many writes were deferred so far
        # How many lanes write at once is measured, not assumed (tasks/concurrency.py).
        self.gate = WriteGate(self.lanes, what="sync lanes", unit=("writes/s", 1.0))

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(wait=True)

    def in_scope(self, event: Any) -> bool:
        nsp = event_ns(event)
        if nsp is None:
            return True  # cluster-level events are inspected by the caller
        db, coll = nsp
        if not coll:
            return self.nsfilter.db_in_scope(db)
        return self.in_scope_ns(Namespace(db, coll))

    def apply(self, events: list[Any], stats: ApplyStats) -> None:
        """Apply events in order: data events batched between DDL barriers."""
        pending = WriteSet()
        keys: dict[str, list[Any]] = {}  # documentKey per namespace, for the observer
        for ev in events:
            op = ev["operationType"]
            if op in DATA_EVENTS:
                if not self.in_scope(ev):
                    stats.skipped += 1
                    continue
                if op == "update":
                    stats.updates += 1
                w = data_write(ev, delta=self.update_mode == "delta")
                if not w.base and self.write_mode(w.ns) in REWRITE_MODES:
                    w.lookup = True  # written as delete then insert: the whole document is needed
                pending.add(w, serial=self.is_serial(w.ns))
                if self.observer is not None:
                    keys.setdefault(w.ns, []).append(ev["documentKey"])
                continue
            if op in IGNORED_EVENTS:
                if op in SHARDING_EVENTS and self.in_scope(ev):
                    # The destination keeps the sharding it was given (sharding.shardingEntries): the source's
                    # own key changes nothing in the documents.
                    log.warning("%s on the source (%s): the destination keeps its own sharding", op, event_ns(ev))
                continue
            if op == "rename":
                self.flush(pending, stats)
                pending, keys = WriteSet(), self._observed(keys)
                self.apply_rename(ev, stats)
                self._observe_ddl(ev)
                continue
            if op in DDL_EVENTS:
                if not self.in_scope(ev):
                    stats.skipped += 1
                    continue
                self.flush(pending, stats)
                pending, keys = WriteSet(), self._observed(keys)
                self.apply_ddl(ev, stats)
                self._observe_ddl(ev)
        self.flush(pending, stats)
        self._observed(keys)
        if self.deferred:
            self.retry_deferred()

    def retry_deferred(self) -> int:
        """Write each deferred document again as the source holds it now; returns how many stay deferred.

        Why it converges: the source (the reverse sync's, the destination cluster) holds its unique indexes,
        so its current documents never collide with each other; a deferred document collides only with one
        the target still holds at an older state, and that document's own later events (applied in this or
        a later batch) release the value.  The current state is later than every event applied, so the events
        after it replay over it as after any lookup.  Documents still refused stay deferred (and in the
        checkpoint) and are tried again after the next batch; a drain waits for none to be left.
        """
        if not self.deferred:
            return 0
        owed, self.deferred = self.deferred, {}
        by_ns: dict[str, list[Write]] = {}
        for ns, id_value in owed.values():
            by_ns.setdefault(ns, []).append(Write(ns, id_value, None))
        try:
            for ns, ws in by_ns.items():
                db, _, coll = ns.partition(".")
                c = self.dst[db].get_collection(coll, codec_options=RAW, write_concern=DATA_WRITE_CONCERN)
                self._look_up(ns, ws)
                # Deleted first, all of them, then inserted: documents that swapped unique values (a lookup
                # writes each at its latest state) block each other only while both hold their old values.
                self._bulk(c, ns, [DeleteOne({"_id": w.id_value}) for w in ws], ordered=False)
                back = [w for w in ws if w.doc is not None]
                if any_empty_ts([w.doc for w in back]):
                    self._write_keeping_empty_ts(c, ns, back, "collation")  # one by one, as inserts
                elif back:
                    self._bulk(c, ns, [InsertOne(w.doc) for w in back], ordered=False)
        except BaseException:
            # Still owed, all of them (one may be deleted and not yet inserted): the sync retries a transient
            # error with this applier, and the next checkpoint must still list them.
            self.deferred = {**owed, **self.deferred}
            raise
        if self.deferred:
            log.info(
                "%d document(s) still meet a duplicate key on the destination: written once it is free",
                len(self.deferred),
            )
        return len(self.deferred)

    def _observed(self, keys: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Tell the observer which documents the last flush wrote; returns a fresh map."""
        if self.observer is not None:
            for ns, ks in keys.items():
                self.observer.touched(ns, ks)
        return {}

    def _observe_ddl(self, ev: Any) -> None:
        """A DDL event that replaces a namespace's documents wholesale voids what was proven about them."""
        if self.observer is None:
            return
        op = ev["operationType"]
        db, coll = event_ns(ev) or ("", "")
        if op == "dropDatabase":
            self.observer.reset_db(db, "dropDatabase")
        elif op in ("drop", "create"):
            self.observer.reset(f"{db}.{coll}", op)
        elif op == "rename":
            to = rename_target(ev)
            self.observer.reset(f"{db}.{coll}", "renamed away")
            self.observer.reset(f"{to.get('db', '')}.{to.get('coll', '')}", "renamed into, copied afresh")

    def is_serial(self, ns: str) -> bool:
        """Whether ``ns`` must be written in source order, every write: capped, or a non-simple collation."""
        return self.write_mode(ns) in SERIAL_MODES

    def write_mode(self, ns: str) -> str:
        """How ``ns`` is written on the destination:

        - ``""``: the last write per document, a replacement with upsert;
        - ``"capped"``: every write in source order (natural order and trimming follow insertion);
        - ``"collation"``: every write in source order, as delete then insert (see ``_apply_lane``);
        - ``"sharded"``: the last write per document, as delete then insert: an upsert through mongos needs
          the full shard key in its filter, and a filter with the new document's shard key misses the
          document when the source changed that field (the upsert would insert a second document with the
          same _id on another shard).

        Read once per namespace from the destination's catalog (created from the source's options; the
        shard key from mongos's ``config.collections``) and forgotten on every DDL event for it.
        """
        known = self._serial.get(ns)
        if known is None:
            db, _, coll = ns.partition(".")
            info = next(iter(self.dst[db].list_collections(filter={"name": coll})), None)
            opts = dict((info or {}).get("options") or {})
            collation = dict(opts.get("collation") or {})
            if opts.get("capped"):
                known = "capped"
            elif collation.get("locale", "simple") != "simple":
                known = "collation"
            else:
                known = "sharded" if self._shard_key(ns) else ""
            self._serial[ns] = known
        return known

    def _shard_key(self, ns: str) -> dict[str, Any] | None:
        """The destination's shard key of ``ns`` (mongos only; a replica set has no config.collections entry)."""
        if self._mongos is None:
            try:
                self._mongos = is_mongos(self.dst)
            except OperationFailure:
                self._mongos = False
        if not self._mongos:
            return None
        try:
            entry = self.dst["config"]["collections"].find_one({"_id": ns, "dropped": {"$ne": True}}, {"key": 1})
        except OperationFailure as exc:  # not allowed to read config: mongos will say if a write needs the key
            log.warning("%s: cannot read the destination's shard key (%s)", ns, exc.code)
            return None
        return dict(entry["key"]) if entry and entry.get("key") else None

    # -- data ---------------------------------------------------------------
    def flush(self, pending: WriteSet, stats: ApplyStats) -> None:
        if not pending:
            return
        # A lane is a bulk write per namespace, about 0.6 ms of the migrator's CPU whatever its size: a small batch
        # goes to fewer lanes (bench/NOTES.md, round 3).
        n = max(1, min(self.lanes, len(pending) // LANE_MIN_WRITES))
        lanes = [lane for lane in pending.lanes(n) if lane]
        if self._pool and len(lanes) > 1:
            futures = [self._pool.submit(self._apply_lane, lane) for lane in lanes]
            # Every lane ends before an error is raised: a lane still writing while the sync
            # reopens the stream and re-applies newer events could land an older state last.
            wait(futures)
            results = [f.result() for f in futures]
        else:
            results = [self._apply_lane(lane) for lane in lanes]
        for lane_stats in results:
            stats.upserts += lane_stats.upserts
            stats.deletes += lane_stats.deletes
            stats.deltas += lane_stats.deltas
            stats.lookups += lane_stats.lookups

    def _apply_lane(self, writes: list[Write]) -> ApplyStats:
        by_ns: dict[str, list[Write]] = {}
        for w in writes:
            by_ns.setdefault(w.ns, []).append(w)
        out = ApplyStats()
        for ns, ws in by_ns.items():
            db, _, coll = ns.partition(".")
            c = self.dst[db].get_collection(coll, codec_options=RAW, write_concern=DATA_WRITE_CONCERN)
            mode = self._serial.get(ns, "")
            looked_up = [w for w in ws if w.lookup]
            if any(w.deltas for w in ws) and any_empty_ts([w.doc for w in ws if w.doc is not None]):
                looked_up = [w for w in ws if w.lookup or w.deltas]  # written one by one: see _write_keeping_empty_ts
            if looked_up:
                self._look_up(ns, looked_up)
                out.lookups += len(looked_up)
            if any(w.deltas for w in ws):
                out.lookups += self._apply_with_deltas(c, ns, ws, mode)
            else:
                self._apply_full(c, ns, ws, mode)
            n_del = sum(1 for w in ws if w.base and w.doc is None)
            out.deletes += n_del
            out.deltas += sum(len(w.deltas) for w in ws)
            out.upserts += sum(1 for w in ws if w.base) - n_del
        return out

    def _apply_full(self, c: Any, ns: str, ws: list[Write], mode: str) -> None:
        """Full-state writes only: the last state of each document (in source order in a serial namespace)."""
        resets = [DeleteOne({"_id": w.id_value}) for w in ws if w.reset and w.doc is not None]
        if resets:  # the old byte form of a value-equal _id goes first (see Write.reset)
            self._bulk(c, ns, resets, ordered=False)
        if any_empty_ts([w.doc for w in ws if w.doc is not None]):
            self._write_keeping_empty_ts(c, ns, ws, mode)
        elif mode in REWRITE_MODES:
            # Under a collation two _id strings can be one document, and a replacement whose _id differs
            # in bytes from the stored one is refused (ImmutableField, 66: object_replace_executor.cpp
            # compares without the collation); through mongos see write_mode: delete, then insert.
            ops = [
                op
                for w in ws
                for op in (DeleteOne({"_id": w.id_value}), *([InsertOne(w.doc)] if w.doc is not None else []))
            ]
            self._bulk(c, ns, ops, ordered=True)
        else:
            ops = [op for w in ws for op in self._ops(w)]
            self._bulk(c, ns, ops, ordered=bool(mode) or len(ops) > len(ws))

    def _look_up(self, ns: str, writes: list[Write]) -> None:
        """Turn ``writes`` into full-state writes of the source's current documents (None where gone).

        The source's current state is later than every event of the batch, so writing it converges as an
        ``updateLookup`` document does; the events after it are replayed over it.  One query per 1,000
        documents (``_id`` by value: ``$in`` matches ``1`` and ``1.0`` alike, as the update did).
        """
        if self.src is None:
            raise TerminalError(f"{ns}: an update must be looked up on the source, and there is no source")
        db, _, coll = ns.partition(".")
        src = self.src[db].get_collection(coll, codec_options=RAW)
        for i in range(0, len(writes), LOOKUP_BATCH):
            chunk = writes[i : i + LOOKUP_BATCH]
            found = {id_key(d["_id"]): d for d in src.find({"_id": {"$in": [w.id_value for w in chunk]}})}
            for w in chunk:
                w.doc = found.get(id_key(w.id_value))
                w.base, w.deltas, w.lookup = True, [], False

    def _apply_with_deltas(self, c: Any, ns: str, ws: list[Write], mode: str) -> int:
        """Full-state writes and the deltas after them: in order per document.

        A delta the destination refuses (its document changed type in a later event: PathNotViable) or
        that matches nothing (the document is not there) is not an error: that document is looked up on
        the source and written whole afterwards.  Returns how many documents were looked up.

        Order matters only within a document (every write of a capped namespace in source order, one bulk).
        Elsewhere plain deletes go in one unordered bulk and the documents whose writes are all updates in one
        ordered bulk of updates only: pymongo sends an ordered bulk as a command per run of one kind, so
        deletes among the updates would cost a round trip each.
        """
        resets = [DeleteOne({"_id": w.id_value}) for w in ws if w.reset and w.base and w.doc is not None]
        if resets:
            self._bulk(c, ns, resets, ordered=False)
        if mode in SERIAL_MODES:
            groups = [ws]
        else:
            deletes = [w for w in ws if w.base and w.doc is None and not w.deltas]
            if deletes:
                self._bulk(c, ns, [DeleteOne({"_id": w.id_value}) for w in deletes], ordered=False)
            updates = [w for w in ws if not w.base or (w.doc is not None and not _dollar_top_level(w.doc))]
            seen = {id(w) for w in (*deletes, *updates)}
            groups = [updates, [w for w in ws if id(w) not in seen]]
        redo: dict[int, Write] = {}
        executed_updates = matched = 0  # update statements run without error, and the documents they matched
        for group in groups:
            if group:
                ran, hit = self._ordered(c, ns, group, redo)
                executed_updates, matched = executed_updates + ran, matched + hit
        if matched < executed_updates:
            # Some delta matched no document (a delete base, or the document is not on the destination).
            maybe = [w for w in ws if w.deltas and id(w) not in redo and (not w.base or w.doc is None)]
            there: set[Any] = set()
            for i in range(0, len(maybe), LOOKUP_BATCH):
                ids = [w.id_value for w in maybe[i : i + LOOKUP_BATCH]]
                there.update(id_key(d["_id"]) for d in c.find({"_id": {"$in": ids}}, {"_id": 1}))
            missing = [w for w in maybe if id_key(w.id_value) not in there]
            redo.update((id(w), w) for w in missing)
            log.debug("%s: %d of %d deltas matched no document: looked up", ns, len(missing), len(maybe))
        if not redo:
            return 0
        again = list(redo.values())
        self._look_up(ns, again)
        for w in again:
            w.reset = False
        self._apply_full(c, ns, again, mode)
        return len(again)

    def _ordered(self, c: Any, ns: str, ws: list[Write], redo: dict[int, Write]) -> tuple[int, int]:
        """One ordered bulk of ``ws``'s writes and deltas; a refused delta's document goes to ``redo`` and the
        bulk goes on after it.  Returns the update statements run without error and the documents they matched."""
        ops: list[Any] = []
        owner: list[Write | None] = []  # per op: the write whose delta it is (None: a full-state write)
        for w in ws:
            if w.base:
                for op in self._ops(w):
                    ops.append(op)
                    owner.append(None)
            for d in w.deltas:
                for op in d.ops(w.id_value):
                    ops.append(op)
                    owner.append(w)
        executed_updates = matched = 0
        start = 0
        while start < len(ops):
            if self.halt is not None:
                raise self.halt
            chunk = ops[start:]
            try:
                with self.gate.slot(len(chunk)):
                    res = c.bulk_write(chunk, ordered=True, bypass_document_validation=True)
                matched += res.matched_count + res.upserted_count
                executed_updates += sum(1 for op in chunk if isinstance(op, (UpdateOne, ReplaceOne)))
                break
            except BulkWriteError as exc:
                details = exc.details
                errs = details.get("writeErrors") or []
                at = int(errs[0].get("index", 0)) if errs else len(chunk)
                matched += int(details.get("nMatched", 0)) + int(details.get("nUpserted", 0))
                executed_updates += sum(1 for op in chunk[:at] if isinstance(op, (UpdateOne, ReplaceOne)))
                failed = owner[start + at] if errs else None
                if failed is not None:
                    redo[id(failed)] = failed  # the delta does not apply to what the destination holds: look it up
                    log.debug("%s: delta for _id %r refused (%s): looked up", ns, failed.id_value, errs[0].get("code"))
                    wces = details.get("writeConcernErrors") or []
                    if wces:
                        raise TransientError(
                            f"{ns}: write concern error on the destination: "
                            f"{wces[0].get('codeName') or wces[0].get('code')}"
                        ) from None
                else:
                    self._raise_rejected(ns, chunk, exc)  # raises unless harmless
                if not errs:
                    break
                start += at + 1
        return executed_updates, matched

    def _write_keeping_empty_ts(self, c: Any, ns: str, ws: list[Write], mode: str) -> None:
        """The writes of one namespace, in order, one command each with bypassEmptyTsReplacement: some hold a
        top-level Timestamp(0, 0) that a bulk write would let the server replace (tasks/emptyts.py)."""
        for w in ws:
            if self.halt is not None:
                raise self.halt
            try:
                if w.doc is None or mode in REWRITE_MODES or w.reset:
                    write_keeping_empty_ts(c, ns, "delete", w.id_value, None)
                if w.doc is not None:
                    kind = "insert" if mode in REWRITE_MODES or w.reset else "upsert"
                    write_keeping_empty_ts(c, ns, kind, w.id_value, w.doc)
            except BulkWriteError as exc:
                self._raise_rejected(ns, [DeleteOne({"_id": w.id_value})], exc)

    @classmethod
    def _ops(cls, w: Write) -> list[Any]:
        """A full-state write's operations: one, or delete then insert for a document a replacement cannot
        carry (a top-level field named with ``$``: the server refuses it in a replacement, DollarPrefixedFieldName
        52, "Consider using an aggregation pipeline with $replaceWith"; MongoDB 5.0+ field-names page)."""
        if w.doc is not None and _dollar_top_level(w.doc):
            return [DeleteOne({"_id": w.id_value}), InsertOne(w.doc)]
        return [cls._op(w)]

    @staticmethod
    def _op(w: Write) -> DeleteOne | ReplaceOne[Any]:
        if w.doc is None:
            return DeleteOne({"_id": w.id_value})
        doc = _Replacement(w.doc.raw, RAW) if isinstance(w.doc, RawBSONDocument) else w.doc
        return ReplaceOne({"_id": w.id_value}, doc, upsert=True)

    def _bulk(self, c: Any, ns: str, ops: list[Any], *, ordered: bool) -> None:
        """One bulk write through the concurrency gate; ordered ones go on past a harmless error."""
        while ops:
            if self.halt is not None:
                raise self.halt
            try:
                with self.gate.slot(len(ops)):
                    c.bulk_write(ops, ordered=ordered, bypass_document_validation=True)
                return
            except BulkWriteError as exc:
                self._raise_rejected(ns, ops, exc)  # raises unless every error was harmless
                errs = exc.details.get("writeErrors") or []
                if not ordered or not errs:
                    return
                ops = ops[int(errs[-1].get("index", len(ops))) + 1 :]  # an ordered bulk stopped there

    def _raise_rejected(self, ns: str, ops: list[Any], exc: BulkWriteError) -> None:
        errs = exc.details.get("writeErrors", [])
        # Duplicate _id on a racing upsert: the document exists, which is what we wanted.
        real = [e for e in errs if not duplicate_id(e)]
        if self.deferred is not None:
            real = [e for e in real if not self._defer(ns, ops, e)]
        if not real:
            wces = exc.details.get("writeConcernErrors") or []
            if wces:
                # Applied, but not replicated as the write concern asked: not safe to checkpoint past it.
                # The batch is redone from the last checkpoint, which converges.
                raise TransientError(
                    f"{ns}: write concern error on the destination: {wces[0].get('codeName') or wces[0].get('code')}"
                )
            return
        first = real[0]
        op = ops[first.get("index", 0)]
        target = getattr(op, "_filter", None) or getattr(op, "_doc", None) or {}
        bad_id = target.get("_id", "?")
        raise DocumentRejectedError(
            f"{ns}: the destination rejected the write for _id {bad_id!r}: {str(first.get('errmsg', ''))[:200]}",
            remedy="fix the document on the source or the destination's constraint, then resume",
            ns=ns,
            doc_id=bad_id,
        )

    def _defer(self, ns: str, ops: list[Any], err: dict[str, Any]) -> bool:
        """A duplicate key on a unique index other than ``_id`` (DuplicateKey 11000, and 11001 of old servers):
        the document is deferred (see retry_deferred).  False for any other error."""
        if err.get("code") not in (11000, 11001):
            return False
        op = ops[int(err.get("index", 0))]
        target = getattr(op, "_filter", None) or getattr(op, "_doc", None) or {}
        if "_id" not in target:
            return False
        assert self.deferred is not None
        self.deferred[(ns, id_key(target["_id"]))] = (ns, target["_id"])
        self.deferrals += 1
        log.debug("%s: _id %r meets a duplicate key (%s): deferred", ns, target["_id"], str(err.get("errmsg"))[:120])
        return True

    # -- DDL ----------------------------------------------------------------
    def apply_rename(self, ev: Any, stats: ApplyStats) -> None:
        """A rename (also how ``$out`` and mapReduce replace their target), followed by copying afresh.

        Shape (MongoDB 7.0/8.0 change events, ``rename``): ``ns`` is the old name, ``to`` (top level and in
        ``operationDescription``) the new one; ``dropTarget`` is there when a collection of that name was
        replaced, which gets no drop event of its own.

        The old name is dropped on the destination and the new one copied from the source as it is now;
        the events after the rename then converge it, as they converge the initial copy.  Renaming on the
        destination instead would not be safe: an update read just before the rename looks its document
        up under the old name, finds nothing and becomes a delete; a replay from a checkpoint taken before
        the rename re-creates the old name from part of its events and the rename would put that part
        over the whole.  A temporary or out-of-filter old name (``$out``'s ``tmp.agg_out.*``) is just a
        source; a new name out of the filter only drops the old one.
        """
        if isinstance(ev, RawBSONDocument):
            ev = decode(ev.raw)
        db, coll = event_ns(ev) or ("", "")
        to = rename_target(ev)
        old, new = Namespace(db, coll), Namespace(str(to.get("db", "")), str(to.get("coll", "")))
        old_in, new_in = self.in_scope_ns(old), bool(new.coll) and self.in_scope_ns(new)
        if not old_in and not new_in:
            stats.skipped += 1
            return
        stats.ddl += 1
        log.info("DDL rename %s -> %s", old, new)
        for ns in (old.full, new.full):
            self._serial.pop(ns, None)
        if old_in:
            self.dst[old.db].drop_collection(old.coll)
            stats.index_changes.append(IndexChange("drop_ns", old.full))
        if new_in:
            self._copy_anew(new, stats)

    def in_scope_ns(self, ns: Namespace) -> bool:
        return ns.full not in self.excluded and not ns.coll.startswith(QE_STATE_PREFIX) and self.nsfilter.matches_ns(ns)

    def _copy_anew(self, ns: Namespace, stats: ApplyStats) -> None:
        """Replace the destination's ``ns`` with a copy of the source's as it is now: options (sharded again as
        configured), documents (raw BSON, empty timestamps kept), indexes in their sync-safe form.  Gone from
        the source again, or not migratable: only dropped here."""
        if self.src is None:
            raise TerminalError(f"{ns}: renamed into the migration's namespaces, and no source to copy it from")
        self.dst[ns.db].drop_collection(ns.coll)
        stats.index_changes.append(IndexChange("drop_ns", ns.full))
        spec = collection_spec(self.src, ns)
        if spec is None:
            return
        reason = unsupported_reason(spec.kind, spec.options)
        if reason:
            log.warning("%s: renamed into the migration's namespaces but not migrated: %s", ns, reason)
            return
        if spec.is_view:
            create_views(self.dst, [spec])
            return
        stats.index_changes.extend(create_collection(self.dst, spec))
        self._shard_again(ns)
        src_coll = self.src[ns.db].get_collection(ns.coll, codec_options=RAW)
        dst_coll = self.dst[ns.db].get_collection(ns.coll, codec_options=RAW, write_concern=DATA_WRITE_CONCERN)
        batch: list[RawBSONDocument] = []
        size = 0
        for doc in src_coll.find({}, batch_size=2000).sort("$natural", 1):
            batch.append(doc)
            size += len(doc.raw)
            if size >= COPY_BATCH_BYTES:
                self._insert_copy(dst_coll, ns.full, batch)
                stats.upserts += len(batch)
                batch, size = [], 0
        if batch:
            self._insert_copy(dst_coll, ns.full, batch)
            stats.upserts += len(batch)
        stats.index_changes.extend(build_indexes(self.dst, ns, spec.indexes))
        log.info("%s copied afresh from the source after a rename into the migration's namespaces", ns)

    def _insert_copy(self, coll: Any, ns: str, batch: list[RawBSONDocument]) -> None:
        if any_empty_ts(batch):
            if self.halt is not None:
                raise self.halt
            try:
                insert_keeping_empty_ts(coll, ns, batch, ordered=True)
            except BulkWriteError as exc:
                self._raise_rejected(ns, [InsertOne(d) for d in batch], exc)
        else:
            self._bulk(coll, ns, [InsertOne(d) for d in batch], ordered=True)

    def _shard_again(self, ns: Namespace) -> None:
        """A collection (re-)created by the sync is sharded as the config asks, before any data arrives."""
        entries = [e for e in self.shard_entries if f"{e.database}.{e.collection}" == ns.full]
        if entries:
            shard_collection(self.dst, entries, self.supporting_indexes)

    def apply_ddl(self, ev: Any, stats: ApplyStats) -> None:
        if isinstance(ev, RawBSONDocument):
            ev = decode(ev.raw)  # DDL descriptions are small: plain dicts are easier to rewrite
        op = ev["operationType"]
        db, coll = event_ns(ev) or ("", "")
        desc = dict(ev.get("operationDescription") or {})
        d = self.dst[db]
        stats.ddl += 1
        log.info("DDL %s on %s.%s", op, db, coll)
        for ns in [n for n in self._serial if n == f"{db}.{coll}" or (not coll and n.startswith(f"{db}."))]:
            del self._serial[ns]  # capped or collation may differ from here on: read the catalog again
        if op == "create":
            self._apply_create(db, coll, desc, stats)
        elif op == "drop":
            d.drop_collection(coll)
            stats.index_changes.append(IndexChange("drop_ns", f"{db}.{coll}"))
        elif op == "dropDatabase":
            for name in d.list_collection_names():
                if self.nsfilter.matches(db, name):
                    d.drop_collection(name)
            stats.index_changes.append(IndexChange("drop_db", db))
        elif op == "createIndexes":
            specs = self._source_index_specs(db, coll, list(desc.get("indexes", [])))
            stats.index_changes.extend(build_indexes(self.dst, Namespace(db, coll), specs))
        elif op == "dropIndexes":
            for spec in desc.get("indexes", []):
                try:
                    d.command({"dropIndexes": coll, "index": spec["name"]})
                except OperationFailure as exc:
                    if exc.code not in (27, 26):  # IndexNotFound, NamespaceNotFound
                        raise
                stats.index_changes.append(IndexChange("drop", f"{db}.{coll}", spec["name"]))
        elif op == "modify":
            self._apply_coll_mod(db, coll, desc, stats)
        elif op == "invalidate":
            raise TerminalError("the change stream was invalidated", remedy="restart the migration")

    def _apply_create(self, db: str, coll: str, desc: dict[str, Any], stats: ApplyStats) -> None:
        """Create the collection with the event's options; one that exists already converges to them."""
        # `temp` marks $out's staging collection (create event of MongoDB 7.0/8.0); it is renamed away later.
        ns = Namespace(db, coll)
        opts = comparable_options({k: v for k, v in desc.items() if k not in ("idIndex", "temp")})
        opts, changes = park_collection_ttl(ns, opts)
        stats.index_changes.extend(changes)
        try:
            self.dst[db].command({"create": coll, **opts})
        except (OperationFailure, CollectionInvalid) as exc:
            if getattr(exc, "code", None) != 48:
                err = classify(exc, f"{db}.{coll}")
                if err.transient:  # an election or a network error: the sync retries from its checkpoint
                    raise err from None
                raise TerminalError(f"{db}.{coll}: cannot apply create on the destination: {exc}") from None
            converge_options(self.dst, ns, opts, recreate=True)
        self._shard_again(ns)

    def _source_index_specs(self, db: str, coll: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The source's current spec of each new index: some servers' events omit options (unique, TTL).

        An index the source no longer has (dropped again, or its collection renamed, as ``$out`` does
        with its staging collection) is built as the event describes it; what follows converges it.
        """
        if self.src is None:
            return specs
        current = {i["name"]: dict(i) for i in self.src[db][coll].list_indexes()}
        return [current.get(str(s.get("name")), s) for s in specs]

    def _apply_coll_mod(self, db: str, coll: str, desc: dict[str, Any], stats: ApplyStats) -> None:
        """collMod on the destination, with the index rules of the migration.

        An index change (named by ``name`` or, as users often run it and MongoDB's oplog records it, by
        ``keyPattern``) keeps the destination's index non-unique and its TTL parked, and books what
        cutover owes instead: the new expiry, or the uniqueness the source converted it to.
        """
        cmd: dict[str, Any] = {"collMod": coll}
        for k, v in desc.items():
            if k == "index":
                idx, restore = index_for_sync(dict(v))
                idx.pop("prepareUnique", None)
                name = idx.get("name") or self._index_name(db, coll, idx.get("keyPattern"))
                if restore and name:
                    stats.index_changes.append(IndexChange("modify", f"{db}.{coll}", str(name), restore))
                if len(idx) > 1 + ("name" in idx and "keyPattern" in idx):
                    cmd["index"] = idx
            elif k == "expireAfterSeconds":  # a clustered collection's own TTL: parked, booked for cutover
                parked, changes = park_collection_ttl(Namespace(db, coll), {k: v})
                stats.index_changes.extend(changes)
                cmd[k] = parked[k]
            elif k not in ("uuid",):
                cmd[k] = v
        if len(cmd) > 1:
            self.dst[db].command(cmd)

    def _index_name(self, db: str, coll: str, key: Any) -> str | None:
        """The name of the destination's index on ``key`` (the same spec as the source's, built from it)."""
        if not key:
            return None
        want = list(dict(key).items())
        for spec in self.dst[db][coll].list_indexes():
            if list(dict(spec["key"]).items()) == want:
                return str(spec["name"])
        return None
