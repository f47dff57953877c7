"""Compatibility rules: can these two deployments be connected, and is the pair supported?

Why pure functions: a rule's verdict must be testable for server replies no
test server can give (6.0.12, FCV mismatch, an SCCC config server), and a rule
that lacks a fact says so (CannotCheck -> skip) instead of guessing.  Every
rule returns the evidence it judged and a one-line remedy.
"""

from __future__ import annotations

from typing import Any

from checks.prechecks.facts import CannotCheck, Facts
from checks.results import CheckResult, Status

# Oldest patch release supported in each series; any 8.x is supported.
MIN_PATCH: dict[tuple[int, int], int] = {(6, 0): 13, (7, 0): 8}
MIN_FCV = (6, 0)

# A required role is also satisfied by the built-in roles that contain it.
ROLE_EQUIVALENTS: dict[str, frozenset[str]] = {
    "backup": frozenset({"backup", "root", "__system"}),
    "readAnyDatabase": frozenset({"readAnyDatabase", "readWriteAnyDatabase", "root", "__system"}),
    "clusterMonitor": frozenset({"clusterMonitor", "clusterAdmin", "root", "__system"}),
}
SCRAM_MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")


def _fmt(v: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v)


# -- connect ---------------------------------------------------------------
def rule_connect(f: Facts) -> CheckResult:
    """Both endpoints answered with the credentials given, and they are not the same deployment."""
    ev: dict[str, Any] = {}
    problems = []
    for s in (f.source, f.destination):
        ev[s.side] = {"endpoint": s.endpoint, "connected": s.connected, "tls_ca_file": s.tls_ca_file}
        if not s.connected:
            ev[s.side]["error"] = s.connect_error
            problems.append(s.connect_error or f"{s.endpoint}: not connected")
    if problems:
        return CheckResult(
            "connect",
            Status.FAIL,
            "; ".join(problems),
            ev,
            "check host, port, firewall, user/password and tls_ca_file in the config; then run validate again",
        )
    ev["identity"] = f.identity
    if f.identity.get("same"):
        return CheckResult(
            "connect",
            Status.FAIL,
            f"source and destination are the same deployment ({f.identity.get('method')})",
            ev,
            "point destination.uri at a different deployment: migrating a deployment onto itself destroys its data",
        )
    tls = [s.side for s in (f.source, f.destination) if s.tls_ca_file]
    note = f", TLS verified for {' and '.join(tls)}" if tls else ""
    return CheckResult("connect", Status.PASS, f"both endpoints reachable and distinct{note}", ev)


# -- topology --------------------------------------------------------------
def _sharding_entry_problems(f: Facts) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    known = set(f.scope.namespaces) if f.scope.namespaces is not None else None
    for e in f.sharding_entries:
        ns = f"{e.get('database')}.{e.get('collection')}"
        key = e.get("key") or {}
        if ns in seen:
            out.append(f"{ns}: listed more than once in shardingEntries")
        seen.add(ns)
        if not key or any(v not in (1, "hashed") or isinstance(v, bool) for v in key.values()):
            out.append(f"{ns}: shard key {key} must map fields to 1 or 'hashed'")
        elif sum(1 for v in key.values() if v == "hashed") > 1:
            out.append(f"{ns}: shard key has more than one hashed field")
        if known is not None and ns not in known:
            out.append(f"{ns}: not an in-scope collection on the source")
        elif known is not None and f.scope.kinds.get(ns) == "view":
            out.append(f"{ns}: is a view; views cannot be sharded")
    return out


def rule_topology(f: Facts) -> CheckResult:
    """Supported pairs: replica set or sharded cluster on both sides; sharding entries only for sharded destinations."""
    src_t = f.source.need("topology")
    dst_t = f.destination.need("topology")
    ev: dict[str, Any] = {
        "source": src_t,
        "destination": dst_t,
        "source_shards": f.source.shard_count,
        "destination_shards": f.destination.shard_count,
        "source_config_server": f.source.config_server,
        "sharding_entries": len(f.sharding_entries),
    }
    fails: list[str] = []
    warns: list[str] = []
    remedies: list[str] = []
    if src_t == "standalone":
        fails.append("source is a standalone server")
        remedies.append("convert the standalone to a replica set first (a change stream needs an oplog)")
    if dst_t == "standalone":
        fails.append("destination is a standalone server")
        remedies.append("deploy the destination as a replica set or sharded cluster")
    if src_t == "sharded":
        cfg = f.source.config_server
        if cfg is None:
            warns.append(f"source config servers unknown ({f.source.problems.get('config_server', 'not reported')})")
            remedies.append("grant clusterMonitor so getShardMap can show the config servers")
        elif "/" not in cfg:
            fails.append(f"source config servers {cfg} are not a replica set (SCCC)")
            remedies.append("upgrade the source's config servers to a replica set (CSRS) first")
    if f.sharding_entries:
        if dst_t != "sharded":
            fails.append(f"sharding.shardingEntries given but the destination is a {dst_t}")
            remedies.append("remove sharding.shardingEntries, or migrate to a sharded cluster")
        else:
            bad = _sharding_entry_problems(f)
            fails += bad
            if bad:
                remedies.append("fix sharding.shardingEntries")
    status = Status.FAIL if fails else Status.WARN if warns else Status.PASS
    summary = "; ".join(fails + warns) or f"{src_t} -> {dst_t} is supported"
    ev["problems"] = fails + warns
    return CheckResult("topology", status, summary, ev, "; ".join(remedies))


