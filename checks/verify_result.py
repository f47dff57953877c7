"""What a verification found: one row per namespace, a summary, and a stable JSON schema.

Why: a difference is a result, not an exception (STYLE.md principle 6).  The
same object feeds the CLI table, the ``--json`` output, the Great Expectations
suite (through :meth:`VerifyResult.to_dataframe`), the Prefect artifacts and
the cutover flow.  The JSON schema is documented in docs/verify.md; change it
only together with :data:`SCHEMA`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "livemigrate.verify/1"
DOC_BUCKETS = ("missing", "extra", "changed", "field_order_only")
DATAFRAME_COLUMNS = (
    "ns",
    "kind",
    "equal",
    "source_count",
    "dest_count",
    "source_hash",
    "dest_hash",
    "partitions",
    "missing",
    "extra",
    "changed",
    "field_order_only",
    "index_diffs",
    "option_diffs",
)


@dataclass
class IdList:
    """How many documents fall in one bucket, and the first ``_id`` values (JSON-compatible)."""

    total: int = 0
    ids: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "ids": list(self.ids), "truncated": self.total > len(self.ids)}


@dataclass
class NamespaceResult:
    """One namespace compared: counts, hashes, differing documents, index and option differences."""

    ns: str
    kind: str  # "collection", "view" or "timeseries" (the source's kind when it has one)
    source_count: int = 0
    dest_count: int = 0
    source_hash: str = ""
    dest_hash: str = ""
    partitions: int = 0
    missing: IdList = field(default_factory=IdList)
    extra: IdList = field(default_factory=IdList)
    changed: IdList = field(default_factory=IdList)
    field_order_only: IdList = field(default_factory=IdList)
    index_diffs: list[dict[str, Any]] = field(default_factory=list)
    option_diffs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    proof: dict[str, Any] | None = None  # incremental (cutover) mode: what was proven during the sync, and when

    @property
    def equal(self) -> bool:
        """Same documents, indexes and options.

        Documents that differ only in field order are counted in
        ``field_order_only`` only in the ignore-field-order mode (otherwise
        they are ``changed``); they then explain a hash difference.
        """
        docs_equal = self.missing.total == 0 and self.extra.total == 0 and self.changed.total == 0
        hash_ok = self.source_hash == self.dest_hash or (docs_equal and self.field_order_only.total > 0)
        catalog_equal = not self.index_diffs and not self.option_diffs
        return bool(docs_equal and hash_ok and catalog_equal and self.source_count == self.dest_count)

    def row(self) -> dict[str, Any]:
        """The DataFrame row: figures only (lists of ids and details are in :meth:`to_dict`)."""
        return {
            "ns": self.ns,
            "kind": self.kind,
            "equal": self.equal,
            "source_count": self.source_count,
            "dest_count": self.dest_count,
            "source_hash": self.source_hash,
            "dest_hash": self.dest_hash,
            "partitions": self.partitions,
            "missing": self.missing.total,
            "extra": self.extra.total,
            "changed": self.changed.total,
            "field_order_only": self.field_order_only.total,
            "index_diffs": len(self.index_diffs),
            "option_diffs": len(self.option_diffs),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "ns": self.ns,
            "kind": self.kind,
            "equal": self.equal,
            "source_count": self.source_count,
            "destination_count": self.dest_count,
            "source_hash": self.source_hash,
            "destination_hash": self.dest_hash,
            "partitions": self.partitions,
            "missing": self.missing.to_dict(),
            "extra": self.extra.to_dict(),
            "changed": self.changed.to_dict(),
            "field_order_only": self.field_order_only.to_dict(),
            "indexes": list(self.index_diffs),
            "options": list(self.option_diffs),
            "notes": list(self.notes),
            **({"proof": dict(self.proof)} if self.proof is not None else {}),
        }


@dataclass
class VerifyResult:
    """The whole verification: per-namespace results plus how it ran."""

    namespaces: list[NamespaceResult] = field(default_factory=list)
    unsupported: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    finished_at: dt.datetime | None = None
    recheck_generations_used: int = 0
    report: dict[str, Any] | None = None  # set by checks.gx_report.write_report

    @property
    def equal(self) -> bool:
        return all(n.equal for n in self.namespaces)

    @property
    def exit_code(self) -> int:
        """0 when the destination equals the source, 1 when a difference was found."""
        return EXIT_OK if self.equal else EXIT_FAILED

    def different(self) -> list[NamespaceResult]:
        return [n for n in self.namespaces if not n.equal]

    def namespace(self, ns: str) -> NamespaceResult:
        """The result for one namespace (KeyError when it was not in scope on either side)."""
        for n in self.namespaces:
            if n.ns == ns:
                return n
        raise KeyError(ns)

    def totals(self) -> dict[str, int]:
        rows = [n.row() for n in self.namespaces]
        out = {
            "namespaces": len(rows),
            "namespaces_different": sum(1 for r in rows if not r["equal"]),
            "source_documents": sum(r["source_count"] for r in rows),
            "destination_documents": sum(r["dest_count"] for r in rows),
        }
        for key in (*DOC_BUCKETS, "index_diffs", "option_diffs"):
            out[key] = sum(int(r[key]) for r in rows)
        return out

    def to_dataframe(self) -> pd.DataFrame:
        """One row per namespace (columns :data:`DATAFRAME_COLUMNS`), for the GX suite and artifacts."""
        import pandas as pd

        return pd.DataFrame([n.row() for n in self.namespaces], columns=list(DATAFRAME_COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary, schema ``livemigrate.verify/1`` (docs/verify.md)."""
        finished = self.finished_at or dt.datetime.now(dt.UTC)
        return {
            "schema": SCHEMA,
            "equal": self.equal,
            "exit_code": self.exit_code,
            "started_at": self.started_at.isoformat(),
            "finished_at": finished.isoformat(),
            "duration_seconds": round((finished - self.started_at).total_seconds(), 3),
            "settings": dict(self.settings),
            "recheck_generations_used": self.recheck_generations_used,
            "totals": self.totals(),
            "namespaces": [n.to_dict() for n in self.namespaces],
            "unsupported": list(self.unsupported),
            "report": dict(self.report) if self.report else None,
        }

    def summary_markdown(self) -> str:
        """A short human summary (Prefect markdown artifact, cutover log)."""
        t = self.totals()
        verdict = "EQUAL" if self.equal else "DIFFERENT"
        lines = [
            f"## Verification: {verdict}",
            "",
            f"{t['namespaces']} namespaces, {t['source_documents']} source / {t['destination_documents']} destination "
            f"documents; {t['missing']} missing, {t['extra']} extra, {t['changed']} changed, "
            f"{t['field_order_only']} field-order-only; {t['index_diffs']} index and {t['option_diffs']} option "
            "differences.",
        ]
        for n in self.different():
            lines.append("")
            lines.append(f"### {n.ns}")
            for bucket in DOC_BUCKETS:
                ids: IdList = getattr(n, bucket)
                if ids.total:
                    more = f" (+{ids.total - len(ids.ids)} more)" if ids.total > len(ids.ids) else ""
                    lines.append(f"- {bucket}: {ids.total}: {', '.join(map(str, ids.ids[:10]))}{more}")
            for d in n.index_diffs:
                lines.append(f"- index {d['name']}: {d['problem']}")
            for d in n.option_diffs:
                lines.append(f"- option {d['option']}: {d['problem']}")
            if n.source_count != n.dest_count:
                lines.append(f"- counts: source {n.source_count}, destination {n.dest_count}")
        return "\n".join(lines)
