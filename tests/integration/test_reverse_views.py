"""A reversible migration's views (issue 19): describe, watch and the report show the direction and the reverse lag.

The two records are written straight into a real metadata store (no data is moved): the forward record
``<name>``, complete after its cutover, and the reverse sync's ``<name>~reverse`` in the phase each test
needs, with lag samples under each name as the flow's timelines record them.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo import MongoClient
from rich.console import Console

from flows.console import LiveView
from flows.report import write_migration_report
from flows.status import status_markdown
from tasks.metadata import MetadataStore
from tasks.reverse import reverse_name
from tasks.state import Decision, Lag, MigrationDoc, Phase
from tasks.status import describe
from tasks.timeline import SYNC, Timeline

pytestmark = pytest.mark.integration

RULES = {"max_lag_seconds": 10.0, "ready_after_seconds": 5.0}
Records = Callable[..., tuple[MetadataStore, str]]


def _naive(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None, microsecond=t.microsecond // 1000 * 1000)


@pytest.fixture
def records(dst_client: MongoClient[Any], dbname: str) -> Records:
    """Build the forward record (complete) and, unless ``reverse=None``, its reverse record in ``reverse``'s phase."""
    store = MetadataStore(dst_client, f"{dbname}_meta")  # dropped with the test's databases
    name = "orders"
    now = dt.datetime.now(dt.UTC)

    def build(
        reverse: Phase | None = Phase.SYNCING, forward: Phase = Phase.COMPLETE, **rev: Any
    ) -> tuple[MetadataStore, str]:
        cut_at = now - dt.timedelta(minutes=30)
        fwd = MigrationDoc.model_validate(
            {
                "_id": name,
                "phase": forward,
                "source": "src:27017",
                "destination": "dst:27017",
                "created_at": _naive(now - dt.timedelta(hours=2)),
                "lag": Lag(lag_seconds=0.0, events_per_second=0.0, applied_events=900),
                "decisions": [Decision(action="cutover", approver="alice", reason="go", at=_naive(cut_at))],
                "destination_ready_at": _naive(cut_at + dt.timedelta(seconds=4)) if forward == Phase.COMPLETE else None,
                "completed_at": _naive(cut_at + dt.timedelta(seconds=6)) if forward == Phase.COMPLETE else None,
                "downtime": {
                    "seconds": 4.0,
                    "started_at": _naive(cut_at),
                    "destination_ready_at": _naive(cut_at + dt.timedelta(seconds=4)),
                    "parts": {"drain": 1.0, "final_checks": 3.0},
                },
            }
        )
        store.create(fwd)
        Timeline(store, name).sync_sample(
            SimpleNamespace(lag_seconds=1.0, events_per_second=5, applied_events=900), True
        )
        if reverse is None:
            return store, name
        fields: dict[str, Any] = {
            "_id": reverse_name(name),
            "phase": reverse,
            "direction": "reverse",
            "reverse_of": name,
            "source": "dst:27017",
            "destination": "src:27017",
            "created_at": _naive(cut_at + dt.timedelta(seconds=2)),
            "lag": Lag(lag_seconds=2.5, events_per_second=40.0, applied_events=1234, ready=True),
            "window_opens_at": _naive(now - dt.timedelta(minutes=20)),
            "window_closes_at": _naive(now + dt.timedelta(hours=119)),
            "destination_writes": "blocked",
            **rev,
        }
        # As tasks/reverse.py capture_reverse_start records it: the reverse sync starts with the cutover's approver.
        started = Decision(action="reverse-sync", approver="alice", reason="reversible", at=fields["created_at"])
        fields["decisions"] = [started, *fields.get("decisions", [])]
        store.create(MigrationDoc.model_validate(fields))
        tl = Timeline(store, reverse_name(name))
        for lag in (6.0, 3.0, 2.5):
            tl.sync_sample(SimpleNamespace(lag_seconds=lag, events_per_second=40, applied_events=1234), True)
        return store, name

    return build


