"""Issue 17: verification during the sync, a cutover that re-reads only what changed, downtime by part.

Every test runs the engine against the two test servers; the clusters are compared byte for byte by
tests.helpers.assert_same_data, which shares no code with the verifier.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pymongo import MongoClient

from checks.continuous import DirtySet, event_id_key
from tasks.migration import CutoverRefused, Migration
from tasks.status import describe
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config, wait_until

pytestmark = pytest.mark.integration


def _verify(m: Migration) -> Any:
    def verify(doc: Any) -> dict[str, Any]:
        result = m.final_verification(doc)
        summary: dict[str, Any] = result.to_dict()
        summary["equal"] = bool(result.equal)
        return summary

    return verify


def _config(pair: tuple[Deployment, Deployment], dbname: str, **verification: Any) -> Any:
    return make_config(
        pair[0].uri,
        pair[1].uri,
        dbname,
        verification={"interval_seconds": 0.2, **verification},
        cutover={"quiesce_seconds": 0},
    )


def _proven(m: Migration, timeout: float = 60.0) -> None:
    """Wait until every partition has been hashed once and nothing is left in flight."""

    def done() -> bool:
        v = m.verifier
        if v is None:
            return False
        st = v.status()
        return st["passes"] >= 1 and st["partitions"] > 0 and st["in_flight_documents"] == 0

    assert wait_until(done, timeout, 0.2), m.verifier.status() if m.verifier else "no verifier"


class _Writer(threading.Thread):
    """The application: updates, inserts and deletes on the source until stopped."""

    def __init__(self, coll: Any) -> None:
        super().__init__(daemon=True)
        self.coll, self.stop, self.n = coll, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.is_set():
            i = self.n
            self.coll.update_one({"_id": i % 3000}, {"$inc": {"n": 1}, "$set": {"w": f"write {i}"}})
            self.coll.insert_one({"_id": 100_000 + i, "v": i})
            if i % 5 == 0:
                self.coll.delete_one({"_id": 100_000 + i - 3})
            self.n += 1
            time.sleep(0.005)


def test_the_cutover_rereads_only_what_changed_and_reports_its_downtime(
    pair: tuple[Deployment, Deployment], src_client: MongoClient[Any], dst_client: MongoClient[Any], dbname: str
) -> None:
    """Under a writer: the background pass proves every partition, the cutover hashes none of them again,
    re-reads the documents the sync touched since, and the destination is equal byte for byte."""
    coll = src_client[dbname]["orders"]
    coll.insert_many([{"_id": i, "v": "x" * 50, "n": 0} for i in range(3000)])
    coll.create_index("v")
    with Migration(_config(pair, dbname), src_client, dst_client) as m:
        m.begin()
        m.clone()
        assert m.wait_ready(60)
        writer = _Writer(coll)
        writer.start()
        try:
            _proven(m)
            d = describe(m.store, m.name)
            assert wait_until(lambda: (describe(m.store, m.name)["continuous_verification"] or {}).get("passes"), 10)
            d = describe(m.store, m.name)
            assert d["continuous_verification"]["differences"] == 0
            assert d["downtime_estimate"]["final_verification"] == "incremental"
            assert set(d["downtime_estimate"]["parts"]) == {"drain", "final_checks", "index_restores", "finalize"}
            time.sleep(1.0)  # more writes after the pass: these are what the cutover re-reads
        finally:
            writer.stop.set()
            writer.join()
        assert writer.n > 50
        result = m.cutover("oncall", "issue 17", _verify(m))
        assert result.phase.value == "complete"
        summary = result.verification or {}
        assert summary["settings"]["mode"] == "incremental"
        (ns,) = [n for n in summary["namespaces"] if n["ns"] == f"{dbname}.orders"]
        assert ns["equal"] and ns["proof"]["partitions"] >= 3
        assert ns["proof"]["partitions_hashed_at_cutover"] == 0
        assert 0 < ns["proof"]["documents_rechecked_at_cutover"] < 3000
        down = describe(m.store, m.name)["downtime"]
        assert set(down["parts"]) >= {"write_block", "drain", "final_checks", "index_restores", "finalize"}
        assert down["seconds"] == pytest.approx(sum(down["parts"].values()), abs=0.05)
        assert down["final_verification"] == "incremental"
    assert_same_data(src_client, dst_client, [dbname])


def test_a_difference_planted_on_the_destination_is_reported_before_the_cutover(
    pair: tuple[Deployment, Deployment], src_client: MongoClient[Any], dst_client: MongoClient[Any], dbname: str
) -> None:
    """A document changed and one removed on the destination after the clone: named by namespace and _id
    while the sync runs; the cutover is refused until the destination is put right (or a full verification
    is chosen), then goes through."""
    coll = src_client[dbname]["users"]
    coll.insert_many([{"_id": i, "name": f"user {i}"} for i in range(2500)])
    with Migration(_config(pair, dbname, rehash_seconds=0.5), src_client, dst_client) as m:
        m.begin()
        m.clone()
        assert m.wait_ready(60)
        _proven(m)  # planted after the first proof: found by hashing the partition again
        dst = dst_client[dbname]["users"]
        dst.update_one({"_id": 1234}, {"$set": {"name": "planted"}})
        dst.delete_one({"_id": 77})
        assert wait_until(lambda: m.verification_differences() >= 2, 60, 0.2)
        d = describe(m.store, m.name)
        assert wait_until(lambda: (describe(m.store, m.name)["continuous_verification"] or {}).get("differences"), 10)
        d = describe(m.store, m.name)
        found = {(x["ns"], x["_id"], x["kind"]) for x in d["continuous_verification"]["differing"]}
        assert found == {(f"{dbname}.users", "1234", "changed"), (f"{dbname}.users", "77", "missing")}
        with pytest.raises(CutoverRefused, match="differ with no change in flight"):
            m.cutover("oncall", "too early", _verify(m))
        assert m.judge("cutover", "oncall", full_verification=True, require_ready=False).accepted
        dst.replace_one({"_id": 1234}, coll.find_one({"_id": 1234}))
        dst.insert_one(coll.find_one({"_id": 77}))
        assert wait_until(lambda: m.verification_differences() == 0, 60, 0.2)
        result = m.cutover("oncall", "fixed", _verify(m))
        assert result.phase.value == "complete"
    assert_same_data(src_client, dst_client, [dbname])


def test_an_extra_document_written_after_the_proof_fails_the_incremental_check(
    pair: tuple[Deployment, Deployment], src_client: MongoClient[Any], dst_client: MongoClient[Any], dbname: str
) -> None:
    """Without hashing again, a foreign insert on the destination after the proof is still caught at the
    cutover by the count comparison: the cutover fails and nothing is finalized."""
    coll = src_client[dbname]["items"]
    coll.insert_many([{"_id": i} for i in range(1500)])
    with Migration(_config(pair, dbname, rehash_seconds=None), src_client, dst_client) as m:
        m.begin()
        m.clone()
        assert m.wait_ready(60)
        _proven(m)
        dst_client[dbname]["items"].insert_one({"_id": "foreign"})
        with pytest.raises(Exception, match="differences"):
            m.cutover("oncall", "foreign write", _verify(m))
        doc = m.store.load(m.name)
        assert doc.phase.value == "failed" and doc.destination_ready_at is None
        (ns,) = [n for n in (doc.last_verification or {})["namespaces"] if n["ns"] == f"{dbname}.items"]
        assert (ns["source_count"], ns["destination_count"]) == (1500, 1501)


def test_dirty_set_bounds_its_memory_and_hands_back_what_it_could_not_recheck() -> None:
    import bson
    from bson.raw_bson import RawBSONDocument

    key = lambda i: RawBSONDocument(bson.encode({"_id": i}))  # noqa: E731
    ds = DirtySet(limit=10)
    ds.touched("a.x", [key(1)])
    assert ds.size() == 0  # not recording before the verifier starts
    ds.active = True
    gen_a = ds.begin("a.x")
    ds.begin("a.y")
    ds.touched("a.x", [key(i) for i in range(4)])
    ds.touched("a.y", [key(i) for i in range(3)])
    assert ds.contains("a.x", event_id_key(key(2))) and ds.size() == 7
    taken = ds.swap("a.x")
    assert len(taken) == 4 and ds.size() == 3
    ds.give_back("a.x", taken, gen_a)
    assert ds.size() == 7
    ds.touched("a.y", [key(i) for i in range(3, 9)])  # 13 > 10: the largest namespace is dropped
    assert ds.broken("a.y") and not ds.broken("a.x") and ds.size() == 4
    ds.touched("a.y", [key(50)])
    assert ds.size("a.y") == 0  # a broken namespace records nothing until it is planned again
    assert ds.begin("a.y") > 1 and not ds.broken("a.y")
    ds.reset_db("a", "dropDatabase")
    assert ds.broken("a.x") and ds.broken("a.y") and ds.size() == 0
    # Int64 1 and int32 1 are different documents byte for byte: the key keeps the BSON type.
    assert event_id_key(RawBSONDocument(bson.encode({"_id": bson.Int64(1)}))) != event_id_key(key(1))


def test_background_scans_wait_while_the_sync_is_behind_and_stop_when_asked(
    src_client: MongoClient[Any], dst_client: MongoClient[Any], dbname: str
) -> None:
    """The verification only uses what the sync spares: between batches it waits while the sync is behind;
    a freeze (the cutover begins) ends a scan at its next batch and leaves the partition unproven."""
    from checks.continuous import ContinuousVerifier
    from tasks.config import NamespaceRules
    from tasks.namespaces import NamespaceFilter

    docs = [{"_id": i, "v": "x" * 20} for i in range(600)]
    src_client[dbname]["c"].insert_many(docs)
    dst_client[dbname]["c"].insert_many(docs)
    behind_until = time.monotonic() + 1.0

    def verifier(sync_behind: Any) -> ContinuousVerifier:
        nsfilter = NamespaceFilter.from_rules(NamespaceRules(include=[f"{dbname}.*"]))
        return ContinuousVerifier(
            src_client,
            dst_client,
            nsfilter,
            lambda ts, t: True,
            batch_size=100,
            partitioning="whole",
            sync_behind=sync_behind,
        )

    v = verifier(lambda: time.monotonic() < behind_until)
    try:
        v.start()
        assert wait_until(lambda: v.passes >= 1, 30, 0.1)
        assert v.yielded_seconds >= 0.8 and v.status()["partitions_proven"] == 1
        assert v.difference_count() == 0
    finally:
        v.close()

    slow = verifier(lambda: True)  # the sync never catches up: the scan waits at its first batch
    try:
        slow.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        assert slow.freeze(timeout=10) and time.monotonic() - t0 < 2.0
        assert slow.status()["partitions_proven"] == 0 and not slow.running()
        slow.start()  # frozen: never again
        assert not slow.running()
    finally:
        slow.close()


def test_a_sharded_document_key_is_keyed_by_its_id_alone() -> None:
    """On a sharded collection MongoDB's change events carry the shard key fields in ``documentKey`` before
    ``_id`` (manual, "Change Events", documentKey: "For sharded collections, also displays the full shard
    key"; 7.0/8.0): the dirty set keys the document by its ``_id`` bytes, as verification keys a stored one."""
    import bson
    from bson.raw_bson import RawBSONDocument

    from checks.verify_bson import id_key

    sharded = RawBSONDocument(bson.encode({"region": "eu", "tenant": bson.Int64(7), "_id": bson.ObjectId(b"a" * 12)}))
    stored = bson.encode({"_id": bson.ObjectId(b"a" * 12), "region": "eu", "tenant": bson.Int64(7), "v": 1})
    assert event_id_key(sharded) == id_key(stored)