# -- version / fcv ---------------------------------------------------------
def version_problem(v: tuple[int, int, int]) -> str | None:
    """Why this server version is not supported, or None."""
    major, minor, _patch = v
    if major >= 8:
        return None
    least = MIN_PATCH.get((major, minor))
    if least is None:
        return f"{_fmt(v)} is not a supported release series (6.0, 7.0 or 8.x)"
    if v[2] < least:
        return f"{_fmt(v)} is older than {major}.{minor}.{least}"
    return None


def rule_version(f: Facts) -> CheckResult:
    """Both servers are recent enough in their series, and in the same major.minor series."""
    sv: tuple[int, int, int] = f.source.need("version")
    dv: tuple[int, int, int] = f.destination.need("version")
    ev = {
        "source": _fmt(sv),
        "destination": _fmt(dv),
        "minimums": {f"{a}.{b}": f"{a}.{b}.{p}" for (a, b), p in MIN_PATCH.items()},
    }
    problems = [f"{side} {msg}" for side, v in (("source", sv), ("destination", dv)) if (msg := version_problem(v))]
    if sv[:2] != dv[:2]:
        problems.append(f"source {sv[0]}.{sv[1]} and destination {dv[0]}.{dv[1]} are different release series")
    if problems:
        return CheckResult(
            "version",
            Status.FAIL,
            "; ".join(problems),
            ev,
            "upgrade to at least 6.0.13 (6.0), 7.0.8 (7.0) or any 8.x, the same major.minor on both sides",
        )
    return CheckResult("version", Status.PASS, f"source {_fmt(sv)}, destination {_fmt(dv)}", ev)


def _parse_fcv(v: str) -> tuple[int, int]:
    try:
        major, minor = v.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        raise CannotCheck(f"featureCompatibilityVersion {v!r} is not major.minor") from None


def rule_fcv(f: Facts) -> CheckResult:
    """featureCompatibilityVersion at least 6.0 on both sides, and the same."""
    s, d = str(f.source.need("fcv")), str(f.destination.need("fcv"))
    ev = {"source": s, "destination": d, "minimum": _fmt(MIN_FCV)}
    problems = [
        f"{side} FCV {v} is below {_fmt(MIN_FCV)}"
        for side, v in (("source", s), ("destination", d))
        if _parse_fcv(v) < MIN_FCV
    ]
    if _parse_fcv(s) != _parse_fcv(d):
        problems.append(f"source FCV {s} differs from destination FCV {d}")
    if problems:
        return CheckResult(
            "fcv",
            Status.FAIL,
            "; ".join(problems),
            ev,
            "run setFeatureCompatibilityVersion so both sides are equal and at least 6.0",
        )
    return CheckResult("fcv", Status.PASS, f"featureCompatibilityVersion {s} on both sides", ev)


# -- roles / scram ---------------------------------------------------------
def required_roles(source_topology: str | None) -> list[str]:
    return ["backup", "readAnyDatabase"] + (["clusterMonitor"] if source_topology == "sharded" else [])


def rule_roles(f: Facts) -> CheckResult:
    """The source user can read everything the migration reads (or the source has no authentication)."""
    f.source.need("topology")
    a = f.auth
    need = required_roles(f.source.topology)
    ev: dict[str, Any] = {
        "users": a.users,
        "roles": a.roles,
        "required": [f"{r}@admin" for r in need],
        "auth_enforced": a.auth_enforced,
    }
    if not a.users:
        if a.auth_enforced:
            return CheckResult(
                "roles",
                Status.FAIL,
                "no user authenticated, and the source requires authentication",
                ev,
                "put the migration user's name and password in source.uri",
            )
        return CheckResult(
            "roles",
            Status.WARN,
            "the source does not enforce authentication"
            + ("" if a.auth_enforced is False else " (as far as could be seen)")
            + ": users and roles are not migrated",
            ev,
            "make sure the destination enforces authentication and create its users and roles yourself",
        )
    held = {r.partition("@")[0] for r in a.roles if r.endswith("@admin")}
    missing = [r for r in need if not (ROLE_EQUIVALENTS[r] & held)]
    ev["missing"] = [f"{r}@admin" for r in missing]
    who = ", ".join(a.users)
    if missing:
        return CheckResult(
            "roles",
            Status.FAIL,
            f"source user {who} lacks {', '.join(r + '@admin' for r in missing)}",
            ev,
            f"grant the source user the roles {', '.join(need)} on the admin database",
        )
    return CheckResult("roles", Status.PASS, f"source user {who} holds {', '.join(need)} on admin", ev)


def rule_scram(f: Facts) -> CheckResult:
    """The source user has both SCRAM-SHA-1 and SCRAM-SHA-256 credentials."""
    f.source.need("topology")
    a = f.auth
    if not a.users:
        return CheckResult(
            "scram", Status.SKIP, "not applicable: no authenticated source user (see roles)", {"user": None}
        )
    if a.mechanisms is None:
        raise CannotCheck("the user's mechanisms could not be read (usersInfo refused and no password to probe)")
    ev = {
        "user": a.users[0],
        "mechanisms": a.mechanisms,
        "source": a.mechanisms_source,
        "required": list(SCRAM_MECHANISMS),
    }
    missing = [m for m in SCRAM_MECHANISMS if m not in a.mechanisms]
    if missing:
        return CheckResult(
            "scram",
            Status.FAIL,
            f"source user {a.users[0]} is not enabled for {', '.join(missing)}",
            ev,
            "update the user with both mechanisms: "
            "db.updateUser(user, {pwd: ..., mechanisms: ['SCRAM-SHA-1', 'SCRAM-SHA-256']})",
        )
    return CheckResult("scram", Status.PASS, f"source user {a.users[0]} has SCRAM-SHA-1 and SCRAM-SHA-256", ev)
