"""Rich progress bars for people at a terminal, and the final report command.

Why: the engine reports progress into the metadata store (partition plan,
lag); reading it from there lets the same bars follow a migration running in
this process (`livemigrate migrate`) or on a Prefect worker elsewhere
(`livemigrate watch`).  Polled once a second, never per batch.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from flows.common import cli_guard, load_resolved
from flows.report import write_migration_report
from flows.status import shown_reverse
from tasks.config import MigrationConfig
from tasks.errors import EXIT_FAILED, EXIT_OK, LiveMigrateError
from tasks.metadata import MetadataStore
from tasks.mongo import connect_side
from tasks.status import describe

log = logging.getLogger(__name__)
MAX_NAMESPACE_BARS = 8
ENDED = ("complete", "cancelled", "expired", "finished", "failed")


class LiveView:
    """Clone bars (all namespaces, then the largest few) and a sync line, refreshed from the metadata store."""

    def __init__(self, store: MetadataStore, name: str, console: Console, interval: float = 1.0) -> None:
        self.store, self.name, self.interval = store, name, interval
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="live-view", daemon=True)
        self.last: dict[str, Any] | None = None

    def __enter__(self) -> LiveView:
        self.progress.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(5)
        self.progress.stop()

    def _task(self, key: str, description: str, total: float | None) -> TaskID:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total, rate="")
        return self.tasks[key]

    def refresh(self) -> dict[str, Any] | None:
        """Read the migration's state once and update the bars; returns describe()'s output."""
        try:
            d = describe(self.store, self.name)
        except (PyMongoError, LiveMigrateError):
            return None  # not created yet, or a blip: the next tick tries again
        self.last = d
        clone = d["clone"]
        per_ns = clone["namespaces"]
        if per_ns:
            est = sum(v["est_docs"] for v in per_ns.values())
            t = self._task("clone", "[bold]clone[/] all namespaces", max(est, clone["docs"], 1))
            self.progress.update(
                t,
                completed=clone["docs"],
                total=max(est, clone["docs"], 1),
                rate=f"{clone['partitions_done']}/{clone['partitions']} partitions",
            )
            largest = sorted(per_ns.items(), key=lambda kv: -kv[1]["est_docs"])[:MAX_NAMESPACE_BARS]
            for ns, v in largest:
                t = self._task(f"ns:{ns}", f"  {ns}", max(v["est_docs"], v["docs"], 1))
                self.progress.update(t, completed=v["docs"], total=max(v["est_docs"], v["docs"], 1), rate="")
        if d.get("reverse_of"):  # a reverse record watched by its own name
            self._sync_line("reverse", d, d["ready_to_cut_over"])
            return d
        if d["phase"] in ("syncing", "cutting_over") or d["lag"].get("applied_events"):
            self._sync_line("sync", d, d["ready_to_cut_over"])
        rev = shown_reverse(d)
        if rev is not None:
            self._sync_line("reverse", rev, rev["ready_to_roll_back"])
        return d

    def _sync_line(self, key: str, d: dict[str, Any], ready: bool) -> None:
        """One sync's line: its lag, readiness, events applied and rate (the reverse's says its direction)."""
        lag = d["lag"]
        lag_s = lag.get("lag_seconds")
        if key == "reverse":
            label, ready_text = "[bold]reverse sync[/] destination → source", "ready to roll back"
            if d["phase"] != "syncing":
                ready_text = ""
                label += f" ({'rolled back' if d['phase'] == 'complete' else d['phase']})"
        else:
            label, ready_text = "[bold]sync[/]", "ready to cut over"
        t = self._task(key, label, None)
        self.progress.update(
            t,
            description=f"{label} lag {'?' if lag_s is None else f'{lag_s:g}'} s"
            + (f" [green]{ready_text}[/]" if ready and ready_text else ""),
            completed=lag.get("applied_events") or 0,
            rate=f"{lag.get('events_per_second') or 0:g} events/s",
        )

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            d = self.refresh()
            if d is not None and ended(d):
                return


def ended(d: dict[str, Any]) -> bool:
    """Whether nothing is left to watch: the migration ended, and so did its reverse sync if it has one.

    A reversible migration's forward record is ``complete`` while its reverse sync still runs; `watch`
    follows the reverse until its rollback or finish.
    """
    rev = shown_reverse(d)
    return d["phase"] in ENDED and (rev is None or rev["phase"] in ENDED)


@contextmanager
def live_progress(cfg: MigrationConfig, console: Console) -> Iterator[None]:
    """Progress bars while the body runs, on a terminal only (piped output stays plain log lines)."""
    if not console.is_terminal:
        yield
        return
    with connect_side(cfg, "destination") as dst, LiveView(MetadataStore(dst), cfg.name, console):
        yield


@cli_guard
def watch_cli(config: Path, *, name: str | None) -> int:
    """`livemigrate watch`: follow a migration's progress until it ends (Ctrl-C leaves it running)."""
    cfg = load_resolved(config)
    err = Console(stderr=True)
    with connect_side(cfg, "destination") as dst:
        store = MetadataStore(dst)
        view = LiveView(store, name or cfg.name, err)
        with view:
            try:
                while view.thread.is_alive():
                    view.thread.join(0.5)
            except KeyboardInterrupt:
                err.print("stopped watching; the migration keeps running")
                return EXIT_OK
        d = view.last or describe(store, name or cfg.name)
    err.print(f"migration [bold]{d['name']}[/] is {d['phase']}" + (f": {d['error']}" if d.get("error") else ""))
    rev = shown_reverse(d)
    if rev is not None:
        err.print(
            f"reverse sync is {rev['phase']} (direction: {d['direction']})"
            + (f": {rev['error']}" if rev.get("error") else "")
        )
        return EXIT_OK if rev["phase"] in ("complete", "finished", "cancelled") else EXIT_FAILED
    return EXIT_OK if d["phase"] in ("complete", "cancelled", "finished") else EXIT_FAILED


@cli_guard
def report_cli(config: Path, *, out_dir: Path, name: str | None, as_json: bool) -> int:
    """`livemigrate report`: write the migration report (summary, copy-rate and lag charts) into a folder."""
    cfg = load_resolved(config)
    with connect_side(cfg, "destination") as dst:
        path, r = write_migration_report(MetadataStore(dst), name or cfg.name, out_dir)
    if as_json:
        r.pop("series", None)
        print(json.dumps({"report": str(path), **r}, default=str))
    else:
        Console().print(f"report: {path}")
    return EXIT_OK
