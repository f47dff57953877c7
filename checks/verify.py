"""Verification: prove the destination holds the same documents, indexes and options as the source.

Why: the last step of a cutover and the answer to "did we lose anything?".
Per in-scope namespace it compares exact counts, an order-independent hash
per ``_id`` partition (the same type-bracketed ranges clone uses), and drills
into differing partitions to name each missing, extra or changed document by
``_id``; collection options, views and index specs are compared too.  Memory
stays at a batch per scan plus one partition's ``{_id: digest}`` maps while
drilling.  During a running sync, differences are rechecked after the events
in flight are applied (migration-verifier's recheck generations) before they
are reported.  A difference is a result (:class:`VerifyResult`), an exception
means verification could not run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from checks.verify_bson import HASH_MOD, format_hash, id_json
from checks.verify_catalog import PendingRestores, compare_namespace, pending_map
from checks.verify_result import DOC_BUCKETS, IdList, NamespaceResult, VerifyResult
from checks.verify_scan import Entry, PartitionOutcome, PartitionVerifier
from tasks.catalog import CollectionSpec, list_specs
from tasks.config import MigrationConfig
from tasks.errors import LiveMigrateError, classify
from tasks.mongo import RAW, connect_side, is_mongos
from tasks.namespaces import NamespaceFilter
from tasks.partition import plan_ranges

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
RECHECK_CAP = 100_000  # differing documents remembered per namespace for rechecks and listing

__all__ = ["VerifyResult", "run_verification", "verify"]


@dataclass
class _NsState:
    """Running figures for one namespace while its partitions come in."""

    ns: str
    src_spec: CollectionSpec | None
    dst_spec: CollectionSpec | None
    verifier: PartitionVerifier | None = None
    src_count: int = 0
    dst_count: int = 0
    src_sum: int = 0
    dst_sum: int = 0
    partitions: int = 0
    estimates: tuple[int, int] = (0, 0)  # estimated documents (source, destination)
    entries: list[Entry] = field(default_factory=list)
    overflow: dict[str, int] = field(default_factory=dict)  # bucket totals beyond RECHECK_CAP
    index_diffs: list[dict[str, Any]] = field(default_factory=list)
    option_diffs: list[dict[str, Any]] = field(default_factory=list)
    catalog_notes: list[str] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        specs = [s for s in (self.src_spec, self.dst_spec) if s is not None]
        return bool(specs) and not any(s.is_view for s in specs)

    def add(self, out: PartitionOutcome) -> None:
        self.partitions += 1
        self.src_count += out.src_count
        self.dst_count += out.dst_count
        self.src_sum += out.src_sum
        self.dst_sum += out.dst_sum
        room = RECHECK_CAP - len(self.entries)
        self.entries.extend(out.entries[:room])
        for e in out.entries[room:] if room < len(out.entries) else ():
            self.overflow[e.bucket] = self.overflow.get(e.bucket, 0) + 1

    def needs_recheck(self) -> bool:
        return bool(self.index_diffs or self.option_diffs) or any(e.bucket != "field_order_only" for e in self.entries)

    def result(self, max_listed: int) -> NamespaceResult:
        spec = self.src_spec or self.dst_spec
        res = NamespaceResult(
            ns=self.ns,
            kind=spec.kind if spec else "collection",
            source_count=self.src_count,
            dest_count=self.dst_count,
            source_hash=format_hash(self.src_sum) if self.has_data else "",
            dest_hash=format_hash(self.dst_sum) if self.has_data else "",
            partitions=self.partitions,
            index_diffs=self.index_diffs,
            option_diffs=self.option_diffs,
            notes=list(self.catalog_notes),
        )
        for bucket in DOC_BUCKETS:
            listed = [e for e in self.entries if e.bucket == bucket]
            ids = IdList(len(listed) + self.overflow.get(bucket, 0), [id_json(e.key) for e in listed[:max_listed]])
            setattr(res, bucket, ids)
        if self.overflow:
            res.notes.append(f"more than {RECHECK_CAP} differing documents: only the first were rechecked")
        return res


def verify(
    source: MongoClient[Any],
    dest: MongoClient[Any],
    nsfilter: NamespaceFilter,
    *,
    partition_docs: int = 50_000,
    partitioning: str = "auto",
    batch_size: int = 2000,
    ignore_field_order: bool = False,
    max_listed: int = 100,
    pending_index_restores: list[dict[str, Any]] | None = None,
    recheck: Callable[[], None] | None = None,
    recheck_generations: int = 3,
    workers: int = 2,
    progress: Progress | None = None,
) -> VerifyResult:
    """Compare every in-scope namespace of ``source`` and ``dest``; a difference is in the result.

    ``recheck`` (verification during a running sync) blocks until the sync
    has applied the events in flight; differing documents and catalog entries
    are then re-read, up to ``recheck_generations`` times, before reporting.
    Raises a :class:`~tasks.errors.LiveMigrateError` when it cannot run.
    """
    result = VerifyResult(
        settings={
            "ignore_field_order": ignore_field_order,
            "partition_docs": partition_docs,
            "partitioning": partitioning,
            "batch_size": batch_size,
            "max_listed": max_listed,
            "recheck": recheck is not None,
            "pending_index_restores": len(pending_index_restores or []),
        }
    )
    pending = pending_map(pending_index_restores)
    where = "verify"
    try:
        states, unsupported = _catalog(source, dest, nsfilter, pending)
        result.unsupported = unsupported
        with (
            ThreadPoolExecutor(max(1, workers), "verify-part") as part_pool,
            ThreadPoolExecutor(max(1, workers), "verify-side") as side_pool,
        ):
            for st in states:
                if st.has_data:
                    st.verifier = PartitionVerifier(
                        _raw_coll(source, st.ns),
                        _raw_coll(dest, st.ns),
                        side_pool,
                        batch_size=batch_size,
                        ignore_field_order=ignore_field_order,
                    )
            total = sum(_estimate(st, side_pool) for st in states)
            done = 0
            for st in states:
                where = f"verify {st.ns}"
                done = _verify_data(st, part_pool, partition_docs, partitioning, done, total, progress)
            if recheck is not None:
                where = "verify recheck"
                result.recheck_generations_used = _recheck(
                    states, source, dest, nsfilter, pending, recheck, recheck_generations
                )
    except LiveMigrateError:
        raise
    except PyMongoError as exc:
        raise classify(exc, where) from exc
    result.namespaces = [st.result(max_listed) for st in states]
    result.finished_at = dt.datetime.now(dt.UTC)
    log.info("verification %s: %s", "equal" if result.equal else "different", result.totals())
    return result


def _raw_coll(client: MongoClient[Any], ns: str) -> Any:
    db, _, coll = ns.partition(".")
    return client[db].get_collection(coll, codec_options=RAW)


def _catalog(
    source: MongoClient[Any], dest: MongoClient[Any], nsfilter: NamespaceFilter, pending: PendingRestores
) -> tuple[list[_NsState], list[dict[str, str]]]:
    """One state per namespace in scope on either side, with its catalog differences."""
    src_specs, src_unsup = list_specs(source, nsfilter)
    dst_specs, dst_unsup = list_specs(dest, nsfilter)
    by_src = {s.ns.full: s for s in src_specs}
    by_dst = {s.ns.full: s for s in dst_specs}
    keys = shard_keys(dest)
    states: list[_NsState] = []
    for ns in sorted(by_src.keys() | by_dst.keys()):
        st = _NsState(ns, by_src.get(ns), by_dst.get(ns))
        st.index_diffs, st.option_diffs, st.catalog_notes = compare_namespace(
            ns, st.src_spec, st.dst_spec, pending, keys.get(ns)
        )
        states.append(st)
    unsupported = {(u.ns, u.reason) for u in (*src_unsup, *dst_unsup)}
    return states, [{"ns": ns, "reason": reason} for ns, reason in sorted(unsupported)]


def shard_keys(client: MongoClient[Any]) -> dict[str, list[tuple[str, Any]]]:
    """Each sharded collection's key, in order, when ``client`` is a mongos (else none)."""
    try:
        if not is_mongos(client):
            return {}
        rows = client["config"]["collections"].find({"dropped": {"$ne": True}}, {"key": 1})
        return {str(r["_id"]): list(dict(r["key"]).items()) for r in rows if r.get("key")}
    except OperationFailure:
        return {}


