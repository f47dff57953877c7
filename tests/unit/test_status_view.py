"""The on-call view (flows/status.py, the cutover form): no contradictions, every time in UTC, the risk stated."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from flows.migrate import CutoverDecision
from flows.status import cutover_plan_markdown, human_bytes, live_status_markdown, status_markdown

NOW = dt.datetime(2026, 12, 1, 3, 50, 12, tzinfo=dt.UTC)
RULES = {"max_lag_seconds": 10.0, "ready_after_seconds": 5.0}


def described(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "orders",
        "phase": "syncing",
        "source": "src:27017",
        "destination": "dst:27017",
        "ready_to_cut_over": True,
        "lag": {"lag_seconds": 0.0, "events_per_second": 9.0, "applied_events": 120, "last_event_time": None},
        "clone": {
            "namespaces": {"shop.orders": {"docs": 60170, "bytes": 3 * 1024**2, "partitions": 4, "done": 4}},
            "docs": 60170,
            "bytes": 3 * 1024**2,
            "partitions": 4,
            "partitions_done": 4,
        },
        "window": {
            "opens_at": "2026-12-01T03:00:00",
            "closes_at": "2026-12-06T03:00:00",
            "seconds_left": 119.2 * 3600,
            "extensions": 0,
        },
        "warnings": [],
    }
    d.update(over)
    return d


def test_a_paused_ready_migration_shows_an_open_window_with_its_close_time_in_utc() -> None:
    text = status_markdown(described(), RULES, NOW)
    assert "_As of 2026-12-01 03:50:12 UTC._" in text
    assert "Ready to cut over:** yes: lag 0.0 s <= 10 s, held for the required 5 s" in text
    assert "closes 2026-12-06 03:00:00 UTC (119.2 h left" in text
    assert "not open" not in text and "3.0 MB" in text


def test_a_finished_migration_has_no_window_left_and_no_readiness() -> None:
    d = described(phase="complete", ready_to_cut_over=False, completed_at="2026-12-01T04:00:00+00:00")
    text = status_markdown(d, RULES, NOW)
    assert "Cutover window:** closed (complete)" in text and "h left" not in text
    assert "Ready to cut over:** not applicable (complete)" in text
    assert "Finished:** 2026-12-01 04:00:00 UTC" in text


def test_readiness_says_why_not_against_its_rule() -> None:
    high = described(ready_to_cut_over=False, lag={**described()["lag"], "lag_seconds": 25.0})
    assert "no: lag 25.0 s > 10 s" in status_markdown(high, RULES, NOW)
    unmeasured = described(ready_to_cut_over=False, lag={**described()["lag"], "lag_seconds": None})
    text = status_markdown(unmeasured, RULES, NOW)
    assert "the lag is not measured yet" in text and "None s" not in text


def test_the_latest_write_says_whether_writes_still_arrive() -> None:
    arriving = described(lag={**described()["lag"], "last_event_time": int(NOW.timestamp()) - 2})
    assert "2.0 s ago (writes still arriving" in status_markdown(arriving, RULES, NOW)
    quiet = described(lag={**described()["lag"], "last_event_time": int(NOW.timestamp()) - 600})
    assert "10 min ago (no write since" in status_markdown(quiet, RULES, NOW)


def test_the_live_status_has_the_copy_per_namespace() -> None:
    text = live_status_markdown(described(), RULES, 5)
    assert "| `shop.orders` | 60170 | 3.0 MB | 4/4 |" in text


def test_the_cutover_plan_states_the_risk() -> None:
    restores = [
        {"ns": "shop.customers", "name": "email_1", "unique": True},
        {"ns": "analytics.events", "name": "at_1", "expireAfterSeconds": 3600},
    ]
    blocked = cutover_plan_markdown(
        blocks=True,
        how="blocked with setUserWriteBlockMode",
        drain_timeout=300,
        final_verification="incremental",
        restores=restores,
    )
    assert "made unique: `shop.customers` email_1" in blocked
    assert "`analytics.events` at_1 (expireAfterSeconds 3600)" in blocked
    assert "up to 300 s" in blocked
    assert "stays write-blocked" in blocked and "setUserWriteBlockMode: 1, global: false" in blocked
    watched = cutover_plan_markdown(
        blocks=False, how="watched", drain_timeout=300, final_verification="full", restores=[]
    )
    assert "Indexes changed on the destination:** none" in watched and "stays write-blocked" not in watched


def test_the_form_requires_action_confirm_and_approver_and_preselects_nothing() -> None:
    schema = CutoverDecision.model_json_schema()
    assert set(schema["required"]) == {"action", "confirm", "approver"}
    assert "default" not in schema["properties"]["action"]
    assert schema["properties"]["approver"]["minLength"] == 1


def test_sizes_are_human_readable() -> None:
    assert [human_bytes(n) for n in (0, 2048, 5 * 1024**3)] == ["0 B", "2.0 KB", "5.0 GB"]


def test_a_drain_that_waits_says_so_as_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The drain's wait reaches the run log (engine WARNINGs are bridged there), not only its timeout."""
    import logging
    from types import SimpleNamespace

    from bson.timestamp import Timestamp

    import tasks.migration as migration
    from tests.helpers import make_config

    class StuckRunner:  # a sync that never reaches the target (the destination is slow)
        state = SimpleNamespace(applied_time=Timestamp(100, 1))

        def wait(self, predicate: Any, timeout: float) -> bool:
            time.sleep(timeout)
            return False

        def applied_through(self, target: Timestamp) -> bool:
            return False

    monkeypatch.setattr(migration, "DRAIN_REPORT_SECONDS", 0.1)
    cfg = make_config("mongodb://a:1", "mongodb://b:1", "db", cutover={"drain_timeout_seconds": 0.35})
    with caplog.at_level(logging.WARNING, logger="tasks.migration"):
        drained = migration.Migration._drain(SimpleNamespace(cfg=cfg), StuckRunner(), Timestamp(130, 1))  # type: ignore[arg-type]
    assert drained is False
    waits = [r.getMessage() for r in caplog.records if "drain is still waiting" in r.getMessage()]
    assert len(waits) >= 2 and "30 s of history left to apply" in waits[0], waits


