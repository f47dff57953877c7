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
as soon as the applier is free, so under load the batches grow and when the
load is light they stay small and the lag low.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from bson import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.errors import PyMongoError
from pymongo.synchronous.change_stream import ClusterChangeStream

from tasks.apply import Applier, ApplyStats
from tasks.config import MigrationConfig
from tasks.errors import FCVChangedError, HistoryLostError, LiveMigrateError, TransientError, classify
from tasks.metadata import MetadataStore
from tasks.mongo import latest_optime
from tasks.namespaces import NamespaceFilter
from tasks.progress import RateMeter
from tasks.state import ACTIVE, Checkpoint, Lag, Phase, utcnow

log = logging.getLogger(__name__)

EVENT_CODEC = CodecOptions(document_class=RawBSONDocument)
COLLECT_SECONDS = 0.5
"""How long the loop collects events into one batch at most.  Shorter batches (0.1-0.5 s, following the
last apply time) measured slower on the test servers: lag p50 2.9 s against 1.7 s at half the capacity."""
FALLBACK_SECONDS = 5.0
"""How often the source's oplog may be read for its latest write when replies carry no operationTime."""
FCV_POLL_SECONDS = 10.0
"""How often the sync compares both sides' featureCompatibilityVersion with the versions at begin."""


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


def fcv(client: MongoClient[Any]) -> str | None:
    try:
        res = client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
        return str(res["featureCompatibilityVersion"]["version"])
    except (PyMongoError, KeyError):
        return None


def open_start_point(source: MongoClient[Any]) -> tuple[dict[str, Any], Timestamp]:
    """Open the cluster-wide change stream once and return its resume point (before any data is read)."""
    optime = latest_optime(source)
    with source.watch([], show_expanded_events=True) as stream:
        stream.try_next()  # make sure the cursor exists on the server
        token = token_dict(stream.resume_token)
    if token is None:
        raise TransientError("source returned no resume token for the change stream")
    return token, optime


@dataclass
class _InFlight:
    """A batch handed to the applier thread: what to checkpoint once it is applied."""

    future: Future[None]
    token: Any
    last_time: Timestamp | None
    events: int


@dataclass
class SyncState:
    """Live numbers the runner exposes (read by flows, describe and metrics)."""

    applied_events: int = 0
    applied_time: Timestamp | None = None
    source_time: Timestamp | None = None
    lag_seconds: float | None = None
    events_per_second: float = 0.0
    catch_up_seconds: float | None = None
    under_lag_since: float | None = None
    ready: bool = False
    error: LiveMigrateError | None = None
    running: bool = False
    stats: ApplyStats = field(default_factory=ApplyStats)
    checkpoint_events: int | None = None  # applied_events recorded with the last stored checkpoint
    checkpoint_time: Timestamp | None = None  # its cluster time
    failures: int = 0  # consecutive transient failures (reset by every checkpointed batch)
    reconnects: int = 0  # transient failures ridden out since start


def catch_up_estimate(lag_seconds: float, applied_speed: float) -> float | None:
    """Seconds until the lag reaches zero, or None while it is not closing.

    ``applied_speed`` is how many seconds of the source's history the sync
    applies per wall-clock second; the source writes one second of history
    per second, so the gap closes at ``applied_speed - 1``.
    """
    if lag_seconds <= 0:
        return 0.0
    closing = applied_speed - 1.0
    if closing <= 0.05:
        return None
    return round(lag_seconds / closing, 1)


