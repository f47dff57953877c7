"""The final migration report: what happened, with a lag-over-time chart and a copy-rate chart.

Why: after a cutover a data team wants one page to keep (phase, both moments,
who approved, verification verdict, how fast it copied, how far behind the
sync was and when).  Charts are plain SVG written here, so the report needs no
plotting library and no network; the markdown version (Prefect artifact) uses
text sparklines, which the Prefect UI renders as-is.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path
from typing import Any

from flows.status import human_bytes, shown_reverse, utc_text
from tasks.errors import TerminalError
from tasks.metadata import MetadataStore
from tasks.reverse import reverse_name
from tasks.status import describe
from tasks.timeline import CLONE, SYNC, Timeline, copy_rates

SPARKS = "▁▂▃▄▅▆▇█"
MAX_POINTS = 600


def _downsample(points: list[tuple[float, float]], n: int = MAX_POINTS) -> list[tuple[float, float]]:
    """Keep at most ``n`` points, preserving each bucket's maximum (a lag spike must stay visible)."""
    if len(points) <= n:
        return points
    step = len(points) / n
    out = []
    for i in range(n):
        bucket = points[int(i * step) : int((i + 1) * step)] or [points[-1]]
        out.append(max(bucket, key=lambda p: p[1]))
    return out


def sparkline(values: list[float], width: int = 60) -> str:
    """A one-line text chart (maximum per bucket) for markdown artifacts and terminals."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [max(values[int(i * step) : int((i + 1) * step)] or [values[-1]]) for i in range(width)]
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))] for v in values)


def svg_chart(points: list[tuple[float, float]], title: str, y_unit: str, width: int = 760, height: int = 240) -> str:
    """A line chart of (seconds since start, value) as an inline SVG element."""
    left, right, top, bottom = 64, 16, 28, 36
    w, h = width - left - right, height - top - bottom
    pts = _downsample(points)
    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{esc(title)}" style="font-family: sans-serif; font-size: 11px">',
        f'<text x="{left}" y="16" style="font-size: 13px; font-weight: bold">{esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    if not pts:
        parts.append(f'<text x="{left + 8}" y="{top + h / 2}">no samples recorded</text></svg>')
        return "".join(parts)
    x_max = max(p[0] for p in pts) or 1.0
    y_max = max(p[1] for p in pts) or 1.0

    def xy(p: tuple[float, float]) -> str:
        return f"{left + w * p[0] / x_max:.1f},{top + h - h * p[1] / y_max:.1f}"

    for frac in (0.0, 0.5, 1.0):
        y = top + h - h * frac
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{y_max * frac:.3g}</text>')
    parts.append(f'<text x="{left - 6}" y="{top - 8}" text-anchor="end">{esc(y_unit)}</text>')
    for frac in (0.0, 0.5, 1.0):
        x = left + w * frac
        parts.append(f'<text x="{x:.1f}" y="{top + h + 16}" text-anchor="middle">{_duration(x_max * frac)}</text>')
    parts.append(f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{" ".join(xy(p) for p in pts)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s / 3600:.1f}h"


def _relative(samples: list[tuple[dt.datetime, float]]) -> list[tuple[float, float]]:
    if not samples:
        return []
    t0 = samples[0][0]
    return [((t - t0).total_seconds(), v) for t, v in samples]


def chart_series(store: MetadataStore, name: str, since: dt.datetime | None) -> dict[str, list[tuple[float, float]]]:
    """The two charts' points: lag seconds over time and documents copied per second over time."""
    tl = Timeline(store, name)
    lag = [(s["at"], float(s["lag_seconds"])) for s in tl.series(SYNC, since) if s.get("lag_seconds") is not None]
    return {"lag": _relative(lag), "copy_rate": _relative(copy_rates(tl.series(CLONE, since)))}


def _lag_chart(lags: list[float]) -> dict[str, Any]:
    return {
        "samples": len(lags),
        "max_seconds": max(lags) if lags else None,
        "last_seconds": lags[-1] if lags else None,
        "sparkline": sparkline(lags),
    }


def build_report(store: MetadataStore, name: str) -> dict[str, Any]:
    """Everything the report shows, as data (also returned by the flow and stored in the metadata store).

    A reversible migration's report also charts the reverse sync's lag (its samples are kept under the
    reverse record's name) and tells the history of both records.
    """
    d = describe(store, name)
    doc = store.load(name)
    series = chart_series(store, name, doc.created_at)
    lags = [v for _, v in series["lag"]]
    rates = [v for _, v in series["copy_rate"]]
    d["charts"] = {
        "lag": _lag_chart(lags),
        "copy_rate": {
            "samples": len(rates),
            "peak_docs_per_second": round(max(rates), 1) if rates else None,
            "mean_docs_per_second": round(sum(rates) / len(rates), 1) if rates else None,
            "sparkline": sparkline(rates),
        },
    }
    rev = store.get(reverse_name(doc.id)) if shown_reverse(d) else None
    if rev is not None:
        series["reverse_lag"] = chart_series(store, rev.id, rev.created_at)["lag"]
        d["charts"]["reverse_lag"] = _lag_chart([v for _, v in series["reverse_lag"]])
    d["series"] = series
    return d


