"""What the prechecks read from the servers, gathered once, before any rule runs.

Why: rules are pure functions of these facts, so every rule can be tested
with facts no available server can produce (6.0.12, an SCCC config server,
a missing role).  Gathering never raises: a fact that cannot be read is
recorded in ``problems`` with the reason, and the rules that need it are
skipped with that reason instead of crashing the report.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pymongo import MongoClient
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from tasks.catalog import Unsupported, list_specs
from tasks.config import METADATA_DB
from tasks.errors import classify
from tasks.metadata import MetadataStore
from tasks.mongo import access_control_enforced
from tasks.namespaces import NamespaceFilter

log = logging.getLogger(__name__)
T = TypeVar("T")


class CannotCheck(Exception):  # noqa: N818 - reads as "cannot check: reason"
    """A rule lacks a fact it needs: the check is reported as skipped with this reason."""


@dataclass
class SideFacts:
    """One endpoint as the servers described it."""

    side: str
    endpoint: str = ""
    connected: bool = False
    connect_error: str | None = None
    tls_ca_file: str | None = None
    # topology (hello)
    topology: str | None = None  # replicaset | sharded | standalone
    set_name: str | None = None
    hosts: list[str] = field(default_factory=list)
    me: str | None = None
    process_id: str | None = None
    # sharded clusters (getShardMap / listShards)
    shard_count: int | None = None
    config_server: str | None = None
    # versions
    version: tuple[int, int, int] | None = None
    fcv: str | None = None
    # hostInfo
    mem_mb: int | None = None
    cores: int | None = None
    # connectionStatus {showPrivileges: true}: read only for a reversible migration (gather_privileges)
    users: list[str] | None = None  # "user@db"
    privileges: list[dict[str, Any]] | None = None  # [{resource, actions}], inherited ones included
    access_control: bool | None = None  # asked of an unauthenticated connection (access_control_on); None: not known
    problems: dict[str, str] = field(default_factory=dict)

    def need(self, name: str) -> Any:
        """The fact, or CannotCheck saying why it is missing."""
        if not self.connected:
            raise CannotCheck(f"{self.side} not connected (see connect)")
        value = getattr(self, name)
        if value is None:
            why = self.problems.get(name, "not reported by the server")
            raise CannotCheck(f"{self.side} {name} unavailable: {why}")
        return value


@dataclass
class AuthFacts:
    """Who the source connection is, and what it may do."""

    uri_user: str | None = None
    uri_mechanism: str | None = None
    users: list[str] = field(default_factory=list)  # "user@db"
    roles: list[str] = field(default_factory=list)  # "role@db", direct and inherited
    auth_enforced: bool | None = None
    mechanisms: list[str] | None = None
    mechanisms_source: str | None = None  # usersInfo | probe


@dataclass
class ScopeFacts:
    """The source's in-scope data: databases, their sizes, collections, oplog window."""

    databases: list[str] | None = None
    db_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    db_stats_errors: dict[str, str] = field(default_factory=dict)
    namespaces: list[str] | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    unsupported: list[Unsupported] = field(default_factory=list)
    oplog_first: int | None = None  # seconds (bson Timestamp.time)
    oplog_last: int | None = None


@dataclass
class DestinationFacts:
    """The destination's state: what already exists, disk, locks, BI Connector."""

    existing: list[str] | None = None  # in-scope namespaces that exist on the destination
    fs_total: int | None = None
    fs_used: int | None = None
    lock: dict[str, Any] | None = None
    lock_read: bool = False
    current_op_checked: int | None = None  # connections inspected in currentOp
    mongosqld_clients: list[str] = field(default_factory=list)
    atlas: dict[str, Any] | None = None  # what the Atlas Admin API said (see atlas.py)


@dataclass
class Facts:
    """Everything the rules look at, plus the parts of the config they judge against."""

    name: str
    source: SideFacts
    destination: SideFacts
    auth: AuthFacts = field(default_factory=AuthFacts)
    scope: ScopeFacts = field(default_factory=ScopeFacts)
    dest: DestinationFacts = field(default_factory=DestinationFacts)
    identity: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # source-wide facts that could not be read
    clear_destination: bool = False
    sharding_entries: list[dict[str, Any]] = field(default_factory=list)
    copy_rate_mb_s: float | None = None
    lock_timeout_s: float = 60.0
    reversible: bool = False  # the reverse sync's checks run (checks/prechecks/reverse.py)


