"""The cutover's downtime at two data sizes, by part, and the sync with and without the background verification.

Why (issue 17): the downtime (writes stopped -> destination ready) must depend on what changed recently,
not on how much data there is.  For each size the engine migrates the clone benchmark's shapes plus a
``live`` collection that a writer changes at a fixed rate; once the background verification has proven
every partition, the writer runs on for a while, stops, and the cutover (incremental final check) is
timed part by part.  "Before" is measured in the same run on the same quiet clusters: the full
verification the cutover used to run inside the window, put in place of the incremental final checks
(the drain, index restores and finalize are the same work either way).  The destination is then
compared byte for byte by scripts/compare_clusters.py, which shares no code with livemigrate.

The sync's cost of the background verification: one writer rate, the sync with the verification off
and on (bench/sync_bench.level, the migrator in its own process), throughput and lag side by side.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import Servers, Timer, config_dict, drop_databases, ratio, reset_destination
from bench.data import seed_database
from bench.sync_bench import Mix, level, seed_live, write_at_rate
from flows.localservers import REPO_ROOT
from tasks.config import config_from_dict
from tasks.migration import Migration
from tasks.state import MigrationDoc

log = logging.getLogger("bench.downtime")
DB = "bench_down"
LIVE_DOCS = 10_000


class _Writer(threading.Thread):
    def __init__(self, sv: Servers, rate: float) -> None:
        super().__init__(daemon=True, name="bench-down-writer")
        self.sv, self.rate, self.stop, self.ops = sv, rate, threading.Event(), 0
        self.mix = Mix(LIVE_DOCS, seed=71)

    def run(self) -> None:
        while not self.stop.is_set():
            self.ops += sum(s.ops for s in write_at_rate(self.sv.src, DB, self.mix, self.rate, 2.0))


def one_size(sv: Servers, docs: int, rate: float, after_proof_s: float) -> dict[str, Any]:
    from checks.verify import run_verification

    drop_databases(sv.src, DB)
    reset_destination(sv, DB)
    with Timer() as seeding:
        seed_database(sv.src, DB, docs, seed=5)
        seed_live(sv.src, DB, LIVE_DOCS, seed=6)
    # The background pass at full speed (duty_cycle 1): this stage measures the cutover, not the pass; the
    # sync's cost under the default duty cycle is measured by sync_cost below.
    cfg = config_from_dict(
        {**config_dict(sv, f"bench-down-{docs}", DB), "verification": {"duty_cycle": 1.0}}, "bench config"
    )
    out: dict[str, Any] = {
        "docs": docs + LIVE_DOCS,
        "writer_ops_per_s": rate,
        "seed_seconds": round(seeding.seconds, 1),
    }
    with Migration(cfg) as m:
        m.begin()
        with Timer() as clone:
            m.clone()
        if not m.wait_ready(600):
            raise RuntimeError("the sync never became ready")
        writer = _Writer(sv, rate)
        writer.start()
        with Timer() as proving:
            while not (m.verifier and m.verifier.passes >= 1):
                if m.verifier and m.verifier.error:
                    log.warning("verification: %s", m.verifier.error)
                time.sleep(0.1)
        time.sleep(after_proof_s)
        writer.stop.set()
        writer.join()
        estimate = m.downtime_estimate()

        def verify(doc: MigrationDoc) -> dict[str, Any]:
            result = m.final_verification(doc)
            summary: dict[str, Any] = result.to_dict()
            summary["equal"] = bool(result.equal)
            return summary

        res = m.cutover("bench", "downtime benchmark", verify)
        if res.phase.value != "complete" or res.downtime is None:
            raise RuntimeError(f"the cutover ended {res.phase.value}")
        down = res.downtime
        reread = sum(
            (n.get("proof") or {}).get("documents_rechecked_at_cutover", 0)
            for n in (res.verification or {}).get("namespaces", [])
        )
    with Timer() as full:
        full_result = run_verification(cfg)
    if not full_result.equal:
        raise RuntimeError("the full verification after the cutover found differences")
    compare = subprocess.run(  # noqa: S603 - our own interpreter and script
        [
            sys.executable,
            "scripts/compare_clusters.py",
            "--source",
            sv.src_uri,
            "--destination",
            sv.dst_uri,
            "--db",
            DB,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    parts = dict(down["parts"])
    before = dict(parts, final_checks=round(full.seconds, 3))
    out.update(
        clone_seconds=round(clone.seconds, 1),
        background_pass_seconds=round(proving.seconds, 1),
        writer_ops=writer.ops,
        documents_reread_at_cutover=reread,
        estimate=estimate,
        after={"seconds": down["seconds"], "parts": parts, "final_checks_detail": down.get("final_checks_detail")},
        before={"seconds": round(sum(before.values()), 3), "parts": before},
        independent_compare={"exit": compare.returncode, "out": compare.stdout.strip()[-500:]},
    )
    drop_databases(sv.src, DB)
    reset_destination(sv, DB)
    return out


def sync_cost(sv: Servers, tmp: Path, rate: float, seed_docs: int, seconds: float) -> dict[str, Any]:
    """The sync at one writer rate with the background verification off, then on (same process model).

    "On" is its worst case: every partition is hashed again as soon as a round ends (``rehash_seconds: 1``),
    so the verification reads both servers during the whole measurement, not only its first pass.
    """
    off = level(sv, tmp, rate, seed_docs, seconds, 901, extra={"verification": {"continuous": False}})
    busy = {"continuous": True, "rehash_seconds": 1}  # default duty cycle and interval
    on = level(sv, tmp, rate, seed_docs, seconds, 902, extra={"verification": busy})
    return {
        "rate_ops_per_s": rate,
        "off": off,
        "on": on,
        "events_per_s_ratio_on_to_off": ratio(on["events_applied"], off["events_applied"]),
        "lag_p99_s": {"off": off["lag_p99_s"], "on": on["lag_p99_s"]},
    }


def run(
    sv: Servers, tmp: Path, sizes: tuple[int, int], rate: float, after_proof_s: float, sync_seconds: float
) -> dict[str, Any]:
    small = one_size(sv, sizes[0], rate, after_proof_s)
    log.info("downtime at %d documents: %s", sizes[0], small["after"])
    large = one_size(sv, sizes[1], rate, after_proof_s)
    log.info("downtime at %d documents: %s", sizes[1], large["after"])
    # The sync with the verification off and on (two migrator processes): skipped when sync_seconds is 0 (the
    # smoke size: bench/sync_bench.level runs in the sync stage already).
    cost = (
        sync_cost(sv, tmp, max(rate, 200.0) * 3, max(1_000, sizes[0] // 2), sync_seconds) if sync_seconds > 0 else None
    )
    return {
        "small": small,
        "large": large,
        "ratio_large_to_small": ratio(large["after"]["seconds"], small["after"]["seconds"]),
        "ratio_large_to_small_before": ratio(large["before"]["seconds"], small["before"]["seconds"]),
        "sync_cost": cost,
    }
