"""The result type every check returns, and the report that collects them.

Why: a precheck or verification that ran and found a problem is a *result*
(pass/warn/fail with evidence and a remedy), not an exception (STYLE.md
principle 6; mongo-tools' restore Result).  One type lets the CLI, the Prefect
artifacts, the metadata store and ``--json`` all show the same thing, and the
JSON shape is versioned (``schema``) so machines can rely on it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rich.table import Table
from rich.text import Text

from tasks.errors import EXIT_FAILED, EXIT_OK

PRECHECKS_SCHEMA = "livemigrate.prechecks/1"


class Status(StrEnum):
    """Outcome of one check, ordered from best to worst by :data:`_RANK`."""

    PASS = "pass"  # noqa: S105 - a status name, not a password
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


# skip ranks between warn and fail: it is worse than a warning to know nothing,
# but it does not stop a migration on its own.
_RANK = {Status.PASS: 0, Status.WARN: 1, Status.SKIP: 2, Status.FAIL: 3}
_STYLE = {Status.PASS: "bold green", Status.WARN: "bold yellow", Status.FAIL: "bold red", Status.SKIP: "dim"}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status (pass when there is none)."""
    return max(statuses, key=lambda s: _RANK[s], default=Status.PASS)


def jsonable(value: Any) -> Any:
    """Turn server replies (Timestamps, ObjectIds, datetimes, bytes) into plain JSON values.

    Why: evidence goes to ``--json``, Prefect artifacts and the metadata store
    alike; converting once at the edge of the result keeps all three identical.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "time") and hasattr(value, "inc"):  # bson Timestamp
        return {"t": int(value.time), "i": int(value.inc)}
    return str(value)


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: a stable id, a status, one-line summary, evidence and a remedy."""

    id: str
    status: Status
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    remedy: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "evidence", jsonable(self.evidence))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "summary": self.summary,
            "evidence": self.evidence,
            "remedy": self.remedy if self.status != Status.PASS else "",
        }


@dataclass
class PrecheckReport:
    """Every check of one validation run, in a fixed order, with when and against what it ran."""

    migration: str
    checks: list[CheckResult]
    started_at: dt.datetime
    finished_at: dt.datetime
    source: str = ""
    destination: str = ""
    stored: bool = False  # whether the report reached the metadata store (not part of the JSON)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == Status.FAIL]

    @property
    def status(self) -> Status:
        """Overall: fail if any failed, else warn if any warned or was skipped, else pass."""
        s = worst(c.status for c in self.checks)
        return Status.WARN if s == Status.SKIP else s

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK

    def check(self, check_id: str) -> CheckResult:
        """The result with this id (KeyError when the report has none)."""
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for c in self.checks if c.status == s) for s in Status}

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON shape (docs/prechecks.md); keys are only ever added, never renamed."""
        return {
            "schema": PRECHECKS_SCHEMA,
            "migration": self.migration,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "started_at": jsonable(self.started_at),
            "finished_at": jsonable(self.finished_at),
            "duration_seconds": round((self.finished_at - self.started_at).total_seconds(), 3),
            "source": self.source,
            "destination": self.destination,
            "counts": self.counts(),
            "failed": [c.id for c in self.failed],
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def summary(self) -> dict[str, Any]:
        """Small digest stored on the migration record as ``last_validation``."""
        return {
            "at": self.finished_at,
            "status": self.status.value,
            "failed": [c.id for c in self.failed],
            "warned": [c.id for c in self.checks if c.status == Status.WARN],
            "counts": self.counts(),
        }


def render_table(report: PrecheckReport) -> Table:
    """A coloured table for people: one row per check, the remedy only where action is needed."""
    title = f"Prechecks for {report.migration}: {report.source} -> {report.destination}"
    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("Check", style="bold", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Summary", overflow="fold")
    table.add_column("Remedy", overflow="fold")
    for c in report.checks:
        table.add_row(
            c.id,
            Text(c.status.value.upper(), style=_STYLE[c.status]),
            c.summary,
            c.remedy if c.status != Status.PASS else "",
        )
    overall = report.status
    table.caption = Text(
        f"{overall.value.upper()}: " + ", ".join(f"{n} {s}" for s, n in report.counts().items() if n),
        style=_STYLE[overall],
    )
    return table


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: PrecheckReport) -> str:
    """The same report as Markdown (Prefect artifact, tickets), with evidence of what did not pass."""
    lines = [
        f"# Prechecks: {report.migration}",
        "",
        f"**{report.status.value.upper()}** - {report.source} -> {report.destination}, "
        f"finished {jsonable(report.finished_at)}",
        "",
        "| Check | Status | Summary | Remedy |",
        "|---|---|---|---|",
    ]
    for c in report.checks:
        remedy = c.remedy if c.status != Status.PASS else ""
        lines.append(f"| `{c.id}` | {c.status.value.upper()} | {_md_cell(c.summary)} | {_md_cell(remedy)} |")
    details = [c for c in report.checks if c.status != Status.PASS and c.evidence]
    if details:
        lines += ["", "## Evidence"]
        for c in details:
            lines += ["", f"### `{c.id}` ({c.status.value})", "", "```json", json.dumps(c.evidence, indent=2), "```"]
    return "\n".join(lines) + "\n"
