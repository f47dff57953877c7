"""What a connection may do, read from ``connectionStatus {showPrivileges: true}`` as the server would judge it.

Why one module: "may this user run X on Y?" is asked of both clusters (the reverse sync's prechecks,
checks/prechecks/reverse.py), and a reading that guesses (a role name, a database privilege taken for a
deployment-wide one) passes a user the server then refuses after the cutover.

``authInfo.authenticatedUserPrivileges`` holds every privilege of the authenticated users, inherited ones
included, as ``[{resource, actions}]``, one entry per resource (MongoDB manual 6.0-8.0, "connectionStatus":
``showPrivileges`` returns "the full set of privileges"), so built-in roles such as ``root`` are judged by
the actions they carry, never by name.  Resource documents (manual, "Resource Document"; serialized by
mongodb/mongo ``src/mongo/db/auth/privilege.cpp``, ``toParsedPrivilege``): ``{db, collection}`` (``""``
for "every"), ``{cluster: true}``, ``{anyResource: true}``; the ``system_buckets`` shapes (time-series
buckets) never count as a database or collection here.  Which of them satisfy an action on a target
follows the server's search list (mongodb/mongo ``src/mongo/db/auth/resource_pattern_search_list.h``):

- the cluster: ``anyResource`` or ``cluster``;
- every normal collection (a deployment-wide change stream): ``anyResource`` or ``{db: "", collection: ""}``;
- a database: those two (not for ``local``/``config``), or ``{db, collection: ""}``;
- a collection ``db.coll``: those (``{db: "", collection: ""}`` and ``{db, collection: ""}`` only when
  ``coll`` is not ``system.*``), ``{db: "", collection: coll}`` or ``{db, collection: coll}``.

The action ``anyAction`` holds every action on its resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ANY_ACTION = "anyAction"
_NOT_NORMAL_DBS = frozenset({"local", "config"})  # never matched by {db: "", collection: ""}


@dataclass(frozen=True)
class Target:
    """What an action is asked on: the cluster, every normal collection, one database or one collection."""

    kind: Literal["cluster", "any_normal", "database", "namespace"]
    db: str = ""
    coll: str = ""

    def __str__(self) -> str:
        if self.kind == "cluster":
            return "the cluster resource"
        if self.kind == "any_normal":
            return "every database"
        return self.db if self.kind == "database" else f"{self.db}.{self.coll}"


CLUSTER = Target("cluster")
ANY_NORMAL = Target("any_normal")


def database(db: str) -> Target:
    return Target("database", db)


def namespace(ns: str) -> Target:
    db, _, coll = ns.partition(".")
    return Target("namespace", db, coll)


def _db_coll(resource: Mapping[str, Any]) -> tuple[str, str] | None:
    """The ``(db, collection)`` of a database/collection resource document; None for any other shape."""
    if set(resource) != {"db", "collection"}:
        return None
    db, coll = resource["db"], resource["collection"]
    return (db, coll) if isinstance(db, str) and isinstance(coll, str) else None


def covers(resource: Mapping[str, Any], target: Target) -> bool:
    """Whether a privilege on ``resource`` applies to ``target`` (see the module docstring)."""
    if resource.get("anyResource") is True:
        return True
    if target.kind == "cluster":
        return resource.get("cluster") is True
    pair = _db_coll(resource)
    if pair is None:
        return False
    db, coll = pair
    every_db = db == "" and target.db not in _NOT_NORMAL_DBS
    if target.kind == "any_normal":
        return db == "" and coll == ""
    if target.kind == "database":
        return coll == "" and (db == target.db or every_db)
    if coll:
        return coll == target.coll and db in ("", target.db)
    return not target.coll.startswith("system.") and (db == target.db or every_db)


def holds(privileges: Iterable[Mapping[str, Any]], action: str, target: Target) -> bool:
    """Whether any privilege grants ``action`` (or ``anyAction``) on a resource that covers ``target``."""
    for p in privileges:
        actions = p.get("actions") or []
        if (action in actions or ANY_ACTION in actions) and covers(p.get("resource") or {}, target):
            return True
    return False


def lacking(
    privileges: Iterable[Mapping[str, Any]], required: Iterable[tuple[str, Target]]
) -> list[tuple[str, Target]]:
    """The ``(action, target)`` pairs of ``required`` that no privilege grants, in the order given."""
    privs = list(privileges)
    return [(action, target) for action, target in required if not holds(privs, action, target)]
