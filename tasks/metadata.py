"""The metadata store: migration state in a reserved database on the destination.

Why: a worker's disk is gone after a run (dlt keeps pipeline state in the
destination for the same reason).  Every record carries a schema version; a
version this code does not know is refused with what to do.  Writes use
majority write concern so a checkpoint never runs ahead of applied data.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pymongo
from pymongo import MongoClient, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from tasks.config import METADATA_DB
from tasks.errors import LockHeldError, NotFoundError, SchemaVersionError
from tasks.state import (
    SCHEMA_VERSION,
    Checkpoint,
    MigrationDoc,
    Partition,
    PartitionStatus,
    Phase,
    check_transition,
    utcnow,
)

log = logging.getLogger(__name__)

LOCK_ID = "destination"
PLAN_CHUNK = 1000  # namespaces per delete of plan records
CLAIM_LIMIT = 100  # partitions one claim may take at most


def _machine() -> str:
    """This host as a process sees it: the host name, and the pid namespace where there is one.

    Containers that share a host name (host networking) each have their own pids: a pid that does
    not exist in ours may live in theirs, so only a process of our own namespace is ever judged dead.
    """
    try:
        ns = os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{ns}"


def process_owner() -> str:
    """Identifies this process: host (and pid namespace), pid and a random part (pids are reused)."""
    return f"{_machine()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` was a process of this host (and pid namespace) that no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_s = rest.partition(":")[0]
    if host != _machine() or not pid_s.isdigit():
        return False  # another machine or container: only its lease expiry tells
    try:
        os.kill(int(pid_s), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _check_version(doc: dict[str, Any] | None, where: str) -> None:
    if doc is None:
        return
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{METADATA_DB}.{where}: metadata schema version {version!r} is not the {SCHEMA_VERSION} this "
            f"livemigrate understands",
            remedy=f"use the livemigrate release that wrote it, or drop the {METADATA_DB} database on the "
            "destination to start the migration over",
        )


class MetadataStore:
    """All reads and writes of migration state go through here."""

    def __init__(self, client: MongoClient[Any], db_name: str = METADATA_DB) -> None:
        self.client = client
        wc = WriteConcern("majority")
        self.db = client.get_database(db_name, write_concern=wc, read_concern=ReadConcern("majority"))
        self.migrations: Collection[Any] = self.db["migrations"]
        self.checkpoints: Collection[Any] = self.db["checkpoints"]
        self.partitions: Collection[Any] = self.db["partitions"]
        self.locks: Collection[Any] = self.db["locks"]
        self.reports: Collection[Any] = self.db["reports"]
        self._indexes_made = False
        self.fenced: tuple[str, int] | None = None  # (migration, lock epoch) this store writes under

    def ensure_indexes(self) -> None:
        if not self._indexes_made:
            self.partitions.create_index([("migration", 1), ("status", 1), ("ns", 1), ("seq", 1)])
            self.reports.create_index([("migration", 1), ("kind", 1), ("at", -1)])
            self._indexes_made = True

    # -- migrations -------------------------------------------------------
    def create(self, doc: MigrationDoc) -> MigrationDoc:
        self.migrations.insert_one(doc.to_mongo())
        return doc

    def get(self, name: str) -> MigrationDoc | None:
        raw = self.migrations.find_one({"_id": name})
        _check_version(raw, f"migrations[{name}]")
        return MigrationDoc.model_validate(raw) if raw else None

    def load(self, name: str) -> MigrationDoc:
        doc = self.get(name)
        if doc is None:
            raise NotFoundError(f"no migration named {name!r} in the destination's {METADATA_DB} database")
        return doc

    def latest(self) -> MigrationDoc | None:
        """The most recently updated migration (for `describe` without a name)."""
        raw = self.migrations.find_one({}, sort=[("updated_at", -1)])
        _check_version(raw, "migrations")
        return MigrationDoc.model_validate(raw) if raw else None

    def update(self, name: str, **fields: Any) -> MigrationDoc:
        """Set fields (pydantic-serialised) on the migration record."""
        fields["updated_at"] = utcnow()
        sets = {k: _dump(v) for k, v in fields.items()}
        raw = self.migrations.find_one_and_update(
            self._fenced(name), {"$set": sets}, return_document=ReturnDocument.AFTER
        )
        if raw is None:
            if self.fenced is not None and self.get(name) is not None:
                raise self._refused(name)
            raise NotFoundError(f"no migration named {name!r}")
        _check_version(raw, f"migrations[{name}]")
        return MigrationDoc.model_validate(raw)

    def push(self, name: str, field: str, value: Any) -> None:
        self._modify(name, {"$push": {field: _dump(value)}})

    def pull_index_restore(self, name: str, ns: str, index: str) -> None:
        """Strike one restored index off the migration's book of restores owed at cutover."""
        self._modify(name, {"$pull": {"index_restores": {"ns": ns, "name": index}}})

    def _modify(self, name: str, update: dict[str, Any]) -> None:
        """One fenced update of the migration record (updated_at set too)."""
        res = self.migrations.update_one(self._fenced(name), {**update, "$set": {"updated_at": utcnow()}})
        if res.matched_count == 0 and self.fenced is not None and self.get(name) is not None:
            raise self._refused(name)

    def set_phase(self, name: str, new: Phase, **fields: Any) -> MigrationDoc:
        """Move to ``new`` if the phase table allows it (checked against the stored phase)."""
        current = self.load(name)
        check_transition(current.phase, new)
        if current.phase == new and not fields:
            return current
        now = utcnow()
        sets = {k: _dump(v) for k, v in fields.items()}
        sets.update({"phase": new.value, "updated_at": now})
        raw = self.migrations.find_one_and_update(
            {**self._fenced(name), "phase": current.phase.value},
            {"$set": sets, "$push": {"history": {"phase": new.value, "at": now}}},
            return_document=ReturnDocument.AFTER,
        )
        if raw is None:  # somebody else moved it meanwhile (or took it over): re-check against the new phase
            if self.migrations.find_one(self._fenced(name), {"_id": 1}) is None:
                raise self._refused(name)
            return self.set_phase(name, new, **fields)
        log.info("migration %s: %s -> %s", name, current.phase.value, new.value)
        return MigrationDoc.model_validate(raw)

    def archive(self, name: str) -> str | None:
        """Move an ended migration's records aside so the name can start over."""
        raw = self.migrations.find_one({"_id": name})
        if raw is None:
            return None
        new_id = f"{name}@{utcnow().strftime('%Y%m%dT%H%M%S')}"
        raw["_id"] = new_id
        self.migrations.insert_one(raw)
        self.migrations.delete_one({"_id": name})
        self.checkpoints.delete_one({"_id": name})
        self.partitions.delete_many({"migration": name})
        self.db["samples"].update_many({"migration": name}, {"$set": {"migration": new_id}})
        return new_id

    # -- lock -------------------------------------------------------------
    def acquire_lock(self, name: str, owner: str, timeout_s: float) -> int:
        """Make this process (``owner``) the one that drives migration ``name``; return the lock's epoch.

        The destination has one lock: one migration at a time, driven by one process.  It is free when
        nobody holds it, when its heartbeat is older than ``timeout_s``, or when it is this migration's
        and its holder is provably dead (a process of this host that no longer exists).  Every
        acquisition raises the epoch; writes of migration state carry it (:meth:`fence`), so a driver
        that lost the lock cannot overwrite what the new one writes.
        """
        for _ in range(5):
            held = self.check_lock(name, owner, timeout_s)
            sets = {"holder": name, "owner": owner, "heartbeat_at": utcnow(), "schema_version": SCHEMA_VERSION}
            if held is None:
                try:  # the first lock on this destination: exactly one insert wins
                    self.locks.insert_one({"_id": LOCK_ID, **sets, "epoch": 1})
                    return 1
                except DuplicateKeyError:
                    continue  # another process created it first: look again
            # Compare-and-set on everything the decision read: a renewed heartbeat meanwhile wins.
            expect = {k: held.get(k) for k in ("owner", "epoch", "heartbeat_at")}
            raw = self.locks.find_one_and_update(
                {"_id": LOCK_ID, **expect}, {"$set": sets, "$inc": {"epoch": 1}}, return_document=ReturnDocument.AFTER
            )
            if raw is not None:
                return int(raw["epoch"])
        raise LockHeldError(f"the destination lock for migration {name!r} kept changing hands: try again")

    def check_lock(self, name: str, owner: str | None, timeout_s: float) -> dict[str, Any] | None:
        """The lock as it stands if ``owner`` may take it for ``name`` (None: no lock yet); else LockHeldError.

        Also what `livemigrate migrate` asks before it starts any orchestration, so a second driver is
        refused in a second, not after Prefect has started.
        """
        held: dict[str, Any] | None = self.locks.find_one({"_id": LOCK_ID})
        if held is None or not held.get("holder") or (owner is not None and held.get("owner") == owner):
            return held
        beat = held.get("heartbeat_at")
        age = (utcnow() - beat.replace(tzinfo=dt.UTC)).total_seconds() if beat else None
        dead = held.get("holder") == name and owner_is_dead(held.get("owner"))
        if not dead and age is not None and age <= timeout_s:
            raise _held_error(name, held, age, timeout_s)
        if dead and owner is not None:
            log.warning("taking over migration %s from %s: that process is gone", name, held.get("owner"))
        return held

    def fence(self, name: str, epoch: int) -> None:
        """From now on this store writes migration ``name``'s state only while no newer epoch has (fencing)."""
        self.migrations.update_one({"_id": name}, {"$max": {"fence": epoch}})
        self.checkpoints.update_one({"_id": name}, {"$max": {"fence": epoch}})
        self.fenced = (name, epoch)

    def _fenced(self, name: str) -> dict[str, Any]:
        """The filter that refuses a write of ``name``'s state by a driver that lost the lock."""
        if self.fenced is None or self.fenced[0] != name:
            return {"_id": name}
        return {"_id": name, "fence": {"$not": {"$gt": self.fenced[1]}}}

    def _refused(self, name: str) -> LockHeldError:
        held = self.locks.find_one({"_id": LOCK_ID}) or {}
        return LockHeldError(
            f"migration {name!r} is driven by another process now ({_owner_text(held.get('owner'))}): "
            "this one stopped writing",
            remedy="let that process finish, or stop it before running this migration again",
        )

    def heartbeat(self, name: str, owner: str) -> bool:
        res = self.locks.update_one(
            {"_id": LOCK_ID, "holder": name, "owner": owner}, {"$set": {"heartbeat_at": utcnow()}}
        )
        return res.matched_count == 1

    def disown_lock(self, name: str, owner: str) -> None:
        """This process stops driving ``name`` but keeps the destination for it (a clean stop, not the end).

        Another migration is still refused until the heartbeat is stale; this migration, run again, takes
        it at once.
        """
        self.locks.update_one({"_id": LOCK_ID, "holder": name, "owner": owner}, {"$set": {"owner": None}})

    def release_lock(self, name: str, owner: str | None = None) -> None:
        """Free the destination; a driver passes its ``owner``, so a lock taken over from it stays taken."""
        flt: dict[str, Any] = {"_id": LOCK_ID, "holder": name}
        if owner is not None:
            flt["owner"] = owner
        self.locks.update_one(flt, {"$set": {"holder": None, "owner": None}})

    def check_fence(self, name: str) -> None:
        """Raise LockHeldError if a newer driver took migration ``name`` over (before acting on a cluster)."""
        if self.fenced is not None and self.migrations.find_one(self._fenced(name), {"_id": 1}) is None:
            raise self._refused(name)

    def lock_holder(self) -> dict[str, Any] | None:
        doc = self.locks.find_one({"_id": LOCK_ID})
        return doc if doc and doc.get("holder") else None

    # -- checkpoint -------------------------------------------------------
    def save_checkpoint(self, cp: Checkpoint) -> None:
        """Store the resume point; refused (LockHeldError) once another driver with a newer epoch wrote one."""
        if self.fenced is not None and self.fenced[0] == cp.id:
            cp = cp.model_copy(update={"fence": self.fenced[1]})
        try:
            self.checkpoints.replace_one(self._fenced(cp.id), cp.to_mongo(), upsert=True)
        except DuplicateKeyError:
            raise self._refused(cp.id) from None

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        raw = self.checkpoints.find_one({"_id": name})
        _check_version(raw, f"checkpoints[{name}]")
        return Checkpoint.model_validate(raw) if raw else None

    # -- partitions -------------------------------------------------------
    def add_partitions(self, parts: list[Partition]) -> None:
        """Store plan records, all in one ``insert_many`` (the driver splits it at the server's batch limits)."""
        if parts:
            self.ensure_indexes()
            self.partitions.insert_many([p.to_mongo() for p in parts], ordered=False)

    def planned_namespaces(self, name: str) -> set[str]:
        """Every namespace the migration has plan records for, in one query (not one per namespace).

        An aggregation, not ``distinct``: its answer is a cursor, so tens of thousands of names never meet
        the 16 MB reply limit.
        """
        pipeline: list[dict[str, Any]] = [{"$match": {"migration": name}}, {"$group": {"_id": "$ns"}}]
        return {str(row["_id"]) for row in self.partitions.aggregate(pipeline)}

    def forget_plans(self, name: str, namespaces: list[str]) -> None:
        """Delete the plan records of these namespaces (a prepare starting them over), in chunks of names."""
        for i in range(0, len(namespaces), PLAN_CHUNK):
            self.partitions.delete_many({"migration": name, "ns": {"$in": namespaces[i : i + PLAN_CHUNK]}})

    def _claim_update(self, owner: str, lease_s: float, token: str) -> dict[str, Any]:
        lease = utcnow() + dt.timedelta(seconds=lease_s)
        return {
            "$set": {"status": PartitionStatus.PROCESSING.value, "owner": owner, "lease_until": lease, "claim": token},
            "$inc": {"attempts": 1},
        }

    def claim_partition(self, name: str, owner: str, lease_s: float) -> Partition | None:
        """Atomically take the next partition to copy: a new one, or one whose worker died."""
        update = self._claim_update(owner, lease_s, uuid.uuid4().hex)
        raw = self.partitions.find_one_and_update(
            {"migration": name, "status": PartitionStatus.ADDED.value},
            update,
            sort=[("ns", 1), ("seq", 1)],
            return_document=ReturnDocument.AFTER,
        )
        if raw is None:
            return self._reclaim(name, owner, update)
        return Partition.model_validate(raw)

    def claim_partitions(
        self, name: str, owner: str, lease_s: float, max_docs: int, limit: int = CLAIM_LIMIT
    ) -> list[Partition]:
        """Take the next partitions to copy, in plan order, together about ``max_docs`` estimated documents.

        Why: a claim per partition is a round trip per namespace (and on a server that scans for the next
        one, a read of the whole plan), which thousands of small collections pay thousands of times.  The
        first partition is always taken, whatever its size, and the next ones while their estimated
        documents fit in ``max_docs`` (at most ``limit``): a large collection's partitions are still taken
        one at a time, so workers share it.  Each partition moves added -> processing on its own in the
        update (its filter says ``status: added``), so no two claimants ever share one; the claim token
        tells this claim's partitions from those of the process's other threads (they share the owner).
        With no new partition left, one of a dead or expired worker is taken over, as
        :meth:`claim_partition` does.
        """
        added = {"migration": name, "status": PartitionStatus.ADDED.value}
        while True:
            found = self.partitions.find(added, {"_id": 1, "est_docs": 1}, sort=[("ns", 1), ("seq", 1)], limit=limit)
            ids: list[str] = []
            total = 0
            for cand in found:
                est = int(cand.get("est_docs") or 0)
                if ids and total + est > max_docs:
                    break
                ids.append(cand["_id"])
                total += est
            token = uuid.uuid4().hex
            update = self._claim_update(owner, lease_s, token)
            if not ids:
                taken = self._reclaim(name, owner, update)
                return [taken] if taken is not None else []
            self.partitions.update_many({"_id": {"$in": ids}, "status": PartitionStatus.ADDED.value}, update)
            mine = {"_id": {"$in": ids}, "claim": token, "owner": owner, "status": PartitionStatus.PROCESSING.value}
            got = {raw["_id"]: Partition.model_validate(raw) for raw in self.partitions.find(mine)}
            if got:
                return [got[i] for i in ids if i in got]
            # Another claimant took all of them between the read and the update: look again.

    def _reclaim(self, name: str, owner: str, update: dict[str, Any]) -> Partition | None:
        """Take over one partition of a dead worker, or one whose lease expired; None if there is none."""
        now = utcnow()
        for cand in self.partitions.find({"migration": name, "status": PartitionStatus.PROCESSING.value}):
            if cand.get("owner") == owner:
                continue
            expired = cand.get("lease_until") is not None and cand["lease_until"].replace(tzinfo=dt.UTC) < now
            if expired or owner_is_dead(cand.get("owner")):
                raw = self.partitions.find_one_and_update(
                    {"_id": cand["_id"], "owner": cand.get("owner"), "status": PartitionStatus.PROCESSING.value},
                    update,
                    return_document=ReturnDocument.AFTER,
                )
                if raw is not None:
                    log.info("reclaimed partition %s from %s", cand["_id"], cand.get("owner"))
                    return Partition.model_validate(raw)
        return None

    def partition_progress(self, pid: str, owner: str, docs: int, nbytes: int, lease_s: float) -> None:
        self.partitions.update_one(
            {"_id": pid, "owner": owner},
            {"$set": {"docs": docs, "bytes": nbytes, "lease_until": utcnow() + dt.timedelta(seconds=lease_s)}},
        )

    def finish_partition(self, pid: str, owner: str, docs: int, nbytes: int) -> None:
        self.finish_partitions(owner, [(pid, docs, nbytes)])

    def finish_partitions(self, owner: str, done: list[tuple[str, int, int]]) -> None:
        """Mark copied partitions done, each with its documents and bytes: one round trip for all of them."""
        if not done:
            return
        now = utcnow()
        self.partitions.bulk_write(
            [
                UpdateOne(
                    {"_id": pid, "owner": owner},
                    {"$set": {"status": PartitionStatus.DONE.value, "docs": docs, "bytes": nbytes, "finished_at": now}},
                )
                for pid, docs, nbytes in done
            ],
            ordered=False,
        )

    def release_partition(self, pid: str, owner: str) -> None:
        """Give a partition back (clean stop): another worker redoes it."""
        self.release_partitions([pid], owner)

    def release_partitions(self, pids: list[str], owner: str) -> None:
        """Give partitions back (a clean stop, or claimed ones not started in time): another claim takes them."""
        if pids:
            self.partitions.update_many(
                {"_id": {"$in": pids}, "owner": owner, "status": PartitionStatus.PROCESSING.value},
                {"$set": {"status": PartitionStatus.ADDED.value, "owner": None, "lease_until": None}},
            )

    def clone_summary(self, name: str) -> dict[str, dict[str, int]]:
        """Per namespace: partitions total/done, docs and bytes copied, estimated docs."""
        out: dict[str, dict[str, int]] = {}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"migration": name}},
            {
                "$group": {
                    "_id": "$ns",
                    "partitions": {"$sum": 1},
                    "done": {"$sum": {"$cond": [{"$eq": ["$status", "done"]}, 1, 0]}},
                    "docs": {"$sum": "$docs"},
                    "bytes": {"$sum": "$bytes"},
                    "est_docs": {"$sum": "$est_docs"},
                }
            },
        ]
        for row in self.partitions.aggregate(pipeline):
            ns = row.pop("_id")
            out[ns] = {k: int(v) for k, v in row.items()}
        return out

    def unfinished_partitions(self, name: str) -> int:
        return self.partitions.count_documents({"migration": name, "status": {"$ne": PartitionStatus.DONE.value}})

    # -- reports ----------------------------------------------------------
    def save_report(self, name: str, kind: str, report: dict[str, Any]) -> None:
        self.reports.insert_one(
            {"migration": name, "kind": kind, "at": utcnow(), "schema_version": SCHEMA_VERSION, "report": report}
        )

    def last_report(self, name: str, kind: str) -> dict[str, Any] | None:
        raw = self.reports.find_one({"migration": name, "kind": kind}, sort=[("at", -1)])
        return raw.get("report") if raw else None


