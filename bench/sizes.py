"""How big each benchmark is: the ``full`` and ``smoke`` presets, with environment overrides.

Why: the full run is sized to finish in about 20 minutes on a 2-core machine
(`make bench`), the smoke run in well under a minute so the test suite runs it
and the code cannot rot.  Any field can be overridden for an experiment with
``LIVEMIGRATE_BENCH_<FIELD>`` (e.g. ``LIVEMIGRATE_BENCH_CLONE_DOCS=50000``;
tuples as comma-separated numbers).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """Every size and repetition count the benchmarks use."""

    name: str
    clone_docs: int  # split 50/30/20 over three collections
    clone_runs: int  # rounds of (naive, ingest limit, engine); figures are medians
    verify_runs: int
    sync_seed_docs: int  # documents the writer updates and deletes from
    sync_seconds: float  # how long the writer runs at each rate
    sync_fractions: tuple[float, ...]  # rates tried, as fractions of the destination's bulk-write capacity
    sync_fallback_fractions: tuple[float, ...]  # tried (in order) only when the first rate is not sustained
    capacity_ops: int  # operations of the raw bulk-write capacity measurement (per run)
    capacity_runs: int
    memory_docs: tuple[int, int]  # peak RSS is measured for a clone of each size
    flow_docs: int  # the migration the whole flow and the engine alone both run
    flow_runs: int
    profile_docs: int  # documents the profiled hot paths process
    profile_events: int  # change events the profiled apply processes
    update_mode_fractions: tuple[float, ...] = (0.5, 0.7)  # both sync.update_modes, one run each, at these rates
    downtime_docs: tuple[int, int] = (100_000, 1_000_000)  # the cutover's downtime at both sizes
    downtime_rate: float = 200.0  # the writer's ops/s while the data is proven and after
    downtime_after_proof_s: float = 20.0  # how long the writer goes on after the background pass
    downtime_sync_seconds: float = 30.0  # the sync measured with the verification off, then on
    namespaces_sizes: tuple[int, int] = (10, 1_000)  # collections of the cost-per-namespace stage, small and large
    namespaces_per_db: int = 20  # collections per database there (1,000 = 50 databases x 20)
    namespaces_docs: int = 20  # documents per collection there (each also has one secondary index)
    namespaces_runs: int = 3  # rounds of (hand-written copy, engine) per size; figures are medians
    namespaces_profile_runs: int = 1  # 1: the large size's engine path once more under pyinstrument; 0: not
    startup_docs: int = 50_000  # time to the first document: documents on the source
    startup_runs: int = 3  # runs of each way of starting (interleaved); figures are medians
    startup_modes: tuple[str, ...] = ("embedded", "embedded_skip_prechecks", "configured_server", "engine_alone")
    startup_wait_flow: int = 1  # 1: each run goes on until the flow run exists (the orchestration is up); 0: not
    startup_timing_runs: int = 3  # fresh-process timings (imports, Prefect's own temporary server); 0: not measured

    def override(self, env: dict[str, str] | None = None) -> Sizes:
        """A copy with every ``LIVEMIGRATE_BENCH_<FIELD>`` variable applied."""
        env = dict(os.environ if env is None else env)
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            raw = env.get(f"LIVEMIGRATE_BENCH_{f.name.upper()}")
            if raw is None or f.name == "name":
                continue
            current = getattr(self, f.name)
            if isinstance(current, tuple):
                kind = type(current[0]) if current else float
                changes[f.name] = tuple(kind(x) for x in raw.split(",") if x.strip())
            else:
                changes[f.name] = type(current)(raw)
        return dataclasses.replace(self, **changes) if changes else self


FULL = Sizes(
    name="full",
    clone_docs=200_000,
    clone_runs=3,
    verify_runs=2,
    sync_seed_docs=20_000,
    sync_seconds=60.0,
    sync_fractions=(0.5, 0.7, 1.0),
    sync_fallback_fractions=(0.35, 0.25),
    capacity_ops=20_000,
    capacity_runs=3,
    memory_docs=(100_000, 1_000_000),
    flow_docs=50_000,
    flow_runs=1,
    profile_docs=30_000,
    profile_events=4_000,  # under the 5,000-entry oplog cap: the events are written before they are read
)

SMOKE = Sizes(
    name="smoke",
    clone_docs=2_000,
    clone_runs=1,
    verify_runs=1,
    sync_seed_docs=500,
    sync_seconds=2.0,
    sync_fractions=(0.2,),
    sync_fallback_fractions=(),
    update_mode_fractions=(0.2,),
    capacity_ops=1_000,
    capacity_runs=1,
    memory_docs=(1_000, 3_000),
    flow_docs=2_000,
    flow_runs=1,
    profile_docs=1_000,
    profile_events=1_000,
    downtime_docs=(300, 900),
    downtime_rate=50.0,
    downtime_after_proof_s=0.2,
    downtime_sync_seconds=0.0,
    namespaces_sizes=(2, 6),
    namespaces_per_db=3,
    namespaces_docs=5,
    namespaces_runs=1,
    namespaces_profile_runs=0,
    startup_docs=2_000,
    startup_runs=1,
    startup_modes=("embedded_skip_prechecks",),
    startup_wait_flow=0,
    startup_timing_runs=0,
)

PRESETS = {"full": FULL, "smoke": SMOKE}


def sizes_for(name: str) -> Sizes:
    """The named preset with environment overrides applied."""
    try:
        return PRESETS[name].override()
    except KeyError:
        raise SystemExit(f"unknown size {name!r}: use one of {', '.join(PRESETS)}") from None
