"""Turn change events into destination writes that converge when replayed.

Why: after a crash the sync replays every event after the last checkpoint, and
the clone it runs over is fuzzy.  Every data event therefore becomes a
full-state write (replace-with-upsert of the looked-up document, or a delete),
so applying any suffix of the stream, any number of times, ends in the
source's state.  Within a batch only the last write per document matters, and
different documents go to parallel lanes.
"""

from __future__ import annotations

import logging
import zlib
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from bson import decode, encode
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, MongoClient, ReplaceOne
from pymongo.errors import BulkWriteError, CollectionInvalid, OperationFailure

from tasks.catalog import index_for_sync
from tasks.clone import build_indexes
from tasks.concurrency import WriteGate
from tasks.errors import DocumentRejectedError, NamespaceChangedError, TerminalError, TransientError, classify
from tasks.mongo import DATA_WRITE_CONCERN, RAW
from tasks.namespaces import Namespace, NamespaceFilter

log = logging.getLogger(__name__)

DATA_EVENTS = frozenset({"insert", "update", "replace", "delete"})
DDL_EVENTS = frozenset(
    {"create", "createIndexes", "dropIndexes", "drop", "dropDatabase", "modify", "rename", "invalidate"}
)
IGNORED_EVENTS = frozenset(
    {"shardCollection", "reshardCollection", "refineCollectionShardKey", "startIndexBuild", "abortIndexBuild"}
)


@dataclass
class Write:
    """The full-state write for one document: a replacement, or None for a delete."""

    ns: str
    id_value: Any
    doc: RawBSONDocument | None


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
    ddl: int = 0
    skipped: int = 0
    index_restores: list[dict[str, Any]] = field(default_factory=list)
    index_drops: list[tuple[str, str]] = field(default_factory=list)


def event_ns(event: Any) -> tuple[str, str] | None:
    ns = event.get("ns")
    if not ns:
        return None
    return ns.get("db", ""), ns.get("coll", "") or ""


def data_write(event: Any) -> Write:
    """The converging write for a data event."""
    db, coll = event_ns(event) or ("", "")
    op = event["operationType"]
    id_value = event["documentKey"]["_id"]
    doc = None if op == "delete" else event.get("fullDocument")
    # update with fullDocument None: the document was deleted after the update; deleting converges.
    return Write(f"{db}.{coll}", id_value, doc)