def test_describe_shows_the_reverse_sync_and_the_direction(records: Records) -> None:
    store, name = records(Phase.SYNCING)
    d = describe(store, name)
    assert d["name"] == name and d["phase"] == "complete"  # the forward keys are unchanged
    assert d["lag"]["applied_events"] == 900 and d["ready_to_cut_over"] is False
    assert d["direction"] == "reverse"
    rev = d["reverse"]
    assert rev["name"] == "orders~reverse" and rev["phase"] == "syncing"
    assert rev["lag"]["lag_seconds"] == 2.5 and rev["lag"]["events_per_second"] == 40.0
    assert rev["lag"]["applied_events"] == 1234 and rev["ready_to_roll_back"] is True
    assert rev["window"]["closes_at"] is not None and rev["window"]["seconds_left"] > 118 * 3600
    assert rev["source"] == "dst:27017" and rev["destination"] == "src:27017"
    assert rev["source_reopened_at"] is None and rev["error"] is None

    text = status_markdown(d, RULES)
    assert "### Migration `orders`: complete, reverse sync syncing (direction: reverse)" in text
    assert "- **Direction:** reverse (destination → source)" in text
    assert "- **Ready to roll back:** yes: lag 2.5 s <= 10 s, held for the required 5 s" in text
    assert "- **Reverse lag (destination → source):** 2.5 s, 40.0 events/s applied, 1234 events in all" in text
    assert "- **Rollback window:** closes " in text
    assert "- **Application writes on the source:** blocked (setUserWriteBlockMode) until a rollback" in text
    assert "- **Ready to cut over:** not applicable (complete)" in text  # the forward rows follow, as before
    assert [e["event"] for e in d["history"]] == ["cutover", "reverse sync started"]
    assert "- **History:** 2 decisions:" in text and ": reverse sync started by alice (reversible)" in text


def test_describe_says_rolled_back_with_both_moments_or_finished(records: Records) -> None:
    reopened = dt.datetime(2026, 12, 1, 5, 0, 3)
    store, name = records(
        Phase.COMPLETE,
        destination_ready_at=reopened,
        completed_at=reopened + dt.timedelta(seconds=1),
        decisions=[Decision(action="rollback", approver="bob", reason="p99 doubled")],
        downtime={"seconds": 3.0, "started_at": reopened, "destination_ready_at": reopened, "parts": {"drain": 3.0}},
    )
    d = describe(store, name)
    assert d["direction"] == "rolled back"
    assert d["reverse"]["source_reopened_at"] == "2026-12-01T05:00:03"
    assert [x["action"] for x in d["reverse"]["decisions"]] == ["reverse-sync", "rollback"]
    text = status_markdown(d, RULES)
    assert "**Source reopened to the application (rollback):** 2026-12-01 05:00:03 UTC" in text
    assert "**Destination ready to accept writes:** " in text  # the forward cutover's moment, still there
    assert "**Rolled back:** 2026-12-01 05:00:04 UTC" in text
    assert "**Rollback downtime:** 3.00 s (drain 3.00 s;" in text
    assert "**Application writes on the source:** open again since the rollback" in text
    assert text.index("reverse sync started by alice") < text.index(": rollback by bob (p99 doubled)")


def test_a_finished_reverse_sync_is_finished(records: Records) -> None:
    store, name = records(Phase.FINISHED, decisions=[Decision(action="finish", approver="carol")])
    d = describe(store, name)
    assert d["direction"] == "finished" and d["reverse"]["phase"] == "finished"
    assert "Direction:** finished" in status_markdown(d, RULES)


def test_without_a_reverse_record_the_description_is_forward_and_unchanged(records: Records) -> None:
    store, name = records(None, forward=Phase.SYNCING)
    d = describe(store, name)
    assert d["direction"] == "forward" and "reverse" not in d
    assert "Direction" not in status_markdown(d, RULES)