def _estimate(st: _NsState, pool: ThreadPoolExecutor) -> int:
    """Estimated documents on both sides (asked once, in parallel: some servers count to answer)."""
    if st.verifier is None:
        return 0
    fut = pool.submit(st.verifier.src.estimated_document_count)
    n_dst = st.verifier.dst.estimated_document_count()
    st.estimates = (fut.result(), n_dst)
    return max(st.estimates)


def _verify_data(
    st: _NsState,
    pool: ThreadPoolExecutor,
    partition_docs: int,
    partitioning: str,
    done: int,
    total: int,
    progress: Progress | None,
) -> int:
    """Plan partitions on the larger side, verify them in parallel, fold the outcomes into ``st``."""
    v = st.verifier
    if v is None:
        return done
    n_src, n_dst = st.estimates
    planner = v.src if n_src >= n_dst else v.dst
    ranges = plan_ranges(planner, partition_docs, max(n_src, n_dst), mode=partitioning)
    futures = [pool.submit(v.verify, rng) for rng in ranges]
    for fut in as_completed(futures):
        out = fut.result()
        st.add(out)
        done += max(out.src_count, out.dst_count)
        if progress is not None:
            progress(done, max(total, done))
    if st.entries:
        log.info("%s: %d differing documents after drill-down", st.ns, len(st.entries) + sum(st.overflow.values()))
    return done


