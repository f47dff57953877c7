"""What a migration looks like now, as data: the one description every view renders.

Why: `livemigrate describe`, `watch`, the pause form, the live status artifact, the report and
the metrics all show the same facts; they read them here (from the metadata store, so any process
can), and render them at the edge (flows/status.py).  No presentation here.

A reversible migration (issue 19) has two records in the store: the forward one (``<name>``) and,
once the cutover captured the destination's start point, the reverse sync's (``<name>~reverse``,
tasks/reverse.py).  Describing the forward name shows both: the forward record's keys as always, a
``reverse`` section, the ``direction`` the data flows now and the ``history`` of both records' decisions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tasks.errors import TerminalError
from tasks.metadata import MetadataStore
from tasks.reverse import forward_name, reverse_name
from tasks.state import MigrationDoc, Phase

FORWARD = "forward"
REVERSE = "reverse"
ROLLED_BACK = "rolled back"
FINISHED = "finished"


def direction(forward: Phase | None, reverse: Phase | None) -> str:
    """Which way the data flows now, from the two records' phases (``None``: no such record).

    ``forward`` until the forward cutover is complete (a reverse record created by a cutover that then
    failed never runs); ``reverse`` while the reverse sync lives or stopped short (failed, expired:
    its phase says which); ``rolled back`` once the rollback reopened the source; ``finished`` once
    the reverse sync was ended for good.
    """
    if reverse is None or (forward is not None and forward != Phase.COMPLETE):
        return FORWARD
    if reverse == Phase.COMPLETE:
        return ROLLED_BACK
    if reverse == Phase.FINISHED:
        return FINISHED
    return REVERSE


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t else None


def _window(doc: MigrationDoc, now: dt.datetime) -> dict[str, Any]:
    closes = doc.window_closes_at
    return {
        "opens_at": _iso(doc.window_opens_at),
        "closes_at": _iso(closes),
        "seconds_left": (closes.replace(tzinfo=dt.UTC) - now).total_seconds() if closes else None,
        "extensions": doc.extensions,
    }


def _is_reverse(doc: MigrationDoc) -> bool:
    return doc.direction == REVERSE or doc.reverse_of is not None


REVERSE_EVENTS = {"reverse-sync": "reverse sync started", "extend": "extend (rollback window)"}


def history(forward: MigrationDoc | None, reverse: MigrationDoc) -> list[dict[str, Any]]:
    """Both records' decisions in time order, each with who approved it: the forward cutover, the reverse
    sync's start (recorded with the cutover's approver), then extensions, refusals, the rollback or finish."""
    events = [(d, FORWARD, d.action) for d in (forward.decisions if forward else [])]
    events += [(d, REVERSE, REVERSE_EVENTS.get(d.action, d.action)) for d in reverse.decisions]
    events.sort(key=lambda e: e[0].at.replace(tzinfo=dt.UTC) if e[0].at.tzinfo is None else e[0].at)
    return [
        {"at": _iso(d.at), "event": event, "approver": d.approver, "reason": d.reason, "direction": way}
        for d, way, event in events
    ]


def reverse_section(doc: MigrationDoc, now: dt.datetime) -> dict[str, Any]:
    """The reverse sync's figures (destination -> source): its lag, rollback readiness, window, moments."""
    return {
        "name": doc.id,
        "phase": doc.phase.value,
        "source": doc.source,  # the forward destination
        "destination": doc.destination,  # the forward source
        "started_at": _iso(doc.created_at),
        "ready_to_roll_back": doc.lag.ready and doc.phase == Phase.SYNCING,
        "lag": doc.lag.model_dump(mode="json"),
        "window": _window(doc, now),
        "decisions": [d.model_dump(mode="json") for d in doc.decisions],
        "continuous_verification": doc.continuous_verification,
        "last_verification": doc.last_verification,
        "downtime_estimate": doc.downtime_estimate,
        "downtime": doc.downtime,  # the rollback's: writes stopped on the destination -> source reopened
        # the application's writes on the source: "blocked" (the reverse record holds the source's block) or why not
        "source_writes": doc.destination_writes,
        "source_reopened_at": _iso(doc.destination_ready_at),
        "completed_at": _iso(doc.completed_at),
        "warnings": doc.warnings,
        "error": doc.error,
    }