def attempt(problems: dict[str, str], key: str, fn: Callable[[], T], where: str = "") -> T | None:
    """Run one read; on failure record a one-line reason under ``key`` and return None."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded reason
        err = classify(exc, where)
        problems[key] = str(err).removeprefix(f"{where}: ") if where else str(err)
        log.info("could not read %s: %s", key, problems[key])
        return None


def _ts_seconds(value: Any) -> int | None:
    return int(value.time) if value is not None and hasattr(value, "time") else None


def gather_side(client: MongoClient[Any], facts: SideFacts) -> None:
    """Topology, version, FCV, shard map and host size of one endpoint."""
    p = facts.problems
    hello = attempt(p, "topology", lambda: dict(client.admin.command("hello")))
    if hello is not None:
        if hello.get("msg") == "isdbgrid":
            facts.topology = "sharded"
        elif hello.get("setName"):
            facts.topology = "replicaset"
        else:
            facts.topology = "standalone"
        facts.set_name = hello.get("setName")
        facts.hosts = sorted(str(h) for h in hello.get("hosts", []) + hello.get("passives", []))
        facts.me = hello.get("me")
        pid = (hello.get("topologyVersion") or {}).get("processId")
        facts.process_id = str(pid) if pid is not None else None
    build = attempt(p, "version", lambda: dict(client.admin.command("buildInfo")))
    if build is not None:
        arr = list(build.get("versionArray") or [])
        if len(arr) < 3:
            arr = [int(x) for x in str(build.get("version", "0.0.0")).split("-")[0].split(".")[:3]]
        facts.version = (int(arr[0]), int(arr[1]), int(arr[2]))
    fcv = attempt(p, "fcv", lambda: client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1}))
    if fcv is not None:
        facts.fcv = str((fcv.get("featureCompatibilityVersion") or {}).get("version") or "") or None
    info = attempt(p, "mem_mb", lambda: client.admin.command("hostInfo"))
    if info is not None:
        system = info.get("system", {})
        facts.mem_mb = int(system["memSizeMB"]) if system.get("memSizeMB") is not None else None
        facts.cores = int(system["numCores"]) if system.get("numCores") is not None else None
    else:
        p["cores"] = p["mem_mb"]
    if facts.topology == "sharded":
        shard_map = attempt(p, "config_server", lambda: client.admin.command("getShardMap"))
        if shard_map is not None:
            facts.config_server = str((shard_map.get("map") or {}).get("config") or "") or None
        shards = attempt(p, "shard_count", lambda: client.admin.command("listShards"))
        if shards is not None:
            facts.shard_count = len(shards.get("shards", []))


def gather_auth(
    client: MongoClient[Any], uri: str, tls_ca_file: str | None, timeout_s: float, enforced: bool | None
) -> AuthFacts:
    """Users, roles and SCRAM mechanisms of the source connection; ``enforced``: what access_control_on found.

    usersInfo on one's own user is allowed on MongoDB; where a server refuses
    it, the mechanisms are proven by authenticating once with each of them.
    """
    auth = AuthFacts()
    parsed = parse_uri(uri, validate=False)
    auth.uri_user = parsed.get("username")
    auth.uri_mechanism = (parsed.get("options") or {}).get("authmechanism")
    problems: dict[str, str] = {}
    status = attempt(
        problems, "connectionStatus", lambda: client.admin.command({"connectionStatus": 1, "showPrivileges": True})
    )
    info = (status or {}).get("authInfo", {})
    users = info.get("authenticatedUsers", [])
    auth.users = [f"{u.get('user')}@{u.get('db')}" for u in users]
    roles = {f"{r.get('role')}@{r.get('db')}" for r in info.get("authenticatedUserRoles", [])}
    auth.auth_enforced = enforced
    if not users:
        auth.roles = sorted(roles)
        return auth
    first = users[0]
    uinfo = attempt(
        problems,
        "usersInfo",
        lambda: client[first.get("db", "admin")].command(
            {"usersInfo": {"user": first.get("user"), "db": first.get("db")}}
        ),
    )
    record = ((uinfo or {}).get("users") or [None])[0]
    if record:
        for r in list(record.get("roles", [])) + list(record.get("inheritedRoles", [])):
            roles.add(f"{r.get('role')}@{r.get('db')}")
        if record.get("mechanisms") is not None:
            auth.mechanisms = sorted(str(m) for m in record["mechanisms"])
            auth.mechanisms_source = "usersInfo"
    auth.roles = sorted(roles)
    if auth.mechanisms is None and auth.uri_user and parsed.get("password") is not None:
        auth.mechanisms = [
            m for m in ("SCRAM-SHA-1", "SCRAM-SHA-256") if _can_authenticate(uri, m, tls_ca_file, timeout_s)
        ]
        auth.mechanisms_source = "probe"
    return auth


def access_control_on(
    uri: str, side: str, tls_ca_file: str | None, timeout_s: float, problems: dict[str, str], key: str = "listDatabases"
) -> bool | None:
    """Whether the side enforces access control, asked of an unauthenticated connection (an authenticated
    user proves nothing: a server without ``--auth`` authenticates one all the same); None when it cannot
    be told, the reason under ``key`` (tasks/mongo.py ``access_control_enforced``)."""
    ca = Path(tls_ca_file) if tls_ca_file else None
    enforced, why = access_control_enforced(uri, side=side, tls_ca_file=ca, timeout_s=timeout_s)
    if enforced is None:
        problems[key] = why
    return enforced


def gather_privileges(client: MongoClient[Any], facts: SideFacts) -> None:
    """Who this side's connection is and every privilege it holds (a reversible migration's checks judge them).

    ``connectionStatus {showPrivileges: true}`` (MongoDB manual, 6.0-8.0): ``authInfo.authenticatedUsers``
    and ``authInfo.authenticatedUserPrivileges`` ``[{resource, actions}]``, the roles already expanded.
    """
    p = facts.problems
    status = attempt(p, "privileges", lambda: client.admin.command({"connectionStatus": 1, "showPrivileges": True}))
    if status is None:
        p["users"] = p["privileges"]
        return
    info = status.get("authInfo") or {}
    users = list(info.get("authenticatedUsers") or [])
    facts.users = [f"{u.get('user')}@{u.get('db')}" for u in users]
    facts.privileges = [dict(priv) for priv in info.get("authenticatedUserPrivileges") or []]


def _can_authenticate(uri: str, mechanism: str, tls_ca_file: str | None, timeout_s: float) -> bool:
    """True when the URI's credentials are accepted with this SCRAM mechanism."""
    opts: dict[str, Any] = {"authMechanism": mechanism, "serverSelectionTimeoutMS": int(timeout_s * 1000)}
    if tls_ca_file:
        opts.update(tls=True, tlsCAFile=tls_ca_file)
    try:
        with MongoClient(uri, **opts) as probe:
            probe.admin.command("ping")
        return True
    except PyMongoError:
        return False


