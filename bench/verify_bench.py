"""Verify: the hash comparison's throughput against a raw scan of both servers at once.

Why: verification reads every document on both sides, so its ceiling is the
two servers' scan rate; the engine's partitioning, hashing and bookkeeping
should cost little on top.  The baseline scans every collection of both
servers concurrently (one thread per side, raw batches, nothing done with
them); verification runs as `run_verification` calls it, with the default
tuning (4 workers, 50,000-document partitions, partitioning auto).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pymongo import MongoClient

from bench.common import Servers, Timer, median, ratio
from bench.data import SHAPES
from checks.verify import verify
from tasks.config import NamespaceRules, Tuning
from tasks.mongo import RAW
from tasks.namespaces import NamespaceFilter

log = logging.getLogger("bench.verify")
SCAN_BATCH = 2000  # the verifier's batch size


def raw_scan(client: MongoClient[Any], db: str) -> int:
    """Read every document of the benchmark collections as raw batches; returns bytes read."""
    n = 0
    for shape in SHAPES:
        coll = client[db].get_collection(shape.name, codec_options=RAW)
        for batch in coll.find_raw_batches({}, batch_size=SCAN_BATCH):
            n += len(batch)
    return n


def both_sides(sv: Servers, db: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        fut = pool.submit(raw_scan, sv.src, db)
        raw_scan(sv.dst, db)
        fut.result()


def run(sv: Servers, db: str, docs: int, runs: int) -> dict[str, Any]:
    """Alternate raw scans and verifications of the same data; medians of ``runs`` each."""
    tuning = Tuning()
    nsfilter = NamespaceFilter.from_rules(NamespaceRules(include=[f"{db}.*"]))
    scans: list[float] = []
    verifies: list[float] = []
    for r in range(runs):
        with Timer() as ts:
            both_sides(sv, db)
        scans.append(ts.seconds)
        with Timer() as tv:
            result = verify(sv.src, sv.dst, nsfilter, partition_docs=tuning.partition_docs, workers=tuning.workers)
        verifies.append(tv.seconds)
        if not result.equal:
            raise RuntimeError(f"verification found differences after the engine's clone: {result.totals()}")
        log.info("verify round %d: raw scan %.2fs, verification %.2fs", r + 1, ts.seconds, tv.seconds)
    scan_rate = docs / median(scans)
    verify_rate = docs / median(verifies)
    return {
        "docs": docs,
        "runs": runs,
        "raw_scan_seconds": [round(x, 3) for x in scans],
        "verify_seconds": [round(x, 3) for x in verifies],
        "raw_scan_docs_per_s": round(scan_rate, 1),
        "verify_docs_per_s": round(verify_rate, 1),
        "ratio_vs_raw_scan": ratio(verify_rate, scan_rate),
        "partitions": sum(ns.partitions for ns in result.namespaces),
        "workers": tuning.workers,
        "partition_docs": tuning.partition_docs,
    }