class Applier:
    """Applies batches of change events to the destination."""

    def __init__(
        self, dest: MongoClient[Any], nsfilter: NamespaceFilter, lanes: int = 4, source: MongoClient[Any] | None = None
    ) -> None:
        self.dst = dest
        self.src = source
        self.nsfilter = nsfilter
        self.lanes = max(1, lanes)
        self._pool = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="apply") if self.lanes > 1 else None
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
        return self.nsfilter.matches(db, coll)

    def apply(self, events: list[Any], stats: ApplyStats) -> None:
        """Apply events in order: data events batched between DDL barriers."""
        pending: dict[tuple[str, bytes], Write] = {}
        for ev in events:
            op = ev["operationType"]
            if op in DATA_EVENTS:
                if not self.in_scope(ev):
                    stats.skipped += 1
                    continue
                w = data_write(ev)
                pending[(w.ns, encode({"_id": w.id_value}))] = w  # the last write per document wins
                continue
            if op in IGNORED_EVENTS:
                continue
            if op == "rename":
                self._check_rename(ev)
                continue
            if op in DDL_EVENTS:
                if not self.in_scope(ev):
                    stats.skipped += 1
                    continue
                self.flush(pending, stats)
                pending = {}
                self.apply_ddl(ev, stats)
        self.flush(pending, stats)

    # -- data ---------------------------------------------------------------
    def flush(self, pending: dict[tuple[str, bytes], Write], stats: ApplyStats) -> None:
        if not pending:
            return
        lanes: list[list[Write]] = [[] for _ in range(self.lanes)]
        for key, w in pending.items():
            lanes[zlib.crc32(key[1]) % self.lanes].append(w)
        if self._pool:
            futures = [self._pool.submit(self._apply_lane, lane) for lane in lanes if lane]
            # Every lane ends before an error is raised: a lane still writing while the sync
            # reopens the stream and re-applies newer events could land an older state last.
            wait(futures)
            results = [f.result() for f in futures]
        else:
            results = [self._apply_lane(lane) for lane in lanes if lane]
        for ups, dels in results:
            stats.upserts += ups
            stats.deletes += dels

    def _apply_lane(self, writes: list[Write]) -> tuple[int, int]:
        by_ns: dict[str, list[Any]] = {}
        ups = dels = 0
        for w in writes:
            if w.doc is None:
                by_ns.setdefault(w.ns, []).append(DeleteOne({"_id": w.id_value}))
                dels += 1
            else:
                doc = _Replacement(w.doc.raw, RAW) if isinstance(w.doc, RawBSONDocument) else w.doc
                by_ns.setdefault(w.ns, []).append(ReplaceOne({"_id": w.id_value}, doc, upsert=True))
                ups += 1
        for ns, ops in by_ns.items():
            db, _, coll = ns.partition(".")
            c = self.dst[db].get_collection(coll, codec_options=RAW, write_concern=DATA_WRITE_CONCERN)
            try:
                with self.gate.slot(len(ops)):
                    c.bulk_write(ops, ordered=False, bypass_document_validation=True)
            except BulkWriteError as exc:
                self._raise_rejected(ns, ops, exc)
        return ups, dels

    @staticmethod
    def _raise_rejected(ns: str, ops: list[Any], exc: BulkWriteError) -> None:
        errs = exc.details.get("writeErrors", [])
        # Duplicate _id on a racing upsert: the document exists, which is what we wanted.
        real = [e for e in errs if not (e.get("code") == 11000 and "_id_" in str(e.get("errmsg", "")))]
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
        bad_id = op._filter.get("_id") if hasattr(op, "_filter") else "?"
        raise DocumentRejectedError(
            f"{ns}: the destination rejected the write for _id {bad_id!r}: {str(first.get('errmsg', ''))[:200]}",
            remedy="fix the document on the source or the destination's constraint, then resume",
            ns=ns,
            doc_id=bad_id,
        )

    # -- DDL ----------------------------------------------------------------
    def _check_rename(self, ev: Any) -> None:
        db, coll = event_ns(ev) or ("", "")
        to = ev.get("to") or (ev.get("operationDescription") or {}).get("to") or {}
        touched = [f"{db}.{coll}"] if self.nsfilter.matches(db, coll) else []
        if to and self.nsfilter.matches(to.get("db", ""), to.get("coll", "")):
            touched.append(f"{to.get('db')}.{to.get('coll')}")
        if touched:
            raise NamespaceChangedError(
                f"namespace {touched[-1]} was renamed (or replaced by $out) on the source during the migration"
            )

    def apply_ddl(self, ev: Any, stats: ApplyStats) -> None:
        if isinstance(ev, RawBSONDocument):
            ev = decode(ev.raw)  # DDL descriptions are small: plain dicts are easier to rewrite
        op = ev["operationType"]
        db, coll = event_ns(ev) or ("", "")
        desc = dict(ev.get("operationDescription") or {})
        d = self.dst[db]
        stats.ddl += 1
        log.info("DDL %s on %s.%s", op, db, coll)
        if op == "create":
            opts = {k: v for k, v in desc.items() if k not in ("idIndex",)}
            try:
                d.command({"create": coll, **opts})
            except (OperationFailure, CollectionInvalid) as exc:
                if getattr(exc, "code", None) != 48:
                    err = classify(exc, f"{db}.{coll}")
                    if err.transient:  # an election or a network error: the sync retries from its checkpoint
                        raise err from None
                    raise TerminalError(f"{db}.{coll}: cannot apply create on the destination: {exc}") from None
        elif op == "drop":
            d.drop_collection(coll)
        elif op == "dropDatabase":
            for name in d.list_collection_names():
                if self.nsfilter.matches(db, name):
                    d.drop_collection(name)
        elif op == "createIndexes":
            specs = self._source_index_specs(db, coll, list(desc.get("indexes", [])))
            stats.index_restores.extend(build_indexes(self.dst, Namespace(db, coll), specs))
        elif op == "dropIndexes":
            for spec in desc.get("indexes", []):
                try:
                    d.command({"dropIndexes": coll, "index": spec["name"]})
                except OperationFailure as exc:
                    if exc.code not in (27, 26):  # IndexNotFound, NamespaceNotFound
                        raise
                stats.index_drops.append((f"{db}.{coll}", spec["name"]))
        elif op == "modify":
            self._apply_coll_mod(db, coll, desc, stats)
        elif op == "invalidate":
            raise TerminalError("the change stream was invalidated", remedy="restart the migration")

    def _source_index_specs(self, db: str, coll: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The source's current spec of each new index: some servers' events omit options (unique, TTL).

        An index already dropped again on the source is skipped: its dropIndexes event follows.
        """
        if self.src is None:
            return specs
        current = {i["name"]: dict(i) for i in self.src[db][coll].list_indexes()}
        return [current[s["name"]] for s in specs if s.get("name") in current]

    def _apply_coll_mod(self, db: str, coll: str, desc: dict[str, Any], stats: ApplyStats) -> None:
        cmd: dict[str, Any] = {"collMod": coll}
        for k, v in desc.items():
            if k == "index":
                # The same rule as an index build: unique waits for cutover, TTL stays parked.
                idx, restore = index_for_sync(dict(v))
                idx.pop("prepareUnique", None)
                if restore:
                    stats.index_restores.append({"ns": f"{db}.{coll}", "name": idx.get("name"), **restore})
                if len(idx) > 1:
                    cmd["index"] = idx
            elif k not in ("uuid",):
                cmd[k] = v
        if len(cmd) > 1:
            self.dst[db].command(cmd)