class SyncRunner:
    """Applies the change stream until stopped; safe to run in a background thread."""

    def __init__(
        self,
        config: MigrationConfig,
        source: MongoClient[Any],
        dest: MongoClient[Any],
        store: MetadataStore,
        on_tick: Callable[[SyncState], None] | None = None,
    ) -> None:
        self.cfg = config
        self.name = config.name
        self.src = source
        self.dst = dest
        self.store = store
        self.nsfilter = NamespaceFilter.from_rules(config.namespaces)
        self.state = SyncState()
        self.stop_event = threading.Event()
        self.on_tick = on_tick
        self._thread: threading.Thread | None = None
        self._rate = RateMeter()
        self._applied_clock: RateMeter | None = None  # seconds of source history applied per wall-clock second
        self._last_persist = 0.0
        self._window_open = False  # the stored record already says ready (window opened)
        self._last_fcv_check = 0.0
        self._fcv: tuple[str | None, str | None] | None = None
        self._changed = threading.Condition()
        self._last_fallback = -FALLBACK_SECONDS

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
        """Stop with an error found outside the loop (e.g. the destination lock was lost)."""
        self.state.error = exc
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
            if self.state.error is not None:
                self._record_failure(self.state.error)
            with self._changed:
                self._changed.notify_all()

    def _record_failure(self, exc: LiveMigrateError) -> None:
        """The sync stopped on an error: the migration is failed (resumable once the cause is fixed).

        Recorded here, not only by whoever waits on the runner, so `describe`
        shows it at once even while the flow sits paused for a decision.
        """
        try:
            doc = self.store.load(self.name)
            if doc.phase in ACTIVE:
                self.store.set_phase(self.name, Phase.FAILED, error=exc.one_line())
        except (PyMongoError, LiveMigrateError) as err:
            log.warning("could not record the sync failure in the metadata store: %s", type(err).__name__)

    # -- the loop -------------------------------------------------------------
    def run(self) -> None:
        """Follow the stream until stop_event; retry transient errors from the last checkpoint."""
        self.state.running = True
        st = self.state
        st.failures = 0
        applier = Applier(self.dst, self.nsfilter, self.cfg.tuning.sync_lanes, source=self.src)
        try:
            while not self.stop_event.is_set():
                try:
                    self._follow(applier)
                except (PyMongoError, LiveMigrateError) as exc:
                    err = classify(exc)
                    if isinstance(err, HistoryLostError) or not isinstance(err, TransientError):
                        raise err from None
                    st.failures += 1
                    st.reconnects += 1
                    if st.failures > self.cfg.tuning.retry_attempts:
                        raise TransientError(f"sync gave up after {st.failures} failures in a row: {err}") from None
                    delay = min(self.cfg.tuning.retry_max_seconds, 0.5 * 2**st.failures)
                    log.warning("sync: %s; reconnecting in %.1fs (%d in a row)", err, delay, st.failures)
                    self.stop_event.wait(delay)
        finally:
            applier.close()
            self.state.running = False
            self._persist(force=True)

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
        return _watch_raw(self.src, self.nsfilter, self.cfg.tuning.sync_batch_events, kwargs, session)

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
                    self._check_fcv()
                    # The source's latest write as of the last reply (every reply carries its operationTime):
                    # an empty getMore after it means every event up to it has been seen.
                    before = session.operation_time or self._source_time_fallback()
                    batch, caught_up = self._collect(stream, limit, inflight)
                    token = stream.resume_token
                    if inflight is not None:
                        self._land(inflight, session.operation_time)
                        inflight = None
                    if batch:
                        last = batch[-1].get("clusterTime") or self.state.applied_time
                        inflight = _InFlight(
                            pool.submit(applier.apply, batch, self.state.stats), token, last, len(batch)
                        )
                        continue
                    applied_time = self.state.applied_time
                    if caught_up:
                        # MongoDB's high-water token says exactly how far the stream has read; else `before`.
                        seen = token_time(token) or before
                        if seen is not None and (applied_time is None or seen > applied_time):
                            applied_time = seen
                    self._checkpoint(token, applied_time, self.state.applied_events)
                    self.state.applied_time = applied_time
                    self._measure(session.operation_time, caught_up)
                if inflight is not None:  # stopped: the batch in hand is applied and checkpointed first
                    self._land(inflight, session.operation_time)
                    inflight = None
            finally:
                if inflight is not None:
                    # An error elsewhere: let the batch being applied end before the stream is reopened
                    # (a write still landing after newer events are re-applied could leave an older state).
                    wait([inflight.future])

    def _collect(self, stream: Any, limit: int, inflight: _InFlight | None) -> tuple[list[Any], bool]:
        """Events for the next batch: while a batch is being applied, until it is done; else up to COLLECT_SECONDS.

        Returns the events and whether the stream answered "nothing more" (an empty getMore).
        """
        batch: list[Any] = []
        deadline = time.monotonic() + COLLECT_SECONDS
        # A stop request ends the collection early: what is in hand is applied and checkpointed.
        while len(batch) < limit and not self.stop_event.is_set():
            if inflight is not None:
                if batch and inflight.future.done():
                    break  # the applier is free: hand it what there is
            elif time.monotonic() >= deadline:
                break
            ev = stream.try_next()
            if ev is None:
                return batch, True
            batch.append(ev)
        return batch, False

    def _land(self, done: _InFlight, source_time: Timestamp | None) -> None:
        """Wait for an applied batch, then checkpoint it and publish it (errors raise here, in stream order)."""
        done.future.result()
        self._record_index_changes()
        self._checkpoint(done.token, done.last_time, self.state.applied_events + done.events)
        # Published only once applied and checkpointed: waiters may rely on it.
        self.state.applied_events += done.events
        self.state.applied_time = done.last_time
        self._measure(source_time, False)

    def _source_time_fallback(self) -> Timestamp | None:
        """The latest write read from the source itself, at most every FALLBACK_SECONDS (replies had no time)."""
        now = time.monotonic()
        if now - self._last_fallback < FALLBACK_SECONDS:
            return None
        self._last_fallback = now
        try:
            return latest_optime(self.src)  # type: ignore[no-any-return]
        except PyMongoError:
            return None

    def _record_index_changes(self) -> None:
        st = self.state.stats
        if not st.index_restores and not st.index_drops:
            return
        doc = self.store.load(self.name)
        current = {(r["ns"], r["name"]): r for r in doc.index_restores}
        for r in st.index_restores:
            current[(r["ns"], r["name"])] = {**current.get((r["ns"], r["name"]), {}), **r}
        for key in st.index_drops:
            current.pop(key, None)
        self.store.update(self.name, index_restores=list(current.values()))
        st.index_restores, st.index_drops = [], []

    def _checkpoint(self, token: Any, applied_time: Timestamp | None, applied_events: int) -> None:
        if token is None:
            return
        cp = Checkpoint(
            id=self.name,
            token=token_dict(token),
            cluster_time=ts_dict(applied_time),
            applied_events=applied_events,
        )
        self.store.save_checkpoint(cp)
        st = self.state
        st.checkpoint_events, st.checkpoint_time = applied_events, applied_time
        st.failures = 0  # a batch went all the way through: the failure budget starts afresh

    def _check_fcv(self) -> None:
        now = time.monotonic()
        if now - self._last_fcv_check < FCV_POLL_SECONDS:
            return
        self._last_fcv_check = now
        cur = (fcv(self.src), fcv(self.dst))
        if self._fcv is None:  # the versions recorded at begin, so a change during the clone counts too
            began = self.store.load(self.name).fcv
            self._fcv = (began.get("source"), began.get("destination"))
        # A side that could not be read (then or now) is compared from its first reading on.
        self._fcv = (self._fcv[0] or cur[0], self._fcv[1] or cur[1])
        changed = [
            f"{side} {was} -> {new}"
            for side, was, new in zip(("source", "destination"), self._fcv, cur, strict=True)
            if new is not None and new != was
        ]
        if changed:
            raise FCVChangedError(f"featureCompatibilityVersion changed during the migration ({', '.join(changed)})")

    def _applied_speed(self) -> float:
        """Seconds of the source's history applied per second (smoothed); 0 until measured."""
        t = self.state.applied_time
        if t is None:
            return 0.0
        if self._applied_clock is None:
            self._applied_clock = RateMeter(_last_v=float(t.time))
            return 0.0
        return self._applied_clock.update(float(t.time))

    def _measure(self, source_time: Timestamp | None, idle: bool) -> None:
        """Lag = the source's latest write time minus the applied time; zero once a read came back empty."""
        st = self.state
        st.source_time = source_time or self._source_time_fallback() or st.source_time
        if idle and st.applied_time is not None:
            st.lag_seconds = 0.0  # nothing left to read: everything written before the read is applied
        elif st.source_time is not None and st.applied_time is not None:
            st.lag_seconds = float(max(0, st.source_time.time - st.applied_time.time))
        st.events_per_second = self._rate.update(st.applied_events)
        if st.lag_seconds is not None:
            st.catch_up_seconds = catch_up_estimate(st.lag_seconds, self._applied_speed())
            if st.lag_seconds <= self.cfg.cutover.max_lag_seconds:
                st.under_lag_since = st.under_lag_since or time.monotonic()
                if time.monotonic() - st.under_lag_since >= self.cfg.cutover.ready_after_seconds:
                    st.ready = True
            else:
                st.under_lag_since = None
        self._persist()
        if self.on_tick:
            self.on_tick(st)
        with self._changed:
            self._changed.notify_all()

    def _persist(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_persist < 2.0:
            return
        self._last_persist = now
        st = self.state
        lag = Lag(
            lag_seconds=st.lag_seconds,
            events_per_second=round(st.events_per_second, 2),
            catch_up_seconds=st.catch_up_seconds,
            applied_events=st.applied_events,
            applied_time=st.applied_time.time if st.applied_time else None,
            source_time=st.source_time.time if st.source_time else None,
            updated_at=utcnow(),
        )
        fields: dict[str, Any] = {"lag": lag}
        try:
            if st.ready and not self._window_open:
                doc = self.store.load(self.name)
                if not doc.ready:
                    now_dt = utcnow()
                    fields.update(
                        ready=True,
                        ready_since=now_dt,
                        window_opens_at=now_dt,
                        window_closes_at=now_dt + dt.timedelta(hours=self.cfg.cutover.window_hours),
                    )
            self._window_open = self.store.update(self.name, **fields).ready
        except PyMongoError as exc:
            log.warning("could not persist lag: %s", type(exc).__name__)

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

    def applied_through(self, ts: Timestamp) -> bool:
        return self.state.applied_time is not None and self.state.applied_time >= ts


def _watch_raw(
    source: MongoClient[Any],
    nsfilter: NamespaceFilter,
    batch: int,
    kwargs: dict[str, Any],
    session: ClientSession | None = None,
) -> Any:
    """A cluster-wide change stream whose events (and documents) stay raw BSON."""
    admin = source.get_database("admin", codec_options=EVENT_CODEC)
    stream = ClusterChangeStream(
        admin,
        [nsfilter.change_stream_match()],
        "updateLookup",
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
