"""kill -9 during the cutover: the same command carries the approved cutover on and the verification passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pymongo import MongoClient

from tasks.metadata import MetadataStore
from tasks.state import Phase
from tests.conftest import Deployment
from tests.helpers import Writer, assert_same_data, seed_writer_data, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def spawn_cutover(cfg: Path, approver: str = "oncall-ana") -> subprocess.Popen[str]:
    """tests.cutover_proc in its own process group (so kill -9 takes the whole migrator)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cutover_proc", str(cfg), approver],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_kill_9_during_cutover_drain_then_resume(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str, tmp_path: Path
) -> None:
    seed_writer_data(src_client, dbname)
    src_client[dbname]["bulk"].insert_many([{"_id": i, "pad": "x" * 200} for i in range(5000)])
    name = f"cut-{dbname}"[:60]
    cfg = tmp_path / "m.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "source": {"uri": pair[0].uri},
                "destination": {"uri": pair[1].uri},
                "namespaces": {"include": [f"{dbname}.*"]},
                # SecantusDB has no write blocking: the cutover watches the source go quiet, which the
                # running writer prevents, so the process is inside the cutover when it is killed.
                "cutover": {"max_lag_seconds": 5, "ready_after_seconds": 0.5, "quiesce_seconds": 1.5},
                "tuning": {
                    "workers": 2,
                    "partition_docs": 1000,
                    "partitioning": "ranges",
                    "connect_timeout_seconds": 5,
                },
            }
        )
    )
    store = MetadataStore(dst_client)
    writer = Writer(src_client, dbname, seed=7, rate_sleep=0.002)
    writer.start()
    proc = spawn_cutover(cfg)
    try:
        cutting = lambda: (d := store.get(name)) is not None and d.phase == Phase.CUTTING_OVER  # noqa: E731
        assert wait_until(cutting, 90, 0.05), proc.stderr.read() if proc.poll() is not None else "never cut over"
        wait_until(lambda: False, 0.5, 0.1)  # let the drain and the checkpoints move on a little
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        writer.stop_event.set()
        writer.join(10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert writer.error is None
    doc = store.load(name)
    assert doc.phase == Phase.CUTTING_OVER

    again = spawn_cutover(cfg)
    out, errs = again.communicate(timeout=180)
    assert again.returncode == 0, errs[-3000:]
    assert "RESUMING" in out and "COMPLETE" in out
    doc = store.load(name)
    assert doc.phase == Phase.COMPLETE
    assert doc.last_verification and doc.last_verification["equal"] is True
    resumed = [d for d in doc.decisions if d.action == "cutover-resumed"]
    assert len(resumed) == 1 and resumed[0].approver == "oncall-ana"
    assert store.lock_holder() is None
    assert_same_data(src_client, dst_client, [dbname])
