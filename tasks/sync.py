"""Continuous sync: read the source's change stream, apply it, checkpoint, measure lag.

Why: the destination must follow the source until cutover, survive crashes and
restarts without losing an event, and say how far behind it is.  The resume
token is stored only after every earlier event is applied (each batch is
applied completely, across all lanes, before its token is written with
majority write concern).  Transient errors (network, elections, a server
restart) reopen the stream from that checkpoint with backoff; the failure
budget (``retry_attempts``) counts consecutive failures, so it starts afresh
after every batch that is applied and checkpointed.  A stop (``stop()``, also
what SIGTERM leads to) lets the batch in hand finish and checkpoint first.
Reading and applying overlap: while one batch is applied (by a second thread,
batches strictly one after another) the next is read, and it is handed over
as soon as the applier is free (at most every HAND_OVER_SECONDS), so under
load the batches grow and when the load is light they stay small and the lag
low.  The stream is read without waste: at most one getMore per
READ_PACE_SECONDS while a batch holds events, and the events a reply brought
are taken together; events stay raw BSON (``RawEvent``) and are decoded one
level, on first access.

"Applied through T" means every event at or before cluster time T is applied.  Events share a
cluster time (a transaction's events, on MongoDB 8.0 unrelated ones too: change-events reference,
``clusterTime``), so a batch that ends at an event of time T only proves the events *before* T; T
itself is proven once the stream answers "nothing more" (its high-water mark, or the operationTime of
the reply before).  Large events arrive split (``$changeStreamSplitLargeEvent``, MongoDB 7.0 and
6.0.9) and are joined before they are applied; a batch never ends between two fragments.  Lag,
readiness and the window are the status module's (tasks/syncstatus.py); phase changes are the
Migration's (a failure is handed to ``on_failure``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from bson import CodecOptions, _raw_to_dict
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.synchronous.change_stream import ClusterChangeStream

from tasks.apply import Applier, ApplyObserver
from tasks.config import MigrationConfig
from tasks.ddl import book_changes
from tasks.errors import HistoryLostError, LiveMigrateError, TerminalError, TransientError, classify
from tasks.idkey import id_key
from tasks.metadata import MetadataStore
from tasks.mongo import is_mongos, latest_optime
from tasks.namespaces import NamespaceFilter
from tasks.retry import RetryBudget
from tasks.state import Checkpoint
from tasks.syncstatus import FCVWatch, SyncState, SyncStatus, catch_up_estimate, fcv

log = logging.getLogger(__name__)


class RawEvent(RawBSONDocument):
    """A change event, or a document inside one, as raw BSON: a ``RawBSONDocument`` that costs less to make and read.

    Every event of a reply, and every document inside an event that is read (``ns``, ``documentKey``,
    ``fullDocument``, ...), is built by the BSON decoder calling the document class.  ``RawBSONDocument``
    checks its codec options with an ABC subclass test and its size on each of them (about 12 per event of
    the benchmark's mix); the decoder has already checked the size of every document it cuts out of a reply,
    so this class only stores the bytes.  Fields are decoded one level, once, on first access, as
    ``RawBSONDocument`` does, but read from that dict directly (not through ``Mapping.get``).  The bytes are
    the same, so a ``RawEvent`` is written wherever a ``RawBSONDocument`` is (``fullDocument`` goes out as
    it came in).  Measured: bench/NOTES.md, round 3.
    """

    __slots__ = ()
    # RawBSONDocument's own slots, by their mangled names
    _RawBSONDocument__raw: bytes | memoryview
    _RawBSONDocument__inflated_doc: dict[str, Any] | None
    _RawBSONDocument__codec_options: CodecOptions[Any]

    def __init__(self, bson_bytes: bytes | memoryview, codec_options: CodecOptions[Any] | None = None) -> None:
        self._RawBSONDocument__raw = bson_bytes
        self._RawBSONDocument__inflated_doc = None
        self._RawBSONDocument__codec_options = codec_options or EVENT_CODEC

    def _fields(self) -> dict[str, Any]:
        d: dict[str, Any] | None = self._RawBSONDocument__inflated_doc
        if d is None:
            raw = self._RawBSONDocument__raw
            d = self._RawBSONDocument__inflated_doc = _raw_to_dict(
                raw, 4, len(raw) - 1, self._RawBSONDocument__codec_options, {}
            )
        return d

    def __getitem__(self, key: str) -> Any:
        d = self._RawBSONDocument__inflated_doc
        return (self._fields() if d is None else d)[key]

    def get(self, key: str, default: Any = None) -> Any:
        d = self._RawBSONDocument__inflated_doc
        return (self._fields() if d is None else d).get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._fields()


EVENT_CODEC: CodecOptions[Any] = CodecOptions(document_class=RawEvent)
COLLECT_SECONDS = 0.5
"""How long the loop collects events into one batch at most.  Shorter batches (0.1-0.5 s, following the
last apply time) measured slower on the test servers: lag p50 2.9 s against 1.7 s at half the capacity."""
READ_PACE_SECONDS = 0.05
"""At most one getMore per this long while a batch is collected and holds events.  A server answers a
getMore as soon as it has any event, so a stream read at once after every reply asked about 150 times a
second for about 6 events each at 900 writes/s (the benchmark's sync at half the capacity), and each
getMore costs the migrator about 0.2 ms of CPU: 40% of its CPU went to asking.  Waiting lets the events
gather on the server; the wait ends as soon as the applier is free (the batch is handed over as before),
and while the applier is idle the collection still ends within COLLECT_SECONDS.  A reply that leaves
events unread is not paced: a backlog is read at full speed.  Measured: bench/NOTES.md, round 3."""
HAND_OVER_SECONDS = 0.1
"""A batch is handed to the applier at most this often while the applier is busy (it waits for the
applier in any case).  Every batch costs the migrator about 1.3 ms of CPU whatever its size (a bulk write
per lane, a checkpoint, the lag), so handing over the moment the applier was free made batches of a few
events once the reading got cheaper.  Measured: bench/NOTES.md, round 3."""
FALLBACK_SECONDS = 5.0
"""How often the source's oplog may be read for its latest write when replies carry no operationTime."""
BLOCKED_MEASURE_SECONDS = 1.0
"""While one batch takes long to apply (an index build), how often the lag is measured meanwhile."""
BSON_OBJECT_TOO_LARGE = 10334
UNRECOGNIZED_STAGE = 40324
SPLIT_STAGE: dict[str, Any] = {"$changeStreamSplitLargeEvent": {}}
FRAGMENT_WAIT_SECONDS = 30.0
"""How long the rest of a split event may take to arrive (the server sends the fragments back to back)."""

__all__ = [
    "SyncRunner",
    "SyncState",
    "batch_through",
    "catch_up_estimate",
    "fcv",
    "open_start_point",
    "seen_through",
    "token_time",
]


def ts_dict(ts: Timestamp | None) -> dict[str, int] | None:
    return {"t": ts.time, "i": ts.inc} if ts is not None else None


def ts_from(d: dict[str, int] | None) -> Timestamp | None:
    return Timestamp(d["t"], d["i"]) if d else None


def token_time(token: Any) -> Timestamp | None:
    """The cluster time a MongoDB resume token encodes (hex KeyString: 0x82 then the 8-byte timestamp).

    None for a token in another format (SecantusDB's): the caller then uses the reply's operationTime.
    """
    data = token.get("_data") if token is not None and hasattr(token, "get") else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    try:
        return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None


def token_dict(token: Any) -> dict[str, Any] | None:
    if token is None:
        return None
    return dict(token.items()) if hasattr(token, "items") else dict(token)


def just_before(ts: Timestamp) -> Timestamp:
    """The latest cluster time before ``ts``: what a batch ending at an event of time ``ts`` proves applied."""
    return Timestamp(ts.time, ts.inc - 1) if ts.inc > 0 else Timestamp(ts.time - 1, 0xFFFFFFFF)


def seen_through(token: Any, before: Timestamp | None, *, sharded: bool) -> Timestamp | None:
    """How far an empty reply proves the stream read: every event at or before the time returned.

    MongoDB's high-water token (``82`` + time) is exact on a replica set.  Through mongos it is the
    lowest point every shard promised, and it sorts before the events of its own time, which another
    shard may still send (a cross-shard transaction commits at one time on each): the time before it.
    Without such a token, the operationTime of the reply before (the server's last applied write, not a
    promise about the stream): the time before it.
    """
    hwm = token_time(token)
    if hwm is not None:
        return just_before(hwm) if sharded else hwm
    return just_before(before) if before is not None else None


def batch_through(
    last: Timestamp | None, seen: Timestamp | None, applied: Timestamp | None, *, sharded: bool
) -> Timestamp | None:
    """How far a batch ending at an event of cluster time ``last`` proves the history applied.

    Only the events before ``last`` unless the stream then said "nothing more" (``seen``): more events of
    the same cluster time (the rest of a transaction) may still come.  On a replica set an empty reply
    after ``last`` proves ``last`` whole; through mongos another shard may still send events of that time.
    Never behind ``applied``, what earlier batches proved.
    """
    if last is None:
        return applied
    if seen is None or sharded:
        through = just_before(last) if seen is None else max(just_before(last), seen)
    else:
        through = max(last, seen)
    return through if applied is None or through > applied else applied


def open_start_point(source: MongoClient[Any]) -> tuple[dict[str, Any], Timestamp]:
    """Open the cluster-wide change stream once and return its resume point (before any data is read)."""
    optime = latest_optime(source)
    with source.watch([], show_expanded_events=True, max_await_time_ms=50) as stream:
        # The opening reply's postBatchResumeToken (MongoDB 4.0.7+, change-events manual "Resume Tokens from
        # aggregate and getMore"; pymongo's resume_token before anything is read): a point before every event
        # still to come.  Reading first moved the token past a write that arrived meanwhile, and resuming
        # there skipped it: harmless before a clone, lost for a reverse sync (it has none).
        token = token_dict(stream.resume_token)
        if token is None:  # a server that sends no postBatchResumeToken: the first getMore gives one
            stream.try_next()
            token = token_dict(stream.resume_token)
    if token is None:
        raise TransientError("source returned no resume token for the change stream")
    return token, optime


DELTA_MIN_VERSION = (6, 1)
"""Update events name fields with dots in them (``disambiguatedPaths``) from MongoDB 6.1 on, with
showExpandedEvents (change-events reference, ``update`` event): before, ``a.b`` could be a path or a name."""


def update_mode(cfg: MigrationConfig, source: MongoClient[Any]) -> str:
    """The update mode the sync uses: the configured one, but ``lookup`` where ``delta`` is not safe."""
    if cfg.sync.update_mode != "delta":
        return "lookup"
    try:
        version = str(source.server_info().get("version", "0"))
        have = tuple(int(p) for p in version.split(".")[:2])
    except (PyMongoError, ValueError):
        have = (0, 0)
    if have < DELTA_MIN_VERSION:
        log.warning(
            "sync.update_mode delta needs a source of MongoDB 6.1 or newer (the source runs %s): updates are "
            "looked up instead",
            ".".join(map(str, have)),
        )
        return "lookup"
    return "delta"


@dataclass
class _InFlight:
    """A batch handed to the applier thread: what to checkpoint once it is applied."""

    future: Future[None]
    token: Any
    through: Timestamp | None  # every event at or before this cluster time is in this batch or an earlier one
    events: int
    last_event: Timestamp | None = None  # the cluster time of the batch's last change event


class SyncRunner:
    """Applies the change stream until stopped; safe to run in a background thread."""

    _handed = 0.0  # when the last batch was handed to the applier (time.monotonic); set per instance once it is

    def __init__(
        self,
        config: MigrationConfig,
        source: MongoClient[Any],
        dest: MongoClient[Any],
        store: MetadataStore,
        on_tick: Callable[[SyncState], None] | None = None,
        on_failure: Callable[[LiveMigrateError], None] | None = None,
        observer: ApplyObserver | None = None,
    ) -> None:
        self.cfg = config
        self.observer = observer  # told what each applied batch wrote (continuous verification)
        self.name = config.name
        self.src = source
        self.dst = dest
        self.store = store
        self.nsfilter = NamespaceFilter.from_rules(config.namespaces)
        self.state = SyncState()
        self.status = SyncStatus(config, store, self.state)
        self.fcv = FCVWatch(source, dest, store, self.name)
        self.stop_event = threading.Event()
        self.on_tick = on_tick
        self.on_failure = on_failure  # the sync stopped on an error: the Migration records it
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self._last_fallback = -FALLBACK_SECONDS
        self._split: bool | None = None  # the source takes $changeStreamSplitLargeEvent (None: not asked yet)
        self._raw_updates: bool | None = None  # the source takes showRawUpdateDescription (delta mode)
        self._budget = RetryBudget("sync", config.tuning.retry_attempts, config.tuning.retry_max_seconds, 0.5)
        self._applier: Applier | None = None
        self._sharded = False  # the source is a mongos (read at start): high-water marks are exclusive
        self.update_mode = "lookup"  # what update events carry (sync.update_mode, read at start)

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self.stop_event.clear()
        self._thread = threading.Thread(target=self._thread_main, name=f"sync-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the batch in hand is applied and checkpointed; False if the thread did not end in time.

        The sync loop checks the stop request between events, applies what it
        collected, writes that batch's checkpoint and returns, so the stored
        checkpoint is the last fully applied batch.  A thread stuck past
        ``timeout`` (e.g. on an unreachable destination) is left behind: the
        checkpoint it wrote last stands, which is never ahead of applied data.
        """
        self.stop_event.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "sync thread did not stop within %.0fs; the last checkpoint (event %s) stands",
                timeout,
                self.state.checkpoint_events,
            )
            return False
        cp = self.state.checkpoint_time
        log.info(
            "sync stopped; checkpoint at event %s (cluster time %s)",
            self.state.checkpoint_events,
            f"{cp.time}.{cp.inc}" if cp else None,
        )
        return True

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def abort(self, exc: LiveMigrateError) -> None:
        """Stop with an error found outside the loop (e.g. the destination lock was lost): at once.

        Unlike :meth:`stop`, nothing more is written: the applier refuses its next bulk write, and
        what the loop collected is not applied.
        """
        self.state.error = exc
        if self._applier is not None:
            self._applier.halt = exc
        self.stop_event.set()

    def _thread_main(self) -> None:
        try:
            self.run()
        except LiveMigrateError as exc:
            self.state.error = exc
            log.error("sync stopped: %s", exc.one_line())
        except Exception as exc:  # noqa: BLE001 - surfaced through state.error
            self.state.error = classify(exc)
            log.error("sync stopped: %s", self.state.error)
        finally:
            if self.state.error is not None and self.on_failure is not None:
                # At once, not only by whoever waits on the runner: describe shows it while the flow is paused.
                self.on_failure(self.state.error)
            with self._changed:
                self._changed.notify_all()

    # -- the loop -------------------------------------------------------------
    def run(self) -> None:
        """Follow the stream until stop_event; retry transient errors from the last checkpoint."""
        self.state.running = True
        st = self.state
        self._budget.succeeded()
        st.failures = 0
        doc = self.store.load(self.name)
        self.update_mode = update_mode(self.cfg, self.src)
        applier = Applier(
            self.dst,
            self.nsfilter,
            self.cfg.tuning.sync_lanes,
            source=self.src,
            excluded=frozenset(u["ns"] for u in doc.unsupported),
            shard_entries=list(self.cfg.sharding.shardingEntries),
            supporting_indexes=self.cfg.sharding.createSupportingIndexes,
            update_mode=self.update_mode,
        )
        applier.halt = self.state.error  # aborted before it started
        applier.observer = self.observer
        if doc.direction == "reverse":
            # The reverse sync writes onto the source, whose unique indexes are real (tasks/reverse.py).
            cp = self.store.load_checkpoint(self.name)
            applier.deferred = {}
            for d in cp.deferred if cp is not None else []:
                applier.deferred[(d["ns"], id_key(d["_id"]))] = (d["ns"], d["_id"])
        self._applier = applier
        try:
            self._sharded = is_mongos(self.src)
        except PyMongoError:
            self._sharded = True  # unknown: the cautious reading of high-water marks
        try:
            while not self.stop_event.is_set():
                try:
                    self._follow(applier)
                except (PyMongoError, LiveMigrateError) as exc:
                    st.stats.index_changes = []  # the failed batch is replayed whole: it books its changes again
                    delay = self._budget.failed(exc)  # raises what is terminal, or past the budget
                    st.failures = self._budget.failures
                    st.reconnects += 1
                    self.stop_event.wait(delay)
        finally:
            applier.close()
            self.state.running = False
            self.status.persist(force=True)

    def _open_stream(self, session: ClientSession) -> Any:
        cp = self.store.load_checkpoint(self.name)
        doc = self.store.load(self.name)
        kwargs: dict[str, Any] = {}
        if cp is not None and cp.token:
            kwargs["start_after"] = cp.token
            self.state.applied_events = max(self.state.applied_events, cp.applied_events)
            self.state.applied_time = self.state.applied_time or ts_from(cp.cluster_time)
            if self.state.checkpoint_events is None:
                self.state.checkpoint_events, self.state.checkpoint_time = cp.applied_events, ts_from(cp.cluster_time)
        elif doc.start_token:
            kwargs["start_after"] = doc.start_token
        elif doc.start_time:
            kwargs["start_at_operation_time"] = ts_from(doc.start_time)
        else:
            raise HistoryLostError(f"migration {self.name!r} has no change stream start point")
        batch = self.cfg.tuning.sync_batch_events
        lookup = self.update_mode == "lookup"
        while True:
            split, raw = self._split is not False, not lookup and self._raw_updates is not False
            try:
                stream = _watch_raw(
                    self.src, self.nsfilter, batch, kwargs, session, split=split, lookup=lookup, raw_updates=raw
                )
            except OperationFailure as exc:
                if raw and "showRawUpdateDescription" in str(exc):
                    self._raw_updates = False
                    log.warning(
                        "the source does not send updates as their oplog diffs (showRawUpdateDescription): an "
                        "update that moves fields (a pipeline update) keeps the destination's field order"
                    )
                    continue
                if split and (exc.code == UNRECOGNIZED_STAGE or "changeStreamSplitLargeEvent" in str(exc)):
                    self._split = False
                    log.warning(
                        "the source does not split change events over 16 MB ($changeStreamSplitLargeEvent needs "
                        "MongoDB 7.0 or 6.0.9): such an event will stop the sync with its namespace and _id"
                    )
                    continue
                raise
            self._split, self._raw_updates = split, raw or None
            return stream

    def _follow(self, applier: Applier) -> None:
        """Read the stream and apply it in batches; a batch is applied while the next one is read.

        Batches are applied one after another, in stream order (a second
        thread applies; this one reads).  A batch's checkpoint is written once
        it is applied, and never while an earlier batch is still being applied.
        """
        inflight: _InFlight | None = None
        with (
            self.src.start_session(causal_consistency=False) as session,
            self._open_stream(session) as stream,
            ThreadPoolExecutor(1, thread_name_prefix=f"apply-{self.name}") as pool,
        ):
            try:
                limit = self.cfg.tuning.sync_batch_events
                while not self.stop_event.is_set():
                    self.fcv.check()
                    # The source's latest write as of the last reply (every reply carries its operationTime):
                    # an empty getMore after it means every event up to it has been seen.
                    before = session.operation_time or self._source_time_fallback()
                    batch, caught_up = self._collect(stream, limit, inflight, session)
                    token = stream.resume_token
                    seen = self._seen(token, before) if caught_up else None
                    if inflight is not None:
                        self._land(inflight, session)
                        inflight = None
                    if self.state.error is not None:
                        return  # aborted (the lock is lost): what was collected is not applied
                    if batch:
                        self._handed = time.monotonic()
                        through = self._through(batch[-1].get("clusterTime"), seen)
                        inflight = _InFlight(
                            pool.submit(applier.apply, batch, self.state.stats),
                            token,
                            through,
                            len(batch),
                            batch[-1].get("clusterTime"),
                        )
                        continue
                    if applier.deferred:
                        applier.retry_deferred()  # idle, or just restarted: what a batch deferred is owed still
                    applied_time = self.state.applied_time
                    if seen is not None and (applied_time is None or seen > applied_time):
                        applied_time = seen
                    self._checkpoint(token, applied_time, self.state.applied_events)
                    self.state.applied_time = applied_time
                    self._observe(session.operation_time, caught_up)
                if inflight is not None:  # stopped: the batch in hand is applied and checkpointed first
                    self._land(inflight, session)
                    inflight = None
            finally:
                if inflight is not None:
                    # An error elsewhere: let the batch being applied end before the stream is reopened
                    # (a write still landing after newer events are re-applied could leave an older state).
                    wait([inflight.future])

    def _seen(self, token: Any, before: Timestamp | None) -> Timestamp | None:
        return seen_through(token, before, sharded=self._sharded)

    def _through(self, last: Timestamp | None, seen: Timestamp | None) -> Timestamp | None:
        return batch_through(last, seen, self.state.applied_time, sharded=self._sharded)

    def _collect(
        self, stream: Any, limit: int, inflight: _InFlight | None, session: ClientSession
    ) -> tuple[list[Any], bool]:
        """Events for the next batch: while a batch is being applied, until it is done; else up to COLLECT_SECONDS.

        Returns the events and whether the stream answered "nothing more" (an empty getMore).  While the
        batch in flight takes long (an index build), the lag is measured meanwhile from the replies'
        operationTime: it grows, and readiness drops once it passes the bound.  Once the batch holds events
        and every event read so far is taken, the next getMore waits until READ_PACE_SECONDS after the last
        one (or until the applier is free): see READ_PACE_SECONDS.
        """
        batch: list[Any] = []
        started = time.monotonic()
        deadline = started + COLLECT_SECONDS
        hand_at = self._handed + HAND_OVER_SECONDS  # the earliest time a busy applier's successor is handed over
        measured = started
        next_read = started  # the earliest time of the next getMore once the batch holds events
        # A stop request ends the collection early: what is in hand is applied and checkpointed.
        while len(batch) < limit and not self.stop_event.is_set():
            now = time.monotonic()
            if inflight is not None:
                if batch and now >= hand_at and inflight.future.done():
                    break  # the applier is free: hand it what there is
                if now - measured >= BLOCKED_MEASURE_SECONDS:
                    measured = now
                    self._observe(session.operation_time, False)
            elif now >= deadline:
                break
            if batch and _buffered(stream) == 0 and now < next_read:  # the next read would ask the server
                if inflight is None:
                    self.stop_event.wait(min(next_read, deadline) - now)
                elif inflight.future.done():
                    self.stop_event.wait(min(next_read, hand_at) - now)
                else:
                    wait([inflight.future], timeout=next_read - now)
                continue
            if _buffered(stream) == 0:
                next_read = now + READ_PACE_SECONDS
            cursor = getattr(stream, "_cursor", None)
            ev = self._next(stream)
            if ev is None:
                # An empty first batch of a stream pymongo reopened after a resumable error starts at the
                # last event read (perhaps mid-transaction): it proves nothing about what follows.
                return batch, getattr(stream, "_cursor", None) is cursor
            batch.append(ev)
            # The rest of this reply is already here: no getMore, nothing to wait for between its events.
            while len(batch) < limit and _buffered(stream):
                if (ev := self._next(stream)) is None:
                    break
                batch.append(ev)
        return batch, False

    def _next(self, stream: Any) -> Any:
        """The next whole event, or None: the fragments of a split event are read and joined here."""
        try:
            ev = stream.try_next()
            split = ev.get("splitEvent") if ev is not None else None
            if split is None or split.get("of", 1) <= 1:
                return ev
            return self._join(stream, ev)
        except OperationFailure as exc:
            if exc.code == BSON_OBJECT_TOO_LARGE:
                raise self._too_large(stream.resume_token) from None
            raise

    def _join(self, stream: Any, first: Any) -> dict[str, Any]:
        """One event from its fragments (``splitEvent: {fragment, of}``): each holds some top-level fields.

        The checkpoint is never taken between fragments, so a stream reopened from it starts at a
        fragment 1; pymongo's own resume inside this loop continues after the last fragment read.
        """
        split = first["splitEvent"]
        if split.get("fragment") != 1:
            raise TransientError("the change stream resumed in the middle of a split event: reopening it")
        parts = [first]
        deadline = time.monotonic() + FRAGMENT_WAIT_SECONDS
        while parts[-1]["splitEvent"]["fragment"] < split["of"]:
            nxt = stream.try_next()
            if nxt is None:
                if time.monotonic() > deadline:
                    raise TransientError("the rest of a split change event did not arrive: reopening the stream")
                continue
            parts.append(nxt)
        joined: dict[str, Any] = {}
        for part in parts:
            joined.update((k, v) for k, v in part.items() if k != "splitEvent")
        return joined

    def _too_large(self, after: Any) -> TerminalError:
        """The named error for an event over 16 MB: which namespace and document it is about.

        The server refused the whole event, so it is read again without the document and the update
        (a $project of the large fields) just to name it.
        """
        what = "a change event"
        try:
            kwargs = {"start_after": after} if after else {}
            project = {"$project": {"fullDocument": 0, "updateDescription": 0, "fullDocumentBeforeChange": 0}}
            with _watch_raw(self.src, self.nsfilter, 1, kwargs, None, split=False, extra=[project], lookup=False) as s:
                ev = s.try_next()
            if ev is not None:
                ns = ev.get("ns") or {}
                key = (ev.get("documentKey") or {}).get("_id")
                what = f"{ns.get('db')}.{ns.get('coll')}: the {ev.get('operationType')} event of _id {key!r}"
        except PyMongoError:
            pass  # the event stays unnamed; the error below still says what to do
        how = (
            "a single field of it is over 16 MB even split"
            if self._split
            else "the source cannot split large events ($changeStreamSplitLargeEvent needs MongoDB 7.0 or 6.0.9)"
        )
        return TerminalError(
            f"{what} is larger than 16 MB with its looked-up document: {how}",
            remedy="upgrade the source, or make the document smaller on the source, then resume the migration",
        )

    def _land(self, done: _InFlight, session: ClientSession) -> None:
        """Wait for an applied batch, then checkpoint it and publish it (errors raise here, in stream order).

        While the batch takes long (an index build inside it), the lag keeps being measured from the
        source's latest write: it grows, and readiness drops once it passes the bound.
        """
        while True:
            try:
                done.future.result(timeout=BLOCKED_MEASURE_SECONDS)
                break
            except FutureTimeout:
                self._observe(self._source_time_fallback(every=BLOCKED_MEASURE_SECONDS), False)
        self._record_index_changes()
        self._checkpoint(done.token, done.through, self.state.applied_events + done.events)
        # Published only once applied and checkpointed: waiters may rely on it.
        self.state.applied_events += done.events
        self.state.applied_time = done.through
        self.state.last_event_time = done.last_event or self.state.last_event_time
        self._observe(session.operation_time, False)

    def _source_time_fallback(self, every: float = FALLBACK_SECONDS) -> Timestamp | None:
        """The latest write read from the source itself, at most every ``every`` seconds."""
        now = time.monotonic()
        if now - self._last_fallback < every:
            return None
        self._last_fallback = now
        try:
            return latest_optime(self.src)  # type: ignore[no-any-return]
        except PyMongoError:
            return None

    def _record_index_changes(self) -> None:
        """Book the batch's index changes (in the order the source made them) before its checkpoint."""
        st = self.state.stats
        if not st.index_changes:
            return
        doc = self.store.load(self.name)
        self.store.update(self.name, index_restores=book_changes(doc.index_restores, st.index_changes))
        st.index_changes = []

    def _checkpoint(self, token: Any, applied_time: Timestamp | None, applied_events: int) -> None:
        if token is None:
            return
        deferred = self._applier.deferred if self._applier is not None else None
        cp = Checkpoint(
            id=self.name,
            token=token_dict(token),
            cluster_time=ts_dict(applied_time),
            applied_events=applied_events,
            deferred=[{"ns": ns, "_id": id_value} for ns, id_value in (deferred or {}).values()],
        )
        self.store.save_checkpoint(cp)
        st = self.state
        st.checkpoint_events, st.checkpoint_time = applied_events, applied_time
        self._budget.succeeded()  # a batch went all the way through: the failure budget starts afresh
        st.failures = 0

    def _observe(self, source_time: Timestamp | None, idle: bool) -> None:
        self.status.observe(source_time or self._source_time_fallback(), idle)
        if self.on_tick:
            self.on_tick(self.state)
        with self._changed:
            self._changed.notify_all()

    # -- waiting ----------------------------------------------------------------
    def wait(self, predicate: Callable[[SyncState], bool], timeout: float) -> bool:
        """Block until predicate(state) holds, the sync fails, or timeout passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self.state.error is not None:
                    raise self.state.error
                if predicate(self.state):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))

    def deferred(self) -> list[tuple[str, Any]]:
        """The documents a reverse sync still owes because they met a duplicate key (see Applier.retry_deferred)."""
        applier = self._applier
        return list((applier.deferred or {}).values()) if applier is not None else []

    def applied_through(self, ts: Timestamp) -> bool:
        """Every event at or before cluster time ``ts`` is applied (whole transactions included)."""
        return self.state.applied_time is not None and self.state.applied_time >= ts


def _buffered(stream: Any) -> int | None:
    """How many events pymongo has read from the server and not yet handed out (None: unknown, never paced).

    pymongo keeps a reply's events in its cursor (``ChangeStream._cursor._data``, not public API; pinned by
    requirements.lock): a read with none left sends a getMore.
    """
    data = getattr(getattr(stream, "_cursor", None), "_data", None)
    return len(data) if data is not None else None


class _RawUpdatesStream(ClusterChangeStream[Any]):
    """A cluster change stream whose update events carry ``rawUpdateDescription`` (the oplog entry's ``o``:
    ``{$v: 2, diff}``) instead of ``updateDescription`` (change_stream_event_transform.cpp, MongoDB 6.0+)."""

    def _change_stream_options(self) -> dict[str, Any]:
        options = super()._change_stream_options()
        options["showRawUpdateDescription"] = True
        return options


def _watch_raw(
    source: MongoClient[Any],
    nsfilter: NamespaceFilter,
    batch: int,
    kwargs: dict[str, Any],
    session: ClientSession | None = None,
    *,
    split: bool,
    extra: list[dict[str, Any]] | None = None,
    lookup: bool = True,
    raw_updates: bool = False,
) -> Any:
    """A cluster-wide change stream whose events (and documents) stay raw BSON.

    ``split`` adds ``$changeStreamSplitLargeEvent`` (it must be the last stage).  ``raw_updates`` asks for
    update events' oplog diffs (``showRawUpdateDescription``, MongoDB 6.0+; what mongosync reads), which say
    which fields an update moved; ``lookup`` for the document with every update (``updateLookup``).
    """
    admin = source.get_database("admin", codec_options=EVENT_CODEC)
    pipeline = [nsfilter.change_stream_match(), *(extra or []), *([SPLIT_STAGE] if split else [])]
    stream = (_RawUpdatesStream if raw_updates else ClusterChangeStream)(
        admin,
        pipeline,
        "updateLookup" if lookup else None,
        kwargs.get("resume_after"),
        200,  # max_await_time_ms
        batch,
        None,  # collation
        kwargs.get("start_at_operation_time"),
        session,
        kwargs.get("start_after"),
        None,  # comment
        None,  # full_document_before_change
        show_expanded_events=True,
    )
    stream._initialize_cursor()
    return stream
