"""``connectionStatus {showPrivileges: true}`` replies as MongoDB 6.0-8.0 return them, for the reverse prechecks.

Shape (MongoDB manual 6.0/7.0/8.0, "connectionStatus", Output): ``authInfo.authenticatedUsers [{user, db}]``,
``authenticatedUserRoles [{role, db}]`` and ``authenticatedUserPrivileges [{resource, actions}]``: every
privilege of every role, inherited ones included, one entry per resource (the server merges actions by
resource: mongodb/mongo ``src/mongo/db/auth/privilege.cpp``, ``addPrivilegeToPrivilegeVector``; resources
serialized by ``toParsedPrivilege`` as ``{db, collection}``, ``{cluster: true}``, ``{anyResource: true}``,
``{system_buckets: ""}``).  The built-in roles' privileges are those of ``src/mongo/db/auth/builtin_roles.yml``
(7.0/8.0; for the actions judged here 6.0 grants the same: manual "Built-In Roles", restore and backup
"Starting in MongoDB 6.0").  Built here by merging role privileges as the server does, not captured from
a server: no MongoDB runs in this suite's default backend.
"""

from __future__ import annotations

from typing import Any

Privilege = dict[str, Any]

ANY_NORMAL: dict[str, Any] = {"db": "", "collection": ""}
CLUSTER: dict[str, Any] = {"cluster": True}
ANY_RESOURCE: dict[str, Any] = {"anyResource": True}
SYSTEM_JS: dict[str, Any] = {"db": "", "collection": "system.js"}
SYSTEM_BUCKETS: dict[str, Any] = {"system_buckets": ""}

READ = [
    "changeStream",
    "collStats",
    "dbHash",
    "dbStats",
    "find",
    "killCursors",
    "listCollections",
    "listIndexes",
    "listSearchIndexes",
    "planCacheRead",
]
READ_WRITE = [
    *READ,
    "cleanupStructuredEncryptionData",
    "compactStructuredEncryptionData",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "createSearchIndexes",
    "dropCollection",
    "dropIndex",
    "dropSearchIndex",
    "insert",
    "remove",
    "renameCollectionSameDB",
    "update",
    "updateSearchIndex",
]
RESTORE_WRITE = [
    "bypassDocumentValidation",
    "collMod",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "createSearchIndexes",
    "dropCollection",
    "insert",
    "updateSearchIndex",
]
USER_ADMIN = ["changeCustomData", "changePassword", "createRole", "createUser", "dropRole", "dropUser", "grantRole"]
DB_ADMIN = [
    "bypassDocumentValidation",
    "collMod",
    "collStats",
    "compact",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "dbStats",
    "dropCollection",
    "dropDatabase",
    "dropIndex",
    "enableProfiler",
    "listCollections",
    "listIndexes",
    "planCacheRead",
    "reIndex",
    "renameCollectionSameDB",
    "validate",
]