def describe(store: MetadataStore, name: str | None) -> dict[str, Any]:
    """What `livemigrate describe` shows: phase, lag, copy progress, window left, last validation.

    ``name`` may be a reverse record's (``<name>~reverse``): that record is described (its own phase,
    lag, window at the top level, as the flow driving it expects), with ``reverse_of``, the rollback's
    names for its figures and a ``forward`` summary.  Without a name the latest migration is described,
    by its forward name.
    """
    doc = store.load(name) if name else store.latest()
    if doc is None:
        raise TerminalError("no migration found in the destination's metadata store")
    if name is None and _is_reverse(doc):
        doc = store.get(doc.reverse_of or forward_name(doc.id)) or doc
    now = dt.datetime.now(dt.UTC)
    d = _record(store, doc, now)
    if _is_reverse(doc):
        fwd = store.get(doc.reverse_of or forward_name(doc.id))
        d["direction"] = direction(fwd.phase if fwd else None, doc.phase)
        d["reverse_of"] = doc.reverse_of or forward_name(doc.id)
        d["ready_to_roll_back"] = d["ready_to_cut_over"]
        d["source_reopened_at"] = d["destination_ready_at"]
        d["started_at"] = _iso(doc.created_at)
        d["source_writes"] = doc.destination_writes
        d["forward"] = (
            {
                "name": fwd.id,
                "phase": fwd.phase.value,
                "destination_ready_at": _iso(fwd.destination_ready_at),
                "completed_at": _iso(fwd.completed_at),
            }
            if fwd
            else None
        )
        d["history"] = history(fwd, doc)
        return d
    rev = store.get(reverse_name(doc.id))
    d["direction"] = direction(doc.phase, rev.phase if rev else None)
    if rev is not None:
        d["reverse"] = reverse_section(rev, now)
        d["history"] = history(doc, rev)
    return d


def _record(store: MetadataStore, doc: MigrationDoc, now: dt.datetime) -> dict[str, Any]:
    """One record's description (the keys JSON consumers rely on)."""
    clone = store.clone_summary(doc.id)
    return {
        "schema": "livemigrate.describe/1",
        "name": doc.id,
        "phase": doc.phase.value,
        "source": doc.source,
        "destination": doc.destination,
        "ready_to_cut_over": doc.lag.ready and doc.phase == Phase.SYNCING,
        "lag": doc.lag.model_dump(mode="json"),
        "clone": {
            "namespaces": clone,
            "docs": sum(v["docs"] for v in clone.values()),
            "bytes": sum(v["bytes"] for v in clone.values()),
            "partitions": sum(v["partitions"] for v in clone.values()),
            "partitions_done": sum(v["done"] for v in clone.values()),
        },
        "window": _window(doc, now),
        "decisions": [d.model_dump(mode="json") for d in doc.decisions],
        "warnings": doc.warnings,
        "unsupported": doc.unsupported,
        "pending_index_restores": len(doc.index_restores),
        "source_write_blocked": doc.write_blocked,
        "destination_write_blocked": doc.destination_write_blocked,
        "destination_writes": doc.destination_writes,
        "last_validation": (doc.last_validation or {}).get("summary") if doc.last_validation else None,
        "last_verification": doc.last_verification,
        "continuous_verification": doc.continuous_verification,
        "downtime_estimate": doc.downtime_estimate,
        "downtime": doc.downtime,
        "destination_ready_at": _iso(doc.destination_ready_at),
        "completed_at": _iso(doc.completed_at),
        "error": doc.error,
        "flow_run_id": doc.flow_run_id,
    }


__all__ = ["FINISHED", "FORWARD", "REVERSE", "ROLLED_BACK", "describe", "direction", "history", "reverse_section"]
