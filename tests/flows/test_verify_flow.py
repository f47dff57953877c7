"""The Prefect ``verify`` flow: one task, table and markdown artifacts, the JSON summary returned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect.artifacts import Artifact
from pymongo import MongoClient

from checks.verify_result import SCHEMA
from flows.verify import verify_flow
from tests.conftest import Deployment

pytestmark = pytest.mark.flows


def _config(pair: tuple[Deployment, Deployment], db: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"uri": pair[0].uri},
        "destination": {"uri": pair[1].uri},
        "namespaces": {"include": [f"{db}.*"]},
        "tuning": {"partition_docs": 100, "partitioning": "ranges", "connect_timeout_seconds": 5},
    }


def test_verify_flow_publishes_artifacts_and_returns_summary(
    prefect_harness: None,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    tmp_path: Path,
) -> None:
    docs = [{"_id": i, "v": i} for i in range(300)]
    for c in (src_client, dst_client):
        c[dbname]["c"].insert_many([d.copy() for d in docs])
    dst_client[dbname]["c"].delete_one({"_id": 250})

    summary = verify_flow(_config(pair, dbname, "flow-verify"), report_dir=str(tmp_path / "r"))
    assert summary["schema"] == SCHEMA and summary["equal"] is False
    assert summary["namespaces"][0]["missing"]["ids"] == [250]
    assert summary["report"]["gx_success"] is False
    assert (tmp_path / "r" / "data_docs" / "index.html").is_file()

    table = Artifact.get("verify-flow-verify")
    assert table is not None and table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows[0]["ns"] == f"{dbname}.c" and rows[0]["missing"] == 1
    markdown = Artifact.get("verify-flow-verify-summary")
    assert markdown is not None and "DIFFERENT" in str(markdown.data)
    assert "mongodb://" not in json.dumps(summary) + str(table.data) + str(markdown.data)
