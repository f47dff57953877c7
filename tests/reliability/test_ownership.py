"""One process drives a migration: a second driver is refused, a driver that lost the lock cannot write.

The lock on the destination carries the driving process (host, pid, random part) and an epoch raised at
every acquisition; the migration record and its checkpoint carry the epoch of the driver that wrote
them, so a driver whose lock was taken over is refused (fencing) even before its heartbeat notices.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import MongoClient
from pymongo.errors import AutoReconnect

from tasks.errors import LockHeldError
from tasks.metadata import LOCK_ID, LockHeartbeat, MetadataStore, process_owner
from tasks.migration import Migration
from tasks.state import Checkpoint
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config, spawn_migrator, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LIVEMIGRATE = str(Path(sys.executable).parent / "livemigrate")


def test_a_second_driver_is_refused_with_the_holder_named(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str, tmp_path: Path
) -> None:
    src_client[dbname]["big"].insert_many([{"_id": i, "pad": "p" * 300} for i in range(30_000)])
    data = {
        "name": f"own-{dbname}"[:60],
        "source": {"uri": pair[0].uri},
        "destination": {"uri": pair[1].uri},
        "namespaces": {"include": [f"{dbname}.*"]},
        "tuning": {"workers": 1, "partition_docs": 2000, "partitioning": "ranges", "batch_bytes": 65536},
    }
    cfg = tmp_path / "own.yaml"
    cfg.write_text(yaml.safe_dump(data))
    first = spawn_migrator(cfg, "drain")
    assert first.stdout is not None
    while "BEGUN" not in (line := first.stdout.readline()):
        assert line, first.stderr.read() if first.stderr else "the first migrator exited"
    # The same migration, while the first is cloning: the engine refuses it, and so does the command
    # a user runs, before it starts any orchestration.
    for second_cmd in (
        [sys.executable, "-m", "tests.migrator_proc", str(cfg), "drain"],
        [LIVEMIGRATE, "migrate", "--config", str(cfg)],
    ):
        started = time.monotonic()
        second = subprocess.run(second_cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr[-2000:]
        assert time.monotonic() - started < 15
        line = second.stderr.strip().splitlines()[-1]
        assert "already running" in line and f"pid {first.pid}" in line and socket.gethostname() in line, line
        assert "Traceback" not in second.stderr
    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-2000:]
    assert "DRAINED" in out
    assert_same_data(src_client, dst_client, [dbname])


def test_a_driver_whose_lock_was_taken_over_cannot_write_state(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    src_client[dbname]["c"].insert_many([{"_id": i, "v": 0} for i in range(200)])
    cfg = make_config(pair[0].uri, pair[1].uri, dbname, tuning={"lock_timeout_seconds": 30})
    store = MetadataStore(dst_client)
    a = Migration(cfg, src_client, dst_client)
    b = Migration(cfg, src_client, dst_client)
    try:
        a.begin()
        a.clone()
        assert a.wait_ready(30)
        assert a._heartbeat is not None
        a._heartbeat.stop()
        stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120)
        store.locks.update_one({"_id": LOCK_ID}, {"$set": {"heartbeat_at": stale}})
        b.begin()  # B takes over: its epoch is newer
        b_cp = store.load_checkpoint(cfg.name)
        assert b_cp is not None
        with pytest.raises(LockHeldError):
            a.store.save_checkpoint(Checkpoint(id=cfg.name, token={"_data": "stale"}, applied_events=999))
        with pytest.raises(LockHeldError):
            a.store.update(cfg.name, warnings=["written by a driver that lost the lock"])
        # A's sync notices at its next checkpoint and stops; it marks nothing failed: B drives now.
        src_client[dbname]["c"].update_many({}, {"$inc": {"v": 1}})
        runner = a.runner
        assert runner is not None
        assert wait_until(lambda: not runner.alive(), 15), "A kept syncing without the lock"
        assert isinstance(runner.state.error, LockHeldError)
        cp = store.load_checkpoint(cfg.name)
        assert cp is not None and cp.fence == b_cp.fence and cp.token != {"_data": "stale"}
        assert store.load(cfg.name).phase.value == "syncing"
        assert store.load(cfg.name).warnings == []
        target_runner = b.start_sync()
        from tasks.mongo import latest_optime

        target = latest_optime(src_client)
        assert target_runner.wait(lambda st: target_runner.applied_through(target), 60)
        assert_same_data(src_client, dst_client, [dbname])
    finally:
        a.close()
        b.close()


class _UnreachableStore:
    """Answers a heartbeat the way an unreachable destination does."""

    def heartbeat(self, name: str, owner: str) -> bool:
        raise AutoReconnect("destination unreachable")


def test_a_heartbeat_that_cannot_renew_its_lease_stops_the_driver() -> None:
    lost: list[str] = []
    done = threading.Event()

    def on_lost(why: str) -> None:
        lost.append(why)
        done.set()

    store: Any = _UnreachableStore()
    started = time.monotonic()
    with LockHeartbeat(store, "m", "h:1:x", interval_s=0.05, on_lost=on_lost, lease_s=0.4):
        assert done.wait(5)
    assert 0.3 <= time.monotonic() - started < 3
    assert "could not be renewed" in lost[0]


def test_racing_first_acquisitions_leave_exactly_one_driver(dst_client: MongoClient, dbname: str) -> None:
    store = MetadataStore(dst_client)
    store.locks.delete_one({"_id": LOCK_ID})  # the first lock this destination ever sees
    won: list[int] = []
    refused: list[LockHeldError] = []
    start = threading.Barrier(6)

    def race(i: int) -> None:
        own = MetadataStore(dst_client)
        start.wait()
        try:
            won.append(own.acquire_lock(f"race-{dbname}", process_owner(), 60))
        except LockHeldError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(won) == 1 and len(refused) == 5, (won, refused)
    finally:
        store.locks.delete_one({"_id": LOCK_ID})


def test_an_aborted_applier_writes_nothing_more(dst_client: MongoClient, dbname: str) -> None:
    from bson import encode
    from bson.raw_bson import RawBSONDocument

    from tasks.apply import Applier, ApplyStats
    from tasks.namespaces import NamespaceFilter

    applier = Applier(dst_client, NamespaceFilter.from_rules(None), lanes=2)
    applier.halt = LockHeldError("another process took the destination lock")
    ev = {
        "operationType": "insert",
        "ns": {"db": dbname, "coll": "c"},
        "documentKey": {"_id": 1},
        "fullDocument": {"_id": 1},
    }
    try:
        with pytest.raises(LockHeldError):
            applier.apply([RawBSONDocument(encode(ev))], ApplyStats())
    finally:
        applier.close()
    assert dst_client[dbname]["c"].count_documents({}) == 0
