"""Scripted mongod/mongos servers (mockupdb) for replies no available test server can give.

Why: the prechecks must be shown to refuse 6.0.12, an FCV mismatch, a
standalone, an SCCC config server or a missing clusterMonitor; the engine's
sharding steps (balancerStop/balancerStart, shardCollection), the cutover's
setUserWriteBlockMode and a featureCompatibilityVersion change need a server
that has them, and SecantusDB always says 8.2.11 / replica set and has none of
them.  These fakes speak the real wire protocol to the real pymongo, with
replies shaped like a real server's (hello/buildInfo/getParameter/
connectionStatus/usersInfo/getShardMap, change-stream cursors with
postBatchResumeToken, mongos createIndexes with per-shard ``raw``...), and
they remember what they were told (balancer state, write blocking, sharded
collections, indexes, inserted documents) so tests can assert the effect.
"""

from __future__ import annotations

import datetime as dt
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bson import Int64, ObjectId, Timestamp, encode
from mockupdb import MockupDB
from pymongo import MongoClient

from tasks.mongo import PROBE_APP_NAME

# maxWireVersion per release series (the MongoDB wire protocol table).
WIRE = {(6, 0): 17, (7, 0): 21, (8, 0): 25, (8, 2): 27}
UNAUTHORIZED = {"ok": 0, "errmsg": "not authorized on admin to execute command", "code": 13, "codeName": "Unauthorized"}
MAX_AWAIT_MS = 200  # a tailable getMore waits at most this long (real servers: maxTimeMS, 1 s by default)
MAX_EVENT_BYTES = 16 * 1024 * 1024  # BSONObjMaxUserSize: a change event larger than this is refused
SPLIT_STAGE = "$changeStreamSplitLargeEvent"


def command_not_found(name: str) -> dict[str, Any]:
    return {"ok": 0, "errmsg": f"no such command: '{name}'", "code": 59, "codeName": "CommandNotFound"}


def hangup(request: Any) -> None:
    """An override that closes the connection instead of replying (the driver sees a network error)."""
    request.hangup()


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
    # connectionStatus's authInfo.authenticatedUserPrivileges: [{resource, actions}], roles expanded
    privileges: list[dict[str, Any]] = field(default_factory=list)
    mem_mb: int = 16384
    cores: int = 8
    databases: dict[str, list[str]] = field(default_factory=lambda: {"app": ["orders"]})
    db_bytes: int = 1024 * 1024  # storageSize per database (indexSize is a quarter of it)
    fs_total: int | None = 100 * 1024**3
    fs_used: int | None = 10 * 1024**3
    oplog_seconds: int = 86400
    current_op: list[dict[str, Any]] = field(default_factory=list)
    # Real mongos refuse reads of `local` (IllegalOperation); the prechecks fakes keep serving an oplog there.
    mongos_serves_oplog: bool = True
    # command name (lower case) -> reply dict, or callable(request) returning one (None: it already answered)
    overrides: dict[str, Any] = field(default_factory=dict)
    # Access control on: a connection that did not authenticate (livemigrate's probe, appName
    # livemigrate-probe) is refused listDatabases with Unauthorized 13 "command listDatabases requires
    # authentication" (server source commands.cpp, checkAuthorizationImplPreParse, MongoDB 4.0-8.0).
    access_control: bool = True


