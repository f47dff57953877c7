"""`make bench`: run every benchmark on a fresh pair of local servers, write RESULTS.md and results.json.

usage: python -m bench.run [--size full|smoke] [--out DIR] [--only STAGE,...]

Stages, in order: clone, verify, orchestration, profile, sync, memory, downtime, namespaces, startup.  The
full size takes about 20 minutes on 2 cores; `--size smoke` well under a
minute (the test suite runs it so the code cannot rot).  Results are written
after every stage, so an interrupted run still leaves what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from bench import (
    clone_bench,
    downtime_bench,
    flow_bench,
    memory_bench,
    namespaces_bench,
    profile,
    report,
    startup_bench,
    sync_bench,
    verify_bench,
)
from bench.common import Servers, Timer, drop_databases, machine, reset_destination, servers
from bench.data import db_stats, seed_database
from bench.sizes import Sizes, sizes_for

log = logging.getLogger("bench")
STAGES = ("clone", "verify", "orchestration", "profile", "sync", "memory", "downtime", "namespaces", "startup")
CLONE_DB = "bench_clone"
FLOW_DB = "bench_flow"
HERE = Path(__file__).resolve().parent


def run_stages(
    sv: Servers, sizes: Sizes, stages: tuple[str, ...], tmp: Path, out_dir: Path, results: dict[str, Any]
) -> None:
    t0 = time.perf_counter()
    needs_clone_data = {"clone", "verify"} & set(stages)
    if needs_clone_data:
        with Timer() as seed:
            seed_database(sv.src, CLONE_DB, sizes.clone_docs, seed=1)
        log.info("seeded %d documents in %.1fs", sizes.clone_docs, seed.seconds)
    for stage in stages:
        with Timer() as t:
            if stage == "clone":
                results["clone"] = clone_bench.run(sv, CLONE_DB, sizes.clone_runs)
            elif stage == "verify":
                if "clone" not in results:  # verification compares the engine's copy
                    reset_destination(sv, CLONE_DB)
                    clone_bench.engine_clone(sv, CLONE_DB, "bench-verify-copy")
                results["verify"] = verify_bench.run(sv, CLONE_DB, db_stats(sv.src, CLONE_DB)[0], sizes.verify_runs)
            elif stage == "orchestration":
                seed_database(sv.src, FLOW_DB, sizes.flow_docs, seed=2)
                results["orchestration"] = {
                    "docs": sizes.flow_docs,
                    **flow_bench.run(sv, FLOW_DB, sizes.flow_runs, tmp),
                }
                drop_databases(sv.src, FLOW_DB)
            elif stage == "profile":
                results["profile"] = profile.run(sv, sizes.profile_docs, sizes.profile_events, out_dir / "profiles")
            elif stage == "sync":
                results["sync"] = sync_bench.run(
                    sv,
                    tmp,
                    seed_docs=sizes.sync_seed_docs,
                    seconds=sizes.sync_seconds,
                    fractions=sizes.sync_fractions,
                    fallback=sizes.sync_fallback_fractions,
                    mode_fractions=sizes.update_mode_fractions,
                    capacity_ops=sizes.capacity_ops,
                    capacity_runs=sizes.capacity_runs,
                )
            elif stage == "memory":
                results["memory"] = memory_bench.run(sv, sizes.memory_docs, tmp)
            elif stage == "downtime":
                results["downtime"] = downtime_bench.run(
                    sv,
                    tmp,
                    sizes.downtime_docs,
                    sizes.downtime_rate,
                    sizes.downtime_after_proof_s,
                    sizes.downtime_sync_seconds,
                )
            elif stage == "namespaces":
                results["namespaces"] = namespaces_bench.run(
                    sv,
                    sizes.namespaces_sizes,
                    sizes.namespaces_per_db,
                    sizes.namespaces_docs,
                    sizes.namespaces_runs,
                    out_dir / "profiles" if sizes.namespaces_profile_runs else None,
                )
            elif stage == "startup":
                results["startup"] = startup_bench.run(
                    sv,
                    tmp,
                    sizes.startup_docs,
                    sizes.startup_runs,
                    sizes.startup_modes,
                    bool(sizes.startup_wait_flow),
                    sizes.startup_timing_runs,
                )
        results.setdefault("stage_seconds", {})[stage] = round(t.seconds, 1)
        results["elapsed_seconds"] = round(time.perf_counter() - t0, 1)
        log.info("stage %s done in %.1fs", stage, t.seconds)
        report.write(results, out_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="full", help="full (make bench) or smoke (the test suite)")
    ap.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md, results.json and profiles/ go")
    ap.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of {','.join(STAGES)}")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("tasks", "checks", "flows", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sizes = sizes_for(args.size)
    stages = tuple(s for s in STAGES if s in {x.strip() for x in args.only.split(",")})
    results: dict[str, Any] = {
        "schema": "livemigrate.bench/1",
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "sizes": dataclasses.asdict(sizes),
        "stages": list(stages),
    }
    tmp = Path(tempfile.mkdtemp(prefix="livemigrate-bench-"))
    try:
        with servers(tmp / "servers") as sv:
            run_stages(sv, sizes, stages, tmp, args.out, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s", args.out / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