def _recheck(
    states: list[_NsState],
    source: MongoClient[Any],
    dest: MongoClient[Any],
    nsfilter: NamespaceFilter,
    pending: PendingRestores,
    recheck: Callable[[], None],
    generations: int,
) -> int:
    """Let the sync catch up, then re-read what differed; returns the generations used."""
    used = 0
    while used < generations and any(st.needs_recheck() for st in states):
        used += 1
        log.info("recheck generation %d: waiting for the sync to apply the events in flight", used)
        recheck()
        if any(st.index_diffs or st.option_diffs for st in states):
            fresh = {st.ns: st for st in _catalog(source, dest, nsfilter, pending)[0]}
            for st in states:
                if st.ns in fresh:
                    f = fresh[st.ns]
                    st.index_diffs, st.option_diffs, st.catalog_notes = f.index_diffs, f.option_diffs, f.catalog_notes
        for st in states:
            if st.verifier is None or not st.entries or st.overflow:
                continue
            st.entries, dsc, dss, ddc, dds = st.verifier.recheck(st.entries)
            st.src_count += dsc
            st.dst_count += ddc
            st.src_sum = (st.src_sum + dss) % HASH_MOD
            st.dst_sum = (st.dst_sum + dds) % HASH_MOD
    return used


def run_verification(
    config: MigrationConfig,
    *,
    report_dir: str | Path | None = None,
    ignore_field_order: bool = False,
    pending_index_restores: list[dict[str, Any]] | None = None,
    recheck: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """Verify the migration a (resolved) config describes; write the GX report when asked.

    The entry point for the CLI, the verify flow and the cutover flow.
    """
    source = connect_side(config, "source")
    try:
        dest = connect_side(config, "destination")
        try:
            result = verify(
                source,
                dest,
                NamespaceFilter.from_rules(config.namespaces),
                partition_docs=config.tuning.partition_docs,
                partitioning=config.tuning.partitioning,
                ignore_field_order=ignore_field_order,
                pending_index_restores=pending_index_restores,
                recheck=recheck,
                workers=config.tuning.workers,
                progress=progress,
            )
        finally:
            dest.close()
    finally:
        source.close()
    if report_dir is not None:
        from checks.gx_report import write_report

        write_report(result, Path(report_dir))
    return result