class FakeMongod:
    """One scripted server on a loopback port; use :func:`fake_mongod`."""

    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec
        self.server = MockupDB(auto_ismaster=False)
        self.process_id = ObjectId()
        self.commands: list[str] = []
        self.docs: list[dict[str, Any]] = []
        self.port = 0
        # What the server was told, for tests to assert the effect.
        self.optime = Timestamp(int(time.time()), 1)  # the latest write (advance() simulates one)
        self.balancer_running = True
        self.write_blocked = False
        self.collections: set[str] = set()
        self.indexes: dict[str, list[dict[str, Any]]] = {}  # as listIndexes shows them, without _id_
        self.collations: dict[str, dict[str, Any]] = {}  # collections' non-simple default collations
        self.sharded: dict[str, dict[str, Any]] = {}
        self.inserted: dict[str, int] = {}
        self.writes: dict[str, list[dict[str, Any]]] = {}  # update/delete statements received, per namespace
        self._streams: dict[int, str] = {}  # open change-stream cursors: id -> ns
        # Scripted change events (whole, as the server would build them), served by every stream opened
        # after they were added; a stream keeps its own position and its pipeline's split/$project.
        self.events: list[dict[str, Any]] = []
        self._stream_state: dict[int, dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._apps: dict[int, str] = {}  # client port -> the appName its handshake gave

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.address}/?directConnection=true"

    def client(self, **kw: Any) -> MongoClient[Any]:
        """A client of this server (the caller closes it)."""
        return MongoClient(self.uri, **{"serverSelectionTimeoutMS": 5000, **kw})

    def start(self) -> FakeMongod:
        self.port = self.server.run()
        self.server.autoresponds(self._handle)
        return self

    def sent(self, name: str) -> list[dict[str, Any]]:
        """Every command named ``name`` (case-insensitive) this server received, in order."""
        return [d for c, d in zip(self.commands, self.docs, strict=True) if c == name.lower()]

    def position(self, name: str, **match: Any) -> int:
        """Index in :attr:`commands` of the first ``name`` command whose fields include ``match``."""
        for i, (c, d) in enumerate(zip(self.commands, self.docs, strict=True)):
            if c == name.lower() and all(d.get(k) == v for k, v in match.items()):
                return i
        raise AssertionError(f"{name} {match} was never sent; got {self.commands}")

    def advance(self) -> Timestamp:
        """A write on this server: the latest optime moves on."""
        now = int(time.time())
        t = self.optime
        self.optime = Timestamp(now, 1) if now > t.time else Timestamp(t.time, t.inc + 1)
        return self.optime

    def stop(self) -> None:
        self._stopping.set()
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

    def _cluster_time(self) -> dict[str, Any]:
        """What replica-set members and mongos add to every reply (standalones do not)."""
        if self.spec.topology == "standalone":
            return {}
        return {
            "$clusterTime": {"clusterTime": self.optime, "signature": {"hash": b"\x00" * 20, "keyId": Int64(0)}},
            "operationTime": self.optime,
        }

    def _token(self) -> dict[str, str]:
        """A high-water-mark resume token at the latest optime (opaque to drivers; real ones start 82 + time)."""
        return {"_data": f"82{self.optime.time:08X}{self.optime.inc:08X}2B0229296E04"}

    def _change_stream(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        pipeline = list(doc.get("pipeline", []))
        split = any(SPLIT_STAGE in stage for stage in pipeline)
        if split and self._version() < (6, 0, 9):
            # Before 6.0.9 / 7.0 the stage does not exist (aggregation stage registry, server 6.0.9 release notes).
            return {
                "ok": 0,
                "errmsg": f"Unrecognized pipeline stage name: '{SPLIT_STAGE}'",
                "code": 40324,
                "codeName": "Location40324",
            }
        cid = Int64(random.randint(1, 2**62))
        ns = f"{db}.$cmd.aggregate" if doc.get("aggregate") == 1 else f"{db}.{doc.get('aggregate')}"
        self._streams[cid] = ns
        start = dict(pipeline[0].get("$changeStream") or {}) if pipeline else {}
        after = (start.get("startAfter") or start.get("resumeAfter") or {}).get("_data")
        tokens = [e["_id"]["_data"] for e in self.events]
        project = next((dict(st["$project"]) for st in pipeline if "$project" in st), {})
        self._stream_state[int(cid)] = {
            "pos": tokens.index(after) + 1 if after in tokens else 0,
            "split": split,
            "project": project,
            "pending": [],  # fragments of a split event still to send
        }
        return {"cursor": {"firstBatch": [], "postBatchResumeToken": self._token(), "id": cid, "ns": ns}}

    def _next_event(self, cid: int) -> dict[str, Any] | None:
        """The next event (or fragment) for one stream, as MongoDB 7.0 sends it; an error reply if refused."""
        st = self._stream_state.get(cid)
        if st is None:
            return None
        if st["pending"]:
            return {"event": st["pending"].pop(0)}
        if st["pos"] >= len(self.events):
            return None
        event = {k: v for k, v in self.events[st["pos"]].items() if st["project"].get(k, 1) != 0}
        st["pos"] += 1
        if len(encode(event)) <= MAX_EVENT_BYTES:
            return {"event": event}
        if not st["split"]:
            return {
                "error": {
                    "ok": 0,
                    "errmsg": f"BSONObj size: {len(encode(event))} is invalid. Size must be between 0 and 16793600(16MB) "
                    f"First element: _id: {event['_id']}",
                    "code": 10334,
                    "codeName": "BSONObjectTooLarge",
                }
            }
        st["pending"] = split_event(event)
        return {"event": st["pending"].pop(0)}

    def _get_more(self, doc: dict[str, Any]) -> dict[str, Any]:
        cid = int(doc["getMore"])
        ns = self._streams.get(cid)
        if ns is None:
            return {"ok": 0, "errmsg": f"cursor id {cid} not found", "code": 43, "codeName": "CursorNotFound"}
        nxt = self._next_event(cid)
        if nxt is not None and "error" in nxt:
            return dict(nxt["error"])
        if nxt is not None:  # one event (or fragment) a batch: fragments of one event never share a batch
            ev = nxt["event"]
            return {"cursor": {"nextBatch": [ev], "postBatchResumeToken": ev["_id"], "id": Int64(cid), "ns": ns}}
        # An awaitData cursor with nothing new waits before answering; mockupdb serves every connection
        # under one lock, so release it meanwhile.
        with self.server._unlock():
            self._stopping.wait(min(int(doc.get("maxTimeMS") or 1000), MAX_AWAIT_MS) / 1000)
        return {"cursor": {"nextBatch": [], "postBatchResumeToken": self._token(), "id": Int64(cid), "ns": ns}}

    def _write(self, name: str, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        """update/delete, with mongos's targeting rules for a sharded collection (MongoDB 7.0/8.0 manual,
        "Sharded collection" notes of updateOne/replaceOne/deleteOne): an upsert's filter must hold the full
        shard key; a single delete must match on _id or the full shard key.  Refusals are write errors
        ShardKeyNotFound (61), as mongos sends them."""
        ns = f"{db}.{doc[name]}"
        key = self.sharded.get(ns)
        self.writes.setdefault(ns, []).extend(doc.get("updates" if name == "update" else "deletes", []))
        errors = []
        for i, op in enumerate(doc.get("updates" if name == "update" else "deletes", [])):
            q = dict(op.get("q") or {})
            full_key = key is not None and all(k in q for k in key)
            if key is not None and name == "update" and op.get("upsert") and not full_key:
                errors.append(
                    {
                        "index": i,
                        "code": 61,
                        "codeName": "ShardKeyNotFound",
                        "errmsg": "Failed to target upsert by query :: could not extract exact shard key",
                    }
                )
            elif key is not None and name == "delete" and op.get("limit") == 1 and "_id" not in q and not full_key:
                errors.append(
                    {
                        "index": i,
                        "code": 61,
                        "codeName": "ShardKeyNotFound",
                        "errmsg": "A single delete on a sharded collection must contain an exact match on _id "
                        "(and have the collection default collation) or contain the shard key",
                    }
                )
            if errors and doc.get("ordered", True):
                break
        reply: dict[str, Any] = {"n": len(doc.get("updates" if name == "update" else "deletes", [])) - len(errors)}
        if name == "update":
            reply["nModified"] = reply["n"]
        if errors:
            reply["writeErrors"] = errors
        return reply

    @staticmethod
    def _simple(collation: Any) -> bool:
        return not collation or dict(collation).get("locale") == "simple"

    def _build_index(self, ns: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        """Add one index as mongod stores it; an error reply, or None when built (or already there)."""
        index = {k: v for k, v in spec.items() if k != "collation"}
        collation: Any = spec.get("collation", self.collations.get(ns))  # none given: the collection's
        if not self._simple(collation):
            index["collation"] = dict(collation)
        for old in self.indexes.get(ns, []):
            if old["name"] == index["name"]:
                if old == index:
                    return None
                return {
                    "ok": 0,
                    "errmsg": "An existing index has the same name as the requested index. "
                    f"Requested index: {index}, existing index: {old}",
                    "code": 86,
                    "codeName": "IndexKeySpecsConflict",
                }
        self.indexes.setdefault(ns, []).append(index)
        return None

    def _create_indexes(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        ns = f"{db}.{doc['createIndexes']}"
        before = 1 + len(self.indexes.get(ns, []))
        created = ns not in self.collections
        self.collections.add(ns)
        for spec in doc.get("indexes", []):
            error = self._build_index(ns, dict(spec))
            if error is not None:
                return error
        one = {
            "numIndexesBefore": before,
            "numIndexesAfter": 1 + len(self.indexes[ns]),
            "createdCollectionAutomatically": created,
            "commitQuorum": "votingMembers",
            "ok": 1,
        }
        if self.spec.topology == "sharded":  # mongos answers with each shard's reply under `raw`
            return {"raw": {"shard0/s0.example.net:27018": one}}
        return {k: v for k, v in one.items() if k != "ok"}

    def _shard_collection(self, doc: dict[str, Any]) -> dict[str, Any]:
        """mongod's checks (shard_key_util.cpp): simple collation, then a useful index or an empty collection."""
        ns = str(doc["shardCollection"])
        key = list(dict(doc["key"]).items())
        default = self.collations.get(ns)
        if default and not (doc.get("collation") and self._simple(doc["collation"])):
            return {
                "ok": 0,
                "errmsg": f"Collection has default collation: {default}. Must specify collation {{locale: 'simple'}}",
                "code": 2,
                "codeName": "BadValue",
            }
        useful = [
            i
            for i in self.indexes.get(ns, [])
            if list(dict(i["key"]).items())[: len(key)] == key
            and not i.get("sparse")
            and "partialFilterExpression" not in i
            and "collation" not in i
        ]
        if not useful:
            if self.inserted.get(ns):
                return {
                    "ok": 0,
                    "errmsg": "Please create an index that starts with the proposed shard key before sharding "
                    "the collection. ",
                    "code": 72,
                    "codeName": "InvalidOptions",
                }
            # An empty collection: the server builds the shard-key index itself, with the simple collation.
            name = "_".join(f"{k}_{v}" for k, v in key)
            error = self._build_index(ns, {"v": 2, "key": dict(key), "name": name, "collation": {"locale": "simple"}})
            if error is not None:
                return error
        self.collections.add(ns)
        self.sharded[ns] = dict(key)
        return {"collectionsharded": ns}

    def _mongos_only(self, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Commands a mongos has and a replica-set member does not (there: CommandNotFound)."""
        if self.spec.topology != "sharded":
            return command_not_found(next(iter(doc), name))
        if name == "balancerstop":
            self.balancer_running = False
            return {}
        if name == "balancerstart":
            self.balancer_running = True
            return {}
        if name == "enablesharding":
            return {}
        return self._shard_collection(doc)

    def _cursor(self, ns: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return {"cursor": {"id": 0, "ns": ns, "firstBatch": batch}}

    def _find(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        coll = doc.get("find")
        if db == "local" and self.spec.topology == "sharded" and not self.spec.mongos_serves_oplog:
            return {
                "ok": 0,
                "errmsg": "can't use 'local' database through mongos",
                "code": 20,
                "codeName": "IllegalOperation",
            }
        if db == "config" and coll == "collections" and self.spec.topology == "sharded":
            want = (doc.get("filter") or {}).get("_id")
            rows = [{"_id": ns, "key": key, "unique": False} for ns, key in self.sharded.items() if want in (None, ns)]
            return self._cursor("config.collections", rows)
        if db == "local" and coll == "oplog.rs":
            natural = (doc.get("sort") or {}).get("$natural", 1)
            ts = Timestamp(self.optime.time - self.spec.oplog_seconds, 1) if natural == 1 else self.optime
            return self._cursor(f"{db}.{coll}", [{"ts": ts}])
        return self._cursor(f"{db}.{coll}", [])

    def _reply(self, name: str, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        s = self.spec
        v = self._version()
        if name in ("ismaster", "hello"):
            return self._hello("lsid" in doc)
        if name in ("ping", "endsessions"):
            return {}
        if name == "createindexes":
            return self._create_indexes(db, doc)
        if name == "create":
            ns = f"{db}.{doc['create']}"
            if ns in self.collections:
                return {
                    "ok": 0,
                    "errmsg": f"Collection {ns} already exists.",
                    "code": 48,
                    "codeName": "NamespaceExists",
                }
            self.collections.add(ns)
            if not self._simple(doc.get("collation")):
                self.collations[ns] = dict(doc["collation"])
            return {}
        if name == "killcursors":
            ids = [int(c) for c in doc.get("cursors", [])]
            for c in ids:
                self._streams.pop(c, None)
            return {"cursorsKilled": ids, "cursorsNotFound": [], "cursorsAlive": [], "cursorsUnknown": []}
        if name == "getmore":
            return self._get_more(doc)
        if name in ("balancerstop", "balancerstart", "enablesharding", "shardcollection"):
            return self._mongos_only(name, doc)
        if name == "setuserwriteblockmode":
            if "global" not in doc:
                return {
                    "ok": 0,
                    "errmsg": "BSON field 'setUserWriteBlockMode.global' is missing but a required field",
                    "code": 40414,
                    "codeName": "IDLFailedToParse",
                }
            self.write_blocked = bool(doc["global"])
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
                    "authenticatedUserPrivileges": s.privileges,
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
                return command_not_found("getShardMap")
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
            names = list(s.databases.get(db, []))
            names += sorted(n.split(".", 1)[1] for n in self.collections if n.split(".", 1)[0] == db)
            wanted = (doc.get("filter") or {}).get("name")
            batch = [
                {"name": c, "type": "collection", "options": {}, "info": {"readOnly": False}}
                for c in dict.fromkeys(names)
                if not isinstance(wanted, str) or c == wanted
            ]
            return self._cursor(f"{db}.$cmd.listCollections", batch)
        if name == "listindexes":
            ns = f"{db}.{doc.get('listIndexes')}"
            return self._cursor(ns, [{"v": 2, "key": {"_id": 1}, "name": "_id_"}, *self.indexes.get(ns, [])])
        if name == "find":
            return self._find(db, doc)
        if name == "aggregate":
            if any("$changeStream" in stage for stage in doc.get("pipeline", [])):
                return self._change_stream(db, doc)
            return self._cursor(f"{db}.{doc.get('aggregate')}", [])
        if name == "insert":
            ns = f"{db}.{doc['insert']}"
            n = len(doc.get("documents", []))
            self.collections.add(ns)
            self.inserted[ns] = self.inserted.get(ns, 0) + n
            return {"n": n}
        if name in ("delete", "update"):
            return self._write(name, db, doc)
        if name == "currentop":
            return {"inprog": list(s.current_op)}
        return command_not_found(next(iter(doc), name))

    def _handle(self, request: Any) -> bool:
        doc = dict(request.doc)
        name = str(request.command_name or next(iter(doc), "")).lower()
        if name == "ismaster" and "hello" in doc:
            name = "hello"
        self.docs.append(doc)
        self.commands.append(name)
        db = doc.get("$db") or str(getattr(request, "namespace", "admin") or "admin").split(".")[0]
        app = ((doc.get("client") or {}).get("application") or {}).get("name")
        if app:
            self._apps[request.client_port] = str(app)
        unauthenticated = self._apps.get(request.client_port) == PROBE_APP_NAME
        if name == "listdatabases" and self.spec.access_control and unauthenticated:
            refused = {**UNAUTHORIZED, "errmsg": "command listDatabases requires authentication"}
            return bool(request.replies({**refused, **self._cluster_time()}))
        override: dict[str, Any] | Callable[[Any], dict[str, Any] | None] | None = self.spec.overrides.get(name)
        if callable(override):
            answer = override(request)
            if answer is None:  # it hung up or replied itself
                return True
            reply = dict(answer)
        else:
            reply = dict(override) if override is not None else self._reply(name, db, doc)
        reply.setdefault("ok", 1)
        reply.update(self._cluster_time())
        return bool(request.replies(reply))


def split_event(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Fragments of an event over 16 MB as $changeStreamSplitLargeEvent makes them (MongoDB 7.0 manual):
    top-level fields in order, as many as fit in the first fragment, each fragment with its own resume
    token (the event's, with the fragment number appended) and ``splitEvent: {fragment, of}``."""
    fields = [(k, v) for k, v in event.items() if k != "_id"]
    groups: list[list[tuple[str, Any]]] = [[]]
    size = 0
    for k, v in fields:
        n = len(encode({k: v}))
        if groups[-1] and size + n > MAX_EVENT_BYTES - 16 * 1024:
            groups.append([])
            size = 0
        groups[-1].append((k, v))
        size += n
    token = event["_id"]["_data"]
    return [
        {"_id": {"_data": f"{token}{i:02X}"}, "splitEvent": {"fragment": i, "of": len(groups)}, **dict(group)}
        for i, group in enumerate(groups, start=1)
    ]


@contextmanager
def fake_mongod(spec: FakeSpec | None = None, **kw: Any) -> Iterator[FakeMongod]:
    """A started fake server for the duration of the block."""
    srv = FakeMongod(spec or FakeSpec(**kw)).start()
    try:
        yield srv
    finally:
        srv.stop()
