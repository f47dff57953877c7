"""Scale-out: two clone-worker processes share one partition plan; no partition is copied twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pymongo import MongoClient

from tasks.migration import Migration
from tasks.state import Phase
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_two_worker_processes_share_one_plan(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str, tmp_path: Path
) -> None:
    src_client[dbname]["a"].insert_many([{"_id": i, "p": "x" * 300} for i in range(12_000)])
    src_client[dbname]["b"].insert_many([{"_id": f"k{i:05d}", "p": "y" * 300} for i in range(8_000)])
    cfg = make_config(
        pair[0].uri,
        pair[1].uri,
        dbname,
        name="scaleout",
        tuning={"partition_docs": 1000, "partitioning": "ranges", "workers": 1, "batch_bytes": 65536},
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(
            {**cfg.model_dump(mode="json"), "source": {"uri": pair[0].uri}, "destination": {"uri": pair[1].uri}}
        )
    )
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.cloner().prepare()  # the plan is stored; the main process copies nothing itself
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "clone-worker", "--config", str(path), "--workers", "1"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-2000:]
        parts = list(m.store.partitions.find({"migration": "scaleout"}))
        assert len(parts) > 4
        assert all(p["status"] == "done" and p["attempts"] == 1 for p in parts), "a partition was copied twice"
        pids = {p["owner"].split(":")[1] for p in parts}
        assert len(pids) == 2, f"both workers should have copied partitions, got owners {pids}"
        m.clone()  # finishes: indexes, views, phase -> syncing (nothing left to copy)
        assert m.store.load("scaleout").phase == Phase.SYNCING
    assert_same_data(src_client, dst_client, [dbname])


def test_a_worker_lost_on_another_machine_is_taken_over_once_its_lease_runs_out(
    dst_client: MongoClient, dbname: str
) -> None:
    """Another host's process cannot be seen to die: its partitions wait for their lease, then are claimed again.

    (On this host a dead owner's pid is proof enough: tests/flows/test_scaleout.py kills one.)
    """
    import time

    from tasks.metadata import MetadataStore
    from tasks.state import Partition

    store = MetadataStore(dst_client)
    name = f"lease-{dbname}"[:60]
    store.add_partitions(
        [
            Partition(_id=f"{name}|{dbname}.c|{i:06d}", migration=name, ns=f"{dbname}.c", seq=i, types=["*"])
            for i in range(2)
        ]
    )
    elsewhere = "another-host/4026531836:4242:0badc0de"  # a live lease on a machine we cannot look into
    lost = store.claim_partitions(name, elsewhere, lease_s=1.5, max_docs=10)
    assert [p.seq for p in lost] == [0, 1]
    assert store.claim_partitions(name, "me", lease_s=60, max_docs=10) == []  # the lease still holds
    time.sleep(1.6)
    taken = [store.claim_partitions(name, "me", lease_s=60, max_docs=10) for _ in range(3)]
    got = [p for batch in taken for p in batch]
    assert sorted(p.seq for p in got) == [0, 1]  # one at a time, each once
    assert all(p.owner == "me" and p.attempts == 2 for p in got)
    store.partitions.delete_many({"migration": name})