def gather_scope(
    client: MongoClient[Any], nsfilter: NamespaceFilter, scope: ScopeFacts, problems: dict[str, str]
) -> None:
    """In-scope databases with dbStats, collections with kinds, and the oplog's first/last entry."""
    names = attempt(problems, "databases", client.list_database_names)
    if names is not None:
        scope.databases = sorted(d for d in names if nsfilter.db_in_scope(d))
        for db in scope.databases:
            try:
                st = client[db].command("dbStats")
                scope.db_stats[db] = {k: int(st.get(k, 0) or 0) for k in ("dataSize", "storageSize", "indexSize")}
            except PyMongoError as exc:
                scope.db_stats_errors[db] = str(classify(exc))
    listed = attempt(problems, "namespaces", lambda: list_specs(client, nsfilter, with_indexes=False))
    if listed is not None:
        specs, scope.unsupported = listed
        scope.namespaces = [s.ns.full for s in specs]
        scope.kinds = {s.ns.full: s.kind for s in specs}
    oplog = client.local["oplog.rs"]
    first = attempt(problems, "oplog", lambda: oplog.find_one({}, {"ts": 1}, sort=[("$natural", 1)]))
    last = attempt(problems, "oplog", lambda: oplog.find_one({}, {"ts": 1}, sort=[("$natural", -1)]))
    scope.oplog_first = _ts_seconds((first or {}).get("ts"))
    scope.oplog_last = _ts_seconds((last or {}).get("ts"))


