"""No password and no full connection string anywhere a migration leaves traces.

A whole migration through the Prefect `migrate` flow (prechecks, clone, sync under writes, the
approval pause, cutover, final verification) from a source that requires a password.  Then every
place a secret could leak is read back and searched: captured log records, the flow run's logs in
Prefect, its parameters and state, its task runs, every artifact, every report file, every
document of the destination's metadata database, and the messages of engine errors that involve
the URI.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from bson import json_util
from pymongo import MongoClient

from flows.localservers import free_port
from tasks.config import METADATA_DB, load_config
from tasks.errors import LiveMigrateError
from tasks.metadata import MetadataStore
from tasks.mongo import connect
from tests.conftest import SOURCE_PASSWORD, SOURCE_USER, Deployment
from tests.helpers import Writer, assert_same_data, seed_writer_data, wait_until

pytestmark = [pytest.mark.flows, pytest.mark.integration]
DB = "secret_app"
NAME = "secrets-check"


class _Flow(threading.Thread):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.kwargs, self.result, self.error = kwargs, None, None

    def run(self) -> None:
        from flows.migrate import migrate_flow

        try:
            self.result = migrate_flow(**self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc


def _paused(store: MetadataStore) -> bool:
    from prefect.client.orchestration import get_client

    doc = store.get(NAME)
    if doc is None or not doc.flow_run_id or not doc.ready:
        return False
    with get_client(sync_client=True) as c:
        fr = c.read_flow_run(UUID(doc.flow_run_id))
    return bool(fr.state and fr.state.is_paused())


def _prefect_traces(flow_run_id: str) -> list[str]:
    """Everything Prefect kept about the run: logs, parameters, state, task runs, artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the log worker is shared: this sends what is queued
    fid = UUID(flow_run_id)
    texts: list[str] = []
    with get_client(sync_client=True) as c:
        fr = c.read_flow_run(fid)
        texts.append(fr.model_dump_json())  # parameters, state and its message, tags, labels
        offset = 0
        while logs := c.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fid])), limit=200, offset=offset
        ):
            texts += [lg.model_dump_json() for lg in logs]
            offset += len(logs)
        assert offset > 0, "the flow run sent no logs to Prefect"
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fid])))
        assert runs, "no task runs"
        texts += [tr.model_dump_json() for tr in runs]
        offset = 0
        while arts := c.read_artifacts(limit=200, offset=offset):  # every artifact on the server
            texts += [a.model_dump_json() for a in arts]
            offset += len(arts)
        assert offset > 0, "no artifacts"
    return texts


def _engine_error_messages(uri: str, tmp_path: Path) -> list[str]:
    """Errors that carry the URI on their way: unreachable host, refused login, broken config."""
    messages = []
    unreachable = uri.replace(uri.split("@", 1)[1].split("/", 1)[0], f"127.0.0.1:{free_port()}")
    wrong_password = uri.replace(SOURCE_PASSWORD, SOURCE_PASSWORD + "-wrong")
    for bad in (unreachable, wrong_password, uri.replace("mongodb://", "mongodb://x:y@", 1)):
        with pytest.raises(LiveMigrateError) as info:
            connect(bad, side="source", timeout_s=1.5).close()
        messages += [str(info.value), info.value.one_line(), repr(info.value)]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"name": NAME, "source": {"uri": uri}, "destination": {"uri": 5}}))
    with pytest.raises(LiveMigrateError) as info:
        load_config(broken)
    messages.append(info.value.one_line())
    return messages


