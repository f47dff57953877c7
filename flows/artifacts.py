"""Prefect artifacts for a migration: progress bars, lag and decision reports.

Why: people watching a migration in the Prefect UI see the same numbers the
CLI shows; updates are throttled (every few seconds, never per batch).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from tasks.progress import Throttle

log = logging.getLogger(__name__)


def artifact_key(name: str, what: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    safe = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    return f"{safe}-{what}"[:100]


class CloneProgressArtifact:
    """A progress artifact fed by the engine's (stage, key, done, total) reports."""

    def __init__(self, name: str, total_docs: int, metrics: Any = None) -> None:
        self.name = name
        self.metrics = metrics
        self.by_part: dict[str, tuple[int, int]] = {}
        self.total = max(1, total_docs)
        self.by_ns: dict[str, tuple[int, int]] = {}
        self.artifact_id: UUID | None = None
        try:
            self.artifact_id = create_progress_artifact(  # type: ignore[assignment]  # sync call returns a UUID
                0.0, key=artifact_key(name, "clone-progress"), description=f"Clone of {name}"
            )
        except Exception as exc:  # noqa: BLE001 - artifacts are best effort, the copy is not
            log.warning("could not create the progress artifact: %s", type(exc).__name__)
        self._throttle = Throttle(3.0, self._push)

    def __call__(self, stage: str, key: str, done: int, total: int, extra: dict[str, float]) -> None:
        # key is a partition id "migration|db.coll|seq": sum partitions per namespace
        self.by_part[key] = (done, int(extra.get("bytes", 0)))
        ns = key.split("|")[1] if key.count("|") == 2 else key
        parts = [v for k, v in self.by_part.items() if k.split("|")[1:2] == [ns] or k == ns]
        self.by_ns[ns] = (sum(d for d, _ in parts), sum(b for _, b in parts))
        if self.metrics is not None:
            self.metrics.clone_progress(self.name, ns, self.by_ns[ns][0], self.by_ns[ns][1])
        self._throttle.maybe()

    def _push(self) -> None:
        if self.artifact_id is None:
            return
        done = sum(d for d, _ in self.by_ns.values())
        try:
            update_progress_artifact(self.artifact_id, min(100.0, 100.0 * done / self.total))
        except Exception as exc:  # noqa: BLE001
            log.debug("progress artifact update failed: %s", exc)

    def finish(self) -> None:
        if self.artifact_id is not None:
            try:
                update_progress_artifact(self.artifact_id, 100.0)
            except Exception:  # noqa: BLE001
                log.debug("progress artifact final update failed")


def markdown(name: str, what: str, text: str, description: str = "") -> None:
    try:
        create_markdown_artifact(text, key=artifact_key(name, what), description=description or what)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not create the %s artifact: %s", what, type(exc).__name__)


def table(name: str, what: str, rows: list[dict[str, Any]], description: str = "") -> None:
    try:
        create_table_artifact(rows, key=artifact_key(name, what), description=description or what)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not create the %s artifact: %s", what, type(exc).__name__)


def status_markdown(d: dict[str, Any]) -> str:
    """A short report of `describe`'s output for artifacts and the pause form."""
    lag = d["lag"]
    win = d["window"]
    left = win.get("seconds_left")
    left_s = f"{left / 3600:.1f} h" if left is not None else "not open yet"
    lines = [
        f"### Migration `{d['name']}`: {d['phase']}",
        "",
        f"- **Lag (optime gap):** {lag.get('lag_seconds')} s, {lag.get('events_per_second')} events/s applied,"
        f" {lag.get('applied_events')} events in all",
        f"- **Copied:** {d['clone']['docs']} documents, {d['clone']['bytes']} bytes in"
        f" {d['clone']['partitions_done']}/{d['clone']['partitions']} partitions",
        f"- **Cutover window left:** {left_s} (extensions: {win.get('extensions')})",
        f"- **Source:** {d['source']}  **Destination:** {d['destination']}",
    ]
    lines += verification_lines(d)
    if d.get("warnings"):
        lines += ["", "**Warnings:**"] + [f"- {w}" for w in d["warnings"]]
    return "\n".join(lines)


def verification_lines(d: dict[str, Any]) -> list[str]:
    """The background verification and the downtime (estimated before, measured after the cutover)."""
    lines: list[str] = []
    cv = d.get("continuous_verification")
    if cv:
        lines.append(
            f"- **Verified during the sync:** {cv.get('partitions_proven')}/{cv.get('partitions')} partitions"
            f" ({cv.get('docs_proven')} documents), {cv.get('dirty_documents')} changed since, to re-read at the cutover"
        )
        if cv.get("differences"):
            lines.append(
                f"- **Differences (cutover refused until resolved, or choose a full verification):** {cv['differences']}"
            )
            lines += [f"  - `{x['ns']}` _id `{x['_id']}` ({x['kind']})" for x in cv.get("differing", [])[:10]]
        if cv.get("error"):
            lines.append(f"- **Verification paused:** {cv['error']}")
    est = d.get("downtime_estimate")
    if est and not d.get("downtime"):
        parts = ", ".join(f"{k} {v:g} s" for k, v in est["parts"].items())
        lines.append(
            f"- **Downtime estimate:** {est['seconds']:g} s ({parts}; {est['final_verification']} verification)"
        )
    done = d.get("downtime")
    if done:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in done["parts"].items())
        lines.append(
            f"- **Downtime:** {done['seconds']:.2f} s ({parts}; {done.get('final_verification')} verification)"
        )
    return lines
