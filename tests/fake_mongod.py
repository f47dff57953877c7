"""Scripted mongod/mongos servers (mockupdb) for replies no available test server can give.

Why: the prechecks must be shown to refuse 6.0.12, an FCV mismatch, a
standalone, an SCCC config server or a missing clusterMonitor, and SecantusDB
always says 8.2.11 / replica set.  These fakes speak the real wire protocol
to the real pymongo, with replies shaped like a real server's
(hello/buildInfo/getParameter/connectionStatus/usersInfo/getShardMap...).
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId, Timestamp
from mockupdb import MockupDB

# maxWireVersion per release series (the MongoDB wire protocol table).
WIRE = {(6, 0): 17, (7, 0): 21, (8, 0): 25, (8, 2): 27}
UNAUTHORIZED = {"ok": 0, "errmsg": "not authorized on admin to execute command", "code": 13, "codeName": "Unauthorized"}


@dataclass
class FakeSpec:
    """What the fake server claims to be."""

    version: str = "7.0.8"
    fcv: str | None = None  # defaults to the version's major.minor
    topology: str = "replicaset"  # replicaset | standalone | sharded (mongos)
    set_name: str = "rs0"
    config_server: str = "csrs/cfg1.example.net:27019,cfg2.example.net:27019,cfg3.example.net:27019"
    shards: int = 2
    users: list[tuple[str, str]] = field(default_factory=lambda: [("migrator", "admin")])
    roles: list[tuple[str, str]] = field(default_factory=lambda: [("backup", "admin"), ("readAnyDatabase", "admin")])
    mechanisms: list[str] = field(default_factory=lambda: ["SCRAM-SHA-1", "SCRAM-SHA-256"])
    mem_mb: int = 16384
    cores: int = 8
    databases: dict[str, list[str]] = field(default_factory=lambda: {"app": ["orders"]})
    db_bytes: int = 1024 * 1024  # storageSize per database (indexSize is a quarter of it)
    fs_total: int | None = 100 * 1024**3
    fs_used: int | None = 10 * 1024**3
    oplog_seconds: int = 86400
    current_op: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)  # command name -> reply dict or callable(request)


class FakeMongod:
    """One scripted server on a loopback port; use :func:`fake_mongod`."""

    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec
        self.server = MockupDB(auto_ismaster=False)
        self.process_id = ObjectId()
        self.commands: list[str] = []
        self.docs: list[dict[str, Any]] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.address}/?directConnection=true"

    def start(self) -> FakeMongod:
        self.port = self.server.run()
        self.server.autoresponds(self._handle)
        return self

    def stop(self) -> None:
        # mockupdb's accept loop polls once a second; a connection wakes it so stop() returns at once.
        self.server._stopped = True
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.server.stop()

    # -- replies -----------------------------------------------------------
    def _version(self) -> tuple[int, int, int]:
        a, b, c = (int(x) for x in self.spec.version.split(".")[:3])
        return a, b, c

    def _hello(self, for_application: bool) -> dict[str, Any]:
        v = self._version()
        doc: dict[str, Any] = {
            "isWritablePrimary": True,
            "ismaster": True,
            "helloOk": True,
            "maxBsonObjectSize": 16777216,
            "maxMessageSizeBytes": 48000000,
            "maxWriteBatchSize": 100000,
            "localTime": dt.datetime.now(dt.UTC),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": 1,
            "minWireVersion": 0,
            "maxWireVersion": WIRE.get(v[:2], 21),
            "readOnly": False,
        }
        if for_application:
            # Only application hellos carry topologyVersion: given to the driver's monitor it would
            # switch to the streaming protocol, which this scripted server would answer in a busy loop.
            doc["topologyVersion"] = {"processId": self.process_id, "counter": 0}
        if self.spec.topology == "replicaset":
            doc.update(
                setName=self.spec.set_name,
                setVersion=1,
                hosts=[self.address],
                me=self.address,
                primary=self.address,
                secondary=False,
            )
        elif self.spec.topology == "sharded":
            doc["msg"] = "isdbgrid"
        return doc

    def _cursor(self, ns: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return {"cursor": {"id": 0, "ns": ns, "firstBatch": batch}}

    def _find(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        coll = doc.get("find")
        if db == "local" and coll == "oplog.rs":
            now = int(dt.datetime.now(dt.UTC).timestamp())
            natural = (doc.get("sort") or {}).get("$natural", 1)
            ts = Timestamp(now - self.spec.oplog_seconds, 1) if natural == 1 else Timestamp(now, 1)
            return self._cursor(f"{db}.{coll}", [{"ts": ts}])
        return self._cursor(f"{db}.{coll}", [])

    def _reply(self, name: str, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        s = self.spec
        v = self._version()
        if name in ("ismaster", "hello"):
            return self._hello("lsid" in doc)
        if name in ("ping", "endsessions", "createindexes", "killcursors"):
            return {}
        if name == "buildinfo":
            return {
                "version": s.version,
                "versionArray": [*v, 0],
                "gitVersion": "0" * 40,
                "bits": 64,
                "maxBsonObjectSize": 16777216,
            }
        if name == "getparameter":
            return {"featureCompatibilityVersion": {"version": s.fcv or f"{v[0]}.{v[1]}"}}
        if name == "connectionstatus":
            return {
                "authInfo": {
                    "authenticatedUsers": [{"user": u, "db": d} for u, d in s.users],
                    "authenticatedUserRoles": [{"role": r, "db": d} for r, d in s.roles],
                    "authenticatedUserPrivileges": [],
                }
            }
        if name == "usersinfo":
            users = [
                {
                    "_id": f"{d}.{u}",
                    "user": u,
                    "db": d,
                    "roles": [{"role": r, "db": rd} for r, rd in s.roles],
                    "mechanisms": s.mechanisms,
                }
                for u, d in s.users
            ]
            return {"users": users}
        if name == "hostinfo":
            return {"system": {"memSizeMB": s.mem_mb, "numCores": s.cores, "hostname": "fake"}, "os": {"type": "Linux"}}
        if name == "getshardmap":
            if s.topology != "sharded":
                return {"ok": 0, "errmsg": "no such command: 'getShardMap'", "code": 59, "codeName": "CommandNotFound"}
            shard_map = {f"shard{i}": f"shard{i}/s{i}.example.net:27018" for i in range(s.shards)}
            return {"map": {**shard_map, "config": s.config_server}, "hosts": {}, "connStrings": {}}
        if name == "listshards":
            return {
                "shards": [
                    {"_id": f"shard{i}", "host": f"shard{i}/s{i}.example.net:27018", "state": 1}
                    for i in range(s.shards)
                ]
            }
        if name == "listdatabases":
            return {
                "databases": [{"name": n, "sizeOnDisk": s.db_bytes, "empty": False} for n in s.databases],
                "totalSize": 0,
            }
        if name == "dbstats":
            out = {
                "db": db,
                "collections": len(s.databases.get(db, [])),
                "dataSize": s.db_bytes,
                "storageSize": s.db_bytes,
            }
            out["indexSize"] = s.db_bytes // 4
            if s.fs_total is not None and s.fs_used is not None:
                out.update(fsTotalSize=s.fs_total, fsUsedSize=s.fs_used)
            return out
        if name == "listcollections":
            batch = [
                {"name": c, "type": "collection", "options": {}, "info": {"readOnly": False}}
                for c in s.databases.get(db, [])
            ]
            return self._cursor(f"{db}.$cmd.listCollections", batch)
        if name == "listindexes":
            return self._cursor(f"{db}.{doc.get('listIndexes')}", [{"v": 2, "key": {"_id": 1}, "name": "_id_"}])
        if name == "find":
            return self._find(db, doc)
        if name == "aggregate":
            return self._cursor(f"{db}.{doc.get('aggregate')}", [])
        if name in ("insert", "delete", "update"):
            return {"n": 1}
        if name == "currentop":
            return {"inprog": list(s.current_op)}
        return {"ok": 0, "errmsg": f"no such command: '{name}'", "code": 59, "codeName": "CommandNotFound"}

    def _handle(self, request: Any) -> bool:
        doc = dict(request.doc)
        name = str(request.command_name or next(iter(doc), "")).lower()
        if name == "ismaster" and "hello" in doc:
            name = "hello"
        self.docs.append(doc)
        self.commands.append(name)
        db = doc.get("$db") or str(getattr(request, "namespace", "admin") or "admin").split(".")[0]
        override: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = self.spec.overrides.get(name)
        reply = (
            (override(request) if callable(override) else dict(override))
            if override is not None
            else self._reply(name, db, doc)
        )
        reply = dict(reply)
        reply.setdefault("ok", 1)
        return bool(request.replies(reply))


@contextmanager
def fake_mongod(spec: FakeSpec | None = None, **kw: Any) -> Iterator[FakeMongod]:
    """A started fake server for the duration of the block."""
    srv = FakeMongod(spec or FakeSpec(**kw)).start()
    try:
        yield srv
    finally:
        srv.stop()
