"""Prefect artifacts for a migration: progress bars, lag and decision reports.

Why: people watching a migration in the Prefect UI see the same numbers the
CLI shows; updates are throttled (every few seconds, never per batch).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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
        # key is a partition id "migration|db.coll|seq": per-namespace sums kept up to date as reports
        # arrive (walking every partition on every report grew with the square of the plan: 7 s at 10,000)
        new = (done, int(extra.get("bytes", 0)))
        old = self.by_part.get(key, (0, 0))
        self.by_part[key] = new
        ns = key.split("|")[1] if key.count("|") == 2 else key
        d0, b0 = self.by_ns.get(ns, (0, 0))
        self.by_ns[ns] = (d0 + new[0] - old[0], b0 + new[1] - old[1])
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


class LiveStatus:
    """One keyed markdown artifact, ``<name>-status``, rewritten in place every few seconds.

    Why: the form and the ``ready`` artifact are snapshots; the engineer deciding at the pause needs
    the numbers as they are now (is the application still writing? how long is left?).  The artifact
    is created once in the flow run's context and then patched by id (one artifact, not thousands of
    versions); a failed update is retried at the next tick and never touches the migration.
    """

    def __init__(self, name: str, render: Callable[[], str], every: float = 5.0) -> None:
        self.name, self.render, self.every = name, render, every
        self.artifact_id: UUID | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-status", daemon=True)

    def start(self) -> LiveStatus:
        try:
            self.artifact_id = create_markdown_artifact(  # type: ignore[assignment]  # sync call returns a UUID
                self.render(), key=artifact_key(self.name, "status"), description="live status (as of the time shown)"
            )
        except Exception as exc:  # noqa: BLE001 - artifacts are best effort
            log.warning("could not create the live status artifact: %s", type(exc).__name__)
            return self
        self._thread.start()
        return self

    def push(self) -> None:
        if self.artifact_id is None:
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        with get_client(sync_client=True) as client:
            client.update_artifact(self.artifact_id, ArtifactUpdate(data=self.render()))

    def refresh(self) -> None:
        """An update now (best effort)."""
        try:
            self.push()
        except Exception as exc:  # noqa: BLE001
            log.debug("live status update failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.refresh()  # a failed update is retried at the next tick

    def stop(self) -> None:
        """A last update (the final phase), then no more."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.refresh()


__all__ = [
    "CloneProgressArtifact",
    "LiveStatus",
    "artifact_key",
    "markdown",
    "table",
]
