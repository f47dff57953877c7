"""Run every precheck: connect, gather facts, apply the rules, store the report.

Why one entry point: `livemigrate validate`, the `prechecks` flow and the
first stage of `migrate` must produce the same report.  A rule that cannot
run is skipped with its reason; an unexpected error inside a rule fails that
check only, never the whole report.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pymongo import MongoClient

from checks.prechecks.atlas import atlas_configured, fetch_atlas_cluster, rule_bi_connector
from checks.prechecks.compat import rule_connect, rule_fcv, rule_roles, rule_scram, rule_topology, rule_version
from checks.prechecks.data import (
    rule_capacity,
    rule_dbstats,
    rule_destination_data,
    rule_disk,
    rule_lock,
    rule_oplog_window,
    rule_unsupported,
)
from checks.prechecks.facts import (
    CannotCheck,
    Facts,
    SideFacts,
    access_control_on,
    attempt,
    gather_auth,
    gather_destination,
    gather_privileges,
    gather_scope,
    gather_side,
    probe_identity,
)
from checks.prechecks.reverse import rule_reverse_destination, rule_reverse_source
from checks.results import CheckResult, PrecheckReport, Status
from tasks.config import MigrationConfig
from tasks.errors import EXIT_FAILED, LiveMigrateError, TerminalError, classify
from tasks.metadata import MetadataStore
from tasks.mongo import connect_side, describe_endpoint
from tasks.namespaces import NamespaceFilter
from tasks.state import utcnow

log = logging.getLogger(__name__)
_TIMEOUTS = re.compile(r"\s*\(configured timeouts:[^)]*\)")

Rule = Callable[[Facts], CheckResult]

# The report's order; ids are stable (docs/prechecks.md).
RULES: tuple[tuple[str, Rule], ...] = (
    ("connect", rule_connect),
    ("topology", rule_topology),
    ("version", rule_version),
    ("fcv", rule_fcv),
    ("roles", rule_roles),
    ("scram", rule_scram),
    ("dbstats", rule_dbstats),
    ("disk", rule_disk),
    ("bi-connector", rule_bi_connector),
    ("capacity", rule_capacity),
    ("destination-data", rule_destination_data),
    ("lock", rule_lock),
    ("oplog-window", rule_oplog_window),
    ("unsupported", rule_unsupported),
)
CHECK_IDS: tuple[str, ...] = tuple(cid for cid, _ in RULES)
# Only for a reversible migration (config `reversible: true`), after the others; absent otherwise.
REVERSE_RULES: tuple[tuple[str, Rule], ...] = (
    ("reverse-source", rule_reverse_source),
    ("reverse-destination", rule_reverse_destination),
)
REVERSE_CHECK_IDS: tuple[str, ...] = tuple(cid for cid, _ in REVERSE_RULES)


class PrechecksFailedError(TerminalError):
    """A precheck failed: the migration must not start (flows raise this to fail the run)."""

    exit_code = EXIT_FAILED
    remedy = "fix what the failed checks name, then validate again"


def apply_rules(facts: Facts) -> list[CheckResult]:
    """Every rule over the same facts; CannotCheck -> skip, anything else unexpected -> fail."""
    out: list[CheckResult] = []
    for cid, rule in RULES + (REVERSE_RULES if facts.reversible else ()):
        try:
            result = rule(facts)
        except CannotCheck as why:
            blocked = "not connected" in str(why)
            remedy = "fix the connect check first" if blocked else "fix what stops the check, then validate again"
            result = CheckResult(cid, Status.SKIP, f"not checked: {why}", {"reason": str(why)}, remedy)
        except Exception as exc:
            log.exception("precheck %s crashed", cid)
            result = CheckResult(
                cid, Status.FAIL, f"check could not run: {type(exc).__name__}: {exc}", {}, "report this as a bug"
            )
        out.append(result)
    return out


def _open(config: MigrationConfig, side: str, facts: SideFacts) -> MongoClient[Any] | None:
    ep = config.source if side == "source" else config.destination
    facts.tls_ca_file = str(ep.tls_ca_file) if ep.tls_ca_file else None
    try:
        client = connect_side(config, side)
    except LiveMigrateError as exc:
        facts.connect_error = _TIMEOUTS.sub("", str(exc))
        return None
    facts.connected = True
    return client


def gather(config: MigrationConfig, src: MongoClient[Any] | None, dst: MongoClient[Any] | None, facts: Facts) -> None:
    """All reads, each failure recorded as a problem (never raised)."""
    nsfilter = NamespaceFilter.from_rules(config.namespaces)
    timeout = config.tuning.connect_timeout_seconds
    p = facts.problems
    if src is not None:
        attempt(p, "source facts", lambda: gather_side(src, facts.source))
        ca = str(config.source.tls_ca_file) if config.source.tls_ca_file else None
        # Asked once: the roles check and, for a reversible migration, the reverse-source check read it.
        enforced = access_control_on(
            config.source_uri(), "source", ca, timeout, facts.source.problems, "access_control"
        )
        if config.reversible:
            gather_privileges(src, facts.source)
            facts.source.access_control = enforced
        auth = attempt(p, "auth", lambda: gather_auth(src, config.source_uri(), ca, timeout, enforced))
        facts.auth = auth or facts.auth
        attempt(p, "scope", lambda: gather_scope(src, nsfilter, facts.scope, p))
    if dst is not None:
        attempt(p, "destination facts", lambda: gather_side(dst, facts.destination))
        if config.reversible:
            gather_privileges(dst, facts.destination)
            dca = str(config.destination.tls_ca_file) if config.destination.tls_ca_file else None
            facts.destination.access_control = access_control_on(
                config.destination_uri(), "destination", dca, timeout, facts.destination.problems, "access_control"
            )
        attempt(p, "destination state", lambda: gather_destination(dst, nsfilter, facts.dest, p))
    if src is not None and dst is not None:
        facts.identity = attempt(p, "identity", lambda: probe_identity(src, dst, facts.source, facts.destination)) or {}
    atlas = config.destination.atlas
    if atlas is not None and atlas_configured(atlas):
        facts.dest.atlas = fetch_atlas_cluster(atlas, timeout)


def store_report(client: MongoClient[Any], report: PrecheckReport) -> bool:
    """Save the report in the metadata store; set last_validation only when the migration record exists."""
    store = MetadataStore(client)
    try:
        store.ensure_indexes()
        store.save_report(report.migration, "validation", report.to_dict())
    except Exception as exc:  # noqa: BLE001 - the report is still printed; storing is best effort
        log.warning("precheck report not stored: %s", classify(exc))
        return False
    try:
        if store.get(report.migration) is not None:
            store.update(report.migration, last_validation=report.summary())
    except Exception as exc:  # noqa: BLE001 - e.g. a record of an unknown schema version
        log.warning("last_validation not recorded on migration %s: %s", report.migration, classify(exc))
    return True


def run_prechecks(config: MigrationConfig, *, store: bool = False) -> PrecheckReport:
    """Connect to both sides (bounded by tuning.connect_timeout_seconds), check everything, close the clients.

    ``config`` must have resolved URIs (flows/ and the CLI resolve them).  With
    ``store`` the report is saved in the destination's metadata store when the
    destination answered.
    """
    started = utcnow()
    src_desc = describe_endpoint(config.source_uri(), "source")
    dst_desc = describe_endpoint(config.destination_uri(), "destination")
    facts = Facts(
        name=config.name,
        source=SideFacts("source", src_desc),
        destination=SideFacts("destination", dst_desc),
        clear_destination=config.clear_destination,
        sharding_entries=[
            {"database": e.database, "collection": e.collection, "key": dict(e.shardCollection.key)}
            for e in config.sharding.shardingEntries
        ],
        copy_rate_mb_s=config.tuning.copy_rate_mb_s,
        lock_timeout_s=config.tuning.lock_timeout_seconds,
        reversible=config.reversible,
    )
    # Both connections in parallel: an unreachable side costs one timeout, not two.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="precheck-connect") as pool:
        fut_src = pool.submit(_open, config, "source", facts.source)
        fut_dst = pool.submit(_open, config, "destination", facts.destination)
        src, dst = fut_src.result(), fut_dst.result()
    try:
        gather(config, src, dst, facts)
        checks = apply_rules(facts)
        report = PrecheckReport(config.name, checks, started, utcnow(), source=src_desc, destination=dst_desc)
        if store and dst is not None:
            report.stored = store_report(dst, report)
    finally:
        for c in (src, dst):
            if c is not None:
                c.close()
    log.info("prechecks for %s: %s (%s)", config.name, report.status.value, report.counts())
    return report
