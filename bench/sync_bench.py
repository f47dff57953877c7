"""Sync: replication lag under a fixed-rate writer, against the destination's raw bulk-write capacity.

Why: a live migration is only live if the sync keeps up with the application.
A writer on the source issues a fixed rate of operations (50% updates, 30%
inserts, 20% deletes, in 100 ms ticks) while the migrator (a separate
process, bench/engine_proc.py) follows the change stream.  The lag of each
write batch is the time from just before it was sent to the source until the
migrator's checkpoint (written only after the batch is applied) covers its
operation time, polled every 50 ms.  The rate is a fraction of the
destination's capacity for the same mix sent directly as ``bulk_write``.

The migrator's own cost is measured on the same runs: its process's CPU
seconds (user + system, all threads) over the clone of the seeded documents
(inside the process) and over the writer's window until the backlog drained
(from /proc, outside it), per 100,000 documents and events, and what one
core could therefore push when the servers keep up.
"""

from __future__ import annotations

import bisect
import json
import logging
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo import DeleteOne, InsertOne, MongoClient, UpdateOne

from bench.common import Servers, config_dict, drop_databases, median, percentile, ratio, reset_destination
from bench.data import SEED_BATCH, WORDS, CollectionShape, create_indexes, insert_batches, raw_docs
from bench.engine_proc import cpu_seconds
from flows.localservers import REPO_ROOT
from tasks.config import METADATA_DB
from tasks.mongo import RAW, latest_optime

log = logging.getLogger("bench.sync")

LIVE = CollectionShape("live", 1.0, "long", ((("name", 1),), (("customer", 1),)))
TICK = 0.1  # the writer's pace
POLL = 0.05  # how often the checkpoint is read
CAPACITY_BATCH = 1000
BOUNDED_GROWTH_S = 1.0  # lag may grow by at most this much from the first third to the last
DRAIN_LIMIT_S = 5.0  # and must drain this fast once the writer stops