class LockHeartbeat:
    """Keeps the destination lock fresh from a daemon thread while a migration runs.

    It also stops the migration when the lock can no longer be proven ours: taken by another process,
    or not renewed for 3/4 of ``lease_s`` (the destination unreachable): past ``lease_s`` another
    process may take the lock over, and by then this one must have stopped writing.
    """

    def __init__(
        self,
        store: MetadataStore,
        name: str,
        owner: str,
        interval_s: float,
        on_lost: Callable[[str], None] | None = None,
        lease_s: float | None = None,
    ) -> None:
        self._store, self._name, self._owner, self._interval = store, name, owner, interval_s
        self._on_lost = on_lost
        self._lease = lease_s if lease_s is not None else interval_s * 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lock-heartbeat-{name}", daemon=True)

    def __enter__(self) -> LockHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self._interval):
            try:
                with pymongo.timeout(self._interval):  # a hung destination must not hold the lease check back
                    held = self._store.heartbeat(self._name, self._owner)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried next tick
                log.warning("lock heartbeat failed: %s", type(exc).__name__)
                if time.monotonic() - renewed > self._lease * 0.75 and not self._stop.is_set():
                    self._lost(f"its destination lock could not be renewed for {time.monotonic() - renewed:.0f}s")
                    return
                continue
            if not held:
                # Another process took the lock after ours went stale: we must stop writing.
                self._lost("another process took its destination lock")
                return
            renewed = time.monotonic()

    def _lost(self, why: str) -> None:
        log.error("migration %s stops writing: %s", self._name, why)
        if self._on_lost is not None:
            self._on_lost(why)


