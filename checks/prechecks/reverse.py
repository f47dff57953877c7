"""Reverse-sync rules (``reversible: true``): may the migration user sync the destination back onto the source?

Why: after the cutover the reverse sync (tasks/reverse.py) reads the DESTINATION's cluster-wide change
stream and writes to the SOURCE through the source's user write block; a rollback reopens the source and
closes the destination (setUserWriteBlockMode).  A privilege missing there shows only after the cutover,
the worst hour to find it, so it is proven before anything starts.  Same contract as compat.py: facts in,
one CheckResult out; these rules run only for a reversible migration (runner.REVERSE_RULES).

What is required, and from where:

- MongoDB manual (6.0-8.0), "Privilege Actions": ``changeStream`` with ``find`` on all non-system
  collections of all databases opens a deployment-wide change stream (``Mongo.watch()``, "Access
  Control"); ``bypassWriteBlockingMode`` and ``setUserWriteBlockMode`` (new in 6.0) apply to the cluster
  resource ("setUserWriteBlockMode": "Users and applications with the bypassWriteBlockingMode privilege
  can bypass the block").
- mongosync "User Permissions" (www.mongodb.com/docs/mongosync/current/reference/permissions, minimum
  privileges since mongosync 1.11): a reversing sync needs the default source AND the default destination
  privileges on each cluster; the destination's include bypassDocumentValidation, collMod,
  createCollection, createIndex, dropCollection, dropIndex, insert, remove, update, bypassWriteBlockingMode
  and setUserWriteBlockMode, and listCollections/listIndexes beside changeStream/find on the source.
- what this engine runs on the source during the reverse sync (tasks/apply.py, tasks/ddl.py, tasks/emptyts.py):
  writes as replace-with-upsert, deletes and inserts, all with ``bypassDocumentValidation``; create, drop,
  createIndexes, dropIndexes and collMod as the destination's DDL events say.  No renameCollection (a
  renamed collection is dropped and copied afresh) and no dropDatabase (its collections are dropped one by
  one), so neither action is asked for.  On the destination it reads the stream, and listIndexes and
  listCollections when it copies a collection or builds an index as the destination has them.
- at a rollback the reverse cutover blocks the destination and then writes its checkpoints and records to
  ``__livemigrate`` there: with setUserWriteBlockMode but without bypassWriteBlockingMode those writes are
  refused (UserWritesBlocked), so that pair is a failure, while lacking setUserWriteBlockMode is a warning
  (the rollback then waits for the destination's writes to stop instead of closing it).
- built-in roles (mongodb/mongo ``src/mongo/db/auth/builtin_roles.yml``; manual "Built-In Roles"):
  ``restore`` carries bypassWriteBlockingMode and setUserWriteBlockMode on the cluster (6.0+) plus
  bypassDocumentValidation, collMod, createCollection, createIndex, dropCollection and insert on every
  database; ``backup`` carries setUserWriteBlockMode only; ``readWriteAnyDatabase`` the reads and writes
  (insert, update, remove, createIndex, dropIndex, createCollection, dropCollection); ``root`` all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from checks.prechecks.facts import CannotCheck, Facts, SideFacts
from checks.results import CheckResult, Status, worst
from tasks.privileges import ANY_NORMAL, CLUSTER, Target, database, lacking, namespace

# On the source, on every migrated namespace: what the reverse sync's writes and DDL need.
SOURCE_NS_ACTIONS = (
    "insert",
    "update",
    "remove",
    "createCollection",
    "dropCollection",
    "createIndex",
    "dropIndex",
    "collMod",
    "bypassDocumentValidation",
)
# On the source's cluster resource: write through the block, and lift it at a rollback.
WRITE_BLOCK_ACTIONS = ("bypassWriteBlockingMode", "setUserWriteBlockMode")
# On the destination: the deployment-wide change stream.
STREAM_ACTIONS = ("changeStream", "find")

# Built-in roles (granted on admin) carrying each action on every database or on the cluster
# (builtin_roles.yml; any of them will do).  A remedy names the roles of REMEDY_ROLES[side], in order, that
# cover what is missing.
CARRIERS: dict[str, frozenset[str]] = {
    "insert": frozenset({"readWriteAnyDatabase", "restore"}),
    "update": frozenset({"readWriteAnyDatabase"}),
    "remove": frozenset({"readWriteAnyDatabase"}),
    "createCollection": frozenset({"readWriteAnyDatabase", "restore", "dbAdminAnyDatabase"}),
    "dropCollection": frozenset({"readWriteAnyDatabase", "restore", "dbAdminAnyDatabase"}),
    "createIndex": frozenset({"readWriteAnyDatabase", "restore", "dbAdminAnyDatabase"}),
    "dropIndex": frozenset({"readWriteAnyDatabase", "dbAdminAnyDatabase"}),
    "collMod": frozenset({"restore", "dbAdminAnyDatabase"}),
    "bypassDocumentValidation": frozenset({"restore", "dbAdminAnyDatabase"}),
    "bypassWriteBlockingMode": frozenset({"restore"}),
    "setUserWriteBlockMode": frozenset({"restore", "backup"}),
    "changeStream": frozenset({"readAnyDatabase", "readWriteAnyDatabase"}),
    "find": frozenset({"readAnyDatabase", "readWriteAnyDatabase"}),
    "listCollections": frozenset({"readAnyDatabase", "readWriteAnyDatabase", "restore"}),
    "listIndexes": frozenset({"readAnyDatabase", "readWriteAnyDatabase"}),
}
REMEDY_ROLES = {"source": ("readWriteAnyDatabase", "restore"), "destination": ("readAnyDatabase", "restore")}
SHOWN = 3  # namespaces named in a summary line; the evidence lists up to EVIDENCE_SHOWN
EVIDENCE_SHOWN = 20

Missing = list[tuple[str, Target]]


def _namespaces(f: Facts) -> list[str]:
    if f.scope.namespaces is None:
        raise CannotCheck(f"the migrated namespaces could not be listed: {f.problems.get('namespaces', 'unknown')}")
    return list(f.scope.namespaces)


def _who(s: SideFacts) -> str:
    return f"{s.side} user {', '.join(s.users or [])}"


def _where(targets: Sequence[Target], ns_total: int) -> str:
    if targets[0].kind in ("cluster", "any_normal"):
        return str(targets[0])
    if targets[0].kind == "namespace" and len(targets) == ns_total and ns_total > SHOWN:
        return f"all {ns_total} migrated namespaces"
    names = ", ".join(str(t) for t in targets[:SHOWN])
    return names + (f" (+{len(targets) - SHOWN} more)" if len(targets) > SHOWN else "")


def describe_missing(missing: Missing, ns_total: int) -> str:
    """'insert, update on app.orders; bypassWriteBlockingMode on the cluster resource': actions grouped by where."""
    by_action: dict[str, list[Target]] = {}
    for action, target in missing:
        by_action.setdefault(action, []).append(target)
    groups: dict[str, list[str]] = {}
    for action, targets in by_action.items():
        groups.setdefault(_where(targets, ns_total), []).append(action)
    return "; ".join(f"{', '.join(actions)} on {where}" for where, actions in groups.items())


def _missing_evidence(missing: Missing) -> list[dict[str, Any]]:
    by_action: dict[str, list[str]] = {}
    for action, target in missing:
        by_action.setdefault(action, []).append(str(target))
    return [{"action": a, "on": on[:EVIDENCE_SHOWN], "count": len(on)} for a, on in by_action.items()]


_RESOURCE_TEXT = {
    "cluster": "{cluster: true}",
    "any_normal": '{db: "", collection: ""}',
    "database": "each migrated database",
    "namespace": "each migrated database",
}


def remedy_for(missing: Missing, side: str) -> str:
    """The built-in roles to grant on admin for what is ``missing`` (they carry it on every database), or a
    custom role with exactly those actions on the resources they are needed on."""
    need = list(dict.fromkeys(a for a, _ in missing))
    roles: list[str] = []
    uncovered = set(need)
    for role in REMEDY_ROLES[side]:  # fewest privileges first
        if any(role in CARRIERS[a] for a in uncovered):
            roles.append(role)
            uncovered -= {a for a in uncovered if role in CARRIERS[a]}
    on: dict[str, list[str]] = {}
    for action, target in missing:
        actions = on.setdefault(_RESOURCE_TEXT[target.kind], [])
        if action not in actions:
            actions.append(action)
    custom = " and ".join(f"{', '.join(actions)} on {where}" for where, actions in on.items())
    return (
        f"grant the {side} user {' and '.join(roles)} on the admin database (root carries them all), "
        f"or a custom role with {custom}"
    )


def _auth_off_or_unknown(s: SideFacts, cid: str, off_status: Status, off_summary: str, off_remedy: str) -> CheckResult:
    """Access control is off on the side (whoever authenticated), or its connection has no user: a URI
    without credentials, or not known."""
    ev: dict[str, Any] = {"users": s.users or [], "access_control": s.access_control}
    if s.access_control is False:
        return CheckResult(cid, off_status, off_summary, ev, off_remedy if off_status != Status.PASS else "")
    if s.access_control is True:
        return CheckResult(
            cid,
            Status.FAIL,
            f"no user authenticated on the {s.side}, and it requires authentication",
            ev,
            f"put the migration user's name and password in {s.side}.uri",
        )
    raise CannotCheck(
        f"no user authenticated on the {s.side}, and whether it requires authentication is unknown: "
        f"{s.problems.get('access_control', 'unknown')}"
    )


# -- source: the reverse sync's writes ----------------------------------------------
def rule_reverse_source(f: Facts) -> CheckResult:
    """The source user may write every migrated namespace, through the source's write block, and lift it."""
    s = f.source
    privileges: list[dict[str, Any]] = s.need("privileges")
    if not s.users or s.access_control is False:
        return _auth_off_or_unknown(
            s,
            "reverse-source",
            Status.WARN,
            "access control is off on the source: the reverse sync may write there, but its write block holds "
            "no client off (every client bypasses it), so the application could write to the source during "
            "the reverse sync",
            "enable access control on the source (the migration user then needs readWriteAnyDatabase and "
            "restore), or make sure nothing but livemigrate writes to the source after the cutover",
        )
    names = _namespaces(f)
    required = [(a, namespace(ns)) for ns in names for a in SOURCE_NS_ACTIONS]
    required += [(a, CLUSTER) for a in WRITE_BLOCK_ACTIONS]
    missing = lacking(privileges, required)
    ev: dict[str, Any] = {
        "users": s.users,
        "access_control": True,
        "namespaces": len(names),
        "required": {"each migrated namespace": list(SOURCE_NS_ACTIONS), "cluster": list(WRITE_BLOCK_ACTIONS)},
        "missing": _missing_evidence(missing),
    }
    if missing:
        return CheckResult(
            "reverse-source",
            Status.FAIL,
            f"{_who(s)} lacks {describe_missing(missing, len(names))}: the reverse sync could not write to the "
            "source after the cutover",
            ev,
            remedy_for(missing, "source"),
        )
    return CheckResult(
        "reverse-source",
        Status.PASS,
        f"{_who(s)} may write the {len(names)} migrated namespace(s) through the write block "
        "(bypassWriteBlockingMode) and reopen the source at a rollback (setUserWriteBlockMode)",
        ev,
    )


