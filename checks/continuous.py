"""Continuous verification: prove the data equal while the sync runs, so the cutover checks only what changed.

Why: a full verification inside the cutover window makes the downtime grow with
the data (minutes at a few GB, hours at a TB).  mongosync's embedded verifier
checks while it syncs; so does this.  Once the sync has caught up, a background
thread hashes every ``_id`` partition of every namespace on both sides (the same
partition hashing as ``livemigrate verify``, checks/verify_scan.py), while the
sync records in a :class:`DirtySet` which documents it applied since.  At the
cutover, after the drain, :meth:`ContinuousVerifier.final_check` re-reads only
those documents (and hashes any partition never proven), compares counts,
indexes and options, and reports per namespace when each part was last proven
equal.

The argument, per document ``d`` of a namespace whose recording began at ``C``
(the namespace's generation; recording starts before any of its reads):

- a document the sync did not touch after ``C`` has had no source event since
  the sync's applied point at ``C`` (at the cutover everything is applied), so
  both sides held one constant value for ``d`` during every later read; a
  partition hash read after ``C`` that came out equal therefore proves ``d``;
- a document the sync touched is in the dirty set, is re-read in the
  background (the set is swapped for a fresh one first, so a touch during the
  re-read lands in the new set) and at the cutover;
- a document that still differs after the sync has applied everything up to a
  moment after the re-read, and that the sync did not touch meanwhile, differs
  for a reason other than events in flight: it is reported at once
  (``persistent``), and the cutover is refused until it is gone or the engineer
  asks for a full verification.

A namespace the sync dropped, renamed or copied anew, or whose dirty set grew
past ``dirty_limit``, loses its proofs and is hashed again in the background
(and at the cutover if that has not finished).  Writes to the destination by
anything but the sync are outside the dirty set's view (the destination must
not take writes before the cutover): a proven partition is hashed again every
``rehash_seconds`` to find them, and the count comparison at the cutover
catches an extra or missing document written after the last hash.
Proofs live in this process: a cutover resumed after a crash hashes everything.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from checks.verify import _catalog, _NsState, _raw_coll
from checks.verify_bson import digest, id_json, id_key
from checks.verify_catalog import pending_map
from checks.verify_result import VerifyResult
from checks.verify_scan import Entry, Interrupted, PartitionVerifier, chunks, classify
from tasks.errors import LiveMigrateError
from tasks.errors import classify as classify_error
from tasks.mongo import latest_optime
from tasks.namespaces import NamespaceFilter
from tasks.partition import IdRange, plan_ranges
from tasks.state import utcnow

log = logging.getLogger(__name__)

SETTLE_TIMEOUT = 30.0
"""How long a re-read waits for the sync to apply past it before the document is left for the next round."""
MAX_LISTED = 100  # differing documents named in a status or report per namespace
BATCH_GAP = 2.0
"""A gap between two batches longer than this is not one batch's read time (a new scan, or a drain between)."""
YIELD_LIMIT = 60.0
"""Longest a background scan waits between two batches for the sync to catch up (a cursor must not idle out)."""


def id_text(key: bytes) -> str:
    """An ``_id`` as relaxed Extended JSON text: safe to store (no ``$`` field names) and to print."""
    return json.dumps(id_json(key), sort_keys=True)


def event_id_key(document_key: Any) -> bytes:
    """The byte-exact ``_id`` key (checks/verify_bson.id_key) of a change event's ``documentKey``.

    Taken from the raw bytes: a decoded ``_id`` would lose its BSON type (int64 1 re-encodes as int32 1).
    """
    raw = bytes(document_key.raw) if isinstance(document_key, RawBSONDocument) else bson.encode(dict(document_key))
    return id_key(raw)


