"""Data and destination rules: sizes, disk, capacity, what already exists, locks, oplog, unsupported.

Why separate from compat.py: these judge the data to be moved and the
destination's state, which change between runs; the compatibility rules judge
the servers, which do not.  Same contract: facts in, one CheckResult out.
"""

from __future__ import annotations

from typing import Any

from checks.prechecks.facts import CannotCheck, Facts
from checks.results import CheckResult, Status, worst

DISK_FAIL_RATIO = 1.0
DISK_WARN_RATIO = 1.5
DEFAULT_COPY_RATE_MB_S = 20.0
OPLOG_MARGIN = 1.5  # the window must hold the copy plus index builds and the catch-up


def human_bytes(n: float) -> str:
    """Bytes for people: '812 B', '3.4 MB', '1.2 TB' (also the status and report's sizes, flows/status.py)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"


# -- dbstats / disk / capacity ---------------------------------------------
def rule_dbstats(f: Facts) -> CheckResult:
    """dbStats answers on every in-scope source database (sizes feed disk and oplog estimates)."""
    f.source.need("topology")
    dbs = f.scope.databases
    if dbs is None:
        raise CannotCheck(f"source databases could not be listed: {f.problems.get('databases', 'unknown reason')}")
    ev: dict[str, Any] = {"databases": dbs, "errors": f.scope.db_stats_errors, "stats": f.scope.db_stats}
    if f.scope.db_stats_errors:
        names = ", ".join(sorted(f.scope.db_stats_errors))
        return CheckResult(
            "dbstats",
            Status.FAIL,
            f"dbStats failed on {names}: {next(iter(f.scope.db_stats_errors.values()))}",
            ev,
            "grant the source user readAnyDatabase on admin, or exclude those databases",
        )
    if not dbs:
        return CheckResult(
            "dbstats", Status.WARN, "no source database is in scope: nothing to migrate", ev, "check namespaces.include"
        )
    return CheckResult("dbstats", Status.PASS, f"dbStats ok on {len(dbs)} in-scope database(s)", ev)


def disk_status(free: int, need: int) -> Status:
    """fail below 1x the needed bytes, warn below 1.5x, else pass."""
    if need <= 0 or free >= need * DISK_WARN_RATIO:
        return Status.PASS
    return Status.FAIL if free < need * DISK_FAIL_RATIO else Status.WARN


def rule_disk(f: Facts) -> CheckResult:
    """Destination free disk against the source's in-scope storage plus index size."""
    f.destination.need("topology")
    if f.scope.databases is None:
        raise CannotCheck("source sizes unknown (see dbstats)")
    need = sum(s["storageSize"] + s["indexSize"] for s in f.scope.db_stats.values())
    ev: dict[str, Any] = {"source_bytes": need, "basis": "dbStats storageSize + indexSize of in-scope databases"}
    d = f.dest
    if d.fs_total is None or d.fs_used is None:
        ev["destination_reported"] = False
        return CheckResult(
            "disk",
            Status.WARN,
            f"the destination did not report fsTotalSize/fsUsedSize; the source needs about {human_bytes(need)}",
            ev,
            f"check by hand that the destination has at least {human_bytes(need * DISK_WARN_RATIO)} free",
        )
    free = d.fs_total - d.fs_used
    ev.update(
        destination_free_bytes=free, destination_total_bytes=d.fs_total, ratio=round(free / need, 2) if need else None
    )
    status = disk_status(free, need)
    summary = f"destination has {human_bytes(free)} free for {human_bytes(need)} of source data and indexes"
    remedy = (
        ""
        if status == Status.PASS
        else f"give the destination at least {human_bytes(need * DISK_WARN_RATIO)} free disk"
    )
    return CheckResult("disk", status, summary, ev, remedy)


def rule_capacity(f: Facts) -> CheckResult:
    """Destination RAM and CPU are not below the source's (hostInfo)."""
    sm, dm = f.source.need("mem_mb"), f.destination.need("mem_mb")
    sc, dc = f.source.need("cores"), f.destination.need("cores")
    ev: dict[str, Any] = {"source": {"mem_mb": sm, "cores": sc}, "destination": {"mem_mb": dm, "cores": dc}}
    if f.source.topology == "sharded" or f.destination.topology == "sharded":
        ev["note"] = "hostInfo through mongos describes the mongos host, not the shards"
    low = [w for w, bad in (("RAM", dm < sm), ("CPU cores", dc < sc)) if bad]
    if low:
        return CheckResult(
            "capacity",
            Status.WARN,
            f"destination has less {' and '.join(low)} ({dm} MB, {dc} cores) than the source ({sm} MB, {sc} cores)",
            ev,
            "size the destination at least like the source, or expect a slower copy and catch-up",
        )
    return CheckResult("capacity", Status.PASS, f"destination {dm} MB/{dc} cores >= source {sm} MB/{sc} cores", ev)