# -- destination: the reverse sync's reads, and closing it at a rollback --------------
def rule_reverse_destination(f: Facts) -> CheckResult:
    """The destination user may read its cluster-wide change stream; a rollback may close the destination."""
    d = f.destination
    privileges: list[dict[str, Any]] = d.need("privileges")
    if not d.users or d.access_control is False:
        return _auth_off_or_unknown(
            d,
            "reverse-destination",
            Status.PASS,
            "access control is off on the destination: every client may read its change stream and block its "
            "writes (a block there holds no client off, so stop the application before a rollback)",
            "",
        )
    names = _namespaces(f)
    required = [(a, ANY_NORMAL) for a in STREAM_ACTIONS]
    required += [("listCollections", database(db)) for db in sorted({ns.partition(".")[0] for ns in names})]
    required += [("listIndexes", namespace(ns)) for ns in names]
    missing = lacking(privileges, required)
    block_missing = lacking(privileges, [(a, CLUSTER) for a in WRITE_BLOCK_ACTIONS])
    may_block = ("setUserWriteBlockMode", CLUSTER) not in block_missing
    ev: dict[str, Any] = {
        "users": d.users,
        "access_control": True,
        "namespaces": len(names),
        "required": {
            "every database": list(STREAM_ACTIONS),
            "each migrated database": ["listCollections"],
            "each migrated namespace": ["listIndexes"],
            "cluster (rollback)": list(WRITE_BLOCK_ACTIONS),
        },
        "missing": _missing_evidence(missing + block_missing),
        "rollback_closes_destination": may_block and not block_missing,
    }
    problems: list[tuple[Status, str]] = []
    if missing:
        problems.append(
            (
                Status.FAIL,
                f"lacks {describe_missing(missing, len(names))}: the reverse sync could not read the "
                "destination's change stream",
            )
        )
    if may_block and block_missing:
        problems.append(
            (
                Status.FAIL,
                "holds setUserWriteBlockMode but lacks bypassWriteBlockingMode on the cluster resource: a rollback "
                "would close the destination and then be refused its own writes there (the reverse sync's "
                "records live in __livemigrate on the destination)",
            )
        )
    elif not may_block:
        problems.append(
            (
                Status.WARN,
                "lacks setUserWriteBlockMode on the cluster resource: a rollback cannot close the destination "
                "and waits for its writes to stop instead (stop the application first)",
            )
        )
    if problems:
        return CheckResult(
            "reverse-destination",
            worst(st for st, _ in problems),
            f"{_who(d)} " + "; and ".join(text for _, text in problems),
            ev,
            remedy_for(missing + block_missing, "destination"),
        )
    return CheckResult(
        "reverse-destination",
        Status.PASS,
        f"{_who(d)} may read the cluster-wide change stream and close the destination at a rollback "
        "(setUserWriteBlockMode, bypassWriteBlockingMode)",
        ev,
    )
