"""Prometheus metrics for a running migration.

Why: a data team watches a long migration on the dashboards it already has.
The engine reports progress (STYLE.md principle 8); this module turns it into
gauges that Prometheus scrapes from ``/metrics``.  Each :class:`Metrics` owns its
registry, so two migrations (or two tests) in one process never share or clash
over the global default registry.  Plain Python: no Prefect import.

Every series is labelled ``migration`` (the forward migration's name) and
``direction``: ``forward``, or ``reverse`` for a reversible migration's reverse
sync (issue 19), which the flow reports under its record's name
``<name>~reverse``; so one dashboard query follows both, and the reverse lag
is ``livemigrate_lag_seconds{direction="reverse"}``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tasks.reverse import REVERSE_SUFFIX, forward_name
from tasks.state import Phase

__all__ = ["Metrics", "SyncNumbers"]

log = logging.getLogger(__name__)


def _labels(migration: str) -> tuple[str, str]:
    """The ``migration`` and ``direction`` labels of a record's name (``<name>~reverse`` is the reverse sync)."""
    return forward_name(migration), "reverse" if migration.endswith(REVERSE_SUFFIX) else "forward"


class SyncNumbers(Protocol):
    """What :meth:`Metrics.sync_tick` reads (``tasks.sync.SyncState`` has these)."""

    applied_events: int
    lag_seconds: float | None
    events_per_second: float


class Metrics:
    """Gauges for clone progress, change-event apply, lag and phase, on a private registry.

    Why gauges and not counters for totals: the engine reports cumulative
    numbers it reads back from the metadata store, so a resumed migration (new
    process) restarts at the stored total instead of at zero; a gauge set to
    that total stays truthful where a counter would restart.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.documents_copied = Gauge(
            "livemigrate_documents_copied",
            "Documents copied by the initial clone so far.",
            ["migration", "direction", "namespace"],
            registry=self.registry,
        )
        self.bytes_copied = Gauge(
            "livemigrate_bytes_copied",
            "BSON bytes copied by the initial clone so far.",
            ["migration", "direction", "namespace"],
            registry=self.registry,
        )
        self.events_applied = Gauge(
            "livemigrate_events_applied",
            "Change events applied to the destination since the sync started.",
            ["migration", "direction"],
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "livemigrate_lag_seconds",
            "Seconds the destination is behind the source (NaN until first measured).",
            ["migration", "direction"],
            registry=self.registry,
        )
        self.events_per_second = Gauge(
            "livemigrate_events_per_second",
            "Recent change-event apply rate.",
            ["migration", "direction"],
            registry=self.registry,
        )
        self.phase_gauge = Gauge(
            "livemigrate_phase",
            "1 for the migration's current phase, 0 for the others.",
            ["migration", "direction", "phase"],
            registry=self.registry,
        )
        self.downtime_seconds = Gauge(
            "livemigrate_downtime_seconds",
            "The cutover's downtime (writes stopped to destination ready; direction=reverse: the rollback's, to "
            "the source reopened): part=total, drain, final_checks, index_restores, finalize, write_block, quiesce.",
            ["migration", "direction", "part"],
            registry=self.registry,
        )
        self.downtime_estimate_seconds = Gauge(
            "livemigrate_downtime_estimate_seconds",
            "What a cutover approved now would cost, by part (part=total for the sum).",
            ["migration", "direction", "part"],
            registry=self.registry,
        )
        self.verification_differences = Gauge(
            "livemigrate_verification_differences",
            "Documents the continuous verification found differing with no change in flight.",
            ["migration", "direction"],
            registry=self.registry,
        )
        self.verification_partitions_proven = Gauge(
            "livemigrate_verification_partitions_proven",
            "Partitions the continuous verification has proven equal in their current generation.",
            ["migration", "direction"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def clone_progress(self, migration: str, ns: str, docs: int, nbytes: int) -> None:
        """Set the cumulative clone totals for one namespace."""
        key = _labels(migration)
        self.documents_copied.labels(*key, ns).set(docs)
        self.bytes_copied.labels(*key, ns).set(nbytes)

    def sync_tick(self, migration: str, state: SyncNumbers) -> None:
        """Copy the sync runner's live numbers (its ``on_tick`` callback can call this)."""
        key = _labels(migration)
        self.events_applied.labels(*key).set(state.applied_events)
        lag = state.lag_seconds
        self.lag_seconds.labels(*key).set(float("nan") if lag is None else lag)
        self.events_per_second.labels(*key).set(state.events_per_second)

    def verification(self, migration: str, status: dict[str, Any] | None, estimate: dict[str, Any] | None) -> None:
        """The background verification's figures and the downtime estimate (from the migration record)."""
        key = _labels(migration)
        if status:
            self.verification_differences.labels(*key).set(int(status.get("differences") or 0))
            self.verification_partitions_proven.labels(*key).set(int(status.get("partitions_proven") or 0))
        if estimate:
            self.downtime_estimate_seconds.labels(*key, "total").set(float(estimate["seconds"]))
            for part, secs in estimate["parts"].items():
                self.downtime_estimate_seconds.labels(*key, part).set(float(secs))

    def downtime(self, migration: str, downtime: dict[str, Any] | None) -> None:
        """The measured downtime of the cutover (the rollback's for a reverse record), total and by part."""
        if not downtime:
            return
        key = _labels(migration)
        self.downtime_seconds.labels(*key, "total").set(float(downtime["seconds"]))
        for part, secs in downtime["parts"].items():
            self.downtime_seconds.labels(*key, part).set(float(secs))

    def phase(self, migration: str, phase: str) -> None:
        """Mark ``phase`` as current: 1 for it, 0 for every other known phase.

        Why every phase is written: a PromQL ``livemigrate_phase == 1`` then
        always finds exactly one series per migration and direction, and an alert on
        ``phase="failed"`` sees a 0 -> 1 edge rather than a series appearing.
        """
        key = _labels(migration)
        known = [p.value for p in Phase]
        for p in known if phase in known else [*known, phase]:
            self.phase_gauge.labels(*key, p).set(1 if p == phase else 0)

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> tuple[WSGIServer, int]:
        """Start the ``/metrics`` HTTP endpoint in a daemon thread; port 0 picks a free one.

        Returns the server and the port it really listens on.  Bound to
        localhost by default: the numbers name databases and collections.
        """
        if self._server is not None:
            return self._server, int(self._server.server_port)
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server, self._thread = server, thread
        real_port = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", addr, real_port)
        return server, real_port

    def stop(self) -> None:
        """Stop the HTTP endpoint (no-op when it is not running)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