def test_the_reverse_record_can_be_described_by_its_own_name(records: Records) -> None:
    store, name = records(Phase.SYNCING)
    d = describe(store, reverse_name(name))
    assert d["name"] == "orders~reverse" and d["phase"] == "syncing" and d["reverse_of"] == name
    assert d["direction"] == "reverse" and d["ready_to_roll_back"] is True and d["lag"]["lag_seconds"] == 2.5
    assert d["forward"]["name"] == name and d["forward"]["phase"] == "complete"
    assert [e["event"] for e in d["history"]] == ["cutover", "reverse sync started"]
    text = status_markdown(d, RULES)
    assert "### Migration `orders~reverse`: syncing (reverse sync of orders)" in text
    assert "Reverse lag (destination → source):** 2.5 s" in text and "Ready to cut over" not in text
    # Without a name, the latest record is described by its forward name, with the reverse inside.
    store.update(reverse_name(name), extensions=1)  # the reverse record is now the latest updated
    assert describe(store, None)["name"] == name


def test_watch_follows_the_reverse_sync_after_the_forward_completes(records: Records) -> None:
    store, name = records(Phase.SYNCING)
    view = LiveView(store, name, Console(file=io.StringIO()))
    d = view.refresh()
    assert d is not None and d["phase"] == "complete"
    lines = [t.description for t in view.progress.tasks]
    reverse = [x for x in lines if "reverse sync" in x]
    assert reverse and "destination → source lag 2.5 s" in reverse[0] and "ready to roll back" in reverse[0]
    view.interval = 0.01
    view.thread.start()
    view.thread.join(0.5)
    assert view.thread.is_alive()  # the forward record is complete, the reverse still syncs: keep watching
    store.update(reverse_name(name), phase=Phase.FINISHED)
    view.thread.join(5)
    assert not view.thread.is_alive()
    assert any("(finished)" in t.description for t in view.progress.tasks)


def test_the_report_charts_the_reverse_lag_and_tells_both_records_history(records: Records, tmp_path: Path) -> None:
    reopened = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    store, name = records(
        Phase.COMPLETE,
        decisions=[
            Decision(action="extend", approver="dan", reason="more time", at=reopened - dt.timedelta(minutes=9)),
            Decision(action="rollback", approver="bob", reason="p99 doubled", at=reopened - dt.timedelta(minutes=1)),
        ],
        destination_ready_at=reopened,
        completed_at=reopened,
        downtime={
            "seconds": 2.5,
            "started_at": reopened - dt.timedelta(seconds=3),
            "destination_ready_at": reopened,
            "parts": {"drain": 0.5, "final_checks": 2.0},
        },
    )
    assert len(Timeline(store, reverse_name(name)).series(SYNC)) == 3
    path, r = write_migration_report(store, name, tmp_path)
    assert r["charts"]["reverse_lag"]["samples"] == 3 and r["charts"]["reverse_lag"]["max_seconds"] == 6.0
    assert r["charts"]["lag"]["samples"] == 1  # the forward lag is charted from its own samples only
    md = (tmp_path / "migration-report.md").read_text()
    assert "- **Direction:** rolled back" in md
    assert "## Reverse sync (destination → source)" in md
    assert "## Rollback downtime (writes stopped → source reopened)" in md and "final_checks: 2.00 s" in md
    assert "## Reverse lag over time (destination → source, seconds)" in md and "max 6.0, last 2.5 (3 samples)" in md
    history = md.split("## History", 1)[1]
    events = [line.split(" | ")[1] for line in history.splitlines() if line.startswith("| 20")]
    assert events == ["**cutover**", "**reverse sync started**", "**extend (rollback window)**", "**rollback**"]
    assert "| **reverse sync started** | alice | reversible |" in history
    assert "| **rollback** | bob | p99 doubled |" in history
    assert path.read_text().count("<svg") == 3
