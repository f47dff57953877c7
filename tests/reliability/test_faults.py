"""Server faults injected with `configureFailPoint failCommand` while the migrator copies and syncs.

Dropped connections and election/shutdown error codes on the destination's writes (insert, update,
delete), on the source's reads (the clone's getMore) and on the change stream (getMore, the
aggregate that reopens it), each more times in a row than the driver's own single retry absorbs.
The fail points name the migrator's clients by appName, so the test's own clients and the
concurrent writer are never failed.  The migration must retry with backoff and end byte-equal.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pymongo import MongoClient

from tasks.migration import Migration
from tasks.mongo import connect, latest_optime
from tests.conftest import Deployment, requires_secantus
from tests.helpers import (
    CommandFailures,
    Fault,
    FaultSchedule,
    Writer,
    assert_same_data,
    make_config,
    seed_writer_data,
)

pytestmark = [pytest.mark.integration, requires_secantus("needs test commands (configureFailPoint)")]
APP = "livemigrate-faulty"
WCE = {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out"}


def _clients(
    pair: tuple[Deployment, Deployment],
) -> tuple[MongoClient[Any], MongoClient[Any], CommandFailures, CommandFailures]:
    """The migrator's clients, named APP, with a listener that sees each injected failure.

    heartbeatFrequencyMS: after an injected "not primary" error the driver waits for its server
    monitor's next answer; a real election answers at once, a fail point only after the heartbeat.
    """
    seen_src, seen_dst = CommandFailures(), CommandFailures()
    opts: dict[str, Any] = {"timeout_s": 10, "appname": APP, "heartbeatFrequencyMS": 500}
    src = connect(pair[0].uri, side="source", event_listeners=[seen_src], **opts)
    dst = connect(pair[1].uri, side="destination", event_listeners=[seen_dst], **opts)
    return src, dst, seen_src, seen_dst


def _config(pair: tuple[Deployment, Deployment], db: str) -> Any:
    return make_config(
        pair[0].uri,
        pair[1].uri,
        db,
        tuning={
            "partition_docs": 3000,
            "partitioning": "ranges",
            "batch_bytes": 65536,
            "retry_max_seconds": 1,
            "retry_attempts": 20,
        },
    )


def _drain(m: Migration, src: MongoClient[Any]) -> None:
    runner = m.start_sync()
    target = latest_optime(src)
    assert runner.wait(lambda st: runner.applied_through(target), 90), f"not drained: {runner.state}"


def test_faults_during_clone_are_retried(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tasks")
    seed_writer_data(src_client, dbname)
    src_client[dbname]["big"].insert_many([{"_id": i, "pad": "p" * 300} for i in range(9_000)])
    src_client[dbname]["keyed"].insert_many([{"_id": f"k{i:05d}", "pad": "q" * 300} for i in range(5_000)])
    src, dst, seen_src, seen_dst = _clients(pair)
    dst_faults = FaultSchedule(
        dst_client,
        APP,
        seen_dst,
        [
            Fault(["insert"], 3, {"closeConnection": True}),
            Fault(["insert"], 3, {"errorCode": 91}),  # ShutdownInProgress
            Fault(["insert"], 3, {"errorCode": 10107}),  # NotWritablePrimary
        ],
        gap_s=0.3,  # all within the copy
    )
    src_faults = FaultSchedule(
        src_client,
        APP,
        seen_src,
        [
            Fault(["getMore"], 3, {"errorCode": 189}),  # PrimarySteppedDown
            Fault(["getMore"], 2, {"closeConnection": True}),
            Fault(["getMore"], 2, {"errorCode": 11600}),  # InterruptedAtShutdown
        ],
        gap_s=0.3,
    )
    writer = Writer(src_client, dbname, seed=11, rate_sleep=0.02)
    try:
        with Migration(_config(pair, dbname), src, dst) as m:
            m.begin()
            m.cloner().prepare()  # the plan is stored first: prepare has no retry of its own (see the report)
            writer.start()
            dst_faults.start()
            src_faults.start()
            m.clone()
            dst_faults.stop_event.set()
            src_faults.stop_event.set()
            fired = dst_faults.finish() + src_faults.finish()
            writer.stop()
            _drain(m, src_client)
            assert_same_data(src_client, dst_client, [dbname])
            parts = list(m.store.partitions.find({"migration": m.name}))
            assert all(p["status"] == "done" for p in parts)
    finally:
        writer.stop_event.set()
        for schedule in (dst_faults, src_faults):
            schedule.stop_event.set()  # it switches its fail point off on the way out
        src.close()
        dst.close()
    # Each fault outlasted the driver's single retry: the clone's own retry took over.
    assert not dst_faults.missed and not src_faults.missed, (fired, dst_faults.missed, src_faults.missed)
    assert len(fired) == 6
    assert any("retrying" in r.getMessage() for r in caplog.records)


def test_faults_during_sync_are_retried(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
) -> None:
    seed_writer_data(src_client, dbname)
    src, dst, seen_src, seen_dst = _clients(pair)
    writer = Writer(src_client, dbname, seed=12, rate_sleep=0.002)
    dst_faults = FaultSchedule(
        dst_client,
        APP,
        seen_dst,
        [
            Fault(["update"], 3, {"errorCode": 10107}),  # the converging replaces (and the checkpoint)
            Fault(["update"], 3, {"closeConnection": True}),
            Fault(["delete"], 2, {"errorCode": 91}),
            Fault(["update"], 2, {"writeConcernError": WCE}),
            Fault(["delete"], 2, {"closeConnection": True}),
        ],
    )
    src_faults = FaultSchedule(
        src_client,
        APP,
        seen_src,
        [
            Fault(["getMore"], 3, {"errorCode": 11600}),
            Fault(["getMore"], 2, {"closeConnection": True}),
            Fault(["getMore"], 2, {"errorCode": 6}),  # HostUnreachable, without a resumable label
            Fault(["getMore", "aggregate"], 4, {"errorCode": 189}),  # the stream and its reopening
        ],
    )
    try:
        with Migration(_config(pair, dbname), src, dst) as m:
            m.begin()
            m.clone()
            writer.start()
            runner = m.start_sync()
            dst_faults.start()
            src_faults.start()
            fired = dst_faults.finish(300) + src_faults.finish(300)
            writer.stop()
            assert runner.state.error is None, runner.state.error
            _drain(m, src_client)
            assert_same_data(src_client, dst_client, [dbname])
            reconnects = runner.state.reconnects
    finally:
        writer.stop_event.set()
        for schedule in (dst_faults, src_faults):
            schedule.stop_event.set()  # it switches its fail point off on the way out
        src.close()
        dst.close()
    assert not dst_faults.missed and not src_faults.missed, (dst_faults.missed, src_faults.missed)
    assert len(fired) == 9
    assert reconnects > 0  # at least some faults went past the driver to the sync's own retry