# -- destination state -----------------------------------------------------
def rule_destination_data(f: Facts) -> CheckResult:
    """In-scope namespaces already on the destination: refused unless clear_destination drops them."""
    f.destination.need("topology")
    existing = f.dest.existing
    if existing is None:
        raise CannotCheck(f"destination namespaces could not be listed: {f.problems.get('existing', 'unknown reason')}")
    on_source = set(f.scope.namespaces or [])
    ev: dict[str, Any] = {
        "existing": existing,
        "also_on_source": [n for n in existing if n in on_source],
        "clear_destination": f.clear_destination,
    }
    if not existing:
        return CheckResult("destination-data", Status.PASS, "no in-scope namespace exists on the destination", ev)
    shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
    if f.clear_destination:
        ev["will_drop"] = existing
        return CheckResult(
            "destination-data",
            Status.WARN,
            f"clear_destination is set: {len(existing)} namespace(s) will be dropped: {shown}",
            ev,
            "make sure nothing on the destination listed under will_drop must be kept",
        )
    return CheckResult(
        "destination-data",
        Status.FAIL,
        f"{len(existing)} in-scope namespace(s) already exist on the destination: {shown}",
        ev,
        "drop them, narrow namespaces.include/exclude, or set clear_destination: true to have them dropped",
    )


def rule_lock(f: Facts) -> CheckResult:
    """No other migration holds the destination."""
    f.destination.need("topology")
    if not f.dest.lock_read:
        raise CannotCheck(f"lock unreadable: {f.problems.get('lock', 'unknown reason')}")
    lock = f.dest.lock
    if lock is None:
        return CheckResult("lock", Status.PASS, "no migration holds the destination", {"holder": None})
    holder = lock.get("holder")
    ev = {"holder": holder, "heartbeat_at": lock.get("heartbeat_at"), "owner": lock.get("owner")}
    if holder == f.name:
        return CheckResult("lock", Status.PASS, f"the destination is held by this migration ({holder})", ev)
    return CheckResult(
        "lock",
        Status.FAIL,
        f"the destination is held by migration {holder!r} (last heartbeat {lock.get('heartbeat_at')})",
        ev,
        "wait for that migration to finish, cancel it, or wait for its lock to expire",
    )


def rule_oplog_window(f: Facts) -> CheckResult:
    """The source oplog covers the estimated copy time, so the change stream can resume after the copy."""
    f.source.need("topology")
    s = f.scope
    if s.oplog_first is None or s.oplog_last is None:
        why = f.problems.get("oplog", "local.oplog.rs is empty or missing")
        if f.source.topology == "sharded":
            why = "the oplog is per shard and cannot be read through mongos; check each shard"
        raise CannotCheck(why)
    if s.databases is None:
        raise CannotCheck("source data size unknown (see dbstats)")
    data = sum(st["dataSize"] for st in s.db_stats.values())
    rate = f.copy_rate_mb_s or DEFAULT_COPY_RATE_MB_S
    estimate = data / (rate * 1024 * 1024)
    window = s.oplog_last - s.oplog_first
    ev = {
        "window_seconds": window,
        "estimated_copy_seconds": round(estimate, 1),
        "data_bytes": data,
        "copy_rate_mb_s": rate,
        "rate_source": "tuning.copy_rate_mb_s" if f.copy_rate_mb_s else "default",
        "margin": OPLOG_MARGIN,
    }
    if window < estimate * OPLOG_MARGIN:
        return CheckResult(
            "oplog-window",
            Status.WARN,
            f"oplog window {window:,} s is short for an estimated copy of {estimate:,.0f} s (x{OPLOG_MARGIN})",
            ev,
            "enlarge the source oplog (replSetResizeOplog) or set a minimum retention period before migrating",
        )
    return CheckResult(
        "oplog-window", Status.PASS, f"oplog window {window:,} s covers the estimated copy of {estimate:,.0f} s", ev
    )


def rule_unsupported(f: Facts) -> CheckResult:
    """Namespaces the pipeline cannot migrate, each with its reason."""
    f.source.need("topology")
    if f.scope.namespaces is None:
        raise CannotCheck(f"source collections could not be listed: {f.problems.get('namespaces', 'unknown reason')}")
    items = [{"ns": u.ns, "reason": u.reason, "severity": u.severity} for u in f.scope.unsupported]
    ts = [ns for ns, kind in f.scope.kinds.items() if kind == "timeseries"]
    # A time-series collection's writes never reach a change stream (MongoDB manual, "Time Series
    # Collection Limitations": change streams are not supported), so a live copy of one would silently miss
    # every write made during the migration.
    items += [
        {
            "ns": ns,
            "reason": "time-series collections have no change stream: writes during the migration would be lost "
            "(exclude it, and copy it with mongodump/mongorestore while its writers are stopped)",
            "severity": "fail",
        }
        for ns in ts
    ]
    ev = {"unsupported": items, "timeseries": ts}
    if not items:
        return CheckResult("unsupported", Status.PASS, "every in-scope namespace can be migrated", ev)
    status = worst(Status.FAIL if i["severity"] == "fail" else Status.WARN for i in items)
    shown = "; ".join(f"{i['ns']}: {i['reason']}" for i in items[:3]) + (
        f" (and {len(items) - 3} more)" if len(items) > 3 else ""
    )
    return CheckResult(
        "unsupported",
        status,
        f"{len(items)} namespace(s) cannot be migrated: {shown}",
        ev,
        "exclude them in namespaces.exclude and move them another way"
        if status == Status.FAIL
        else "they are skipped; exclude them to silence this",
    )
