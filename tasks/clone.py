"""The initial clone: every in-scope namespace, copied as raw BSON in ``_id`` partitions.

Why: the copy must lose nothing written meanwhile (the change stream's start
point is stored before any data is read), must be resumable after a crash
(the partition plan and per-partition status live in the metadata store) and
must scale out (workers claim partitions atomically, on any machine).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, OperationFailure

from tasks import shutdown
from tasks.catalog import CollectionSpec, Unsupported, estimated_docs, existing_namespaces, for_each, list_specs
from tasks.concurrency import WriteGate
from tasks.config import MigrationConfig
from tasks.ddl import IndexChange, book_changes, build_indexes, create_collection, create_views
from tasks.emptyts import any_empty_ts, insert_keeping_empty_ts
from tasks.errors import DocumentRejectedError, TerminalError, TransientError
from tasks.metadata import MetadataStore
from tasks.mongo import DATA_WRITE_CONCERN, RAW, is_mongos
from tasks.namespaces import Namespace, NamespaceFilter
from tasks.partition import IdRange, plan_ranges
from tasks.progress import ProgressSink, null_sink
from tasks.retry import retry_transient
from tasks.sharding import shard_collection
from tasks.state import Partition, utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH_DOCS = 100_000  # the server's maxWriteBatchSize
LEASE_SECONDS = 60.0
CAPPED_POSITION_LOST = 136


@dataclass
class CloneStats:
    docs: int = 0
    bytes: int = 0
    partitions: int = 0


class Cloner:
    """Prepares the destination and copies partitions; any number of Cloners may share one plan."""

    def __init__(
        self,
        config: MigrationConfig,
        source: MongoClient[Any],
        dest: MongoClient[Any],
        store: MetadataStore,
        owner: str,
        progress: ProgressSink = null_sink,
    ) -> None:
        self.cfg = config
        self.name = config.name
        self.src = source
        self.dst = dest
        self.store = store
        self.owner = owner
        self.nsfilter = NamespaceFilter.from_rules(config.namespaces)
        self.progress = progress
        self.stop_event = threading.Event()
        self._capped: set[str] = set()
        self._lock = threading.Lock()
        self.stats = CloneStats()
        self.gate = WriteGate(config.tuning.workers, what="clone inserts")

    # -- preparation --------------------------------------------------------
    def prepare(self) -> list[Unsupported]:
        """Create collections with their options, shard what was asked, store the partition plan.

        Idempotent: a crash half-way through is redone from the recorded list of
        namespaces this migration created.
        """
        doc = self.store.load(self.name)
        if doc.prepared:
            return [Unsupported(**u) for u in doc.unsupported]
        specs, unsupported = list_specs(self.src, self.nsfilter, with_indexes=False)  # indexes: finish()
        collections = [s for s in specs if not s.is_view]
        wanted = [s.ns.full for s in specs]
        ours = set(doc.clone_namespaces)
        on_dest = existing_namespaces(self.dst, {s.ns.db for s in specs if s.ns.full not in ours})
        existing = [ns for ns in wanted if ns not in ours and ns in on_dest]
        dropped: list[str] = list(doc.dropped_on_destination)
        if existing:
            if not self.cfg.clear_destination:
                raise TerminalError(
                    f"destination already has in-scope namespaces: {', '.join(existing[:10])}"
                    + (f" and {len(existing) - 10} more" if len(existing) > 10 else ""),
                    remedy="set clear_destination: true to drop them first, or exclude them",
                )
            for ns in existing:
                n = Namespace.parse(ns)
                self.dst[n.db].drop_collection(n.coll)
                dropped.append(ns)
                log.warning("clear_destination: dropped %s on the destination", ns)
        self.store.update(
            self.name,
            clone_namespaces=wanted,
            dropped_on_destination=dropped,
            unsupported=[u.__dict__ for u in unsupported],
        )
        for ns in ours:  # a previous prepare of ours was interrupted: start those over
            n = Namespace.parse(ns)
            self.dst[n.db].drop_collection(n.coll)
        self.store.forget_plans(self.name, sorted(ours))
        workers = self.cfg.tuning.workers
        made = for_each(lambda spec: create_collection(self.dst, spec), collections, workers, "clone-create")
        changes = [c for cs in made for c in cs]
        self._shard_destination(collections)
        self._plan(collections)
        restores = book_changes(self.store.load(self.name).index_restores, changes)  # parked collection TTLs
        self.store.update(self.name, prepared=True, clone_started_at=utcnow(), index_restores=restores)
        return unsupported

    def _shard_destination(self, specs: list[CollectionSpec]) -> None:
        """Replica set -> sharded: shard each configured collection before any data arrives."""
        entries = self.cfg.sharding.shardingEntries
        if not entries:
            return
        if not is_mongos(self.dst):
            raise TerminalError("sharding entries are configured but the destination is not a sharded cluster (mongos)")
        shard_collection(self.dst, entries, self.cfg.sharding.createSupportingIndexes)

    def _plan(self, specs: list[CollectionSpec]) -> None:
        """Plan every collection not planned yet and store all their partitions at once.

        The reads per collection (a count; for a large one an ``explain`` and a ``$sample``) run on
        ``tuning.workers`` threads: each is a round trip, and thousands of small collections would
        otherwise wait for them one after another.
        """
        planned = self.store.planned_namespaces(self.name)
        todo = [s for s in specs if s.ns.full not in planned]
        plans = for_each(self._plan_one, todo, self.cfg.tuning.workers, "clone-plan")
        self.store.add_partitions([p for parts in plans for p in parts])

    def _plan_one(self, spec: CollectionSpec) -> list[Partition]:
        coll = self.src[spec.ns.db][spec.ns.coll]
        est_docs = estimated_docs(self.src, spec.ns)
        capped = bool(spec.options.get("capped"))
        if capped:
            ranges = [IdRange("*")]  # insertion order matters: one partition, natural order
        else:
            ranges = plan_ranges(
                coll, self.cfg.tuning.partition_docs, total=est_docs or None, mode=self.cfg.tuning.partitioning
            )
        per = max(1, est_docs // max(1, len(ranges)))
        return [
            Partition(
                _id=f"{self.name}|{spec.ns.full}|{i:06d}",
                migration=self.name,
                ns=spec.ns.full,
                seq=i,
                est_docs=per,
                **r.to_record(),
            )
            for i, r in enumerate(ranges)
        ]

    # -- copying ------------------------------------------------------------
    def run(self, workers: int | None = None) -> CloneStats:
        """Copy partitions with ``workers`` threads until the plan has none left for us."""
        n = workers or self.cfg.tuning.workers
        if n != self.gate.climber.ceiling:
            self.gate = WriteGate(n, what="clone inserts")
        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="clone") as pool:
            futures = [pool.submit(self._worker_loop, errors) for _ in range(n)]
            for f in futures:
                f.result()
        if errors:
            raise errors[0]
        return self.stats

    def _worker_loop(self, errors: list[BaseException]) -> None:
        """Claim partitions (small ones several at a time), copy them, record them done together.

        A claim of several small partitions is about one partition's worth of documents
        (``tuning.partition_docs``); they are recorded done in one write once all are copied (a crash
        before it leaves them processing: a later claim takes them over and copies them again, which is
        idempotent).  A claimed partition not started by half its lease is given back unstarted, so no
        partition is copied on a lease that may have run out.
        """
        while not self._stopping(errors):
            parts = self.store.claim_partitions(self.name, self.owner, LEASE_SECONDS, self.cfg.tuning.partition_docs)
            if not parts:
                return
            claimed = time.monotonic()
            done: list[tuple[str, int, int]] = []
            try:
                for i, part in enumerate(parts):
                    late = i > 0 and time.monotonic() - claimed > LEASE_SECONDS / 2  # the first goes at once
                    if self._stopping(errors) or late:
                        self.store.release_partitions([p.id for p in parts[i:]], self.owner)
                        break
                    try:
                        docs, nbytes = self._copy_counted(part)
                    except BaseException as exc:  # noqa: BLE001 - handed to run(), which raises it
                        rest = [p.id for p in parts[i + 1 :]]
                        if not isinstance(exc, DocumentRejectedError):
                            rest.insert(0, part.id)  # another worker redoes it
                        self.store.release_partitions(rest, self.owner)
                        self.stop_event.set()
                        errors.append(exc)
                        return
                    done.append((part.id, docs, nbytes))
            finally:
                self._record_done(done, errors)

    def _record_done(self, done: list[tuple[str, int, int]], errors: list[BaseException]) -> None:
        """Mark copied partitions done (retried like a copy); if that fails, they stay claimed and are redone."""
        tuning = self.cfg.tuning

        def record(_attempt: int) -> None:
            self.store.finish_partitions(self.owner, done)

        try:
            retry_transient("clone: recording partitions done", record, tuning.retry_attempts, tuning.retry_max_seconds)
        except BaseException as exc:  # noqa: BLE001 - handed to run(), which raises it
            self.stop_event.set()
            errors.append(exc)

    def _stopping(self, errors: list[BaseException]) -> bool:
        return self.stop_event.is_set() or shutdown.requested() or bool(errors)

    def copy_partition(self, part: Partition) -> None:
        """Copy one partition, retrying transient errors, and record it done; redoing it is idempotent."""
        docs, nbytes = self._copy_counted(part)
        self.store.finish_partition(part.id, self.owner, docs, nbytes)

    def _copy_counted(self, part: Partition) -> tuple[int, int]:
        """Copy one partition, retrying transient errors; its documents and bytes, added to the stats."""

        def attempt_copy(attempt: int) -> tuple[int, int]:
            return self._copy_or_restart(part, clear_first=part.attempts > 1 or attempt > 0)

        docs, nbytes = retry_transient(
            part.ns, attempt_copy, self.cfg.tuning.retry_attempts, self.cfg.tuning.retry_max_seconds
        )
        with self._lock:
            self.stats.docs += docs
            self.stats.bytes += nbytes
            self.stats.partitions += 1
        return docs, nbytes

    def _copy_or_restart(self, part: Partition, *, clear_first: bool) -> tuple[int, int]:
        """One copy attempt; a capped collection that overwrote what the cursor stood on is copied again.

        CappedPositionLost (136) on a read of a capped collection means the collection wrapped around
        while the cursor was open (MongoDB manual, "Capped Collections": a tailable or natural-order
        cursor loses its position when the document it points at is overwritten).  It is not the
        change stream's history lost: the copy of that collection starts over, and the change
        stream brings everything written meanwhile.
        """
        try:
            return self._copy_once(part, clear_first=clear_first)
        except OperationFailure as exc:
            if exc.code != CAPPED_POSITION_LOST:
                raise
            raise TransientError(
                f"{part.ns}: the capped collection overwrote documents while they were being copied "
                "(CappedPositionLost): copying it again"
            ) from None

    def _copy_once(self, part: Partition, *, clear_first: bool) -> tuple[int, int]:
        """Read the partition in batches; each batch is inserted while the next one is read.

        One insert is in flight at a time (a second thread sends it), so the
        source serves the next read while the destination writes, and memory
        stays at two batches per worker.
        """
        ns = Namespace.parse(part.ns)
        rng = IdRange.from_record(part.model_dump())
        flt = rng.filter()
        src_coll = self.src[ns.db].get_collection(ns.coll, codec_options=RAW)
        dst_coll = self.dst[ns.db].get_collection(ns.coll, codec_options=RAW, write_concern=DATA_WRITE_CONCERN)
        if clear_first:
            dst_coll.delete_many(flt)  # an interrupted attempt may have written part of it
        batch: list[RawBSONDocument] = []
        size = 0
        limit = self.cfg.tuning.batch_bytes
        written = [0, 0]  # documents, bytes inserted so far
        inflight: tuple[Future[None], int, int] | None = None

        def landed() -> None:
            """Wait for the insert in flight and record it as progress."""
            nonlocal inflight
            if inflight is None:
                return
            fut, n_docs, n_bytes = inflight
            inflight = None
            fut.result()
            written[0] += n_docs
            written[1] += n_bytes
            self.store.partition_progress(part.id, self.owner, written[0], written[1], LEASE_SECONDS)
            self.progress("clone", part.id, written[0], part.est_docs, {"bytes": float(written[1])})

        cursor = src_coll.find(flt, batch_size=2000)
        if rng.bracket == "*":
            cursor = cursor.sort("$natural", 1)
        writer = ThreadPoolExecutor(1, thread_name_prefix="clone-insert")
        try:
            for doc in cursor:
                n = len(doc.raw)
                if batch and (size + n > limit or len(batch) >= MAX_BATCH_DOCS):
                    landed()
                    if self.stop_event.is_set() or shutdown.requested():
                        raise InterruptedError("clone stopped")
                    inflight = (writer.submit(self._gated_insert, dst_coll, part.ns, batch, size), len(batch), size)
                    batch, size = [], 0
                batch.append(doc)
                size += n
            landed()
            if batch:
                self._gated_insert(dst_coll, part.ns, batch, size)
                written[0] += len(batch)
                written[1] += size
        finally:
            cursor.close()
            writer.shutdown(wait=True)  # an insert still in flight finishes before the partition is retried
        self.progress("clone", part.id, written[0], part.est_docs, {"bytes": float(written[1])})
        return written[0], written[1]

    def _gated_insert(self, coll: Any, ns: str, batch: list[RawBSONDocument], nbytes: int) -> None:
        with self.gate.slot(nbytes):
            self._insert(coll, ns, batch)

    @staticmethod
    def _insert(coll: Any, ns: str, batch: list[RawBSONDocument]) -> None:
        try:
            if any_empty_ts(batch):  # rare: a top-level Timestamp(0, 0) the server would replace (tasks/emptyts.py)
                insert_keeping_empty_ts(coll, ns, batch, ordered=False)
            else:
                coll.insert_many(batch, ordered=False, bypass_document_validation=True)
        except BulkWriteError as exc:
            real = [e for e in exc.details.get("writeErrors", []) if e.get("code") != 11000]
            if real:
                first = real[0]
                bad_id = batch[first["index"]]["_id"] if "index" in first else "?"
                raise DocumentRejectedError(
                    f"{ns}: the destination rejected the document with _id {bad_id!r}: {first.get('errmsg', '')[:200]}",
                    remedy="fix or remove that document on the source, then resume the migration",
                ) from None
            if exc.details.get("writeConcernErrors"):
                raise  # applied but not replicated as asked: copy_partition classifies it transient and redoes it
            # 11000 on _id: already copied by an earlier attempt; the change stream will converge it.

    # -- after the copy -----------------------------------------------------
    def finish(self) -> list[dict[str, Any]]:
        """Build indexes (unique and TTL held back, booked for cutover) and create views.

        A collection the source created after ``prepare`` is created here from its source options
        first: building its indexes would otherwise create it implicitly, without them (its ``create``
        event comes later and finds it there).
        """
        workers = self.cfg.tuning.workers
        specs, _ = list_specs(self.src, self.nsfilter, workers=workers)
        prepared = set(self.store.load(self.name).clone_namespaces)

        def build(spec: CollectionSpec) -> list[IndexChange]:
            made = create_collection(self.dst, spec) if spec.ns.full not in prepared else []
            return made + build_indexes(self.dst, spec.ns, spec.indexes)

        # One createIndexes per collection (all its indexes), collections on tuning.workers threads.
        built = for_each(build, [s for s in specs if not s.is_view], workers, "clone-indexes")
        changes = [c for made in built for c in made]
        create_views(self.dst, [s for s in specs if s.is_view])
        restores = book_changes(self.store.load(self.name).index_restores, changes)
        self.store.update(
            self.name,
            index_restores=restores,
            clone_finished_at=utcnow(),
        )
        return restores


__all__ = ["CloneStats", "Cloner"]
