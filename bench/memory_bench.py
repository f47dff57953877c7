"""Memory: the migrator's peak RSS for a clone of 100k and of 1M documents, in a process of its own.

Why: a migrator whose memory grows with the data falls over on the large
collection nobody tested.  The engine streams raw batches, so its peak should
not depend on the collection size; this measures the peak (VmHWM) of a
separate migrator process (bench/engine_proc.py) for both sizes.  The
documents are the benchmark's medium ones (about 480 bytes, no secondary
indexes): a million 1 KB documents take about ten minutes to seed and copy on
this machine, while 480 bytes still fill every worker's 8 MB batch at 100,000
documents, so both runs reach the engine's steady state.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.common import Servers, Timer, config_dict, drop_databases, ratio, reset_destination
from bench.data import seed_database
from flows.localservers import REPO_ROOT

log = logging.getLogger("bench.memory")


def engine_process(cfg: dict[str, Any], tmp: Path, mode: str, timeout: float) -> dict[str, Any]:
    """Run bench.engine_proc in ``mode`` to completion and return its JSON line."""
    path = tmp / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.engine_proc", str(path), mode],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"migrator process failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run(sv: Servers, sizes: tuple[int, ...], tmp: Path) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for n in sizes:
        db = f"bench_mem_{n}"
        with Timer() as seed:
            nbytes = seed_database(sv.src, db, n, seed=3, indexes=False, medium=True)
        reset_destination(sv, db)
        out = engine_process(config_dict(sv, f"bench-mem-{n}", db), tmp, "clone", timeout=3600)
        if out["docs"] != n:
            raise RuntimeError(f"the migrator copied {out['docs']} of {n} documents")
        runs.append(
            {
                "docs": n,
                "bytes": nbytes,
                "seed_seconds": round(seed.seconds, 1),
                "clone_seconds": out["clone_seconds"],
                "peak_rss_mb": round(out["vm_hwm_kb"] / 1024, 1),
                "rss_after_imports_mb": round(out["rss_start_kb"] / 1024, 1),
            }
        )
        log.info("memory %d docs: peak RSS %.1f MB", n, out["vm_hwm_kb"] / 1024)
        drop_databases(sv.src, db)
        reset_destination(sv, db)
    peaks = [r["peak_rss_mb"] for r in runs]
    return {
        "runs": runs,
        "peak_ratio_large_to_small": ratio(peaks[-1], peaks[0]),
        "peak_spread": round(max(peaks) / min(peaks) - 1, 3) if min(peaks) else 0.0,
    }