class Mix:
    """The writer's operations on one collection: 50% ``$set`` updates, 30% inserts, 20% deletes."""

    def __init__(self, seed_docs: int, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.live = list(range(seed_docs))
        self.next_id = seed_docs
        self.docs = raw_docs(LIVE.id_kind, seed_docs, 10**9, seed)

    def ops(self, n: int) -> list[Any]:
        rnd, live = self.rnd, self.live
        out: list[Any] = []
        for _ in range(n):
            r = rnd.random()
            if r < 0.5 and live:
                key = Int64(live[rnd.randrange(len(live))])
                change = {"score": rnd.random() * 1000, "kind": WORDS[rnd.randrange(len(WORDS))]}
                out.append(UpdateOne({"_id": key}, {"$set": change, "$inc": {"seq": 1}}))
            elif r < 0.8 or not live:
                out.append(InsertOne(next(self.docs)))
                live.append(self.next_id)
                self.next_id += 1
            else:
                k = rnd.randrange(len(live))
                key = Int64(live[k])
                live[k] = live[-1]
                live.pop()
                out.append(DeleteOne({"_id": key}))
        return out


def seed_live(client: MongoClient[Any], db: str, n: int, seed: int) -> None:
    insert_batches(
        client[db].get_collection(LIVE.name, codec_options=RAW), raw_docs(LIVE.id_kind, 0, n, seed), SEED_BATCH
    )
    create_indexes(client, db, LIVE)


def capacity(sv: Servers, seed_docs: int, ops: int, runs: int) -> dict[str, Any]:
    """The destination's ops/s for the mix, as ``bulk_write`` batches of 1,000 (median of ``runs``)."""
    rates: list[float] = []
    for r in range(runs):
        db = "bench_capacity"
        drop_databases(sv.dst, db)
        seed_live(sv.dst, db, seed_docs, seed=11)
        mix = Mix(seed_docs, seed=100 + r)
        batches = [mix.ops(CAPACITY_BATCH) for _ in range(max(1, ops // CAPACITY_BATCH))]
        coll = sv.dst[db].get_collection(LIVE.name, codec_options=RAW)
        t0 = time.perf_counter()
        for b in batches:
            coll.bulk_write(b, ordered=False)
        rates.append(len(batches) * CAPACITY_BATCH / (time.perf_counter() - t0))
        drop_databases(sv.dst, db)
    return {"ops_per_s": round(median(rates), 1), "runs": [round(x, 1) for x in rates], "batch": CAPACITY_BATCH}


@dataclass
class Sent:
    t_send: float
    optime: Timestamp
    ops: int


class Poller(threading.Thread):
    """Reads the migrator's checkpoint every POLL seconds: (time, applied cluster time, applied events)."""

    def __init__(self, client: MongoClient[Any], name: str) -> None:
        super().__init__(daemon=True, name="bench-poller")
        self.client, self.migration = client, name
        self.samples: list[tuple[float, Timestamp, int]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        coll = self.client[METADATA_DB]["checkpoints"]
        while not self.stop_event.is_set():
            t = time.perf_counter()
            cp = coll.find_one({"_id": self.migration}, {"cluster_time": 1, "applied_events": 1})
            if cp and cp.get("cluster_time"):
                ct = cp["cluster_time"]
                self.samples.append((t, Timestamp(ct["t"], ct["i"]), int(cp.get("applied_events", 0))))
            self.stop_event.wait(max(0.0, POLL - (time.perf_counter() - t)))

    def applied(self) -> Timestamp | None:
        return self.samples[-1][1] if self.samples else None


def write_at_rate(client: MongoClient[Any], db: str, mix: Mix, rate: float, seconds: float) -> list[Sent]:
    """Send ``rate`` ops/s in TICK batches for ``seconds``; a late tick catches up (batch capped at 1 s worth)."""
    coll = client[db].get_collection(LIVE.name, codec_options=RAW)
    sent: list[Sent] = []
    done = 0
    t0 = time.perf_counter()
    k = 0
    with client.start_session() as session:
        while True:
            k += 1
            due_at = t0 + k * TICK
            now = time.perf_counter()
            if due_at > t0 + seconds:
                break
            if due_at > now:
                time.sleep(due_at - now)
            n = min(int(rate * k * TICK) - done, max(1, int(rate)))
            if n <= 0:
                continue
            t_send = time.perf_counter()
            coll.bulk_write(mix.ops(n), ordered=False, session=session)
            optime = session.operation_time
            if optime is None:
                optime = latest_optime(client)
            sent.append(Sent(t_send, optime, n))
            done += n
    return sent


def _reader(stream: Any, out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))


def level(
    sv: Servers,
    tmp: Path,
    rate: float,
    seed_docs: int,
    seconds: float,
    k: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One run of the writer at ``rate`` ops/s with the migrator following; the lag of every batch.

    ``extra``: config sections laid over the benchmark's (e.g. ``{"verification": {...}}``)."""
    db, name = f"bench_sync_{k}", f"bench-sync-{k}"
    reset_destination(sv, db)
    drop_databases(sv.src, db)
    seed_live(sv.src, db, seed_docs, seed=21)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**config_dict(sv, name, db), **(extra or {})}))
    errlog = (tmp / f"{name}.stderr").open("w")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.engine_proc", str(path), "sync"],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errlog,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    poller = Poller(sv.dst, name)
    try:
        if lines.get(timeout=300) != "SYNCING":
            raise RuntimeError("the migrator did not start syncing")
        poller.start()
        start_point = latest_optime(sv.src)
        _wait(lambda: (poller.applied() or Timestamp(0, 0)) >= start_point, 60, "the sync to catch up")
        events_before = poller.samples[-1][2]
        cpu_before = cpu_seconds(proc.pid)
        src_pid = sv.pair.source.proc.pid if sv.pair.source.proc is not None else None
        src_cpu_before = cpu_seconds(src_pid) if src_pid else 0.0
        proc.send_signal(signal.SIGUSR1)  # the migrator notes its threads' CPU: which part spends what
        t_write = time.perf_counter()
        sent = write_at_rate(sv.src, db, Mix(seed_docs, seed=31 + k), rate, seconds)
        write_seconds = time.perf_counter() - t_write
        last = sent[-1].optime if sent else start_point
        t_stop = time.perf_counter()
        drained = _wait(lambda: (poller.applied() or Timestamp(0, 0)) >= last, max(30.0, seconds), None)
        drain_seconds = time.perf_counter() - t_stop
        migrator_cpu = cpu_seconds(proc.pid) - cpu_before
        source_cpu = cpu_seconds(src_pid) - src_cpu_before if src_pid else 0.0
        proc.send_signal(signal.SIGUSR2)
        events_after = poller.samples[-1][2]
    finally:
        poller.stop_event.set()
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        errlog.close()
    final: dict[str, Any] = {}
    while not lines.empty():
        line = lines.get()
        if line.startswith("{"):
            final = json.loads(line)
    poller.join(5)
    drop_databases(sv.src, db)
    reset_destination(sv, db)
    out = summarize(rate, sent, poller.samples, write_seconds, drain_seconds, drained, events_before, final)
    out["migrator_cpu"] = migrator_cpu_figures(
        final.get("docs", 0), final.get("clone_cpu_seconds", 0.0), events_after - events_before, migrator_cpu
    )
    out["migrator_cpu"]["sync"]["parts"] = final.get("sync_cpu_by_part", {})
    events = events_after - events_before
    stats = final.get("apply_stats", {})
    mode = final.get("update_mode", "lookup")
    total = int(final.get("applied_events", 0)) or 1
    # Documents read on the source for updates: in lookup mode the server reads one per update event (inside
    # the change stream); in delta mode only the applier's lookups.  Over every event the sync applied.
    reads = stats.get("updates", 0) if mode == "lookup" else stats.get("lookups", 0)
    out["source"] = {
        "update_mode": mode,
        "cpu_seconds": round(source_cpu, 3),
        "cpu_s_per_100k_events": round(source_cpu / events * 100_000, 3) if events else 0.0,
        "update_events": stats.get("updates", 0),
        "lookups": stats.get("lookups", 0),
        "reads_per_event": round(reads / total, 4),
    }
    return out


def per_100k(cpu: float, units: int) -> dict[str, float]:
    """CPU seconds per 100,000 units, and the units per second one core could push at that cost."""
    s = cpu / units * 100_000 if units else 0.0
    return {"cpu_s_per_100k": round(s, 3), "one_core_per_s": round(100_000 / s) if s else 0.0}


def migrator_cpu_figures(docs: int, clone_cpu: float, events: int, sync_cpu: float) -> dict[str, Any]:
    """The migrator process's CPU over the clone (``docs``) and over the writer's window (``events`` applied)."""
    return {
        "clone": {"docs": docs, "cpu_seconds": round(clone_cpu, 3), **per_100k(clone_cpu, docs)},
        "sync": {"events": events, "cpu_seconds": round(sync_cpu, 3), **per_100k(sync_cpu, events)},
    }


def summarize(
    rate: float,
    sent: list[Sent],
    samples: list[tuple[float, Timestamp, int]],
    write_seconds: float,
    drain_seconds: float,
    drained: bool,
    events_before: int,
    final: dict[str, Any],
) -> dict[str, Any]:
    """Per-batch lag percentiles and whether the lag stayed bounded."""
    applied = [s[1] for s in samples]
    lags: list[float] = []
    unapplied = 0
    for s in sent:
        i = bisect.bisect_left(applied, s.optime)
        if i >= len(samples):
            unapplied += 1
            continue
        lags.append(max(0.0, samples[i][0] - s.t_send))
    third = max(1, len(lags) // 3)
    first, last = median(lags[:third]), median(lags[-third:])
    ops = sum(s.ops for s in sent)
    achieved = ops / write_seconds if write_seconds else 0.0
    applied_events = (samples[-1][2] - events_before) if samples else 0
    bounded = drained and unapplied == 0 and last <= first + BOUNDED_GROWTH_S and drain_seconds <= DRAIN_LIMIT_S
    return {
        "target_ops_per_s": round(rate, 1),
        "achieved_ops_per_s": round(achieved, 1),
        "ops": ops,
        "batches": len(sent),
        "lag_p50_s": round(percentile(lags, 50), 3),
        "lag_p99_s": round(percentile(lags, 99), 3),
        "lag_max_s": round(max(lags), 3) if lags else 0.0,
        "lag_first_third_median_s": round(first, 3),
        "lag_last_third_median_s": round(last, 3),
        "drain_seconds": round(drain_seconds, 3),
        "unapplied_batches": unapplied,
        "events_applied": applied_events,
        "bounded": bounded,
        "sustained": bounded and achieved >= 0.9 * rate,
        "migrator_peak_rss_mb": round(final.get("vm_hwm_kb", 0) / 1024, 1),
        "migrator_error": final.get("error", ""),
    }


def _wait(pred: Any, timeout: float, what: str | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    if what is not None:
        raise RuntimeError(f"timed out waiting for {what}")
    return bool(pred())


def update_modes(
    sv: Servers,
    tmp: Path,
    capacity_ops_per_s: float,
    seed_docs: int,
    seconds: float,
    fractions: tuple[float, ...],
    k: int,
) -> list[dict[str, Any]]:
    """Both ``sync.update_mode``s at each rate, one after the other: lag, the writer's rate, what the source spent."""
    out = []
    for f in fractions:
        for mode in ("lookup", "delta"):
            k += 1
            res = level(sv, tmp, capacity_ops_per_s * f, seed_docs, seconds, k, {"sync": {"update_mode": mode}})
            out.append({"fraction": f, "mode": mode, **res})
            log.info("sync at %.2f x capacity, update_mode %s: %s", f, mode, res)
    return out


def run(
    sv: Servers,
    tmp: Path,
    *,
    seed_docs: int,
    seconds: float,
    fractions: tuple[float, ...],
    fallback: tuple[float, ...],
    capacity_ops: int,
    capacity_runs: int,
    mode_fractions: tuple[float, ...] = (),
) -> dict[str, Any]:
    """Capacity first, then rising rates until one is not sustained (lower ones if even the first is not)."""
    cap = capacity(sv, seed_docs, capacity_ops, capacity_runs)
    c = cap["ops_per_s"]
    levels: list[dict[str, Any]] = []
    k = 0
    for f in fractions:
        k += 1
        res = {"fraction": f, **level(sv, tmp, c * f, seed_docs, seconds, k)}
        levels.append(res)
        log.info("sync at %.2f x capacity: %s", f, res)
        if not res["sustained"]:
            break
    if not any(lv["sustained"] for lv in levels):
        for f in fallback:
            k += 1
            res = {"fraction": f, **level(sv, tmp, c * f, seed_docs, seconds, k)}
            levels.append(res)
            log.info("sync at %.2f x capacity: %s", f, res)
            if res["sustained"]:
                break
    cpu: dict[str, Any] = {}
    for part, unit in (("clone", "docs"), ("sync", "events")):
        units = sum(lv["migrator_cpu"][part][unit] for lv in levels)
        spent = sum(lv["migrator_cpu"][part]["cpu_seconds"] for lv in levels)
        cpu[part] = {unit: units, "cpu_seconds": round(spent, 3), **per_100k(spent, units)}
    parts: dict[str, float] = {}
    for lv in levels:
        for k, v in lv["migrator_cpu"]["sync"].get("parts", {}).items():
            parts[k] = parts.get(k, 0.0) + v
    events = cpu["sync"]["events"]
    cpu["sync"]["parts_s_per_100k"] = {k: round(v / events * 100_000, 3) if events else 0.0 for k, v in parts.items()}
    modes = update_modes(sv, tmp, c, seed_docs, seconds, mode_fractions, 100) if mode_fractions else []
    sustained = [lv for lv in levels if lv["sustained"]]
    best = max(sustained, key=lambda lv: lv["achieved_ops_per_s"]) if sustained else None
    half = min(levels, key=lambda lv: abs(lv["fraction"] - 0.5))
    return {
        "capacity": cap,
        "seconds_per_level": seconds,
        "seed_docs": seed_docs,
        "levels": levels,
        "highest_sustained_ops_per_s": best["achieved_ops_per_s"] if best else 0.0,
        "highest_sustained_fraction": best["fraction"] if best else 0.0,
        "ratio_sustained_to_capacity": ratio(best["achieved_ops_per_s"], c) if best else 0.0,
        "migrator_cpu": cpu,  # every level's clone and writer window together
        "update_modes": modes,
        "half_capacity_level": {
            "fraction": half["fraction"],
            "lag_p50_s": half["lag_p50_s"],
            "lag_p99_s": half["lag_p99_s"],
        },
    }
