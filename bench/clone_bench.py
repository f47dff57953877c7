"""Clone: the engine's copy against a naive copy and the destination's ingest limit, on the same servers.

Why: the clone is most of a migration's time.  Two baselines bound it: (a) what
a person would write first (one thread, ``find()`` into ``insert_many`` of
decoded dicts, 1,000 per batch) and (b) the most the destination can ingest
(``insert_many`` of the same documents as raw BSON batches already in memory).
Each method ends with the same two secondary indexes per collection, timed
apart from the data copy; rounds interleave the methods so drift hits all alike.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from bench.common import Servers, Timer, engine_config, median, ratio, reset_destination
from bench.data import SHAPES, create_indexes, db_stats, insert_batches
from tasks.migration import Migration
from tasks.mongo import RAW
from tasks.state import Phase

log = logging.getLogger("bench.clone")

NAIVE_BATCH = 1_000
INGEST_BATCH_DOCS = 1_000  # SecantusDB ingests 1,000-document batches fastest (measured: 1 MB > 2 MB > 8 MB)
INGEST_THREADS = 1  # one writer: the destination takes no more with 2 or 4 (measured)

Batches = dict[str, list[list[RawBSONDocument]]]


def naive_copy(sv: Servers, db: str) -> None:
    """One thread, decoded dicts, 1,000 per ``insert_many``."""
    for shape in SHAPES:
        insert_batches(sv.dst[db][shape.name], sv.src[db][shape.name].find(), NAIVE_BATCH)


def prepare_batches(src: MongoClient[Any], db: str, batch_docs: int = INGEST_BATCH_DOCS) -> Batches:
    """The source's documents as raw BSON batches in memory (not timed)."""
    out: Batches = {}
    for shape in SHAPES:
        docs = list(src[db].get_collection(shape.name, codec_options=RAW).find({}, batch_size=2000))
        out[shape.name] = [docs[i : i + batch_docs] for i in range(0, len(docs), batch_docs)]
    return out


def ingest_limit(sv: Servers, db: str, batches: Batches, threads: int = INGEST_THREADS) -> None:
    """``insert_many`` of prepared raw batches, ``threads`` at a time."""
    jobs = [(name, b) for name, bs in batches.items() for b in bs if b]

    def insert(job: tuple[str, list[RawBSONDocument]]) -> None:
        sv.dst[db].get_collection(job[0], codec_options=RAW).insert_many(job[1], ordered=False)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(insert, jobs))


def baseline_indexes(sv: Servers, db: str) -> None:
    for shape in SHAPES:
        create_indexes(sv.dst, db, shape)


def engine_clone(sv: Servers, db: str, name: str, *, indexes: bool = True, **tuning: Any) -> tuple[float, float, int]:
    """Migration.clone() in its parts: (copy seconds incl. planning, index seconds, documents copied)."""
    cfg = engine_config(sv, name, db, **tuning)
    with Migration(cfg) as m:
        m.begin()
        with Timer() as copy:
            cloner = m.cloner()
            cloner.prepare()
            stats = cloner.run()
        with Timer() as idx:
            if indexes:
                cloner.finish()
                m.store.set_phase(m.name, Phase.SYNCING)
    return copy.seconds, idx.seconds, stats.docs


def run(sv: Servers, db: str, runs: int) -> dict[str, Any]:
    """Rounds of (naive, ingest limit, engine); the engine runs last so its copy is left for verification.

    The secondary indexes are built (and timed) in the last round only: the work is the same for every method
    and every round, and building them three times over would add minutes to the run.  Before the rounds, one
    diagnostic engine copy runs with ``_id`` range partitions forced (``partitioning: ranges``): on SecantusDB
    every range scans the whole collection, which the default ``auto`` detects and avoids.
    """
    docs, nbytes = db_stats(sv.src, db)
    batches = prepare_batches(sv.src, db)
    reset_destination(sv, db)
    diag_copy, _, _ = engine_clone(sv, db, "bench-clone-diag", indexes=False, partitioning="ranges")
    log.info("clone diagnostic, _id range partitions forced: copy %.2fs (%.0f docs/s)", diag_copy, docs / diag_copy)
    copy: dict[str, list[float]] = {"naive": [], "ingest_limit": [], "engine": []}
    index: dict[str, float] = {}
    for r in range(runs):
        last = r == runs - 1
        for method in ("naive", "ingest_limit", "engine"):
            reset_destination(sv, db)
            i = 0.0
            if method == "engine":
                c, i, copied = engine_clone(sv, db, f"bench-clone-{r}", indexes=last)
                if copied != docs:
                    raise RuntimeError(f"engine copied {copied} documents, the source has {docs}")
            else:
                with Timer() as tc:
                    naive_copy(sv, db) if method == "naive" else ingest_limit(sv, db, batches)
                c = tc.seconds
                if last:
                    with Timer() as ti:
                        baseline_indexes(sv, db)
                    i = ti.seconds
            copy[method].append(c)
            if last:
                index[method] = i
            log.info("clone round %d %s: copy %.2fs, indexes %.2fs (%.0f docs/s)", r + 1, method, c, i, docs / c)
    del batches
    methods: dict[str, Any] = {}
    for method in copy:
        c = median(copy[method])
        methods[method] = {
            "copy_seconds": [round(x, 3) for x in copy[method]],
            "copy_seconds_median": round(c, 3),
            "index_seconds": round(index[method], 3),
            "docs_per_s": round(docs / c, 1),
            "mb_per_s": round(nbytes / c / 1e6, 2),
            "with_indexes_docs_per_s": round(docs / (c + index[method]), 1),
        }
    eng, naive, ingest = methods["engine"], methods["naive"], methods["ingest_limit"]
    return {
        "docs": docs,
        "bytes": nbytes,
        "collections": len(SHAPES),
        "runs": runs,
        "methods": methods,
        "ratio_vs_naive": ratio(eng["docs_per_s"], naive["docs_per_s"]),
        "ratio_vs_ingest_limit": ratio(eng["docs_per_s"], ingest["docs_per_s"]),
        "with_indexes_ratio_vs_naive": ratio(eng["with_indexes_docs_per_s"], naive["with_indexes_docs_per_s"]),
        "with_indexes_ratio_vs_ingest_limit": ratio(eng["with_indexes_docs_per_s"], ingest["with_indexes_docs_per_s"]),
        "ingest_threads": INGEST_THREADS,
        "diagnostic_engine_forced_ranges": {
            "copy_seconds": round(diag_copy, 3),
            "docs_per_s": round(docs / diag_copy, 1),
            "ratio_vs_naive": ratio(docs / diag_copy, naive["docs_per_s"]),
            "ratio_vs_ingest_limit": ratio(docs / diag_copy, ingest["docs_per_s"]),
        },
    }
