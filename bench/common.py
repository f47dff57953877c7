"""What every benchmark shares: the servers, configs, clean-up, timing and statistics helpers.

Why: each figure is a ratio against a baseline measured on the same servers in
the same run, so all benchmarks use one server pair, one way to build an
engine config and one definition of median and percentile.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from flows.localservers import REPO_ROOT, ServerPair, secantusd_path
from tasks.config import METADATA_DB, MigrationConfig, config_from_dict

log = logging.getLogger("bench")

OPLOG_ENTRIES = 5_000
"""The servers' oplog cap.  SecantusDB answers a latest-write query on ``local.oplog.rs`` (a ``$natural: -1``
find) by decoding its whole oplog: about 55 us per entry here, so 1.1 s at 20,000 entries; MongoDB reads one
entry.  The engine's sync loop no longer makes that query (its lag comes from the change stream's replies);
the start point, the cutover and this benchmark's writer still do, a few times per run.  The cap stays at
5,000 entries, as in the earlier recorded runs, so the figures compare; it still holds several seconds of
the writer's history."""


@dataclass
class Servers:
    """The benchmark's source and destination (SecantusDB processes) and a client to each."""

    pair: ServerPair
    src: MongoClient[Any]
    dst: MongoClient[Any]

    @property
    def src_uri(self) -> str:
        return self.pair.source.uri()

    @property
    def dst_uri(self) -> str:
        return self.pair.destination.uri()


@contextmanager
def servers(root: Path) -> Iterator[Servers]:
    """Start a source/destination pair under ``root`` (both at once); stop both (only them) at the end."""
    pair = ServerPair(root, oplog_max_entries=OPLOG_ENTRIES)
    try:
        _both(pair, "start")
        src: MongoClient[Any] = MongoClient(pair.source.uri(), serverSelectionTimeoutMS=20000)
        dst: MongoClient[Any] = MongoClient(pair.destination.uri(), serverSelectionTimeoutMS=20000)
        try:
            yield Servers(pair, src, dst)
        finally:
            src.close()
            dst.close()
    finally:
        _both(pair, "stop")


def _both(pair: ServerPair, action: str) -> None:
    """Start or stop the two servers in parallel (each takes seconds; the smoke run is short)."""
    with ThreadPoolExecutor(2) as pool:
        for fut in [pool.submit(getattr(srv, action)) for srv in (pair.source, pair.destination)]:
            fut.result()


def engine_config(sv: Servers, name: str, db: str, **tuning: Any) -> MigrationConfig:
    """The config the engine runs with: default tuning unless a benchmark says otherwise."""
    return config_from_dict(config_dict(sv, name, db, **tuning), "bench config")


def config_dict(sv: Servers, name: str, db: str, **tuning: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"uri": sv.src_uri},
        "destination": {"uri": sv.dst_uri},
        "namespaces": {"include": [f"{db}.*"]},
        "cutover": {"max_lag_seconds": 5, "ready_after_seconds": 0.5, "quiesce_seconds": 0.5},
        "tuning": {"connect_timeout_seconds": 20, **tuning},
    }


def drop_databases(client: MongoClient[Any], *names: str) -> None:
    for name in names:
        client.drop_database(name)


def reset_destination(sv: Servers, *dbs: str) -> None:
    """Drop the benchmark databases and the metadata store on the destination."""
    drop_databases(sv.dst, *dbs, METADATA_DB)


class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.seconds``."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of the samples; 0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[k])


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def secantus_version() -> str:
    """SecantusDB's version from its own virtualenv (it is never imported here)."""
    py = secantusd_path().parent / "python"
    try:
        out = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
            [str(py), "-c", "import importlib.metadata as m; print(m.version('SecantusDB'))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """The machine description stored with every result."""
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pymongo": _version("pymongo"),
        "prefect": _version("prefect"),
        "livemigrate": _version("livemigrate"),
        "secantusdb": secantus_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in load],
        "repo": str(REPO_ROOT),
    }
