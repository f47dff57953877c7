"""Test helpers: configs for the test servers and byte-for-byte comparison."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bson import decode, encode
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pydantic import SecretStr
from pymongo import MongoClient, monitoring

from tasks.config import MigrationConfig, config_from_dict

RAWC = CodecOptions(document_class=RawBSONDocument)


def make_config(src_uri: str, dst_uri: str, db: str, **over: Any) -> MigrationConfig:
    data: dict[str, Any] = {
        "name": over.pop("name", f"m-{db}"[:60]),
        "source": {"uri": src_uri},
        "destination": {"uri": dst_uri},
        "namespaces": {"include": [f"{db}.*", f"{db}_*.*"]},
        "cutover": {
            "max_lag_seconds": 5,
            "ready_after_seconds": 0.5,
            "drain_timeout_seconds": 60,
            "quiesce_seconds": 0.5,
        },
        "tuning": {
            "workers": 2,
            "partition_docs": 1000,
            "partitioning": "ranges",  # split even where SecantusDB scans: the suite exercises partitions
            "connect_timeout_seconds": 5,
            "lock_timeout_seconds": 10,
        },
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    cfg = config_from_dict(data)
    assert isinstance(cfg.source.uri, SecretStr)
    return cfg


def raw_docs(client: MongoClient[Any], db: str, coll: str) -> dict[bytes, bytes]:
    """{encoded _id: raw document bytes} for a whole collection."""
    c = client[db].get_collection(coll, codec_options=RAWC)
    return {encode({"_id": d["_id"]}): bytes(d.raw) for d in c.find()}


def assert_same_data(src: MongoClient[Any], dst: MongoClient[Any], dbs: list[str]) -> int:
    """Every collection in ``dbs`` is byte-for-byte equal on both sides; returns the documents compared."""
    n = 0
    for db in dbs:
        s_colls = sorted(c["name"] for c in src[db].list_collections() if c.get("type") != "view")
        d_colls = sorted(c["name"] for c in dst[db].list_collections() if c.get("type") != "view")
        assert s_colls == d_colls, f"{db}: collections differ: {s_colls} vs {d_colls}"
        for coll in s_colls:
            a, b = raw_docs(src, db, coll), raw_docs(dst, db, coll)
            missing = a.keys() - b.keys()
            extra = b.keys() - a.keys()
            changed = [k for k in a.keys() & b.keys() if a[k] != b[k]]
            assert not missing and not extra and not changed, (
                f"{db}.{coll}: {len(missing)} missing, {len(extra)} extra, {len(changed)} changed"
                + (f"; first: {decode(a[changed[0]])} vs {decode(b[changed[0]])}" if changed else "")
            )
            n += len(a)
    return n


def drain(m: Any, src: MongoClient[Any], timeout: float = 60.0) -> None:
    """Start (or keep) the migration's sync and wait until it has applied the source's latest write."""
    from tasks.mongo import latest_optime

    target = latest_optime(src)
    runner = m.start_sync()
    assert runner.wait(lambda st: runner.applied_through(target), timeout), "sync did not drain"


def spawn_migrator(cfg: Any, mode: str) -> subprocess.Popen[str]:
    """tests/migrator_proc.py in its own process (stdout and stderr piped, text)."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.migrator_proc", str(cfg), mode],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(pred: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


class Writer(threading.Thread):
    """A concurrent writer: inserts, $set/$unset/$inc/$push updates, replaces, deletes, unique swaps."""

    def __init__(
        self, client: MongoClient[Any], db: str, seed: int = 1, rate_sleep: float = 0.0, one_new_field: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.client, self.db, self.seed, self.rate_sleep = client, db, seed, rate_sleep
        # one_new_field: inserts and replacements carry "n", so no update adds two fields at once.  SecantusDB
        # applies a $set before an $inc and lists the new fields sorted in the event, unlike its own document;
        # MongoDB 5.0+ adds both sorted, as the event says (update-operators page, "Behavior").
        self.extra = {"n": 0} if one_new_field else {}
        self.stop_event = threading.Event()
        self.ops = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import random

        rnd = random.Random(self.seed)
        coll = self.client[self.db]["live"]
        uniq = self.client[self.db]["uniq"]
        next_id = 100_000
        try:
            while not self.stop_event.is_set():
                k = rnd.randrange(0, 300)
                r = rnd.random()
                if r < 0.25:
                    coll.insert_one({"_id": next_id, "v": rnd.random(), "tags": [], **self.extra})
                    next_id += 1
                elif r < 0.45:
                    coll.update_one({"_id": k}, {"$set": {"s": rnd.random()}, "$inc": {"n": 1}})
                elif r < 0.55:
                    coll.update_one({"_id": k}, {"$unset": {"s": ""}, "$push": {"tags": rnd.randrange(10)}})
                elif r < 0.65:
                    coll.replace_one(
                        {"_id": k}, {"_id": k, "replaced": True, "r": rnd.random(), **self.extra}, upsert=True
                    )
                elif r < 0.75:
                    coll.delete_one({"_id": rnd.randrange(0, next_id)})
                elif r < 0.85:
                    # swap the unique 'email' values of two documents (transient duplicates on the way)
                    a, b = rnd.sample(range(50), 2)
                    da, db_ = uniq.find_one({"_id": a}), uniq.find_one({"_id": b})
                    if da and db_:
                        uniq.update_one({"_id": a}, {"$set": {"email": f"tmp-{a}-{self.ops}"}})
                        uniq.update_one({"_id": b}, {"$set": {"email": da["email"]}})
                        uniq.update_one({"_id": a}, {"$set": {"email": db_["email"]}})
                else:
                    coll.update_many({"_id": {"$lt": 20}}, {"$inc": {"bulk": 1}})
                self.ops += 1
                if self.rate_sleep:
                    time.sleep(self.rate_sleep)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def stop(self) -> int:
        self.stop_event.set()
        self.join(30)
        if self.error:
            raise self.error
        return self.ops


def seed_writer_data(client: MongoClient[Any], db: str) -> None:
    client[db]["live"].insert_many([{"_id": i, "v": i, "tags": [], "n": 0} for i in range(300)])
    client[db]["uniq"].insert_many([{"_id": i, "email": f"user{i}@example.com"} for i in range(50)])
    client[db]["uniq"].create_index("email", unique=True)


class CommandLog(monitoring.CommandListener):
    """The commands of one name a client sent (their fields, without the driver's own)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == self.name:
            self.commands.append({k: v for k, v in event.command.items() if not k.startswith(("$", "lsid"))})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class CommandFailures(monitoring.CommandListener):
    """Counts, per command name, what a client saw go wrong: error replies, dropped connections,
    and write concern errors (a reply that is ok but carries ``writeConcernError``)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        reply = event.reply
        if reply is not None and "writeConcernError" in reply:
            with self._lock:
                self.counts[event.command_name] += 1

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            self.counts[event.command_name] += 1

    def total(self, names: list[str]) -> int:
        with self._lock:
            return sum(self.counts[n] for n in names)


def configure_fail_command(client: MongoClient[Any], mode: Any, **data: Any) -> None:
    """``configureFailPoint failCommand`` (the server needs test commands enabled); mode "off" clears it."""
    client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})


