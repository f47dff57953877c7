"""Pure parts of the report: sparklines, downsampling that keeps spikes, SVG charts, copy rates."""

from __future__ import annotations

import datetime as dt

import pytest

from flows.report import _downsample, sparkline, svg_chart
from tasks.timeline import copy_rates

pytestmark = pytest.mark.unit


def test_sparkline_scales_to_the_maximum_and_keeps_a_spike() -> None:
    line = sparkline([0, 1, 2, 4, 8])
    assert line[0] == "▁" and line[-1] == "█" and len(line) == 5
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "▁▁"
    long = [0.0] * 1000
    long[517] = 9.0
    assert len(sparkline(long, width=50)) == 50 and "█" in sparkline(long, width=50)


def test_downsample_keeps_each_buckets_maximum() -> None:
    pts = [(float(i), 0.0) for i in range(10_000)]
    pts[4321] = (4321.0, 42.0)
    out = _downsample(pts, 100)
    assert len(out) == 100 and max(v for _, v in out) == 42.0


def test_svg_chart_draws_a_line_or_says_there_were_no_samples() -> None:
    svg = svg_chart([(0.0, 1.0), (30.0, 3.0), (60.0, 0.0)], "Lag <over> time", "seconds")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "<polyline" in svg
    assert "Lag &lt;over&gt; time" in svg
    assert "no samples recorded" in svg_chart([], "empty", "s")


def test_copy_rates_between_cumulative_samples() -> None:
    t0 = dt.datetime(2026, 1, 1)
    samples = [
        {"at": t0, "docs": 0},
        {"at": t0 + dt.timedelta(seconds=2), "docs": 1000},
        {"at": t0 + dt.timedelta(seconds=4), "docs": 1500},
    ]
    assert [r for _, r in copy_rates(samples)] == [500.0, 250.0]


def test_catch_up_estimate_from_how_fast_history_is_applied() -> None:
    from tasks.sync import catch_up_estimate

    assert catch_up_estimate(0.0, 0.0) == 0.0
    assert catch_up_estimate(60.0, 3.0) == 30.0  # applying 3 s of history per second closes 2 s per second
    assert catch_up_estimate(60.0, 1.0) is None  # keeping pace, not closing
    assert catch_up_estimate(60.0, 0.5) is None  # falling behind
