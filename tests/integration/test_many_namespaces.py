"""Many small collections: the clone's cost per namespace is its data and its DDL, not bookkeeping.

Why (issue 20): with one database per tenant, a cluster holds thousands of collections of a few documents.
A claim, a plan record, a "done" record or an existence check per collection is a round trip each (and on a
server that reads the whole plan to find the next partition, a read of the plan each): 90 ms per namespace
were measured.  The clone now plans, claims and records small partitions in batches and lists each
database once; these tests count the commands it sends and check that every partition is copied once.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from pymongo import MongoClient, monitoring

from tasks import clone
from tasks.config import METADATA_DB
from tasks.metadata import MetadataStore
from tasks.migration import Migration
from tasks.state import MigrationDoc, Partition, PartitionStatus
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config

pytestmark = pytest.mark.integration


class _Census(monitoring.CommandListener):
    """Commands sent, by (database, command name, collection)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        with self._lock:
            self.counts[(event.database_name, event.command_name, target if isinstance(target, str) else "")] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def total(self, *, db: str | None = None, name: str | None = None, coll: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (d, c, t), n in self.counts.items()
                if (db is None or d == db) and (name is None or c == name) and (coll is None or t == coll)
            )


def _seed(src: MongoClient[Any], dbs: list[str], per_db: int) -> None:
    for db in dbs:
        for c in range(per_db):
            coll = src[db][f"c{c:02d}"]
            coll.insert_many([{"_id": i, "n": i, "s": f"v{i}"} for i in range(3)])
            coll.create_index("n", name="n_1")
            coll.create_index([("s", 1), ("n", -1)], name="s_n")


def test_a_clone_of_200_small_collections_sends_bookkeeping_per_database_not_per_collection(
    pair: tuple[Deployment, Deployment], src_client: MongoClient[Any], dbname: str
) -> None:
    dbs = [f"{dbname}_{i}" for i in range(10)]
    _seed(src_client, dbs, 20)
    census = _Census()
    dst = pair[1].client(event_listeners=[census])
    try:
        cfg = make_config(pair[0].uri, pair[1].uri, dbname)  # two workers claiming at once
        with Migration(cfg, src_client, dst) as m:
            m.begin()
            census.counts.clear()
            stats = m.clone()
            left = m.store.partitions.count_documents({"migration": cfg.name, "status": {"$ne": "done"}})
        assert assert_same_data(src_client, dst, dbs) == 600
        assert all(
            {i["name"] for i in dst[db][f"c{c:02d}"].list_indexes()} == {"_id_", "n_1", "s_n"}
            for db in dbs
            for c in range(20)
        )
    finally:
        dst.close()
    assert (stats.partitions, stats.docs, left) == (200, 600, 0)  # every partition copied once, all recorded done
    plan = sum(census.total(db=METADATA_DB, name=n, coll="partitions") for n in ("insert", "update", "findAndModify"))
    assert plan <= 30, census.counts  # was 600: a plan insert, a claim and a "done" update per collection
    assert census.total(db=METADATA_DB, name="find", coll="partitions") <= 30, census.counts  # was 200 (has_plan)
    assert census.total(name="listCollections") <= 2 * len(dbs), census.counts  # was 400: existence checks
    built = census.total(name="createIndexes") - census.total(db=METADATA_DB, name="createIndexes")
    assert built == 200  # one per collection, with both its indexes


def test_claims_take_small_partitions_together_and_large_ones_alone(dst_client: MongoClient[Any], dbname: str) -> None:
    store = MetadataStore(dst_client)
    sizes = [10, 10, 10, 900, 500, 500, 10]

    def part(i: int, est: int) -> Partition:
        rec = {"_id": f"{dbname}|d.c{i}|000000", "migration": dbname, "ns": f"d.c{i}", "seq": 0, "types": ["*"]}
        return Partition.model_validate({**rec, "est_docs": est})

    store.add_partitions([part(i, est) for i, est in enumerate(sizes)])
    assert store.planned_namespaces(dbname) == {f"d.c{i}" for i in range(len(sizes))}
    claims = []
    while got := store.claim_partitions(dbname, "me", 60, max_docs=1000):
        claims.append([p.ns for p in got])
        assert all(p.status == PartitionStatus.PROCESSING and p.owner == "me" and p.attempts == 1 for p in got)
    assert claims == [["d.c0", "d.c1", "d.c2", "d.c3"], ["d.c4", "d.c5"], ["d.c6"]]
    store.release_partitions([f"{dbname}|d.c6|000000"], "someone-else")  # not theirs: nothing happens
    assert store.claim_partitions(dbname, "other", 60, max_docs=1000) == []
    store.release_partitions([f"{dbname}|d.c6|000000"], "me")
    assert [p.ns for p in store.claim_partitions(dbname, "other", 60, max_docs=1000)] == ["d.c6"]
    store.forget_plans(dbname, ["d.c0", "d.c6"])
    assert len(store.planned_namespaces(dbname)) == len(sizes) - 2


def test_claimed_partitions_not_started_in_time_are_given_back_and_copied_once(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim of several partitions whose lease would run out before the last starts gives the rest back."""
    _seed(src_client, [dbname], 5)
    monkeypatch.setattr(clone, "LEASE_SECONDS", 0.001)  # every claim is late once its first partition is copied
    cfg = make_config(pair[0].uri, pair[1].uri, dbname, tuning={"workers": 1})
    store = MetadataStore(dst_client)
    store.create(MigrationDoc(id=cfg.name))  # the record the clone needs (no start point: nothing is synced here)
    cloner = clone.Cloner(cfg, src_client, dst_client, store, "worker-1")
    cloner.prepare()
    stats = cloner.run()
    parts = list(store.partitions.find({"migration": cfg.name}))
    assert stats.partitions == 5 and all(p["status"] == "done" and p["owner"] == "worker-1" for p in parts)
    assert sorted(p["attempts"] for p in parts) == [1, 2, 3, 4, 5]  # claimed with the rest, given back, claimed again
    assert assert_same_data(src_client, dst_client, [dbname]) == 15
