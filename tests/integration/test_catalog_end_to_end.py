"""Issue 16's end-to-end: under a writer, a rename, an ``$out`` into an in-scope collection, a TTL index dropped
and re-created with a new expiry and a collection created with a validator; the cutover (with the real final
verification) leaves the destination equal to the source, documents, indexes and options included, as judged
by scripts/compare_clusters.py, which reads listCollections/listIndexes raw and uses none of livemigrate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from checks.verify import run_verification
from tasks.migration import Migration
from tests.conftest import Deployment
from tests.helpers import Writer, make_config, seed_writer_data

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_ddl_under_a_writer_cuts_over_equal(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    db = src_client[dbname]
    seed_writer_data(src_client, dbname)
    db["events"].insert_many([{"_id": i, "kind": i % 3} for i in range(300)])
    db["events"].create_index("kind")
    db["sessions"].insert_many([{"_id": i, "seen": i} for i in range(100)])
    db["sessions"].create_index("seen", expireAfterSeconds=3600, name="seen_ttl")
    cfg = make_config(pair[0].uri, pair[1].uri, dbname)
    writer = Writer(src_client, dbname, seed=16, rate_sleep=0.004)
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        writer.start()
        assert m.wait_ready(60)
        db["events"].rename("events_archive")
        db["events_archive"].aggregate([{"$group": {"_id": "$kind", "n": {"$sum": 1}}}, {"$out": "report"}])
        db["sessions"].drop_index("seen_ttl")
        db["sessions"].create_index("seen", expireAfterSeconds=60, name="seen_ttl")
        db.create_collection("audit", validator={"who": {"$type": "string"}}, validationLevel="moderate")
        db["audit"].insert_one({"_id": 1, "who": "oncall"})
        writer.stop()
        assert m.wait_ready(60)

        def verify(doc: Any) -> dict[str, Any]:
            result = run_verification(m.cfg, pending_index_restores=doc.index_restores)
            return {**result.to_dict(), "equal": bool(result.equal)}

        res = m.cutover("oncall", "issue 16 end to end", verify)
        assert res.phase.value == "complete", res
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "compare_clusters.py"),
            "--source",
            pair[0].uri,
            "--destination",
            pair[1].uri,
            "--db",
            dbname,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert out.stdout.strip().endswith("EQUAL")
    assert set(dst_client[dbname].list_collection_names()) >= {"events_archive", "report", "audit", "sessions"}