# The report's text is a list of blocks rendered twice, as markdown (Prefect artifact, .md) and as HTML, so
# the two cannot drift.  A block is (kind, payload): "h1"/"h2"/"p" take spans, "ul" a list of span lists,
# "table" (header, rows of span lists), "chart" a series name.  A span is (style, text), style "" plain,
# "b" bold or "code"; the text is data (namespace names, warnings, reasons) and is escaped by the renderer.
Span = tuple[str, str]
Block = tuple[str, Any]


def _blocks(r: dict[str, Any]) -> list[Block]:
    """What the report says, in order, before it is rendered."""
    rev = shown_reverse(r)
    direction: list[list[Span]] = [[("b", "Direction:"), ("", f" {r['direction']}")]] if rev else []
    blocks: list[Block] = [
        ("h1", [("", "Migration report: "), ("code", r["name"])]),
        (
            "ul",
            [
                [("b", "Phase:"), ("", f" {r['phase']}")],
                *direction,
                [("b", "Source → destination:"), ("", f" {r['source']} → {r['destination']}")],
                [
                    ("b", "Copied:"),
                    (
                        "",
                        f" {r['clone']['docs']} documents, {human_bytes(r['clone']['bytes'])} ({r['clone']['bytes']} bytes), "
                        f"{r['clone']['partitions_done']}/{r['clone']['partitions']} partitions",
                    ),
                ],
                [("b", "Events applied by the sync:"), ("", f" {r['lag'].get('applied_events')}")],
                [("b", "Destination ready to accept writes:"), ("", f" {utc_text(r['destination_ready_at'])}")],
                [("b", "Migration complete:"), ("", f" {utc_text(r['completed_at'])}")],
                [("b", "Final verification:"), ("", f" {_verdict(r)}")],
            ],
        ),
        *_downtime_blocks(r.get("downtime"), "Downtime (writes stopped → destination ready)", r),
        ("h2", [("", "Copy rate (documents per second)")]),
        ("chart", "copy_rate"),
        ("h2", [("", "Lag over time (optime gap, seconds)")]),
        ("chart", "lag"),
        ("h2", [("", "Decisions")]),
        (
            "ul",
            [
                [
                    ("", f"{utc_text(d['at'])}: "),
                    ("b", d["action"]),
                    ("", f" by {d['approver'] or '(unnamed)'} {d['reason']}"),
                ]
                for d in r["decisions"]
            ]
            or [[("", "none")]],
        ),
    ]
    if rev:
        blocks += _reverse_blocks(r)
    if r["warnings"]:
        blocks += [("h2", [("", "Warnings")]), ("ul", [[("", str(w))] for w in r["warnings"]])]
    if r["error"]:
        blocks += [("h2", [("", "Error")]), ("p", [("", str(r["error"]))])]
    return blocks


def _reverse_blocks(r: dict[str, Any]) -> list[Block]:
    """The reverse sync (destination → source): its figures, the rollback's downtime, its lag, both records' history."""
    rev = r["reverse"]
    ended = {"complete": "Rolled back", "finished": "Reverse sync finished"}.get(rev["phase"], "Reverse sync ended")
    items: list[list[Span]] = [
        [("b", "Phase:"), ("", f" {rev['phase']}")],
        [("b", "Destination → source:"), ("", f" {rev['source']} → {rev['destination']}")],
        [("b", "Started:"), ("", f" {utc_text(rev['started_at'])}")],
        [("b", "Events applied by the reverse sync:"), ("", f" {rev['lag'].get('applied_events')}")],
        [("b", "Source reopened to the application:"), ("", f" {utc_text(rev['source_reopened_at'])}")],
        [("b", f"{ended}:"), ("", f" {utc_text(rev['completed_at'])}")],
    ]
    if rev.get("error"):
        items.append([("b", "Error:"), ("", f" {rev['error']}")])
    return [
        ("h2", [("", "Reverse sync (destination → source)")]),
        ("ul", items),
        *_downtime_blocks(rev.get("downtime"), "Rollback downtime (writes stopped → source reopened)", rev),
        ("h2", [("", "Reverse lag over time (destination → source, seconds)")]),
        ("chart", "reverse_lag"),
        ("h2", [("", "History")]),
        ("table", (["time (UTC)", "event", "by", "reason"], _history_rows(r))),
    ]


def _history_rows(r: dict[str, Any]) -> list[list[list[Span]]]:
    """describe()'s history: both records' decisions in time order, each with who approved it."""
    return [
        [[("", utc_text(e["at"]))], [("b", e["event"])], [("", e["approver"] or "(unnamed)")], [("", e["reason"])]]
        for e in r["history"]
    ]