def _owner_text(owner: str | None) -> str:
    """'pid 123 on host h' from an owner string (host[/pid namespace]:pid:random)."""
    if not owner:
        return "no process"
    host, _, rest = owner.partition(":")
    return f"pid {rest.partition(':')[0]} on host {host.partition('/')[0]}"


def _held_error(name: str, held: dict[str, Any], age: float, timeout_s: float) -> LockHeldError:
    who = _owner_text(held.get("owner"))
    beat = f"last heartbeat {age:.0f}s ago"
    if held.get("holder") == name:
        return LockHeldError(
            f"migration {name!r} is already running: driven by {who} ({beat})",
            remedy=f"let it finish or stop it; if that process is gone, run this command again: at once on its "
            f"own host, elsewhere once its heartbeat is older than lock_timeout_seconds ({timeout_s:g}s)",
        )
    return LockHeldError(
        f"destination is locked by migration {held.get('holder')!r}, driven by {who} ({beat})",
        remedy="wait for it to finish, cancel it, or wait for its lock to expire",
    )


def _dump(v: Any) -> Any:
    if hasattr(v, "model_dump"):
        return v.model_dump(by_alias=True, mode="python")
    if isinstance(v, list):
        return [_dump(x) for x in v]
    if isinstance(v, Phase):
        return v.value
    return v
