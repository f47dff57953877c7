"""Turn the measured results into ``results.json`` and ``RESULTS.md``: figures, ratios, targets, closing note.

Why: one place decides what each target is and whether it was met, so the
JSON, the markdown and the smoke test all agree on the same figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ratio

HERE = Path(__file__).resolve().parent
NOTES = HERE / "NOTES.md"  # hand-written: profiling before/after and the analysis of the recorded run


@dataclass(frozen=True)
class Target:
    """One target of issue #9: a figure, how it compares, and the bound."""

    key: str
    what: str
    bound: float
    higher_is_better: bool


TARGETS = (
    Target("clone_vs_naive", "clone docs/s vs naive copy", 1.3, True),
    Target("clone_vs_ingest_limit", "clone docs/s vs destination ingest limit", 0.8, True),
    Target("sync_sustained_vs_capacity", "highest sustained sync rate vs destination bulk-write capacity", 0.7, True),
    Target("sync_p99_lag_at_half_capacity_s", "p99 lag (s) at half the capacity", 2.0, False),
    Target("verify_vs_raw_scan", "verify docs/s vs raw scan of both servers", 0.7, True),
    Target("memory_spread", "peak RSS spread between the small and the large clone", 0.25, False),
    Target("orchestration_overhead", "migrate flow time over engine-alone time, minus 1", 0.10, False),
    Target("downtime_10x_data", "cutover downtime at 10x the data vs 1x (same writer rate)", 1.2, False),
    Target("sync_with_verification", "sync events applied with the background verification on vs off", 0.9, True),
    Target("sync_lag_with_verification", "sync p99 lag with the background verification on vs off", 1.1, False),
    Target("namespaces_vs_hand", "many small collections: engine time to the sync vs a hand-written copy", 2.0, False),
    Target("first_document_s", "seconds from `livemigrate migrate` to the first copied document", 5.0, False),
    Target(
        "first_document_vs_engine", "time to the first document: `livemigrate migrate` vs the engine alone", 1.25, False
    ),
    Target("clone_cpu_per_100k_docs", "migrator CPU s per 100k cloned documents (~1 KB)", 2.0, False),
    Target("sync_cpu_per_100k_events", "migrator CPU s per 100k applied change events", 5.0, False),
)


def figures(results: dict[str, Any]) -> dict[str, float]:
    """The headline figure of every target, taken from the stage results present."""
    out: dict[str, float] = {}
    if c := results.get("clone"):
        out["clone_vs_naive"] = c["ratio_vs_naive"]
        out["clone_vs_ingest_limit"] = c["ratio_vs_ingest_limit"]
    if s := results.get("sync"):
        out["sync_sustained_vs_capacity"] = s["ratio_sustained_to_capacity"]
        out["sync_p99_lag_at_half_capacity_s"] = s["half_capacity_level"]["lag_p99_s"]
        if cpu := s.get("migrator_cpu"):
            out["clone_cpu_per_100k_docs"] = cpu["clone"]["cpu_s_per_100k"]
            out["sync_cpu_per_100k_events"] = cpu["sync"]["cpu_s_per_100k"]
    if v := results.get("verify"):
        out["verify_vs_raw_scan"] = v["ratio_vs_raw_scan"]
    if m := results.get("memory"):
        out["memory_spread"] = m["peak_spread"]
    if f := results.get("orchestration"):
        out["orchestration_overhead"] = f["overhead"]
    if d := results.get("downtime"):
        out["downtime_10x_data"] = d["ratio_large_to_small"]
        if cost := d.get("sync_cost"):
            out["sync_with_verification"] = cost["events_per_s_ratio_on_to_off"]
            out["sync_lag_with_verification"] = ratio(cost["lag_p99_s"]["on"], cost["lag_p99_s"]["off"])
    if n := results.get("namespaces"):
        out["namespaces_vs_hand"] = n["ratio_engine_to_hand"]
    if st := results.get("startup"):
        out["first_document_s"] = st["first_document_median"]
        if "ratio_first_document_to_engine" in st:
            out["first_document_vs_engine"] = st["ratio_first_document_to_engine"]
    return out


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    figs = figures(results)
    rows = []
    for t in TARGETS:
        if t.key not in figs:
            continue
        v = figs[t.key]
        met = v >= t.bound if t.higher_is_better else v <= t.bound
        rows.append({"target": t.key, "what": t.what, "value": v, "bound": t.bound, "met": met})
    return rows


