"""Profiles of the three hot paths (clone copy loop, sync read and apply, verify scan) with pyinstrument.

Why: a fix should follow a measurement.  Each path runs on the main thread
(one clone worker, one apply lane, one verify side at a time) so the sampling
profiler sees all of it; the flat self-time list says where the migrator's own
time goes and how much of it is waiting on a server.  Full call trees are
written next to the results (``profiles/*.txt``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

from bench.common import Servers, drop_databases, engine_config, reset_destination
from bench.data import SHAPES, seed_database
from bench.sync_bench import LIVE, Mix, seed_live
from checks.verify_scan import scan_hash
from tasks.apply import Applier, ApplyStats
from tasks.config import NamespaceRules
from tasks.migration import Migration
from tasks.mongo import RAW
from tasks.namespaces import NamespaceFilter
from tasks.sync import _watch_raw, open_start_point

log = logging.getLogger("bench.profile")
TOP = 15
APPLY_BATCH = 5000  # the sync's default sync_batch_events


def profiled(name: str, out_dir: Path, units: int, unit: str, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` under pyinstrument; the flat self-time top list, rates and the client's CPU share."""
    prof = Profiler(interval=0.001)
    prof.start()
    fn()
    session = prof.stop()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.txt").write_text(prof.output_text(unicode=False, color=False))
    flat = prof.output_text(unicode=False, color=False, flat=True, flat_time="self")
    lines = [ln.rstrip() for ln in flat.splitlines() if ln[:1].isdigit()][:TOP]
    seconds = session.duration
    return {
        "seconds": round(seconds, 3),
        unit: units,
        f"{unit}_per_s": round(units / seconds, 1) if seconds else 0.0,
        "client_cpu_share": round(session.cpu_time / seconds, 3) if seconds else 0.0,
        "client_cpu_us_per_unit": round(session.cpu_time / units * 1e6, 1) if units else 0.0,
        "top_self_time": lines,
    }


def profile_clone_and_verify(sv: Servers, docs: int, out_dir: Path) -> dict[str, Any]:
    db = "bench_prof"
    drop_databases(sv.src, db)
    reset_destination(sv, db)
    seed_database(sv.src, db, docs, seed=5, indexes=False)
    out: dict[str, Any] = {}
    with Migration(engine_config(sv, "bench-prof", db, workers=1)) as m:
        m.begin()
        cloner = m.cloner()
        cloner.prepare()

        def copy_all() -> None:
            while (part := m.store.claim_partition(m.name, m.owner, 600)) is not None:
                cloner.copy_partition(part)

        out["clone_copy"] = profiled("clone_copy", out_dir, docs, "docs", copy_all)

    def scan_both() -> None:
        for client in (sv.src, sv.dst):
            for shape in SHAPES:
                scan_hash(client[db].get_collection(shape.name, codec_options=RAW), {}, 2000)

    out["verify_scan"] = profiled("verify_scan", out_dir, 2 * docs, "docs", scan_both)
    drop_databases(sv.src, db)
    reset_destination(sv, db)
    return out


def profile_sync(sv: Servers, events: int, out_dir: Path) -> dict[str, Any]:
    db = "bench_prof_sync"
    drop_databases(sv.src, db)
    reset_destination(sv, db)
    seeded = min(5000, events)
    seed_live(sv.src, db, seeded, seed=7)
    nsfilter = NamespaceFilter.from_rules(NamespaceRules(include=[f"{db}.*"]))
    token, _ = open_start_point(sv.src)
    mix = Mix(seeded, seed=8)
    coll = sv.src[db].get_collection(LIVE.name, codec_options=RAW)
    for _ in range(max(1, events // 1000)):
        coll.bulk_write(mix.ops(1000), ordered=False)
    expected = max(1, events // 1000) * 1000
    got: list[Any] = []

    def read() -> None:
        with _watch_raw(sv.src, nsfilter, APPLY_BATCH, {"start_after": token}, split=False) as stream:
            while len(got) < expected:
                ev = stream.try_next()
                if ev is not None:
                    got.append(ev)

    out: dict[str, Any] = {"sync_read": profiled("sync_read", out_dir, expected, "events", read)}
    applier = Applier(sv.dst, nsfilter, lanes=1, source=sv.src)
    stats = ApplyStats()

    def apply() -> None:
        for i in range(0, len(got), APPLY_BATCH):
            applier.apply(got[i : i + APPLY_BATCH], stats)

    try:
        out["sync_apply"] = profiled("sync_apply", out_dir, len(got), "events", apply)
    finally:
        applier.close()
    drop_databases(sv.src, db)
    reset_destination(sv, db)
    return out


def run(sv: Servers, docs: int, events: int, out_dir: Path) -> dict[str, Any]:
    return {**profile_clone_and_verify(sv, docs, out_dir), **profile_sync(sv, events, out_dir)}