def _downtime_blocks(down: dict[str, Any] | None, title: str, r: dict[str, Any]) -> list[Block]:
    """A cutover's downtime by part, the estimate shown at the approval, and what each namespace's proof was."""
    if not down:
        return []
    est = down.get("estimate") or {}
    total = (
        f" {down['seconds']:.2f} s, from {utc_text(down['started_at'])} to {utc_text(down['destination_ready_at'])}"
        + (f" (estimated {est['seconds']:g} s at the approval)" if est.get("seconds") is not None else "")
    )
    items: list[list[Span]] = [
        [("b", "Total:"), ("", total)],
        [("b", "Final verification:"), ("", f" {down.get('final_verification')}")],
    ]
    items += [[("", f"{part}: {secs:.2f} s")] for part, secs in down["parts"].items()]
    blocks: list[Block] = [("h2", [("", title)]), ("ul", items)]
    v = r.get("last_verification") or {}
    proofs = [(n["ns"], n["proof"]) for n in v.get("namespaces", []) if n.get("proof")]
    if proofs:
        header = ["namespace", "partitions proven during the sync", "last proven", "re-read at cutover"]
        rows = [
            [
                [("code", ns)],
                [("", f"{p['partitions'] - p['partitions_hashed_at_cutover']}/{p['partitions']}")],
                [("", utc_text(p["partitions_proven_until"]))],
                [("", f"{p['documents_rechecked_at_cutover']} documents at {utc_text(p['rechecked_at'])}")],
            ]
            for ns, p in proofs
        ]
        blocks.append(("table", (header, rows)))
    return blocks


def _verdict(r: dict[str, Any]) -> str:
    v = r.get("last_verification")
    if not v:
        return "not run"
    return "equal" if v.get("equal") else "DIFFERENT"


def _chart_caption(r: dict[str, Any], series: str) -> str:
    c = r["charts"][series]
    if series == "copy_rate":
        return f"peak {c['peak_docs_per_second']}, mean {c['mean_docs_per_second']} ({c['samples']} samples)"
    return f"max {c['max_seconds']}, last {c['last_seconds']} ({c['samples']} samples)"


def _md_spans(spans: list[Span]) -> str:
    marks = {"": "{}", "b": "**{}**", "code": "`{}`"}
    return "".join(marks[style].format(text) for style, text in spans)


def report_markdown(r: dict[str, Any]) -> str:
    """The report as markdown (Prefect artifact, README-style), with text sparklines for the charts."""
    out: list[str] = []
    for kind, payload in _blocks(r):
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + _md_spans(payload))
        elif kind == "p":
            out.append(_md_spans(payload))
        elif kind == "ul":
            out.append("\n".join(f"- {_md_spans(item)}" for item in payload))
        elif kind == "table":
            header, rows = payload
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_spans(cell) for cell in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "chart":
            spark = r["charts"][payload]["sparkline"] or "no samples"
            out.append(f"`{spark}`  {_chart_caption(r, payload)}")
    return "\n\n".join(out) + "\n"


def _html_spans(spans: list[Span]) -> str:
    tags = {"": "{}", "b": "<b>{}</b>", "code": "<code>{}</code>"}
    return "".join(tags[style].format(html.escape(str(text))) for style, text in spans)


CHARTS = {
    "copy_rate": ("Copy rate during the clone", "docs/s"),
    "lag": ("Lag over time (optime gap)", "seconds"),
    "reverse_lag": ("Reverse lag over time (destination → source)", "seconds"),
}


def report_html(r: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (no script, no network) with the two SVG charts."""
    out: list[str] = []
    for kind, payload in _blocks(r):
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_html_spans(payload)}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_html_spans(item)}</li>" for item in payload) + "</ul>")
        elif kind == "table":
            header, rows = payload
            out.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{_html_spans(c)}</td>" for c in row) + "</tr>" for row in rows)
                + "</table>"
            )
        elif kind == "chart":
            title, unit = CHARTS[payload]
            out.append(svg_chart(r["series"][payload], title, unit))
            out.append(f"<p>{html.escape(_chart_caption(r, payload))}</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>livemigrate report {html.escape(r['name'])}</title>"
        "<style>body{font-family:sans-serif;max-width:820px;margin:2em auto}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}</style>"
        "</head><body>" + "\n".join(out) + "</body></html>\n"
    )


def write_migration_report(store: MetadataStore, name: str, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Write migration-report.html and .md into ``out_dir``; returns the HTML path and the report data."""
    r = build_report(store, name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "migration-report.md").write_text(report_markdown(r), encoding="utf-8")
        path = out_dir / "migration-report.html"
        path.write_text(report_html(r), encoding="utf-8")
    except OSError as exc:
        raise TerminalError(f"report directory {out_dir}: cannot write ({exc.strerror})") from None
    return path, r