class DirtySet:
    """Which documents the sync applied, per namespace, since that namespace's generation began.

    Called from the sync's applier thread after each batch is written (so a
    document is recorded no earlier than its write).  Memory is bounded: a
    namespace whose set passes its share of ``limit`` is marked *broken* and
    its ids dropped; it is verified whole again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = False  # nothing is recorded until the verifier starts
        self.failed = False  # a write could not be recorded: no proof may be used
        self._lock = threading.Lock()
        self._ids: dict[str, set[bytes]] = {}
        self._gen: dict[str, int] = {}
        self._broken: set[str] = set()
        self._size = 0

    # -- the sync's side ------------------------------------------------------
    def touched(self, ns: str, document_keys: list[Any]) -> None:
        """The sync wrote these documents (their change events' ``documentKey``s) of ``ns``.

        Never raises into the sync: a key it cannot read marks the set failed, and the cutover then
        verifies in full (an unrecorded write would void the proofs).
        """
        if not self.active or not document_keys:
            return
        try:
            keys = [event_id_key(k) for k in document_keys]
        except Exception:
            log.exception("continuous verification: a written document's key could not be recorded")
            self.failed = True
            return
        with self._lock:
            if ns in self._broken:
                return
            ids = self._ids.setdefault(ns, set())
            before = len(ids)
            ids.update(keys)
            self._size += len(ids) - before
            if self._size > self.limit:
                largest = max(self._ids, key=lambda n: len(self._ids[n]))
                self._break(largest, f"its dirty set passed the limit of {self.limit} documents")

    def reset(self, ns: str, why: str) -> None:
        """The sync changed ``ns`` as a whole (drop, rename, copy anew): its proofs no longer hold."""
        if not self.active:
            return
        with self._lock:
            self._break(ns, why)

    def reset_db(self, db: str, why: str) -> None:
        if not self.active:
            return
        with self._lock:
            for ns in {n for n in (*self._ids, *self._gen) if n.split(".", 1)[0] == db}:
                self._break(ns, why)

    def _break(self, ns: str, why: str) -> None:
        self._size -= len(self._ids.pop(ns, ()))
        self._gen[ns] = self._gen.get(ns, 0) + 1
        if ns not in self._broken:
            log.info("continuous verification: %s is verified whole again (%s)", ns, why)
        self._broken.add(ns)

    # -- the verifier's side ----------------------------------------------------
    def begin(self, ns: str) -> int:
        """Start a new generation for ``ns`` (before its partitions are read); returns it."""
        with self._lock:
            self._size -= len(self._ids.pop(ns, ()))
            self._broken.discard(ns)
            self._gen[ns] = self._gen.get(ns, 0) + 1
            return self._gen[ns]

    def broken(self, ns: str) -> bool:
        with self._lock:
            return ns in self._broken

    def generation(self, ns: str) -> int:
        with self._lock:
            return self._gen.get(ns, 0)

    def contains(self, ns: str, key: bytes) -> bool:
        with self._lock:
            return key in self._ids.get(ns, ())

    def swap(self, ns: str) -> set[bytes]:
        """Take the ids recorded for ``ns`` and record afresh from now on."""
        with self._lock:
            ids = self._ids.pop(ns, set())
            self._size -= len(ids)
            return ids

    def give_back(self, ns: str, ids: set[bytes], gen: int) -> None:
        """Ids taken by :meth:`swap` whose re-read did not finish: recorded again (unless the generation moved)."""
        with self._lock:
            if self._gen.get(ns, 0) != gen or ns in self._broken:
                return
            cur = self._ids.setdefault(ns, set())
            before = len(cur)
            cur.update(ids)
            self._size += len(cur) - before

    def size(self, ns: str | None = None) -> int:
        with self._lock:
            return self._size if ns is None else len(self._ids.get(ns, ()))


@dataclass
class PartProof:
    rng: IdRange
    proven_at: dt.datetime | None = None
    docs: int = 0


@dataclass
class NsProof:
    """What is proven for one namespace in its current generation."""

    ns: str
    generation: int
    parts: list[PartProof]
    suspects: dict[bytes, Entry] = field(default_factory=dict)  # differing, maybe in flight: re-read again
    persistent: dict[bytes, Entry] = field(default_factory=dict)  # differing with nothing in flight
    rechecked_at: dt.datetime | None = None  # the last background re-read of its dirty documents

    @property
    def complete(self) -> bool:
        return all(p.proven_at is not None for p in self.parts)


WaitApplied = Callable[[Timestamp, float], bool]
"""Blocks until the sync has applied every event up to the given source time; False on timeout."""


class ContinuousVerifier:
    """The background verification of one running migration (see the module docstring)."""

    def __init__(
        self,
        source: MongoClient[Any],
        dest: MongoClient[Any],
        nsfilter: NamespaceFilter,
        wait_applied: WaitApplied,
        *,
        dirty_limit: int = 200_000,
        interval_seconds: float = 5.0,
        rehash_seconds: float | None = 3600.0,
        partition_docs: int = 50_000,
        partitioning: str = "auto",
        batch_size: int = 2000,
        on_difference: Callable[[list[dict[str, Any]]], None] | None = None,
        on_progress: Callable[[], None] | None = None,
        unobserved: Callable[[str], bool] | None = None,
        sync_behind: Callable[[], bool] | None = None,
        max_docs_per_second: float | None = None,
        sync_busy: Callable[[], bool] | None = None,
        duty_cycle: float = 1.0,
    ) -> None:
        self.src, self.dst, self.nsfilter = source, dest, nsfilter
        self.wait_applied = wait_applied
        self.dirty = DirtySet(dirty_limit)
        self.interval = interval_seconds
        self.rehash_seconds = rehash_seconds  # a proven partition is hashed again after this long (None: never)
        self.partition_docs, self.partitioning, self.batch_size = partition_docs, partitioning, batch_size
        self.on_difference = on_difference
        self.on_progress = on_progress  # after each partition and round (e.g. the status in the record)
        # Namespaces whose events the sync skips (so the dirty set never sees them): hashed whole at the cutover.
        self.unobserved = unobserved or (lambda ns: False)
        # The verification uses what the servers can spare: it waits between batches while the sync is behind
        # (``sync_behind``), and reads at most ``max_docs_per_second`` per side when set.
        self.sync_behind = sync_behind or (lambda: False)
        self.max_docs_per_second = max_docs_per_second
        # While the application writes (``sync_busy``), a scan reads at most ``duty_cycle`` of the time: the
        # source serves the change stream and the application first.
        self.sync_busy = sync_busy or (lambda: False)
        self.duty_cycle = min(1.0, max(0.01, duty_cycle))
        self._batch_clock = threading.local()  # per scanning thread: when its last batch was handed out
        self._last_drain = 0.0
        self._draining = False  # a drain runs (re-reads inside it must not start another)
        self._reread_pool = ThreadPoolExecutor(1, thread_name_prefix="cverify-reread")  # free while a scan runs
        self._reread_docs = 0
        self._count_seconds: dict[str, float] = {}  # how long one count of each namespace took (the estimate)
        self._reread_seconds = 0.0
        self.yielded_seconds = 0.0  # time spent waiting for the sync (status)
        self.proofs: dict[str, NsProof] = {}
        self.passes = 0  # full rounds over every namespace
        self.error: str | None = None
        self.started_at: dt.datetime | None = None
        self.scan_docs_per_s: float | None = None  # measured, for the downtime estimate
        self.recheck_docs_per_s: float | None = None
        self._reported: set[tuple[str, bytes]] = set()
        self._stop = threading.Event()
        self._life = threading.Lock()  # start and freeze, never at once
        self._frozen = False
        self.usable = True  # False when the background thread could not be stopped (see freeze)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # proofs are read by status() from other threads
        self._side_pool = ThreadPoolExecutor(1, thread_name_prefix="cverify-side")

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Start the background thread (once the sync has caught up); a no-op once :meth:`freeze` was called."""
        with self._life:
            if self._frozen or (self._thread is not None and self._thread.is_alive()):
                return
            self.dirty.active = True
            self.started_at = self.started_at or utcnow()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="continuous-verify", daemon=True)
            self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def freeze(self, timeout: float = 120.0) -> bool:
        """Stop the background thread for good (the cutover begins); recording goes on.

        The thread stops at its next batch or chunk.  Returns False when it is still running after
        ``timeout`` (a hung connection): its proofs then cannot be trusted, and the cutover verifies in full.
        """
        with self._life:
            self._frozen = True
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("continuous verification did not stop within %.0f s: its proofs are not used", timeout)
                self.usable = False
                return False
        return True

    def thaw(self) -> None:
        """A refused cutover: the background thread may start again (its proofs held, recording went on)."""
        with self._life:
            self._frozen = not self.usable

    def close(self) -> None:
        self.freeze(timeout=30.0)
        self.dirty.active = False
        self._side_pool.shutdown(wait=False)
        self._reread_pool.shutdown(wait=False)

    # -- the background loop ----------------------------------------------------------
    def _run(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            try:
                self.round()
                self.error = None
                delay = self.interval
            except Interrupted:
                return  # stopped mid-scan: that partition stays unproven
            except (PyMongoError, LiveMigrateError) as exc:
                err = exc if isinstance(exc, LiveMigrateError) else classify_error(exc, "continuous verification")
                self.error = err.one_line()
                log.warning("continuous verification paused: %s (retrying in %.0f s)", self.error, delay)
                delay = min(delay * 2, 300.0)
            except Exception:
                log.exception("continuous verification stopped")
                self.error = "continuous verification stopped on an internal error (see the log)"
                return
            self._stop.wait(delay)

    def round(self) -> None:
        """One round: plan new or broken namespaces, hash what is unproven, re-read what the sync touched."""
        specs = self._namespaces()
        with self._lock:
            for ns in [n for n in self.proofs if n not in specs]:
                del self.proofs[ns]  # gone from both sides: the cutover's catalog check speaks for it
        for ns in sorted(specs):
            if self._stop.is_set():
                return
            proof = self.proofs.get(ns)
            if proof is None or self.dirty.broken(ns) or proof.generation != self.dirty.generation(ns):
                proof = self._plan(ns)
            for part in proof.parts:
                if self._stop.is_set():
                    return
                if part.proven_at is None or self._stale(part):
                    self._hash(proof, part)
                self._maybe_drain()
        self._drain_all()
        if all(p.complete for p in self.proofs.values()):
            self.passes += 1
        self._report_new()
        self._progress()

    def _maybe_drain(self) -> None:
        """Re-read what the sync touched once every ``interval`` even in the middle of a long pass, so the
        dirty set (and what the cutover re-reads) stays about one interval's worth of writes."""
        if time.monotonic() - self._last_drain >= self.interval:
            self._drain_all()

    def _drain_all(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            with self._lock:
                proofs = list(self.proofs.values())
            for proof in proofs:
                if self._stop.is_set():
                    return
                self._recheck_dirty(proof)
                self._settle(proof)
            self._last_drain = time.monotonic()
        finally:
            self._draining = False

    def _namespaces(self) -> set[str]:
        """In-scope namespaces with data on either side (views and time-series have no partitions)."""
        out: set[str] = set()
        for st in _catalog(self.src, self.dst, self.nsfilter, {})[0]:
            if st.has_data and not self.unobserved(st.ns):
                out.add(st.ns)
        return out

    def _plan(self, ns: str) -> NsProof:
        gen = self.dirty.begin(ns)  # recording starts before any read of this generation
        src, dst = _raw_coll(self.src, ns), _raw_coll(self.dst, ns)
        t0 = time.monotonic()
        n_src, n_dst = src.estimated_document_count(), dst.estimated_document_count()
        with self._lock:
            self._count_seconds[ns] = (time.monotonic() - t0) / 2  # the cutover counts both sides at once
        ranges = plan_ranges(
            src if n_src >= n_dst else dst, self.partition_docs, max(n_src, n_dst), mode=self.partitioning
        )
        proof = NsProof(ns, gen, [PartProof(r) for r in ranges])
        with self._lock:
            self.proofs[ns] = proof
        return proof

    def _verifier(self, ns: str, pool: ThreadPoolExecutor | None = None) -> PartitionVerifier:
        v = PartitionVerifier(
            _raw_coll(self.src, ns),
            _raw_coll(self.dst, ns),
            pool or self._side_pool,
            batch_size=self.batch_size,
            ignore_field_order=False,
        )
        if threading.current_thread() is self._thread:
            v.stop = self._between_batches  # background scans yield to the sync and end when stopped
        return v

    def _between_batches(self) -> bool:
        """Asked by a background scan between raw batches: wait while the sync is behind (or the rate cap is
        reached), then say whether to stop."""
        t0 = time.monotonic()
        last = getattr(self._batch_clock, "t", None)
        took = t0 - last if last is not None else None
        if took is not None and took < BATCH_GAP and self.duty_cycle < 1.0 and self.sync_busy():
            self._stop.wait(took * (1.0 / self.duty_cycle - 1.0))  # the batch's read time, scaled
        while not self._stop.is_set() and self.sync_behind() and time.monotonic() - t0 < YIELD_LIMIT:
            self._stop.wait(0.2)
        if self.max_docs_per_second:
            self._stop.wait(self.batch_size / self.max_docs_per_second)
        now = time.monotonic()
        with self._lock:
            self.yielded_seconds += now - t0
        if threading.current_thread() is self._thread and not self._stop.is_set():
            self._maybe_drain()  # a long scan does not hold back the re-reads of what the sync changes
        self._batch_clock.t = time.monotonic()
        return self._stop.is_set()

    def _stale(self, part: PartProof) -> bool:
        """Proven long enough ago to prove again: what the dirty set cannot see (a write to the destination
        by anything but the sync) is found by hashing again."""
        if self.rehash_seconds is None or part.proven_at is None:
            return False
        return (utcnow() - part.proven_at).total_seconds() >= self.rehash_seconds

    def _hash(self, proof: NsProof, part: PartProof) -> None:
        t0 = time.monotonic()
        out = self._verifier(proof.ns).verify(part.rng)
        took = time.monotonic() - t0
        n = max(out.src_count, out.dst_count)
        if n and took > 0:
            self.scan_docs_per_s = n / took
        with self._lock:
            for e in out.entries:
                proof.suspects[e.key] = e
            part.docs, part.proven_at = n, utcnow()
        self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress()
            except Exception as exc:  # noqa: BLE001 - a status update never stops the verification
                log.debug("continuous verification status: %s", exc)

    def _current(self, proof: NsProof) -> bool:
        """The proof's generation is still the namespace's (not reset or overflowed since it was planned)."""
        return not self.dirty.broken(proof.ns) and self.dirty.generation(proof.ns) == proof.generation

    def _recheck_dirty(self, proof: NsProof) -> None:
        """Re-read the documents the sync touched since the last re-read (the set is swapped first)."""
        if not self._current(proof):
            return  # planned again next round
        ids = self.dirty.swap(proof.ns)
        if not ids:
            return
        try:
            differing = self._reread(proof.ns, [Entry(k, None, None, "changed") for k in ids])
        except BaseException:
            self.dirty.give_back(proof.ns, ids, proof.generation)
            raise
        with self._lock:
            for e in differing:
                proof.suspects[e.key] = e
            proof.rechecked_at = utcnow()

    def _reread(self, ns: str, entries: list[Entry]) -> list[Entry]:
        """The entries whose documents differ now (each side read once, concurrently)."""
        v = self._verifier(ns, self._reread_pool)
        still: list[Entry] = []
        t0 = time.monotonic()
        background = threading.current_thread() is self._thread
        for part in chunks(entries):
            if background and self._stop.is_set():
                raise Interrupted(ns)  # the caller hands the ids back (the cutover re-reads them)
            src_docs, dst_docs = v.fetch_both([e.key for e in part])
            for e in part:
                s, d = src_docs.get(e.key), dst_docs.get(e.key)
                bucket = classify(s, d, False)
                if bucket is not None:
                    still.append(Entry(e.key, digest(s) if s else None, digest(d) if d else None, bucket))
        with self._lock:
            self._reread_docs += len(entries)
            self._reread_seconds += time.monotonic() - t0
            if self._reread_docs >= 100 and self._reread_seconds > 0:
                self.recheck_docs_per_s = self._reread_docs / self._reread_seconds
        return still

    def _settle(self, proof: NsProof) -> None:
        """Decide the suspects: re-read, let the sync apply past the re-read, and see who it touched meanwhile."""
        with self._lock:
            suspects = list(proof.suspects.values()) + list(proof.persistent.values())
        if not suspects or not self._current(proof):
            return
        differing = self._reread(proof.ns, suspects)
        if not self._wait_applied(latest_optime(self.src)):
            return  # the sync is behind: decided next round
        if not self._current(proof):
            return  # the namespace was reset or overflowed meanwhile: planned again next round
        with self._lock:
            proof.suspects.clear()
            proof.persistent.clear()
            for e in differing:
                if self.dirty.contains(proof.ns, e.key):
                    continue  # touched since: it is in the dirty set, re-read next round and at the cutover
                proof.persistent[e.key] = e

    def _wait_applied(self, target: Timestamp) -> bool:
        """Wait (in short slices, so a stop request is heard) until the sync applied through ``target``."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.wait_applied(target, min(0.5, left)):
                return True
        return False

    def _report_new(self) -> None:
        fresh: list[dict[str, Any]] = []
        with self._lock:
            current = {(ns, k) for ns, p in self.proofs.items() for k in p.persistent}
            for ns, p in self.proofs.items():
                for k, e in p.persistent.items():
                    if (ns, k) not in self._reported:
                        fresh.append({"ns": ns, "_id": id_text(k), "kind": e.bucket})
        self._reported = current
        if fresh:
            log.warning(
                "continuous verification: %d document(s) differ with no change in flight, e.g. %s _id %s (%s)",
                len(fresh),
                fresh[0]["ns"],
                fresh[0]["_id"],
                fresh[0]["kind"],
            )
            if self.on_difference is not None:
                self.on_difference(fresh)

    # -- what describe and the cutover read -------------------------------------------
    def differences(self, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
        with self._lock:
            out = [
                {"ns": ns, "_id": id_text(k), "kind": e.bucket}
                for ns, p in sorted(self.proofs.items())
                for k, e in p.persistent.items()
            ]
        return out[:limit]

    def difference_count(self) -> int:
        with self._lock:
            return sum(len(p.persistent) for p in self.proofs.values())

    def status(self) -> dict[str, Any]:
        with self._lock:
            parts = [p for proof in self.proofs.values() for p in proof.parts]
            proven = [p for p in parts if p.proven_at is not None]
            suspects = sum(len(p.suspects) for p in self.proofs.values())
        return {
            "running": self.running(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "passes": self.passes,
            "namespaces": len(self.proofs),
            "partitions": len(parts),
            "partitions_proven": len(proven),
            "docs_proven": sum(p.docs for p in proven),
            "dirty_documents": self.dirty.size(),
            "in_flight_documents": suspects,
            "differences": self.difference_count(),
            "differing": self.differences(),
            "yielded_to_sync_seconds": round(self.yielded_seconds, 1),
            "error": self.error,
            "updated_at": utcnow().isoformat(),
        }

    def estimate_final_seconds(self, docs_by_ns: dict[str, int]) -> float:
        """The final checks' expected duration: the documents to re-read plus the partitions to hash."""
        scan = self.scan_docs_per_s or 20_000.0
        reread = self.recheck_docs_per_s or 5_000.0
        with self._lock:
            keys = sum(len(p.suspects) + len(p.persistent) for p in self.proofs.values()) + self.dirty.size()
            unproven = sum(p.docs or 0 for proof in self.proofs.values() for p in proof.parts if p.proven_at is None)
            unplanned = sum(n for ns, n in docs_by_ns.items() if ns not in self.proofs or self.dirty.broken(ns))
            # Counting reads collection metadata on MongoDB (fast); a server that counts by scanning shows here.
            counts = sum(self._count_seconds.values())
        return keys / reread + (unproven + unplanned) / scan + counts + 0.2  # 0.2 s: the catalog listing

    # -- the cutover's check -----------------------------------------------------------
    def final_check(
        self, pending_index_restores: list[dict[str, Any]] | None = None, max_listed: int = MAX_LISTED
    ) -> VerifyResult:
        """After the drain (the sync stopped, the source quiet): check only what is not proven yet.

        Per namespace: the catalog (indexes, options) and the counts are compared; a namespace with a
        current proof has its dirty and suspect documents re-read and its unproven partitions hashed; any
        other is hashed whole.  A namespace's result says how much was proven during the sync and when.
        """
        if not self.freeze():
            raise LiveMigrateError("the continuous verification could not be stopped; verify in full")
        started = utcnow()
        result = VerifyResult(
            settings={"mode": "incremental", "partition_docs": self.partition_docs, "partitioning": self.partitioning}
        )
        pending = pending_map(pending_index_restores)
        timings: dict[str, float] = {"catalog": 0.0, "counts": 0.0, "hashes": 0.0, "rereads": 0.0}
        try:
            t0 = time.monotonic()
            states, result.unsupported = _catalog(self.src, self.dst, self.nsfilter, pending)
            timings["catalog"] = time.monotonic() - t0
            data = [st for st in states if st.has_data]
            t0 = time.monotonic()
            self._count_all(data)
            timings["counts"] = time.monotonic() - t0
            for st in data:
                self._final_namespace(st, timings)
        except PyMongoError as exc:
            raise classify_error(exc, "final verification") from exc
        result.settings["timings"] = {k: round(v, 3) for k, v in timings.items()}
        result.namespaces = [self._ns_result(st, started, max_listed) for st in states]
        result.finished_at = utcnow()
        log.info("final verification (incremental) %s: %s", "equal" if result.equal else "different", result.totals())
        return result

    def _count_all(self, states: list[_NsState]) -> None:
        """Both sides' document counts of every namespace, asked concurrently.

        ``count`` without a query reads the collection's metadata on MongoDB (manual,
        ``db.collection.estimatedDocumentCount()``), so it does not grow with the data there (SecantusDB
        counts by scanning).  The metadata can be off (after an unclean shutdown; orphans through mongos):
        a namespace whose two counts differ is counted exactly before that is called a difference.
        """

        if not states:
            return
        for st in states:
            st.verifier = self._verifier(st.ns)

        def count(st: _NsState, side: str, exact: bool) -> tuple[_NsState, str, int]:
            assert st.verifier is not None
            coll = st.verifier.src if side == "src" else st.verifier.dst
            return st, side, coll.count_documents({}) if exact else coll.estimated_document_count()

        with ThreadPoolExecutor(min(8, 2 * len(states)), thread_name_prefix="final-count") as pool:
            exact = False
            todo = states
            while todo:
                futures = [pool.submit(count, st, side, exact) for st in todo for side in ("src", "dst")]
                for fut in futures:
                    st, side, n = fut.result()
                    if side == "src":
                        st.src_count = n
                    else:
                        st.dst_count = n
                todo = [] if exact else [st for st in todo if st.src_count != st.dst_count]
                exact = True

    def _final_namespace(self, st: _NsState, timings: dict[str, float]) -> None:
        ns = st.ns
        with self._lock:
            proof = self.proofs.get(ns)
        current = proof is not None and self._current(proof) and not self.unobserved(ns)
        if proof is None or not current:
            proof = self._plan(ns)  # never proven here (or reset): hashed whole now
        hashed = 0
        t0 = time.monotonic()
        for part in proof.parts:
            if part.proven_at is None:
                self._hash(proof, part)
                hashed += 1
        timings["hashes"] += time.monotonic() - t0
        t0 = time.monotonic()
        keys = set(self.dirty.swap(ns)) | set(proof.suspects) | set(proof.persistent)
        differing = self._reread(ns, [Entry(k, None, None, "changed") for k in keys]) if keys else []
        timings["rereads"] += time.monotonic() - t0
        st.entries = list(differing)
        st.partitions = len(proof.parts)
        st.src_sum = st.dst_sum = 0
        st.catalog_notes.append(
            f"{len(proof.parts) - hashed} of {len(proof.parts)} partition(s) proven equal during the sync; "
            f"{hashed} hashed and {len(keys)} changed document(s) re-read at the cutover"
        )
        st.estimates = (len(keys), hashed)
        with self._lock:
            proof.suspects.clear()
            proof.persistent = {e.key: e for e in differing}
            proof.rechecked_at = utcnow()

    def _ns_result(self, st: _NsState, started: dt.datetime, max_listed: int) -> Any:
        res = st.result(max_listed)
        if st.has_data:
            # Whole-namespace hashes belong to a full scan; here the proof is per partition and per document.
            res.source_hash = res.dest_hash = ""
            with self._lock:
                proof = self.proofs.get(st.ns)
            proven = [p.proven_at for p in proof.parts if p.proven_at is not None] if proof else []
            res.proof = {
                "mode": "incremental",
                "partitions": len(proof.parts) if proof else 0,
                "partitions_proven_from": min(proven).isoformat() if proven else None,
                "partitions_proven_until": max(proven).isoformat() if proven else None,
                "documents_rechecked_at_cutover": st.estimates[0],
                "partitions_hashed_at_cutover": st.estimates[1],
                "rechecked_at": started.isoformat(),
            }
        return res


__all__ = ["ContinuousVerifier", "DirtySet", "event_id_key"]