@contextmanager
def fail_command(client: MongoClient[Any], mode: Any, **data: Any) -> Iterator[None]:
    """A failCommand fail point for the duration of the block (always switched off afterwards)."""
    configure_fail_command(client, mode, **data)
    try:
        yield
    finally:
        configure_fail_command(client, "off")


@dataclass
class Fault:
    """One injected server fault: fail ``commands`` ``times`` times for clients named ``app``."""

    commands: list[str]
    times: int
    data: dict[str, Any]

    def describe(self) -> str:
        what = "closeConnection" if self.data.get("closeConnection") else None
        what = what or (
            f"writeConcernError {self.data['writeConcernError'].get('code')}"
            if "writeConcernError" in self.data
            else None
        )
        return f"{'+'.join(self.commands)} x{self.times} {what or 'errorCode ' + str(self.data.get('errorCode'))}"


class FaultSchedule(threading.Thread):
    """Injects faults one after another on one server, each until the migrator's client saw it ``times`` times.

    ``admin`` configures the fail points (it is not named ``app``, so it is never failed);
    ``seen`` is the CommandFailures listener of the migrator's client on that server.
    """

    def __init__(
        self,
        admin: MongoClient[Any],
        app: str,
        seen: CommandFailures,
        faults: list[Fault],
        per_fault_s: float = 60.0,
        gap_s: float = 1.0,
    ) -> None:
        super().__init__(daemon=True)
        self.admin, self.app, self.seen, self.faults, self.per_fault_s = admin, app, seen, faults, per_fault_s
        self.gap_s = gap_s  # quiet time between two faults, so some work gets through in between
        self.fired: list[str] = []
        self.missed: list[str] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for f in self.faults:
                if self.stop_event.is_set():
                    self.missed.append(f.describe())
                    continue
                before = self.seen.total(f.commands)
                configure_fail_command(
                    self.admin, {"times": f.times}, failCommands=f.commands, appName=self.app, **f.data
                )
                ok = wait_until(functools.partial(self._seen, f, before), self.per_fault_s, 0.02)
                configure_fail_command(self.admin, "off")
                (self.fired if ok and not self.stop_event.is_set() else self.missed).append(f.describe())
                self.stop_event.wait(self.gap_s)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc
        finally:
            try:
                configure_fail_command(self.admin, "off")
            except Exception:  # noqa: BLE001, S110 - best effort; the server may be gone
                pass

    def _seen(self, fault: Fault, before: int) -> bool:
        return self.stop_event.is_set() or self.seen.total(fault.commands) - before >= fault.times

    def finish(self, timeout: float = 60.0) -> list[str]:
        """Wait for the schedule to end; returns the faults that fired."""
        self.join(timeout)
        if self.is_alive():
            self.stop_event.set()
            self.join(10)
        if self.error:
            raise self.error
        return self.fired


