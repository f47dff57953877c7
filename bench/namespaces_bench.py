"""Cost per namespace: many small collections, a hand-written copy against the engine, from start to the sync.

Why (issue 20, item 5): real clusters often hold thousands of small collections (one database per
tenant), where the work per namespace (planning, records in the metadata store, DDL, catalog reads),
not the data, decides how long a migration takes to reach its sync.  For each size the source holds
``namespaces`` collections spread over databases of ``per_db`` collections, each with ``docs``
documents and one secondary index.  Two ways to the same destination, each on a clean destination:

(a) a hand-written copy with pymongo: list the databases and their collections, ``find`` into
    ``insert_many``, ``list_indexes`` into ``createIndexes``, one namespace after another;
(b) the engine's path from ``livemigrate migrate`` to "sync started": the prechecks (``run_prechecks``,
    storing the report), ``Migration.begin`` and ``Migration.clone`` (planning, copy, index builds),
    without the Prefect temporary server and flow (the orchestration stage measures those).

Reported per size: seconds, milliseconds per namespace, the ratio engine / hand-written copy, each
engine part, and a census of the commands the engine sent during begin and clone (count and the
seconds the driver waited for them, summed over threads).  Between the two sizes, the marginal cost of
one more namespace, which is what a cluster of 50,000 collections multiplies.  With ``profile_dir`` the
engine path at the largest size runs once more under pyinstrument (main thread; the clone's workers
show as waiting, which the census breaks down).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from pymongo import MongoClient, monitoring

from bench.common import Servers, Timer, config_dict, drop_databases, median, ratio
from tasks.config import METADATA_DB, MigrationConfig, config_from_dict
from tasks.migration import Migration
from tasks.mongo import connect_side
from tasks.state import Phase

log = logging.getLogger("bench.namespaces")
PREFIX = "bench_ns_"
INDEX = "n_name"
TOP = 20  # lines of the profile's self-time list kept in the results
CENSUS_TOP = 12


def db_names(namespaces: int, per_db: int) -> list[str]:
    return [f"{PREFIX}{i:04d}" for i in range((namespaces + per_db - 1) // per_db)]


def seed(src: MongoClient[Any], namespaces: int, per_db: int, docs: int) -> list[str]:
    """``namespaces`` collections of ``docs`` small documents and one secondary index each."""
    dbs = db_names(namespaces, per_db)
    made = 0
    for db in dbs:
        for c in range(min(per_db, namespaces - made)):
            coll = src[db][f"c{c:03d}"]
            coll.insert_many(
                [{"_id": i, "tenant": db, "n": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(docs)]
            )
            coll.create_index([("n", 1), ("name", 1)], name=INDEX)
            made += 1
    return dbs


def hand_copy(sv: Servers, dbs: list[str]) -> None:
    """What a person writes first: per collection, find -> insert_many, list_indexes -> createIndexes."""
    for db in sv.src.list_database_names():
        if db not in dbs:
            continue
        for info in sv.src[db].list_collections():
            name = info["name"]
            docs = list(sv.src[db][name].find())
            sv.dst[db].create_collection(name, **dict(info.get("options") or {}))
            if docs:
                sv.dst[db][name].insert_many(docs)
            specs = [dict(i) for i in sv.src[db][name].list_indexes() if i["name"] != "_id_"]
            if specs:
                indexes = [{k: v for k, v in s.items() if k not in ("v", "ns")} for s in specs]
                sv.dst[db].command({"createIndexes": name, "indexes": indexes})


class Census(monitoring.CommandListener):
    """How many commands of each name a client sent, and how long it waited for their replies."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.micros: Counter[str] = Counter()
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.count[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            self.micros[event.command_name] += event.duration_micros

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            self.micros[event.command_name] += event.duration_micros

    def top(self, n: int = CENSUS_TOP) -> list[dict[str, Any]]:
        """The commands that took longest, with their counts."""
        names = sorted(self.count, key=lambda k: (-self.micros[k], k))[:n]
        return [{"command": k, "count": self.count[k], "seconds": round(self.micros[k] / 1e6, 3)} for k in names]


def engine_config(sv: Servers, name: str) -> MigrationConfig:
    return config_from_dict({**config_dict(sv, name, "x"), "namespaces": {"include": [f"{PREFIX}*.*"]}}, "bench config")


def engine_path(sv: Servers, name: str, census: Census | None = None) -> dict[str, float]:
    """Prechecks, begin and clone (until the sync may start), timed part by part; the census sees begin and clone."""
    from checks.prechecks import run_prechecks

    cfg = engine_config(sv, name)
    with Timer() as pre:
        report = run_prechecks(cfg, store=True)
    if report.status.value == "fail":
        raise RuntimeError(f"prechecks failed: {[c.id for c in report.checks if c.status.value == 'fail']}")
    listeners = [census] if census is not None else []
    src = connect_side(cfg, "source", event_listeners=listeners)
    dst = connect_side(cfg, "destination", event_listeners=listeners)
    try:
        with Migration(cfg, src, dst) as m:
            with Timer() as begin:
                m.begin()
            with Timer() as clone:
                m.clone()
            if m.store.load(m.name).phase != Phase.SYNCING:
                raise RuntimeError("the clone did not reach the sync")
    finally:
        src.close()
        dst.close()
    return {"prechecks": pre.seconds, "begin": begin.seconds, "clone": clone.seconds}


def _clean_destination(sv: Servers, dbs: list[str]) -> None:
    drop_databases(sv.dst, *dbs, METADATA_DB)


def _check_copy(sv: Servers, dbs: list[str], namespaces: int, docs: int) -> None:
    """Every collection is there; the last one with its documents and its index (cheap, not a byte compare)."""
    colls = [(db, c) for db in dbs for c in sv.dst[db].list_collection_names()]
    if len(colls) != namespaces:
        raise RuntimeError(f"{len(colls)} collections on the destination, {namespaces} on the source")
    db, c = max(colls)
    if sv.dst[db][c].count_documents({}) != docs or INDEX not in sv.dst[db][c].index_information():
        raise RuntimeError(f"{db}.{c} was not copied whole")


def profile_engine(sv: Servers, name: str, out: Path) -> list[str]:
    """The engine path once more under pyinstrument; the flat self-time top list (the tree goes to ``out``)."""
    from pyinstrument import Profiler

    prof = Profiler(interval=0.001)
    prof.start()
    engine_path(sv, name)
    prof.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(prof.output_text(unicode=False, color=False))
    flat = prof.output_text(unicode=False, color=False, flat=True, flat_time="self")
    return [ln.strip() for ln in flat.splitlines() if ln.strip()[:1].isdigit()][:TOP]


def one_size(
    sv: Servers, namespaces: int, per_db: int, docs: int, rounds: int, profile_dir: Path | None
) -> dict[str, Any]:
    """Seed once; ``rounds`` times the hand-written copy then the engine, each on a clean destination; medians."""
    dbs = db_names(namespaces, per_db)
    drop_databases(sv.src, *dbs)
    _clean_destination(sv, dbs)
    with Timer() as seeding:
        seed(sv.src, namespaces, per_db, docs)
    hands: list[float] = []
    engines: list[dict[str, float]] = []
    census = Census()
    for r in range(rounds):
        with Timer() as hand:
            hand_copy(sv, dbs)
        _check_copy(sv, dbs, namespaces, docs)
        _clean_destination(sv, dbs)
        hands.append(hand.seconds)
        engines.append(engine_path(sv, f"bench-ns-{namespaces}-{r}", census if r == 0 else None))
        _check_copy(sv, dbs, namespaces, docs)
        _clean_destination(sv, dbs)
    hand_s = median(hands)
    mid = sorted(engines, key=lambda p: sum(p.values()))[(len(engines) - 1) // 2]  # the median run, whole
    engine_s = sum(mid.values())
    out: dict[str, Any] = {
        "namespaces": namespaces,
        "databases": len(dbs),
        "docs_per_namespace": docs,
        "seed_seconds": round(seeding.seconds, 1),
        "rounds": rounds,
        "hand_seconds": round(hand_s, 3),
        "engine_seconds": round(engine_s, 3),
        "hand_seconds_runs": [round(x, 3) for x in hands],
        "engine_seconds_runs": [round(sum(p.values()), 3) for p in engines],
        "engine_parts": {k: round(v, 3) for k, v in mid.items()},
        "hand_ms_per_namespace": round(hand_s / namespaces * 1000, 2),
        "engine_ms_per_namespace": round(engine_s / namespaces * 1000, 2),
        "ratio_engine_to_hand": ratio(engine_s, hand_s),
        "engine_commands": census.top(),  # of the first round
    }
    if profile_dir is not None:
        out["profile_top_self_time"] = profile_engine(
            sv, f"bench-ns-prof-{namespaces}", profile_dir / f"namespaces_{namespaces}.txt"
        )
        _clean_destination(sv, dbs)
    drop_databases(sv.src, *dbs)
    return out


def run(
    sv: Servers, sizes: tuple[int, ...], per_db: int, docs: int, rounds: int = 1, profile_dir: Path | None = None
) -> dict[str, Any]:
    """Every size in turn on the same servers; the largest sets the headline ratio."""
    runs = []
    for n in sizes:
        r = one_size(sv, n, per_db, docs, rounds, profile_dir if n == max(sizes) else None)
        log.info(
            "%d namespaces: hand %.2fs (%.1f ms each), engine %.2fs (%.1f ms each) %s, ratio %.2f",
            n,
            r["hand_seconds"],
            r["hand_ms_per_namespace"],
            r["engine_seconds"],
            r["engine_ms_per_namespace"],
            r["engine_parts"],
            r["ratio_engine_to_hand"],
        )
        runs.append(r)
    small, large = min(runs, key=lambda r: r["namespaces"]), max(runs, key=lambda r: r["namespaces"])
    extra = large["namespaces"] - small["namespaces"]

    def marginal(key: str) -> float:
        return round((large[key] - small[key]) / extra * 1000, 2) if extra else 0.0

    return {
        "per_db": per_db,
        "docs_per_namespace": docs,
        "runs": runs,
        "marginal_ms_per_namespace": {"hand": marginal("hand_seconds"), "engine": marginal("engine_seconds")},
        "ratio_engine_to_hand": large["ratio_engine_to_hand"],
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.namespaces_bench [N ...]`: this stage alone on its own servers; JSON on stdout."""
    import argparse
    import json
    import tempfile

    from bench.common import servers

    ap = argparse.ArgumentParser(prog="python -m bench.namespaces_bench", description=main.__doc__)
    ap.add_argument("sizes", nargs="*", type=int, default=[10, 1000], help="namespaces per run (default 10 1000)")
    ap.add_argument("--per-db", type=int, default=20, help="collections per database")
    ap.add_argument("--docs", type=int, default=20, help="documents per collection")
    ap.add_argument("--rounds", type=int, default=1, help="hand-written copy and engine, this many times each")
    ap.add_argument("--profile-dir", type=Path, help="profile the largest size's engine path into this folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("tasks", "checks", "flows"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="livemigrate-nsbench-") as tmp, servers(Path(tmp) / "servers") as sv:
        res = run(sv, tuple(args.sizes), args.per_db, args.docs, args.rounds, args.profile_dir)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