ROLE_PRIVILEGES: dict[str, list[Privilege]] = {
    "readAnyDatabase": [
        {"resource": ANY_NORMAL, "actions": READ},
        {"resource": CLUSTER, "actions": ["listDatabases"]},
        {"resource": SYSTEM_JS, "actions": READ},
        {"resource": SYSTEM_BUCKETS, "actions": READ},
    ],
    "readWriteAnyDatabase": [
        {"resource": ANY_NORMAL, "actions": READ_WRITE},
        {"resource": CLUSTER, "actions": ["listDatabases"]},
        {"resource": SYSTEM_JS, "actions": READ_WRITE},
        {"resource": SYSTEM_BUCKETS, "actions": READ_WRITE},
    ],
    "dbAdminAnyDatabase": [
        {"resource": CLUSTER, "actions": ["applyOps", "listDatabases"]},
        {"resource": ANY_NORMAL, "actions": DB_ADMIN},
        {"resource": SYSTEM_BUCKETS, "actions": DB_ADMIN},
    ],
    "backup": [
        {
            "resource": CLUSTER,
            "actions": [
                "appendOplogNote",
                "getParameter",
                "listDatabases",
                "serverStatus",
                "setUserWriteBlockMode",
                "useUUID",
            ],
        },
        {"resource": ANY_RESOURCE, "actions": ["collStats", "listCollections", "listIndexes", "listSearchIndexes"]},
        {"resource": ANY_NORMAL, "actions": ["find"]},
        {"resource": {"db": "config", "collection": ""}, "actions": ["find"]},
        {"resource": {"db": "local", "collection": ""}, "actions": ["find"]},
        {"resource": {"db": "config", "collection": "settings"}, "actions": ["find", "insert", "update"]},
        {"resource": SYSTEM_BUCKETS, "actions": ["find"]},
    ],
    "restore": [
        {
            "resource": CLUSTER,
            "actions": [
                "applyOps",
                "bypassWriteBlockingMode",
                "forceUUID",
                "getParameter",
                "setUserWriteBlockMode",
                "useUUID",
            ],
        },
        {"resource": {"db": "local", "collection": ""}, "actions": RESTORE_WRITE},
        {"resource": {"db": "config", "collection": ""}, "actions": RESTORE_WRITE},
        {"resource": SYSTEM_BUCKETS, "actions": RESTORE_WRITE},
        {"resource": ANY_RESOURCE, "actions": ["listCollections"]},
        {"resource": ANY_NORMAL, "actions": [*RESTORE_WRITE, *USER_ADMIN]},
        {"resource": SYSTEM_JS, "actions": RESTORE_WRITE},
    ],
    "clusterMonitor": [
        {
            "resource": CLUSTER,
            "actions": [
                "connPoolStats",
                "getCmdLineOpts",
                "getDefaultRWConcern",
                "getLog",
                "getParameter",
                "getShardMap",
                "hostInfo",
                "inprog",
                "listDatabases",
                "listShards",
                "replSetGetConfig",
                "replSetGetStatus",
                "serverStatus",
                "top",
            ],
        },
        {"resource": ANY_NORMAL, "actions": ["collStats", "dbStats", "getDatabaseVersion", "indexStats"]},
    ],
}


def merge(*privilege_lists: list[Privilege]) -> list[Privilege]:
    """Privileges of several roles as the server reports them: one entry per resource, actions united, sorted."""
    out: list[Privilege] = []
    for plist in privilege_lists:
        for p in plist:
            same = next((o for o in out if o["resource"] == p["resource"]), None)
            if same is None:
                out.append({"resource": dict(p["resource"]), "actions": sorted(set(p["actions"]))})
            else:
                same["actions"] = sorted(set(same["actions"]) | set(p["actions"]))
    return out


def roles(*names: str) -> list[Privilege]:
    """The expanded privileges of built-in roles granted on admin."""
    return merge(*(ROLE_PRIVILEGES[n] for n in names))


def reply(
    privileges: list[Privilege], role_names: tuple[str, ...] = (), user: str | None = "migrator"
) -> dict[str, Any]:
    """A connectionStatus {showPrivileges: true} reply; ``user=None``: no authenticated user (access control
    off, or a URI without credentials): empty arrays, as the server answers then."""
    users = [{"user": user, "db": "admin"}] if user else []
    return {
        "authInfo": {
            "authenticatedUsers": users,
            "authenticatedUserRoles": [{"role": r, "db": "admin"} for r in role_names] if user else [],
            "authenticatedUserPrivileges": privileges if user else [],
        },
        "ok": 1.0,
    }


# What mongosync's docs ask of both clusters for a reversing sync (self-managed: readWriteAnyDatabase, restore,
# backup, clusterMonitor, ...): everything the reverse prechecks need.
REVERSE_READY = roles("readWriteAnyDatabase", "restore", "backup", "clusterMonitor")
# The forward migration's source roles (the `roles` check): reads only.
FORWARD_SOURCE = roles("readAnyDatabase", "backup")
# root: all of the above and more (its other member roles add nothing the reverse checks look at).
ROOT = roles("readWriteAnyDatabase", "dbAdminAnyDatabase", "backup", "restore", "clusterMonitor")
# A custom role of anyAction on anyResource (what the manual suggests instead of __system).
ANY_ACTION = [{"resource": ANY_RESOURCE, "actions": ["anyAction"]}]