class RetryingWriter(threading.Thread):
    """A steady writer that rides out server restarts: a network error pauses it, then it carries on.

    Inserts, $set/$inc/$push updates, replaces, deletes and a multi-document update, like Writer,
    but an operation interrupted by a dropped connection is simply not retried (the source is the
    truth either way) and an insert that did land before the error is not inserted twice.
    """

    def __init__(self, client: MongoClient[Any], db: str, seed: int = 1, rate_sleep: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.client, self.db, self.seed, self.rate_sleep = client, db, seed, rate_sleep
        self.stop_event = threading.Event()
        self.ops = 0
        self.interruptions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import random

        from pymongo.errors import ConnectionFailure, DuplicateKeyError

        rnd = random.Random(self.seed)
        coll = self.client[self.db]["live"]
        next_id = 100_000
        while not self.stop_event.is_set():
            k = rnd.randrange(0, 300)
            r = rnd.random()
            try:
                if r < 0.3:
                    next_id += 1
                    coll.insert_one({"_id": next_id, "v": rnd.random(), "tags": []})
                elif r < 0.55:
                    coll.update_one({"_id": k}, {"$set": {"s": rnd.random()}, "$inc": {"n": 1}})
                elif r < 0.65:
                    coll.update_one({"_id": k}, {"$unset": {"s": ""}, "$push": {"tags": rnd.randrange(10)}})
                elif r < 0.75:
                    coll.replace_one({"_id": k}, {"_id": k, "replaced": True, "r": rnd.random()}, upsert=True)
                elif r < 0.95:
                    coll.delete_one({"_id": rnd.randrange(0, next_id)})
                else:
                    coll.update_many({"_id": {"$lt": 20}}, {"$inc": {"bulk": 1}})
                self.ops += 1
            except DuplicateKeyError:
                pass  # an insert interrupted after it landed
            except ConnectionFailure:
                self.interruptions += 1
                self.stop_event.wait(0.5)
            except BaseException as exc:  # noqa: BLE001 - reported by stop()
                self.error = exc
                return
            if self.rate_sleep:
                time.sleep(self.rate_sleep)

    def stop(self) -> int:
        self.stop_event.set()
        self.join(30)
        if self.error:
            raise self.error
        return self.ops
