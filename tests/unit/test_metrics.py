"""The Prometheus endpoint serves the migration's numbers (flows/metrics.py)."""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.metrics import Metrics

pytestmark = pytest.mark.unit


@dataclass
class _State:
    applied_events: int = 0
    lag_seconds: float | None = None
    events_per_second: float = 0.0


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_serve_exposes_every_metric_with_values() -> None:
    m = Metrics()
    server, port = m.serve(0)
    try:
        assert port > 0 and server.server_port == port
        m.clone_progress("mig1", "app.users", 1234, 56789)
        m.clone_progress("mig1", "app.orders", 10, 20)
        m.phase("mig1", "syncing")
        m.sync_tick("mig1", _State(applied_events=42, lag_seconds=1.5, events_per_second=7.25))
        got = _scrape(port)
    finally:
        m.stop()

    assert (
        got[
            (
                "livemigrate_documents_copied",
                (("direction", "forward"), ("migration", "mig1"), ("namespace", "app.users")),
            )
        ]
        == 1234
    )
    assert (
        got[("livemigrate_bytes_copied", (("direction", "forward"), ("migration", "mig1"), ("namespace", "app.users")))]
        == 56789
    )
    assert (
        got[
            (
                "livemigrate_documents_copied",
                (("direction", "forward"), ("migration", "mig1"), ("namespace", "app.orders")),
            )
        ]
        == 10
    )
    assert got[("livemigrate_events_applied", (("direction", "forward"), ("migration", "mig1")))] == 42
    assert got[("livemigrate_lag_seconds", (("direction", "forward"), ("migration", "mig1")))] == 1.5
    assert got[("livemigrate_events_per_second", (("direction", "forward"), ("migration", "mig1")))] == 7.25
    phases = {dict(k[1])["phase"]: v for k, v in got.items() if k[0] == "livemigrate_phase"}
    assert phases["syncing"] == 1
    assert sum(phases.values()) == 1 and "cloning" in phases


def test_phase_moves_and_unknown_lag_is_nan() -> None:
    m = Metrics()
    m.phase("m", "cloning")
    m.phase("m", "syncing")
    m.sync_tick("m", _State(lag_seconds=None))
    assert (
        m.registry.get_sample_value("livemigrate_phase", {"migration": "m", "direction": "forward", "phase": "cloning"})
        == 0
    )
    assert (
        m.registry.get_sample_value("livemigrate_phase", {"migration": "m", "direction": "forward", "phase": "syncing"})
        == 1
    )
    lag = m.registry.get_sample_value("livemigrate_lag_seconds", {"migration": "m", "direction": "forward"})
    assert lag is not None and math.isnan(lag)


def test_two_instances_do_not_share_a_registry_and_stop_frees_the_port() -> None:
    a, b = Metrics(), Metrics()  # same metric names: would raise on a shared registry
    _, port_a = a.serve(0)
    _, port_b = b.serve(0)
    try:
        a.sync_tick("x", _State(applied_events=1))
        assert ("livemigrate_events_applied", (("direction", "forward"), ("migration", "x"))) not in _scrape(port_b)
    finally:
        a.stop()
        b.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port_a}/metrics", timeout=2)
    a.stop()  # idempotent


def test_downtime_and_verification_figures_are_served_by_part() -> None:
    m = Metrics()
    _server, port = m.serve(0)
    try:
        status = {"differences": 2, "partitions_proven": 7}
        estimate = {
            "seconds": 3.5,
            "parts": {"drain": 1.0, "final_checks": 2.0, "index_restores": 0.0, "finalize": 0.5},
        }
        m.verification("mig1", status, estimate)
        m.downtime("mig1", {"seconds": 4.25, "parts": {"drain": 1.5, "final_checks": 2.5, "finalize": 0.25}})
        got = _scrape(port)
    finally:
        m.stop()
    assert got[("livemigrate_verification_differences", (("direction", "forward"), ("migration", "mig1")))] == 2
    assert got[("livemigrate_verification_partitions_proven", (("direction", "forward"), ("migration", "mig1")))] == 7
    assert (
        got[
            (
                "livemigrate_downtime_estimate_seconds",
                (("direction", "forward"), ("migration", "mig1"), ("part", "total")),
            )
        ]
        == 3.5
    )
    assert (
        got[
            (
                "livemigrate_downtime_estimate_seconds",
                (("direction", "forward"), ("migration", "mig1"), ("part", "final_checks")),
            )
        ]
        == 2.0
    )
    assert (
        got[("livemigrate_downtime_seconds", (("direction", "forward"), ("migration", "mig1"), ("part", "total")))]
        == 4.25
    )
    assert (
        got[("livemigrate_downtime_seconds", (("direction", "forward"), ("migration", "mig1"), ("part", "drain")))]
        == 1.5
    )


def test_the_reverse_sync_is_its_own_direction_under_the_forward_name() -> None:
    """The flow reports the reverse sync under ``<name>~reverse``: same migration label, direction=reverse."""
    m = Metrics()
    m.phase("mig1", "complete")
    m.sync_tick("mig1", _State(applied_events=500, lag_seconds=0.0, events_per_second=3.0))
    m.phase("mig1~reverse", "syncing")
    m.sync_tick("mig1~reverse", _State(applied_events=12, lag_seconds=4.5, events_per_second=2.0))
    m.downtime("mig1~reverse", {"seconds": 2.0, "parts": {"drain": 1.25}})

    def value(metric: str, direction: str, **extra: str) -> float | None:
        return m.registry.get_sample_value(metric, {"migration": "mig1", "direction": direction, **extra})

    assert value("livemigrate_lag_seconds", "reverse") == 4.5
    assert value("livemigrate_lag_seconds", "forward") == 0.0
    assert value("livemigrate_events_applied", "reverse") == 12
    assert value("livemigrate_events_per_second", "reverse") == 2.0
    assert value("livemigrate_phase", "forward", phase="complete") == 1
    assert value("livemigrate_phase", "reverse", phase="syncing") == 1
    assert value("livemigrate_phase", "reverse", phase="complete") == 0
    assert value("livemigrate_downtime_seconds", "reverse", part="drain") == 1.25
    names = {s.labels["migration"] for f in m.registry.collect() for s in f.samples if "migration" in s.labels}
    assert names == {"mig1"}  # no series named after the reverse record