def test_no_secret_in_logs_artifacts_reports_or_metadata(
    prefect_harness: None,
    auth_pair: tuple[Deployment, Deployment],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.flow_runs import resume_flow_run

    from flows.migrate import decision_input

    src_dep, dst_dep = auth_pair
    secret_uri = src_dep.uri
    assert SOURCE_PASSWORD in secret_uri and SOURCE_USER in secret_uri
    needles = [SOURCE_PASSWORD, secret_uri, f"{SOURCE_USER}:{SOURCE_PASSWORD}"]
    # Importing prefect the first time configures logging anew, which drops pytest's capture handler.
    if caplog.handler not in logging.getLogger().handlers:
        logging.getLogger().addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="prefect")  # the flow run's INFO logs also reach Prefect's API
    for name in ("tasks", "flows", "checks"):
        caplog.set_level(logging.DEBUG, logger=name)

    root = MongoClient(src_dep.extra["root_uri"], serverSelectionTimeoutMS=10000)
    dst = MongoClient(dst_dep.uri, serverSelectionTimeoutMS=10000)
    for c in (root, dst):
        c.drop_database(DB)
    dst.drop_database(METADATA_DB)
    seed_writer_data(root, DB)
    root[DB]["docs"].insert_many([{"_id": i, "v": i} for i in range(500)])
    cfg_path = tmp_path / "migration.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "name": NAME,
                "source": {"uri": secret_uri},
                "destination": {"uri": dst_dep.uri},
                "namespaces": {"include": [f"{DB}.*"]},
                "cutover": {"max_lag_seconds": 5, "ready_after_seconds": 0.5, "quiesce_seconds": 0.5},
                "tuning": {"workers": 2, "partition_docs": 200, "partitioning": "ranges", "connect_timeout_seconds": 5},
            }
        )
    )
    report = tmp_path / "report"
    store = MetadataStore(dst)
    writer = Writer(root, DB, seed=31, rate_sleep=0.003)
    writer.start()
    flow = _Flow(config=str(cfg_path), skip_prechecks=False, report_dir=str(report))
    flow.start()
    try:
        assert wait_until(lambda: _paused(store) or not flow.is_alive(), 120, 0.3), "never paused"
        assert flow.error is None, flow.error
    finally:
        writer.stop_event.set()
    writer.stop()
    flow_run_id = store.load(NAME).flow_run_id
    assert flow_run_id
    resume_flow_run(UUID(flow_run_id), run_input=decision_input("cutover", "sam", "secrets check", confirm=True))
    flow.join(120)
    assert not flow.is_alive() and flow.error is None, flow.error
    assert flow.result["phase"] == "complete"
    assert_same_data(root, dst, [DB])

    haystacks: dict[str, list[str]] = {
        "captured log records": [r.getMessage() for r in caplog.records]
        + [r.exc_text or "" for r in caplog.records]
        + [repr(r.args) for r in caplog.records],
        "flow result": [json_util.dumps(flow.result)],
        "prefect (logs, parameters, state, task runs, artifacts)": _prefect_traces(flow_run_id),
        "engine errors": _engine_error_messages(secret_uri, tmp_path),
        "config repr": [repr(load_config(cfg_path)), str(load_config(cfg_path))],
    }
    files = [p for p in report.rglob("*") if p.is_file()]
    assert files, "no report files were written"
    haystacks["report files"] = [p.read_bytes().decode("utf-8", "replace") for p in files]
    meta = dst[METADATA_DB]
    docs = [json_util.dumps(d) for coll in meta.list_collection_names() for d in meta[coll].find()]
    assert any('"phase": "complete"' in d for d in docs)
    haystacks[f"{METADATA_DB} documents"] = docs
    assert len(caplog.records) > 10 and len(haystacks["prefect (logs, parameters, state, task runs, artifacts)"]) > 10

    for where, texts in haystacks.items():
        for text in texts:
            for needle in needles:
                if needle in text:  # not a bare assert: its report would print the text, secret and all
                    pytest.fail(f"{where} holds a secret, after: ...{_around(text, needle)}")

    # The prechecks and the describe output name the source by its hosts, like every other record.
    doc = store.load(NAME)
    assert doc.source.startswith("127.0.0.1:") and SOURCE_USER not in doc.source
    for c in (root, dst):
        c.drop_database(DB)
    dst.drop_database(METADATA_DB)
    root.close()
    dst.close()


def _around(text: str, needle: str) -> str:
    i = text.find(needle)
    return text[max(0, i - 60) : i].replace("\n", " ")  # what precedes it, never the secret itself
