"""Soak: a long migration under steady writes, two extra clone-worker processes and one server restart.

Run with `make soak` (``pytest -m soak tests/reliability/test_soak.py``); `make test` deselects it
(pyproject addopts ``-m "not soak"``).  The run lasts LIVEMIGRATE_SOAK_SECONDS (default 600)
from the first copied document to the end of the sync; then the writer stops, the sync drains
and the destination must equal the source byte for byte.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import MongoClient

from flows.localservers import ServerPair
from tasks.migration import Migration
from tasks.mongo import latest_optime
from tests.conftest import requires_secantus
from tests.helpers import RetryingWriter, assert_same_data, make_config, seed_writer_data

DURATION = float(os.environ.get("LIVEMIGRATE_SOAK_SECONDS", "600"))
OUTAGE_S = 8.0  # the injected restart keeps the source down this long
ROOT = Path(__file__).resolve().parents[2]
DB = "soak"
log = logging.getLogger(__name__)

pytestmark = [pytest.mark.soak, pytest.mark.integration, requires_secantus("restarts a server it starts itself")]


def _seed(client: MongoClient[Any]) -> None:
    seed_writer_data(client, DB)
    for start in range(0, 40_000, 10_000):
        client[DB]["ints"].insert_many([{"_id": i, "pad": "i" * 300, "n": i} for i in range(start, start + 10_000)])
    client[DB]["strings"].insert_many([{"_id": f"s{i:06d}", "pad": "s" * 300} for i in range(15_000)])
    client[DB]["ints"].create_index("n")


def _config_file(tmp_path: Path, sp: ServerPair) -> tuple[Path, Any]:
    tuning = {
        "workers": 1,
        "partition_docs": 2000,
        "partitioning": "ranges",
        "batch_bytes": 262144,
        "connect_timeout_seconds": 5,
        "retry_max_seconds": 2,
        "lock_timeout_seconds": 30,
    }
    cfg = make_config(sp.source.uri(), sp.destination.uri(), DB, name="soak", tuning=tuning)
    path = tmp_path / "soak.yaml"
    data = {
        **cfg.model_dump(mode="json"),
        "source": {"uri": sp.source.uri()},
        "destination": {"uri": sp.destination.uri()},
    }
    path.write_text(yaml.safe_dump(data))
    return path, cfg


@pytest.mark.timeout(int(DURATION) + 900)
def test_soak(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with ServerPair(tmp_path / "servers", oplog_max_entries=3_000_000) as sp:
        src = MongoClient(sp.source.uri(), serverSelectionTimeoutMS=3_000)
        dst = MongoClient(sp.destination.uri(), serverSelectionTimeoutMS=30_000)
        _seed(src)
        path, cfg = _config_file(tmp_path, sp)
        writer = RetryingWriter(src, DB, seed=41, rate_sleep=0.002)
        writer.start()
        workers: list[subprocess.Popen[str]] = []
        try:
            with Migration(cfg) as m:
                m.begin()
                m.cloner().prepare()  # the plan the worker processes wait for
                start = time.monotonic()
                workers = [
                    subprocess.Popen(
                        [sys.executable, "-m", "flows.cli", "clone-worker", "--config", str(path), "--workers", "1"],
                        cwd=ROOT,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    for _ in range(2)
                ]
                m.clone(workers=1)  # this process copies too, then waits for the workers' partitions
                for p in workers:
                    _, err = p.communicate(timeout=300)
                    assert p.returncode == 0, err[-2000:]
                owners = {p["owner"].split(":")[1] for p in m.store.partitions.find({"migration": "soak"})}
                assert len(owners) == 3, f"the two worker processes and this one should all copy: {owners}"
                clone_s = time.monotonic() - start
                runner = m.start_sync()
                restart_at, restarted, max_lag = start + DURATION * 0.6, False, 0.0
                while time.monotonic() < start + DURATION:
                    time.sleep(1)
                    assert runner.state.error is None, runner.state.error
                    assert writer.is_alive(), writer.error
                    if not restarted and time.monotonic() >= restart_at:
                        # Down longer than the migrator's server selection waits (connect_timeout_seconds):
                        # the change stream and the writer both lose the source and must come back.
                        sp.source.stop()
                        time.sleep(OUTAGE_S)
                        sp.source.start()
                        restarted = True
                    max_lag = max(max_lag, runner.state.lag_seconds or 0.0)
                # The outage really happened (the writer lost the source). The sync may ride it out through its
                # own reconnect or through pymongo's one automatic change stream resume: either is fine, and the
                # byte-for-byte comparison below is what says nothing was lost.
                assert restarted and writer.interruptions > 0
                ops = writer.stop()
                target = latest_optime(src)
                drain_start = time.monotonic()
                assert runner.wait(lambda st: runner.applied_through(target), 300), f"no drain: {runner.state}"
                drain_s = time.monotonic() - drain_start
                docs = assert_same_data(src, dst, [DB])
                st = runner.state
                summary = (
                    f"soak: {DURATION:.0f}s, clone {clone_s:.1f}s, drain {drain_s:.1f}s, {docs} docs equal, "
                    f"{ops} writes ({writer.interruptions} interrupted by the restart), {st.applied_events} events "
                    f"applied, {st.reconnects} sync reconnects, max lag {max_lag:.0f}s, total {time.monotonic() - t0:.0f}s"
                )
                print(summary)
                log.warning(summary)
        finally:
            writer.stop_event.set()
            for p in workers:
                if p.poll() is None:
                    p.kill()
            src.close()
            dst.close()
