"""migration-report.html renders the report's summary as HTML (flows/report.py), never as raw markdown.

Namespace names, reasons, warnings and errors are data from the clusters and the operators: the page
shows them as text, whatever characters they hold.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from flows.report import report_html, report_markdown

pytestmark = pytest.mark.unit


def _report() -> dict[str, Any]:
    return {
        "name": "m<1>",
        "phase": "complete",
        "source": "src:27017",
        "destination": "dst:27017",
        "clone": {"docs": 10, "bytes": 1000, "partitions_done": 1, "partitions": 1},
        "lag": {"applied_events": 3},
        "destination_ready_at": "2026-01-01 00:00:01",
        "completed_at": "2026-01-01 00:00:02",
        "last_verification": {
            "equal": True,
            "namespaces": [
                {
                    "ns": "db.<script>x</script>",
                    "proof": {
                        "partitions": 2,
                        "partitions_hashed_at_cutover": 1,
                        "partitions_proven_until": None,
                        "documents_rechecked_at_cutover": 4,
                        "rechecked_at": "t",
                    },
                }
            ],
        },
        "downtime": {
            "seconds": 1.5,
            "started_at": "a",
            "destination_ready_at": "b",
            "estimate": {"seconds": 2.0},
            "final_verification": "incremental",
            "parts": {"drain": 0.5},
        },
        "decisions": [{"at": "t0", "action": "cutover", "approver": "ann & bob", "reason": "<b>go</b>"}],
        "warnings": ["db.<img src=x onerror=alert(1)> has no _id index"],
        "error": None,
        "charts": {
            "lag": {"samples": 2, "max_seconds": 1.0, "last_seconds": 0.0, "sparkline": "█▁"},
            "copy_rate": {"samples": 2, "peak_docs_per_second": 5.0, "mean_docs_per_second": 4.0, "sparkline": "▇█"},
        },
        "series": {"lag": [(0.0, 1.0), (2.0, 0.0)], "copy_rate": [(0.0, 3.0), (2.0, 5.0)]},
    }


def test_the_html_report_is_html_with_every_section_and_escapes_what_came_from_outside() -> None:
    page = report_html(_report())
    assert "# Migration report" not in page and "- **" not in page and "**" not in page
    assert "<h1>Migration report: <code>m&lt;1&gt;</code></h1>" in page
    assert "<li><b>Phase:</b> complete</li>" in page
    assert "<td><code>db.&lt;script&gt;x&lt;/script&gt;</code></td>" in page
    assert "<li>db.&lt;img src=x onerror=alert(1)&gt; has no _id index</li>" in page  # warnings are shown
    assert "by ann &amp; bob &lt;b&gt;go&lt;/b&gt;" in page
    assert "<script" not in page and "<img" not in page
    assert page.count("<svg") == 2 and page.count("<polyline") == 2
    # The markdown says the same, with sparklines where the page draws charts.
    md = report_markdown(_report())
    assert md.startswith("# Migration report: `m<1>`\n\n- **Phase:** complete\n")
    assert re.search(r"`▇█`  peak 5.0, mean 4.0 \(2 samples\)", md)
    assert "| `db.<script>x</script>` | 1/2 | - | 4 documents at t |" in md


def test_the_reverse_sync_section_charts_its_lag_and_tells_the_history() -> None:
    r = _report()
    r["direction"] = "finished"
    r["decisions"] = [{"at": "2026-01-01T00:00:00", "action": "cutover", "approver": "ann", "reason": "go"}]
    r["reverse"] = {
        "phase": "finished",
        "source": "dst:27017",
        "destination": "src:27017",
        "started_at": "2026-01-01T00:00:05",
        "lag": {"applied_events": 9},
        "source_reopened_at": None,
        "completed_at": "2026-01-02T00:00:00",
        "downtime": None,
        "error": None,
    }
    r["history"] = [
        {"at": "2026-01-01T00:00:00", "event": "cutover", "approver": "ann", "reason": "go"},
        {"at": "2026-01-01T00:00:05", "event": "reverse sync started", "approver": "ann", "reason": ""},
        {"at": "2026-01-01T12:00:00", "event": "rollback-refused", "approver": "bob", "reason": "lag 30 s"},
        {"at": "2026-01-02T00:00:00+00:00", "event": "finish", "approver": "<eve>", "reason": "stable"},
    ]
    r["charts"]["reverse_lag"] = {"samples": 2, "max_seconds": 4.0, "last_seconds": 1.0, "sparkline": "█▂"}
    r["series"]["reverse_lag"] = [(0.0, 4.0), (2.0, 1.0)]
    md = report_markdown(r)
    assert "- **Direction:** finished" in md and "- **Reverse sync finished:** 2026-01-02 00:00:00 UTC" in md
    assert "`█▂`  max 4.0, last 1.0 (2 samples)" in md
    history = [line for line in md.split("## History", 1)[1].splitlines() if line.startswith("| 2026")]
    assert history[2] == "| 2026-01-01 12:00:00 UTC | **rollback-refused** | bob | lag 30 s |"
    assert len(history) == 4
    page = report_html(r)
    assert page.count("<svg") == 3 and "<td>&lt;eve&gt;</td>" in page and "<eve>" not in page
    assert "Downtime (writes stopped" in page and "Rollback downtime" not in page  # none measured: no rollback


def test_a_reverse_record_left_by_a_failed_cutover_is_not_reported() -> None:
    r = {**_report(), "phase": "failed", "direction": "forward", "reverse": {"phase": "syncing"}}
    assert "Reverse sync" not in report_markdown(r) and "Direction" not in report_markdown(r)