def test_the_destination_write_state_is_shown_and_planned() -> None:
    text = status_markdown(described(destination_writes="blocked"), RULES, NOW)
    assert (
        "Writes by others on the destination:** blocked (setUserWriteBlockMode) until the destination is ready" in text
    )
    watched = status_markdown(described(destination_writes="watched: access control is off"), RULES, NOW)
    assert "not blocked (access control is off); watched" in watched
    plan = cutover_plan_markdown(
        blocks=False,
        how="watched",
        drain_timeout=60,
        final_verification="incremental",
        restores=[],
        destination_writes="blocked",
    )
    assert "6. **Destination:** user writes there stay blocked until the destination is ready" in plan


def _reversing(phase: str = "syncing", **rev: Any) -> dict[str, Any]:
    """describe()'s output for a forward migration that is complete, with its reverse sync in ``phase``."""
    section: dict[str, Any] = {
        "name": "orders~reverse",
        "phase": phase,
        "source": "dst:27017",
        "destination": "src:27017",
        "ready_to_roll_back": False,
        "lag": {"lag_seconds": 42.0, "events_per_second": 3.0, "applied_events": 7, "last_event_time": None},
        "window": {"opens_at": None, "closes_at": None, "seconds_left": None, "extensions": 0},
        "source_reopened_at": None,
        "completed_at": None,
        "error": None,
        **rev,
    }
    direction = {"complete": "rolled back", "finished": "finished"}.get(phase, "reverse")
    history = [
        {"at": "2026-12-01T03:00:00", "event": "cutover", "approver": "alice", "reason": "", "direction": "forward"},
        {"at": "2026-12-01T03:00:02", "event": "reverse sync started", "approver": "alice", "reason": ""},
    ]
    return described(phase="complete", ready_to_cut_over=False, direction=direction, reverse=section, history=history)