def gather_destination(
    client: MongoClient[Any], nsfilter: NamespaceFilter, dest: DestinationFacts, problems: dict[str, str]
) -> None:
    """Existing in-scope namespaces, free disk, the migration lock and mongosqld clients."""

    def existing() -> list[str]:
        out = []
        for db in sorted(client.list_database_names()):
            if nsfilter.db_in_scope(db):
                out += [f"{db}.{c}" for c in sorted(client[db].list_collection_names()) if nsfilter.matches(db, c)]
        return out

    dest.existing = attempt(problems, "existing", existing)
    st = attempt(problems, "disk", lambda: client.admin.command("dbStats"))
    if st is not None:
        dest.fs_total = int(st["fsTotalSize"]) if st.get("fsTotalSize") is not None else None
        dest.fs_used = int(st["fsUsedSize"]) if st.get("fsUsedSize") is not None else None
    holder = attempt(problems, "lock", lambda: MetadataStore(client).lock_holder())
    dest.lock_read = "lock" not in problems
    dest.lock = dict(holder) if holder else None
    ops = attempt(problems, "currentOp", lambda: client.admin.command({"currentOp": 1, "$all": True}))
    if ops is not None:
        inprog = list(ops.get("inprog", []))
        dest.current_op_checked = len(inprog)
        for op in inprog:
            meta = op.get("clientMetadata") or {}
            names = [
                str((meta.get("application") or {}).get("name", "")),
                str((meta.get("driver") or {}).get("name", "")),
            ]
            if any("mongosqld" in n.lower() for n in names):
                dest.mongosqld_clients.append(str(op.get("client") or op.get("desc") or "?"))


def probe_identity(src: MongoClient[Any], dst: MongoClient[Any], s: SideFacts, d: SideFacts) -> dict[str, Any]:
    """Are source and destination the same deployment?  Evidence and the method that decided.

    SecantusDB (and a default docker replica set) report the same setName and
    even the same hosts for different deployments, so names alone cannot
    decide: the same server process, or a marker written on the destination
    and found on the source, proves sameness; a marker not found proves
    difference; hosts shared under one set name are the fallback.
    """
    ev: dict[str, Any] = {
        "source": {"set_name": s.set_name, "hosts": s.hosts, "me": s.me, "process_id": s.process_id},
        "destination": {"set_name": d.set_name, "hosts": d.hosts, "me": d.me, "process_id": d.process_id},
    }
    if s.endpoint.partition(" ")[2] == d.endpoint.partition(" ")[2] and s.endpoint:
        return {**ev, "same": True, "method": "same hosts in both connection strings"}
    if s.process_id and s.process_id == d.process_id:
        return {**ev, "same": True, "method": "same server process (hello topologyVersion.processId)"}
    marker = {"_id": f"identity-probe-{uuid.uuid4().hex}"}
    probe = dst[METADATA_DB]["identity_probe"]
    try:
        probe.insert_one(dict(marker))
        try:
            found = src[METADATA_DB]["identity_probe"].find_one(marker) is not None
        finally:
            probe.delete_one(marker)
        return {
            **ev,
            "same": found,
            "method": "marker written on the destination " + ("found" if found else "not found") + " on the source",
        }
    except PyMongoError as exc:
        ev["marker_error"] = str(classify(exc))
    shared = set(s.hosts) & set(d.hosts)
    # Same set name and members, but one member claiming the same 'me' from another process is a look-alike.
    lookalike = s.me == d.me and s.process_id is not None and d.process_id is not None
    same = bool(s.set_name and s.set_name == d.set_name and shared and not lookalike)
    return {**ev, "same": same, "method": "set name and member hosts (marker probe unavailable)"}
