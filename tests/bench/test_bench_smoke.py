"""The benchmark harness at its smoke size: it runs end to end and reports every figure.

Why: `make bench` is not part of `make test`, so without this the benchmark
code would rot unnoticed.  Only behaviour is asserted (every figure present
and positive, both files written), never a speed: the suite shares two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import requires_secantus

pytestmark = [pytest.mark.bench, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@requires_secantus("the benchmark starts its own SecantusDB pair")
def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env = {k: v for k, v in env.items() if not k.startswith(("PREFECT_API", "LIVEMIGRATE_BENCH_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--size", "smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "RESULTS.md").read_text().startswith("# livemigrate benchmarks")
    r = json.loads((tmp_path / "results.json").read_text())

    m = r["machine"]
    assert m["cpu_count"] >= 1 and m["python"] and m["pymongo"] and m["secantusdb"] not in ("", "unknown") and m["date"]
    assert r["sizes"]["name"] == "smoke"

    clone = r["clone"]
    for method in ("engine", "naive", "ingest_limit"):
        assert _positive(clone["methods"][method]["docs_per_s"]), method
        assert _positive(clone["methods"][method]["mb_per_s"]), method
    assert _positive(clone["ratio_vs_naive"]) and _positive(clone["ratio_vs_ingest_limit"])

    sync = r["sync"]
    assert _positive(sync["capacity"]["ops_per_s"])
    level = sync["levels"][0]
    assert _positive(level["achieved_ops_per_s"]) and level["unapplied_batches"] == 0
    assert _positive(level["lag_p50_s"]) and _positive(level["lag_p99_s"]) and level["lag_p99_s"] >= level["lag_p50_s"]
    assert _positive(sync["half_capacity_level"]["lag_p99_s"])
    assert level["events_applied"] > 0 and not level["migrator_error"]
    assert {"highest_sustained_ops_per_s", "ratio_sustained_to_capacity"} <= sync.keys()
    cpu = level["migrator_cpu"]  # the migrator process's own CPU over its clone and over the writer's window
    assert cpu["clone"]["docs"] == r["sizes"]["sync_seed_docs"] and _positive(cpu["clone"]["cpu_seconds"])
    assert 0 < cpu["sync"]["events"] <= level["events_applied"] and _positive(cpu["sync"]["cpu_seconds"])
    modes = {lv["mode"]: lv for lv in sync["update_modes"]}
    assert modes.keys() == {"lookup", "delta"}
    assert modes["lookup"]["source"]["update_mode"] == "lookup" and modes["delta"]["source"]["update_mode"] == "delta"
    assert modes["lookup"]["source"]["reads_per_event"] > 0  # the mix's updates, each looked up
    assert modes["delta"]["source"]["reads_per_event"] < modes["lookup"]["source"]["reads_per_event"]
    assert all(_positive(lv["source"]["cpu_s_per_100k_events"]) for lv in modes.values())
    for part in ("clone", "sync"):
        assert _positive(sync["migrator_cpu"][part]["cpu_s_per_100k"]), part
        assert _positive(sync["migrator_cpu"][part]["one_core_per_s"]), part
    assert set(sync["migrator_cpu"]["sync"]["parts_s_per_100k"]) == {"reader", "applier", "verification", "other"}
    assert "### The migrator's own CPU" in (tmp_path / "RESULTS.md").read_text()

    verify = r["verify"]
    assert _positive(verify["verify_docs_per_s"]) and _positive(verify["raw_scan_docs_per_s"])
    assert _positive(verify["ratio_vs_raw_scan"])

    memory = r["memory"]
    assert [run["docs"] for run in memory["runs"]] == list(r["sizes"]["memory_docs"])
    assert all(_positive(run["peak_rss_mb"]) for run in memory["runs"])
    assert _positive(memory["peak_ratio_large_to_small"])

    flow = r["orchestration"]
    assert _positive(flow["engine_seconds_median"]) and _positive(flow["flow_seconds_median"])
    assert _positive(flow["ratio_flow_to_engine"])

    for path in ("clone_copy", "verify_scan", "sync_read", "sync_apply"):
        assert r["profile"][path]["top_self_time"], path
        assert (tmp_path / "profiles" / f"{path}.txt").exists()

    down = r["downtime"]
    for size in ("small", "large"):
        x = down[size]
        assert x["independent_compare"]["exit"] == 0, x["independent_compare"]
        assert _positive(x["after"]["seconds"]) and _positive(x["before"]["seconds"])
        assert {"drain", "final_checks", "index_restores", "finalize"} <= x["after"]["parts"].keys()
        assert x["estimate"]["parts"].keys() == {"drain", "final_checks", "index_restores", "finalize"}
    assert (
        _positive(down["ratio_large_to_small"]) and down["sync_cost"] is None
    )  # two migrator processes: full size only
    assert "## Cutover downtime" in (tmp_path / "RESULTS.md").read_text()

    ns = r["namespaces"]
    assert [x["namespaces"] for x in ns["runs"]] == list(r["sizes"]["namespaces_sizes"])
    for x in ns["runs"]:
        assert _positive(x["hand_seconds"]) and _positive(x["engine_seconds"]) and _positive(x["ratio_engine_to_hand"])
        assert x["engine_parts"].keys() == {"prechecks", "begin", "clone"} and x["engine_commands"]
    assert {"hand", "engine"} == ns["marginal_ms_per_namespace"].keys()  # a difference: noise can make it negative
    assert "## Cost per namespace" in (tmp_path / "RESULTS.md").read_text()

    st = r["startup"]  # time to the first document: the real `livemigrate migrate`, stopped by SIGTERM
    assert [x["exit_code"] for x in st["embedded_skip_prechecks"]["runs"]] == [143]
    assert _positive(st["first_document_median"])
    assert "## Time to the first document" in (tmp_path / "RESULTS.md").read_text()

    targets = {t["target"] for t in r["targets"]}
    assert targets == {
        "first_document_s",
        "namespaces_vs_hand",
        "downtime_10x_data",
        "clone_vs_naive",
        "clone_vs_ingest_limit",
        "sync_sustained_vs_capacity",
        "sync_p99_lag_at_half_capacity_s",
        "verify_vs_raw_scan",
        "memory_spread",
        "orchestration_overhead",
        "clone_cpu_per_100k_docs",
        "sync_cpu_per_100k_events",
    }