def write(results: dict[str, Any], out_dir: Path) -> None:
    results["targets"] = verdicts(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "RESULTS.md").write_text(markdown(results))


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    sz = r["sizes"]
    lines = [
        "# livemigrate benchmarks",
        "",
        f"Produced by `{r['command'].strip()}` (size `{sz['name']}`) on {m['date']}, in {r.get('elapsed_seconds', 0):.0f} s. "
        "Every figure is compared with a baseline measured on the same two servers in the same run: the machine has "
        "2 cores and is shared, so absolute numbers move from run to run and the ratios much less. "
        "Raw numbers: `results.json`; profiler call trees: `profiles/`.",
        "",
        "## Machine",
        "",
        _row("cpu count", "cpu", "memory", "python", "pymongo", "prefect", "SecantusDB", "load at start"),
        _row(*["---"] * 8),
        _row(
            m["cpu_count"],
            m["cpu_model"],
            f"{m['memory_gib']} GiB",
            m["python"],
            m["pymongo"],
            m["prefect"],
            m["secantusdb"],
            " ".join(str(x) for x in m["load_average_at_start"]),
        ),
        "",
        "## Sizes and time",
        "",
        "Sizes of this run (`bench/sizes.py`; any can be changed with `LIVEMIGRATE_BENCH_<FIELD>`): "
        + ", ".join(f"{k} {v}" for k, v in sz.items() if k != "name")
        + ". Seconds per stage: "
        + ", ".join(f"{k} {v}" for k, v in r.get("stage_seconds", {}).items())
        + ". Both servers run with a 5,000-entry oplog (SecantusDB reads its whole oplog to answer a "
        "latest-write query; see `bench/common.py`).",
        "",
        "## Targets",
        "",
        _row("target", "measured", "bound", "met"),
        _row("---", "---", "---", "---"),
    ]
    for t in r["targets"]:
        op = ">=" if next(x for x in TARGETS if x.key == t["target"]).higher_is_better else "<="
        lines.append(_row(t["what"], t["value"], f"{op} {t['bound']}", "yes" if t["met"] else "**no**"))
    lines += _before(r)
    lines += _clone(r.get("clone")) + _sync(r.get("sync")) + _verify(r.get("verify"))
    lines += _memory(r.get("memory")) + _flow(r.get("orchestration")) + _profile(r.get("profile"))
    lines += _downtime(r.get("downtime")) + _namespaces(r.get("namespaces")) + _startup(r.get("startup"))
    lines += _closing(r)
    if NOTES.exists():
        lines += ["", NOTES.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def _before(r: dict[str, Any]) -> list[str]:
    """The same targets from an earlier run (``--before``): each figure is a ratio to a baseline of its own run."""
    before = r.get("before")
    if not before:
        return []
    out = [
        "",
        f"### Before and after: the run of {before['date']} against this one",
        "",
        "Each figure is taken against the baseline measured in its own run; a target new since then has no before.",
        "",
        _row("target", f"before ({before['date'][:10]})", "after", "bound", "met before", "met after"),
        _row(*["---"] * 6),
    ]
    for t in r["targets"]:
        target = next(x for x in TARGETS if x.key == t["target"])
        op = ">=" if target.higher_is_better else "<="
        old = before["figures"].get(t["target"])
        if old is None:
            met_before = "-"
        else:
            met_before = "yes" if (old >= t["bound"] if target.higher_is_better else old <= t["bound"]) else "no"
        after = "yes" if t["met"] else "**no**"
        out.append(_row(t["what"], "-" if old is None else old, t["value"], f"{op} {t['bound']}", met_before, after))
    return out


def _clone(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    out = [
        "",
        "## Clone",
        "",
        f"{c['docs']:,} documents ({c['bytes'] / 1e6:.0f} MB of BSON, about {c['bytes'] / max(1, c['docs']):.0f} B each, "
        f"mixed types) in {c['collections']} collections with 2 secondary indexes each; median of {c['runs']} rounds, "
        "each round runs naive, ingest limit, engine in that order on an emptied destination. "
        "*Copy* is the data (for the engine: partition planning, collection creation and the parallel copy); "
        "*indexes* is building the same 6 secondary indexes afterwards, timed in the last round only (the same "
        "work for every method). MB = 10^6 bytes of BSON.",
        "",
        _row("method", "copy docs/s", "copy MB/s", "copy s (runs)", "indexes s", "docs/s with indexes"),
        _row(*["---"] * 6),
    ]
    labels = {
        "naive": "naive: one thread, find() -> insert_many of decoded dicts, 1,000 per batch",
        "ingest_limit": f"ingest limit: insert_many of raw BSON batches of 1,000 from memory ({c['ingest_threads']} thread)",
        "engine": "engine: Cloner.prepare + run (default tuning: up to 4 workers, 8 MB batches, partitioning auto)",
    }
    for k, label in labels.items():
        x = c["methods"][k]
        out.append(
            _row(
                label,
                x["docs_per_s"],
                x["mb_per_s"],
                ", ".join(str(s) for s in x["copy_seconds"]),
                x["index_seconds"],
                x["with_indexes_docs_per_s"],
            )
        )
    d = c["diagnostic_engine_forced_ranges"]
    out += [
        "",
        f"Engine / naive: **{c['ratio_vs_naive']}** (target >= 1.3); engine / ingest limit: "
        f"**{c['ratio_vs_ingest_limit']}** (target >= 0.8). Including the index builds: "
        f"{c['with_indexes_ratio_vs_naive']} and {c['with_indexes_ratio_vs_ingest_limit']}.",
        "",
        f"Diagnostic (one run, before the rounds): the engine with `_id` range partitions forced "
        f"(`partitioning: ranges`; the default `auto` reads a collection in one piece when the server "
        f"would scan all of it for each range, as SecantusDB does) copied at {d['docs_per_s']} docs/s "
        f"({d['ratio_vs_naive']}x naive, {d['ratio_vs_ingest_limit']}x the ingest limit).",
    ]
    return out


def _without_counts(d: dict[str, Any]) -> float:
    def net(size: str) -> float:
        a = d[size]["after"]
        return float(a["seconds"]) - float((a.get("final_checks_detail") or {}).get("counts", 0.0))

    return ratio(net("large"), net("small"))


def _downtime(d: dict[str, Any] | None) -> list[str]:
    if not d:
        return []
    parts = sorted({p for size in ("small", "large") for w in ("before", "after") for p in d[size][w]["parts"]})
    lines = [
        "",
        "## Cutover downtime (issue 17)",
        "",
        *([f"_{d['provenance']}_", ""] if d.get("provenance") else []),
        "Writes stopped to destination ready, by part, at two sizes under the same writer. *After*: the "
        "incremental final check (the background verification proved every partition during the sync; the "
        "cutover re-reads what the sync changed since). *Before*: the same cutover with the full verification it "
        "ran until now in place of the final checks, timed on the same quiet clusters right after.",
        "",
        _row("documents", "", "total (s)", *parts, "re-read at cutover", "estimate (s)", "independent compare"),
        _row(*["---"] * (6 + len(parts))),
    ]
    for size in ("small", "large"):
        x = d[size]
        for w in ("before", "after"):
            lines.append(
                _row(
                    f"{x['docs']:,}",
                    w,
                    f"{x[w]['seconds']:.2f}",
                    *[f"{x[w]['parts'].get(p, 0):.2f}" for p in parts],
                    x["documents_reread_at_cutover"] if w == "after" else "all",
                    x["estimate"]["seconds"] if w == "after" else "",
                    ("equal" if x["independent_compare"]["exit"] == 0 else f"exit {x['independent_compare']['exit']}"),
                )
            )
    c = d.get("sync_cost")
    for size in ("small", "large"):
        det = d[size]["after"].get("final_checks_detail") or {}
        if det:
            lines.append(
                f"\nFinal checks at {d[size]['docs']:,} documents, by step: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in det.items())
                + "."
            )
    lines += [
        "",
        f"Downtime at 10x the data: **{d['ratio_large_to_small']}x** after, {d['ratio_large_to_small_before']}x before"
        + f" ({_without_counts(d)}x without the final document counts, which the test server answers by scanning;"
        + " MongoDB reads them from collection metadata). "
        + f"Background pass over {d['large']['docs']:,} documents: {d['large']['background_pass_seconds']} s.",
    ]
    if c:
        lines += [
            "",
            f"The sync at {c['rate_ops_per_s']:g} ops/s with the background verification off and on: events applied "
            f"{c['off']['events_applied']} vs {c['on']['events_applied']} (ratio {c['events_per_s_ratio_on_to_off']}), "
            f"lag p99 {c['lag_p99_s']['off']} s vs {c['lag_p99_s']['on']} s, achieved writer rate "
            f"{c['off']['achieved_ops_per_s']} vs {c['on']['achieved_ops_per_s']} ops/s.",
        ]
    return lines


def _namespaces(n: dict[str, Any] | None) -> list[str]:
    if not n:
        return []
    lines = [
        "",
        "## Cost per namespace (issue 20)",
        "",
        f"Many small collections ({n['per_db']} per database, {n['docs_per_namespace']} documents and one secondary "
        "index each) copied to a clean destination in two ways. *Hand-written*: pymongo, one namespace after "
        "another (listCollections, find -> insert_many, create, listIndexes -> createIndexes). *Engine*: the path "
        "from `livemigrate migrate` to the sync: prechecks, `Migration.begin`, `Migration.clone` (the Prefect "
        "temporary server and flow are not in it; the orchestration stage measures them). Each size is seeded "
        f"once, then copied {n['runs'][0]['rounds']} time(s) each way, alternately, on an emptied destination; "
        "medians.",
        "",
        _row(
            "namespaces",
            "databases",
            "hand-written s",
            "ms each",
            "engine s",
            "ms each",
            "engine / hand",
            "engine parts s",
        ),
        _row(*["---"] * 8),
    ]
    for x in n["runs"]:
        lines.append(
            _row(
                f"{x['namespaces']:,}",
                x["databases"],
                x["hand_seconds"],
                x["hand_ms_per_namespace"],
                x["engine_seconds"],
                x["engine_ms_per_namespace"],
                x["ratio_engine_to_hand"],
                ", ".join(f"{k} {v}" for k, v in x["engine_parts"].items()),
            )
        )
    m = n["marginal_ms_per_namespace"]
    large = max(n["runs"], key=lambda x: x["namespaces"])
    lines += [
        "",
        f"One more namespace costs **{m['engine']} ms** in the engine and {m['hand']} ms by hand (the difference "
        "between the two sizes, per namespace: fixed costs such as opening the change stream's start point drop out). "
        f"Commands the engine sent during begin and clone at {large['namespaces']:,} namespaces, by time waited "
        "(summed over threads): "
        + ", ".join(f"{c['command']} {c['count']} ({c['seconds']} s)" for c in large["engine_commands"])
        + ".",
    ]
    if top := large.get("profile_top_self_time"):
        lines += ["", "The engine path profiled (main thread, top functions by own time):", "", "```", *top, "```"]
    return lines


_MODE_LABELS = {
    "embedded": "`livemigrate migrate`, no Prefect server configured (a temporary one is started)",
    "embedded_skip_prechecks": "the same with `--skip-prechecks`",
    "configured_server": "`livemigrate migrate` with `PREFECT_API_URL` naming a running server",
    "engine_alone": "baseline: the engine alone (prechecks, begin, clone; no CLI, no Prefect)",
}


def _startup(st: dict[str, Any] | None) -> list[str]:
    if not st:
        return []
    lines = [
        "",
        "## Time to the first document (issue 20)",
        "",
        *([f"_{st['provenance']}_", ""] if st.get("provenance") else []),
        f"{st['docs']:,} documents on the source (the clone benchmark's shapes). Each way of starting runs "
        f"{st['runs']} time(s), interleaved, on an emptied destination; the benchmark polls the destination every "
        "50 ms and stops the command with SIGTERM once the first document is there (and, for the CLI, once the "
        "flow run exists). Seconds from the process start to: the migration record (the prechecks are over), the "
        "change stream's start point, the partition plan, the first copied document, the flow run's id recorded "
        "by the flow's begin stage (the orchestration is up). Medians.",
        "",
        _row("how", "record", "start point", "plan", "**first document**", "flow run", "exit codes"),
        _row(*["---"] * 7),
    ]
    for mode in st["modes"]:
        x = st[mode]
        cells = [x.get(f"{k}_median", "") for k in ("migration_record", "start_point", "partition_plan")]
        lines.append(
            _row(
                _MODE_LABELS.get(mode, mode),
                *cells,
                f"**{x['first_document_median']}**",
                x.get("flow_run_id_median", ""),
                " ".join(str(c) for c in x["exit_codes"]),
            )
        )
    lines += ["", f"First document ({st['headline_mode']}): **{st['first_document_median']} s** (target <= 5 s)."]
    if "ratio_first_document_to_engine" in st:
        lines[-1] += f" Against the engine alone: **{st['ratio_first_document_to_engine']}x**."
    if imp := st.get("imports"):
        srv = st["temporary_server"]
        lines += [
            "",
            "Fresh processes (medians): bare interpreter "
            f"{imp['bare_python']['median']} s, `import flows.cli` {imp['import_flows_cli']['median']} s, "
            f"everything the migrate command imports before the engine starts "
            f"{imp['import_migrate_command']['median']} s, the flow module with Prefect "
            f"{imp['import_prefect_flow']['median']} s. Prefect's own temporary server "
            f"(`SubprocessASGIServer`, what a flow call starts with no API configured): importing its code "
            f"{srv['import_median']} s, then start to healthy {srv['start_to_healthy_median']} s.",
        ]
    return lines


def _sync(s: dict[str, Any] | None) -> list[str]:
    if not s:
        return []
    cap = s["capacity"]
    out = [
        "",
        "## Sync",
        "",
        f"Destination bulk-write capacity for the mix (50% `$set` updates, 30% inserts of ~1 KB documents, 20% deletes, "
        f"`bulk_write` of {cap['batch']}, median of {len(cap['runs'])}): **{cap['ops_per_s']} ops/s** "
        f"(runs: {', '.join(str(x) for x in cap['runs'])}).",
        "",
        f"A writer sends the same mix to the source at a fixed rate in 100 ms ticks for {s['seconds_per_level']:g} s per "
        f"rate, over {s['seed_docs']:,} seeded documents with 2 secondary indexes, while the migrator (its own process, "
        "default tuning: up to 4 lanes at once, as measured best, batches of up to 5,000 events) follows the change stream. The lag of a write batch is "
        "from just before it is sent to the source until the migrator's checkpoint (stored only after the batch is "
        "applied) covers its operation time, read every 50 ms. A rate is *bounded* when every batch was applied, the "
        "median lag of the last third of the run is at most 1 s above the first third's, and the backlog drained "
        "within 5 s of the writer stopping; *sustained* when also the writer reached 90% of the rate.",
        "",
        _row(
            "x capacity",
            "target ops/s",
            "achieved ops/s",
            "lag p50 s",
            "lag p99 s",
            "lag max s",
            "first/last third median s",
            "drain s",
            "bounded",
            "sustained",
        ),
        _row(*["---"] * 10),
    ]
    for lv in s["levels"]:
        out.append(
            _row(
                lv["fraction"],
                lv["target_ops_per_s"],
                lv["achieved_ops_per_s"],
                lv["lag_p50_s"],
                lv["lag_p99_s"],
                lv["lag_max_s"],
                f"{lv['lag_first_third_median_s']} / {lv['lag_last_third_median_s']}",
                lv["drain_seconds"],
                "yes" if lv["bounded"] else "no",
                "yes" if lv["sustained"] else "no",
            )
        )
    h = s["half_capacity_level"]
    out += [
        "",
        f"Highest sustained rate: **{s['highest_sustained_ops_per_s']} ops/s** = "
        f"**{s['ratio_sustained_to_capacity']}x** capacity (target >= 0.7). At {h['fraction']}x capacity: "
        f"lag p50 {h['lag_p50_s']} s, p99 **{h['lag_p99_s']} s** (target < 2 s).",
    ]
    if cpu := s.get("migrator_cpu"):
        out += _migrator_cpu(cpu, s["levels"])
    if modes := s.get("update_modes"):
        out += _update_modes(modes)
    return out


def _update_modes(modes: list[dict[str, Any]]) -> list[str]:
    out = [
        "",
        "### Update modes: the load on the source",
        "",
        "The same writer and migrator, once with `sync.update_mode: lookup` (every update event carries the document "
        "the source reads again for it, `fullDocument: updateLookup`) and once with `delta` (the destination applies "
        "the update's changes; a document is read only where they cannot be applied), one run each per rate, one "
        "after the other. *Source reads per event*: documents read on the source for updates per applied event (in "
        "lookup mode one per update event, inside the change stream; in delta mode the applier's lookups). *Source "
        "CPU*: the source server process's CPU seconds over the writer's window until the backlog drained (the "
        "writer's own inserts, updates and deletes included), per 100k applied events. SecantusDB ignores "
        "`showRawUpdateDescription`, so delta mode here applies `updateDescription`.",
        "",
        _row(
            "x capacity",
            "mode",
            "achieved ops/s",
            "lag p50 s",
            "lag p99 s",
            "sustained",
            "source reads per event",
            "source CPU s per 100k events",
            "migrator CPU s per 100k events",
        ),
        _row(*["---"] * 9),
    ]
    for lv in modes:
        src = lv.get("source", {})
        out.append(
            _row(
                lv["fraction"],
                lv["mode"],
                lv["achieved_ops_per_s"],
                lv["lag_p50_s"],
                lv["lag_p99_s"],
                "yes" if lv["sustained"] else "no",
                src.get("reads_per_event", "-"),
                src.get("cpu_s_per_100k_events", "-"),
                lv["migrator_cpu"]["sync"]["cpu_s_per_100k"],
            )
        )
    return out


def _migrator_cpu(cpu: dict[str, Any], levels: list[dict[str, Any]]) -> list[str]:
    c, y = cpu["clone"], cpu["sync"]
    out = [
        "",
        "### The migrator's own CPU",
        "",
        "CPU seconds (user + system, every thread) of the migrator process of the runs above: over its clone of "
        "the seeded documents (the same ~1 KB documents, measured inside the process around `Migration.clone`, "
        "planning and index builds included) and over the writer's window until the backlog drained (read from "
        "`/proc/<pid>/stat`: reading the stream, applying, checkpoints, lag). *One core* is what that cost "
        "projects as the most one core could push if the servers kept up (100,000 / CPU s per 100k).",
        "",
        _row("x capacity", "documents cloned", "clone CPU s", "events applied", "sync CPU s"),
        _row(*["---"] * 5),
    ]
    for lv in levels:
        m = lv["migrator_cpu"]
        out.append(
            _row(
                lv["fraction"],
                m["clone"]["docs"],
                m["clone"]["cpu_seconds"],
                m["sync"]["events"],
                m["sync"]["cpu_seconds"],
            )
        )
    out += [
        "",
        f"All runs together: clone **{c['cpu_s_per_100k']} CPU s per 100k documents** (target <= 2 s; one core: "
        f"{c['one_core_per_s']:,} docs/s), sync **{y['cpu_s_per_100k']} CPU s per 100k events** (target <= 5 s; "
        f"one core: {y['one_core_per_s']:,} events/s).",
    ]
    if parts := y.get("parts_s_per_100k"):
        out[-1] += (
            " The sync's CPU s per 100k events by the threads that spent it (the migrator's own thread CPU clocks "
            "over the same window): " + ", ".join(f"{k} {v}" for k, v in parts.items()) + "."
        )
    return out


def _verify(v: dict[str, Any] | None) -> list[str]:
    if not v:
        return []
    return [
        "",
        "## Verify",
        "",
        f"{v['docs']:,} documents on each side (the engine's copy), median of {v['runs']} runs alternating with the "
        "baseline. Baseline: every collection of both servers scanned at once (one thread per side, raw batches of "
        f"2,000, nothing done with them). Verification: `checks.verify.verify` as `run_verification` calls it "
        f"({v['workers']} workers, {v['partition_docs']:,}-document partitions; {v['partitions']} partitions here), "
        "counts and per-partition hashes on both sides.",
        "",
        _row("", "docs/s", "seconds (runs)"),
        _row("---", "---", "---"),
        _row("raw scan, both servers", v["raw_scan_docs_per_s"], ", ".join(str(x) for x in v["raw_scan_seconds"])),
        _row("verification", v["verify_docs_per_s"], ", ".join(str(x) for x in v["verify_seconds"])),
        "",
        f"Verify / raw scan: **{v['ratio_vs_raw_scan']}** (target >= 0.7).",
    ]


def _memory(mm: dict[str, Any] | None) -> list[str]:
    if not mm:
        return []
    out = [
        "",
        "## Memory",
        "",
        "Peak RSS (VmHWM) of a separate migrator process (`bench/engine_proc.py`: begin + clone, default tuning) "
        "copying the benchmark's medium documents (about 480 B: the same fields without the long text and the "
        "binary; no secondary indexes), so that a million of them seed and copy in minutes while even the smaller "
        "run fills every worker's 8 MB batch.",
        "",
        _row("documents", "MB of BSON", "clone s", "RSS after imports MB", "peak RSS MB"),
        _row(*["---"] * 5),
    ]
    for x in mm["runs"]:
        out.append(
            _row(
                f"{x['docs']:,}",
                round(x["bytes"] / 1e6),
                x["clone_seconds"],
                x["rss_after_imports_mb"],
                x["peak_rss_mb"],
            )
        )
    out += [
        "",
        f"Largest / smallest peak: **{mm['peak_ratio_large_to_small']}** (spread {mm['peak_spread']:.1%}, "
        "target within 25%).",
    ]
    return out


def _flow(f: dict[str, Any] | None) -> list[str]:
    if not f:
        return []
    return [
        "",
        "## Orchestration overhead",
        "",
        f"The same migration of {f['docs']:,} documents (the clone benchmark's shapes and indexes; begin, clone, sync until ready, cutover with drain, final verification "
        "and index restores) run by the engine alone (`Migration` calls) and by the whole `migrate` flow "
        "(`flows.migrate.migrate_flow`, prechecks skipped: the engine alone has none) under "
        "`prefect_test_harness(server_startup_timeout=60)`, started before either is timed "
        f"({f['prefect_server_startup_seconds']} s, not counted). The approval is sent as soon as the flow run is "
        "paused; the pause itself (from the end of the `wait-until-ready` task run to the start of the `cutover` task "
        "run, read from the Prefect API) is a person's time and is subtracted. Engine alone = begin->ready + cutover.",
        "",
        _row("", "seconds (runs)", "median"),
        _row("---", "---", "---"),
        _row("engine alone", ", ".join(str(x) for x in f["engine_seconds"]), f["engine_seconds_median"]),
        _row(
            "migrate flow (wall - pause)",
            ", ".join(
                f"{t} ({w} - {p})"
                for t, w, p in zip(f["flow_seconds"], f["flow_wall_seconds"], f["flow_pause_seconds"], strict=True)
            ),
            f["flow_seconds_median"],
        ),
        "",
        f"Overhead: **{f['overhead']:.1%}** (target <= 10%).",
    ]


def _profile(p: dict[str, Any] | None) -> list[str]:
    if not p:
        return []
    out = [
        "",
        "## Profiles of this run",
        "",
        "pyinstrument (1 ms sampling) on the main thread: the clone copy loop with one worker, the change stream "
        "read, the applier with one lane, the verifier's hash scan of both sides. *client CPU* is the migrator's CPU "
        "time over the wall time; the rest is waiting on a server. Top functions by own time:",
    ]
    for name, x in p.items():
        unit = "docs" if "docs" in x else "events"
        out += [
            "",
            f"**{name}**: {x[unit]:,} {unit} in {x['seconds']} s ({x[unit + '_per_s']} {unit}/s), "
            f"client CPU {x['client_cpu_share']:.0%} ({x['client_cpu_us_per_unit']} us per {unit[:-1]})",
            "",
            "```",
            *x["top_self_time"],
            "```",
        ]
    return out


def _closing(r: dict[str, Any]) -> list[str]:
    rows = r["targets"]
    missed = [t for t in rows if not t["met"]]
    out = ["", "## Closing note", ""]
    c, s, v, mm, f = (r.get(k) for k in ("clone", "sync", "verify", "memory", "orchestration"))
    if c:
        e, n, i = (c["methods"][k] for k in ("engine", "naive", "ingest_limit"))
        out.append(
            f"- Clone: engine {e['docs_per_s']} docs/s ({e['mb_per_s']} MB/s), naive {n['docs_per_s']} docs/s "
            f"({n['mb_per_s']} MB/s), ingest limit {i['docs_per_s']} docs/s ({i['mb_per_s']} MB/s): "
            f"{c['ratio_vs_naive']}x naive, {c['ratio_vs_ingest_limit']}x the ingest limit "
            f"(with index builds: {c['with_indexes_ratio_vs_naive']}x, {c['with_indexes_ratio_vs_ingest_limit']}x)."
        )
    if s:
        h = s["half_capacity_level"]
        out.append(
            f"- Sync: capacity {s['capacity']['ops_per_s']} ops/s; highest sustained {s['highest_sustained_ops_per_s']} "
            f"ops/s = {s['ratio_sustained_to_capacity']}x; at {h['fraction']}x capacity lag p50 {h['lag_p50_s']} s, "
            f"p99 {h['lag_p99_s']} s."
        )
    if v:
        out.append(
            f"- Verify: {v['verify_docs_per_s']} docs/s against a raw scan of {v['raw_scan_docs_per_s']} docs/s = "
            f"{v['ratio_vs_raw_scan']}x."
        )
    if mm:
        peaks = ", ".join(f"{x['peak_rss_mb']} MB for {x['docs']:,}" for x in mm["runs"])
        out.append(f"- Memory: peak RSS {peaks} documents; spread {mm['peak_spread']:.1%}.")
    if f:
        out.append(
            f"- Orchestration: flow {f['flow_seconds_median']} s vs engine {f['engine_seconds_median']} s = "
            f"{f['overhead']:.1%} overhead."
        )
    out += [
        "",
        "Targets missed in this run: "
        + (", ".join(f"{t['what']} ({t['value']} vs {t['bound']})" for t in missed) if missed else "none")
        + ". Why: see the analysis below.",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.report DIR [--before OLD/results.json]`: render DIR/RESULTS.md again from DIR/results.json
    (after editing NOTES.md); ``--before`` adds the targets of an earlier run beside this one's."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    before_path = None
    if "--before" in args:
        i = args.index("--before")
        before_path, args = Path(args[i + 1]), args[:i] + args[i + 2 :]
    out_dir = Path(args[0]) if args else HERE
    results = json.loads((out_dir / "results.json").read_text())
    if before_path is not None:
        old = json.loads(before_path.read_text())
        results["before"] = {"date": old["machine"]["date"], "figures": figures(old)}
    write(results, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
