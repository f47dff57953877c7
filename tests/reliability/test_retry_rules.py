"""The rules behind the retries and the graceful stop, without a server.

- a write concern error (the write happened, but is not replicated as asked) is transient;
- a document the destination refuses is terminal and names its namespace and _id;
- a failed lane does not leave other lanes writing while the sync starts over;
- SIGTERM and SIGINT become ShutdownRequested, with exit codes 143 and 130.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure, WriteConcernError

from tasks.apply import LANE_MIN_WRITES, Applier, ApplyStats, Write, WriteSet
from tasks.config import NamespaceRules
from tasks.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    DocumentRejectedError,
    TerminalError,
    TransientError,
    classify,
)
from tasks.namespaces import NamespaceFilter
from tasks.shutdown import ShutdownRequested, graceful_shutdown, requested

pytestmark = pytest.mark.unit
WCE = {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out"}


def test_write_concern_errors_are_transient() -> None:
    assert isinstance(classify(WriteConcernError(WCE["errmsg"], 64, WCE)), TransientError)
    only_wce = BulkWriteError({"writeErrors": [], "writeConcernErrors": [WCE], "nInserted": 1})
    assert isinstance(classify(only_wce), TransientError)
    rejected = BulkWriteError(
        {"writeErrors": [{"index": 0, "code": 121, "errmsg": "invalid"}], "writeConcernErrors": []}
    )
    assert isinstance(classify(rejected), TerminalError) and not classify(rejected).transient
    assert not classify(OperationFailure("bad value", 2)).transient


def test_applier_turns_write_errors_into_typed_errors() -> None:
    from pymongo import ReplaceOne

    ops = [ReplaceOne({"_id": 7}, {"_id": 7, "x": 1}, upsert=True)]
    applier = Applier(object(), NamespaceFilter.from_rules(NamespaceRules(include=["db.*"])), 1)  # type: ignore[arg-type]
    with pytest.raises(TransientError):
        applier._raise_rejected("db.c", ops, BulkWriteError({"writeErrors": [], "writeConcernErrors": [WCE]}))
    dup = {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error collection: db.c index: email_1"}
    with pytest.raises(DocumentRejectedError) as info:
        applier._raise_rejected("db.c", ops, BulkWriteError({"writeErrors": [dup], "writeConcernErrors": []}))
    assert info.value.ns == "db.c" and info.value.doc_id == 7
    racing_upsert = {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error collection: db.c index: _id_"}
    applier._raise_rejected("db.c", ops, BulkWriteError({"writeErrors": [racing_upsert], "writeConcernErrors": []}))
    # A unique index whose name holds "_id_" is not the _id index (MongoDB 4.2+ errors carry keyPattern).
    from tasks.apply import duplicate_id

    account = "E11000 duplicate key error collection: db.c index: account_id_1 dup key: { account_id: 5 }"
    assert not duplicate_id({"code": 11000, "errmsg": account, "keyPattern": {"account_id": 1}})
    assert not duplicate_id({"code": 11000, "errmsg": account})  # a server without keyPattern: the index's name
    assert duplicate_id({"code": 11000, "errmsg": "x index: _id_ dup key: { _id: 'a_id_' }", "keyPattern": {"_id": 1}})
    with pytest.raises(DocumentRejectedError):
        bad = {"index": 0, "code": 11000, "errmsg": account, "keyPattern": {"account_id": 1}}
        applier._raise_rejected("db.c", ops, BulkWriteError({"writeErrors": [bad], "writeConcernErrors": []}))
    # The reverse sync (tasks/reverse.py): a duplicate key on a unique index is deferred, anything else still stops.
    applier.deferred = {}
    applier._raise_rejected("db.c", ops, BulkWriteError({"writeErrors": [dup], "writeConcernErrors": []}))
    assert list(applier.deferred.values()) == [("db.c", 7)] and applier.deferrals == 1
    invalid = {"index": 0, "code": 121, "errmsg": "Document failed validation"}
    with pytest.raises(DocumentRejectedError):
        applier._raise_rejected("db.c", ops, BulkWriteError({"writeErrors": [invalid], "writeConcernErrors": []}))


def test_deferred_documents_stay_owed_when_their_retry_fails() -> None:
    """The reverse sync retries a transient error with the same applier (tasks/sync.py): documents whose
    rewrite failed half-way (one may be deleted on the target, not yet inserted) must stay in the set that
    the next checkpoint saves, else nothing owes them any more."""
    from pymongo import MongoClient

    unreached: MongoClient[Any] = MongoClient("mongodb://127.0.0.1:1/", connect=False, serverSelectionTimeoutMS=100)
    rules = NamespaceFilter.from_rules(NamespaceRules(include=["db.*"]))
    applier = Applier(unreached, rules, 1, source=unreached)  # the document's lookup on the source fails
    applier.deferred = {("db.c", 7): ("db.c", 7), ("db.d", 8): ("db.d", 8)}
    with pytest.raises(AutoReconnect):
        applier.retry_deferred()
    assert sorted(applier.deferred.values()) == [("db.c", 7), ("db.d", 8)]


def test_flush_waits_for_every_lane_before_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    lanes = 4
    applier = Applier(object(), NamespaceFilter.from_rules(NamespaceRules(include=["db.*"])), lanes)  # type: ignore[arg-type]
    pending = WriteSet()
    for i in range(lanes * LANE_MIN_WRITES):  # enough writes for every lane
        pending.add(Write("db.c", i, None))
    lane_of = {w.id_value: n for n, lane in enumerate(pending.lanes(lanes)) for w in lane}
    other_lanes = {lane for lane in lane_of.values() if lane != lane_of[0]}
    finished: list[int] = []
    lock = threading.Lock()

    def apply_lane(writes: list[Write]) -> tuple[int, int]:
        if any(w.id_value == 0 for w in writes):
            raise AutoReconnect("the destination went away")
        time.sleep(0.3)  # still writing when the first lane has already failed
        with lock:
            finished.append(lane_of[writes[0].id_value])
        return 0, len(writes)

    monkeypatch.setattr(applier, "_apply_lane", apply_lane)
    try:
        with pytest.raises(AutoReconnect):
            applier.flush(pending, ApplyStats())
        assert sorted(finished) == sorted(other_lanes), "a lane was still writing when the error was raised"
    finally:
        applier.close()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, EXIT_TERMINATED), (signal.SIGINT, EXIT_INTERRUPTED)])
def test_signals_become_shutdown_requests(sig: signal.Signals, code: int) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(ShutdownRequested) as info, graceful_shutdown():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # interrupted by the handler
    assert info.value.signum == sig and info.value.exit_code == code
    assert isinstance(info.value, KeyboardInterrupt)  # no `except Exception` on the way swallows it
    assert signal.getsignal(sig) is before and not requested()
    assert "\n" not in info.value.one_line("m", "run it again") and sig.name in info.value.one_line()
