"""What a migration looks like now, as data: the one description every view renders.

Why: `livemigrate describe`, `watch`, the pause form, the live status artifact, the report and
the metrics all show the same facts; they read them here (from the metadata store, so any process
can), and render them at the edge (flows/status.py).  No presentation here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tasks.errors import TerminalError
from tasks.metadata import MetadataStore
from tasks.state import Phase


def describe(store: MetadataStore, name: str | None) -> dict[str, Any]:
    """What `livemigrate describe` shows: phase, lag, copy progress, window left, last validation."""
    doc = store.load(name) if name else store.latest()
    if doc is None:
        raise TerminalError("no migration found in the destination's metadata store")
    clone = store.clone_summary(doc.id)
    now = dt.datetime.now(dt.UTC)
    left = (doc.window_closes_at.replace(tzinfo=dt.UTC) - now).total_seconds() if doc.window_closes_at else None
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
        "window": {
            "opens_at": doc.window_opens_at.isoformat() if doc.window_opens_at else None,
            "closes_at": doc.window_closes_at.isoformat() if doc.window_closes_at else None,
            "seconds_left": left,
            "extensions": doc.extensions,
        },
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
        "destination_ready_at": doc.destination_ready_at.isoformat() if doc.destination_ready_at else None,
        "completed_at": doc.completed_at.isoformat() if doc.completed_at else None,
        "error": doc.error,
        "flow_run_id": doc.flow_run_id,
    }


__all__ = ["describe"]
