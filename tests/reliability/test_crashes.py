"""Crashes and faults: kill -9 during the clone and the sync, history lost, the destination lock, server restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import MongoClient

from flows.localservers import ServerPair
from tasks.errors import HistoryLostError, LockHeldError
from tasks.metadata import MetadataStore
from tasks.migration import Migration
from tasks.state import PartitionStatus
from tests.conftest import Deployment, requires_secantus
from tests.helpers import Writer, assert_same_data, make_config, seed_writer_data, spawn_migrator, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cfg_file(tmp_path: Path, src_uri: str, dst_uri: str, db: str, **tuning: Any) -> Path:
    data = {
        "name": f"crash-{db}"[:60],
        "source": {"uri": src_uri},
        "destination": {"uri": dst_uri},
        "namespaces": {"include": [f"{db}.*"]},
        "tuning": {
            "workers": 2,
            "partition_docs": 2000,
            "partitioning": "ranges",
            "batch_bytes": 65536,
            "connect_timeout_seconds": 5,
            **tuning,
        },
    }
    p = tmp_path / "crash.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_kill_9_during_clone_then_resume(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str, tmp_path: Path
) -> None:
    src_client[dbname]["big"].insert_many([{"_id": i, "pad": "p" * 400} for i in range(40_000)])
    cfg = _cfg_file(tmp_path, pair[0].uri, pair[1].uri, dbname)
    name = f"crash-{dbname}"[:60]
    store = MetadataStore(dst_client)
    proc = spawn_migrator(cfg, "clone")
    assert wait_until(lambda: store.partitions.count_documents({"migration": name, "status": "done"}) >= 2, 60, 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    done_before = {p["_id"] for p in store.partitions.find({"migration": name, "status": PartitionStatus.DONE.value})}
    total = store.partitions.count_documents({"migration": name})
    assert 0 < len(done_before) < total, "the kill did not land in the middle of the copy"
    proc = spawn_migrator(cfg, "drain")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    for p in store.partitions.find({"_id": {"$in": list(done_before)}}):
        assert p["attempts"] == 1, f"finished partition {p['_id']} was copied again"
    assert_same_data(src_client, dst_client, [dbname])


def test_kill_9_during_sync_then_resume(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str, tmp_path: Path
) -> None:
    src_client[dbname]["c"].insert_many([{"_id": i, "v": 0} for i in range(500)])
    cfg = _cfg_file(tmp_path, pair[0].uri, pair[1].uri, dbname)
    proc = spawn_migrator(cfg, "sync")
    assert proc.stdout is not None
    while "SYNCING" not in (line := proc.stdout.readline()):
        assert line, proc.stderr.read() if proc.stderr else "migrator exited"
    for i in range(300):
        src_client[dbname]["c"].update_one({"_id": i}, {"$inc": {"v": 1}})
        if i == 150:
            proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    src_client[dbname]["c"].delete_many({"_id": {"$gte": 400}})
    started = time.monotonic()
    proc = spawn_migrator(cfg, "drain")
    assert proc.stdout is not None
    while "BEGUN" not in (line := proc.stdout.readline()):
        assert line, proc.stderr.read() if proc.stderr else "migrator exited"
    # The killed driver was a process of this host that is gone: its lock is taken at once, not after
    # lock_timeout_seconds (60 s here).
    assert time.monotonic() - started < 30
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert_same_data(src_client, dst_client, [dbname])


def test_second_migration_refused_and_stale_lock_expires(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    src_client[dbname]["c"].insert_one({"_id": 1})
    first = make_config(pair[0].uri, pair[1].uri, dbname, name="first", tuning={"lock_timeout_seconds": 2})
    second = make_config(pair[0].uri, pair[1].uri, dbname, name="second", tuning={"lock_timeout_seconds": 2})
    m1 = Migration(first, src_client, dst_client)
    m1.begin()
    with pytest.raises(LockHeldError):
        Migration(second, src_client, dst_client).begin()
    m1._heartbeat.stop()  # type: ignore[union-attr]  # the holder "crashes": no more heartbeats
    time.sleep(2.5)
    m2 = Migration(second, src_client, dst_client)
    m2.begin()
    assert MetadataStore(dst_client).lock_holder()["holder"] == "second"  # type: ignore[index]
    m2.close()


@requires_secantus("starts a server with a tiny oplog")
def test_history_lost_is_terminal(tmp_path: Path) -> None:
    with ServerPair(tmp_path / "tiny", oplog_max_entries=50) as sp:
        src, dst = MongoClient(sp.source.uri()), MongoClient(sp.destination.uri())
        src["app"]["c"].insert_one({"_id": 0})
        cfg = make_config(sp.source.uri(), sp.destination.uri(), "app")
        with Migration(cfg, src, dst) as m:
            m.begin()
            m.clone()
        # The migrator is paused while the source writes far more than its oplog keeps.
        src["app"]["c"].insert_many([{"_id": i} for i in range(1, 1500)])
        for i in range(1, 1200):
            src["app"]["c"].update_one({"_id": i}, {"$set": {"x": 1}})
        with Migration(cfg, src, dst) as m:
            m.begin()
            runner = m.start_sync()
            with pytest.raises(HistoryLostError) as info:
                runner.wait(lambda st: False, 30)
        assert "restart the migration from the beginning" in info.value.one_line()
        src.close()
        dst.close()


@requires_secantus("restarts the source server")
def test_source_restart_during_sync(tmp_path: Path) -> None:
    with ServerPair(tmp_path / "restart") as sp:
        src, dst = MongoClient(sp.source.uri(), serverSelectionTimeoutMS=20000), MongoClient(sp.destination.uri())
        src["app"]["c"].insert_many([{"_id": i} for i in range(200)])
        cfg = make_config(sp.source.uri(), sp.destination.uri(), "app", tuning={"retry_max_seconds": 2})
        with Migration(cfg, src, dst) as m:
            m.begin()
            m.clone()
            runner = m.start_sync()
            src["app"]["c"].insert_many([{"_id": i} for i in range(200, 300)])
            sp.source.restart()
            src["app"]["c"].insert_many([{"_id": i} for i in range(300, 400)])
            src["app"]["c"].delete_many({"_id": {"$lt": 50}})
            from tasks.mongo import latest_optime

            target = latest_optime(src)
            assert runner.wait(lambda st: runner.applied_through(target), 60)
            assert_same_data(src, dst, ["app"])
        src.close()
        dst.close()


def test_no_leftover_processes() -> None:
    """Helpers above stop every server they start (pgrep finds none of their storage paths)."""
    r = subprocess.run(["pgrep", "-f", "tests.migrator_proc"], capture_output=True, text=True)
    assert r.stdout.strip() == "" or all(int(p) != os.getpid() for p in r.stdout.split())


@requires_secantus("restarts the destination server")
def test_destination_restart_during_sync(tmp_path: Path) -> None:
    """The destination goes away mid-sync (writes, checkpoints and the lock heartbeat fail), then comes back."""
    with ServerPair(tmp_path / "dst-restart") as sp:
        src = MongoClient(sp.source.uri(), serverSelectionTimeoutMS=20000)
        dst = MongoClient(sp.destination.uri(), serverSelectionTimeoutMS=20000)
        seed_writer_data(src, "app")
        tuning = {"retry_max_seconds": 2, "connect_timeout_seconds": 2}
        cfg = make_config(sp.source.uri(), sp.destination.uri(), "app", tuning=tuning)
        writer = Writer(src, "app", seed=5, rate_sleep=0.003)
        with Migration(cfg) as m:  # the engine's own clients: server selection gives up after 2 s
            m.begin()
            m.clone()
            runner = m.start_sync()
            writer.start()
            assert runner.wait(lambda st: st.applied_events > 50, 30)
            sp.destination.stop()  # data kept (--storage-path); the migrator's connections break
            time.sleep(4)  # longer than server selection waits: the sync sees the outage
            sp.destination.start()
            applied = runner.state.applied_events
            assert runner.wait(lambda st: st.applied_events > applied + 50, 60), "the sync did not continue"
            writer.stop()
            from tasks.mongo import latest_optime

            target = latest_optime(src)
            assert runner.wait(lambda st: runner.applied_through(target), 60)
            assert runner.state.reconnects > 0
            assert_same_data(src, dst, ["app"])
        writer.stop_event.set()
        src.close()
        dst.close()