def test_the_forward_rows_stay_as_they_are_under_the_reverse_ones() -> None:
    from flows.status import status_rows

    d = _reversing()
    forward = status_rows({k: v for k, v in d.items() if k != "reverse"}, RULES, NOW)
    rows = status_rows(d, RULES, NOW)
    labels = [label for label, _ in rows]
    assert labels[:5] == [
        "Direction",
        "Ready to roll back",
        "Reverse lag (destination → source)",
        "Latest write on the destination",
        "Rollback window",
    ]
    assert rows[5 : 5 + len(forward)] == forward
    assert rows[5 + len(forward) :] == [
        ("History", "2 decisions:"),
        ("  decision", "2026-12-01 03:00:00 UTC: cutover by alice"),
        ("  decision", "2026-12-01 03:00:02 UTC: reverse sync started by alice"),
    ]
    text = dict(rows)
    assert text["Ready to roll back"] == "no: lag 42.0 s > 10 s"  # measured against max_lag_seconds
    assert text["Rollback window"] == "opens when the sync is first ready"


def test_the_direction_row_says_which_way_and_what_ends_it() -> None:
    from flows.status import status_rows

    def first(d: dict[str, Any]) -> str:
        return status_rows(d, RULES, NOW)[0][1]

    assert first(_reversing()).startswith("reverse (destination → source)")
    assert "rolling back" in first(_reversing("cutting_over"))
    assert "the reverse sync is failed" in first(_reversing("failed", error="boom"))
    assert first(_reversing("complete")).startswith("rolled back")
    assert first(_reversing("finished")).startswith("finished")
    assert dict(status_rows(_reversing("failed", error="boom"), RULES, NOW))["Reverse sync error"] == "boom"


def test_direction_follows_both_records_phases() -> None:
    from tasks.state import Phase
    from tasks.status import direction

    assert direction(Phase.SYNCING, None) == "forward"
    # The cutover creates the reverse record (syncing) when it captures the destination's start point, before
    # the destination opens; nothing flows back until the forward record is complete, or ever if it failed.
    assert direction(Phase.CUTTING_OVER, Phase.SYNCING) == "forward"
    assert direction(Phase.FAILED, Phase.SYNCING) == "forward"
    assert direction(Phase.COMPLETE, Phase.SYNCING) == "reverse"
    assert direction(Phase.COMPLETE, Phase.CUTTING_OVER) == "reverse"
    assert direction(Phase.COMPLETE, Phase.FAILED) == "reverse"
    assert direction(Phase.COMPLETE, Phase.COMPLETE) == "rolled back"
    assert direction(Phase.COMPLETE, Phase.FINISHED) == "finished"


def test_watch_ends_only_when_the_reverse_sync_ends_too() -> None:
    from flows.console import ended

    assert ended(described(phase="complete"))
    assert not ended(described(phase="syncing"))
    assert not ended(_reversing("syncing")) and not ended(_reversing("cutting_over"))
    assert ended(_reversing("complete")) and ended(_reversing("finished")) and ended(_reversing("failed"))


def test_a_reverse_record_left_by_the_cutover_is_not_shown_before_data_flows_back() -> None:
    from flows.console import ended
    from flows.status import status_rows

    for phase in ("cutting_over", "failed"):  # the forward cutover under way, or failed after the start point
        d = {**_reversing("syncing"), "phase": phase, "direction": "forward"}
        forward = status_rows({k: v for k, v in d.items() if k != "reverse"}, RULES, NOW)
        assert status_rows(d, RULES, NOW) == forward
        assert "reverse" not in status_markdown(d, RULES, NOW).split("\n", 1)[0]
    stale = {**_reversing("syncing"), "phase": "failed", "direction": "forward"}
    assert ended(stale)  # watch does not wait for a reverse sync that will never run
