"""The cutover's write blocking and the balancer restart at the end (#6), driven end to end.

SecantusDB has neither setUserWriteBlockMode nor a balancer, so the source here
is mockupdb (tests/fake_mongod.py): a replica-set member or a mongos that
answers the whole migration - the change stream (aggregate with $changeStream,
then awaiting getMores with postBatchResumeToken), the oplog read behind the lag
(or, through mongos, hello's operationTime), setUserWriteBlockMode,
balancerStop/balancerStart - while the destination and its metadata store are
the real SecantusDB server.  Every test runs the real ``Migration.begin``,
``clone``, ``wait_ready`` and ``cutover`` or ``cancel``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect

from tasks.errors import TerminalError
from tasks.metadata import MetadataStore
from tasks.migration import CutoverRefused, Migration
from tasks.state import MigrationDoc, Phase
from tests.conftest import Deployment
from tests.fake_mongod import UNAUTHORIZED, FakeMongod, FakeSpec, command_not_found, fake_mongod, hangup
from tests.helpers import make_config

pytestmark = pytest.mark.integration

EQUAL: Callable[[MigrationDoc], dict[str, Any]] = lambda doc: {"equal": True}  # noqa: E731
RESTART_BY_HAND = "restart it by hand"


def replica_set() -> FakeSpec:
    return FakeSpec(version="8.0.4", databases={})


def mongos() -> FakeSpec:
    return FakeSpec(version="8.0.4", topology="sharded", databases={}, mongos_serves_oplog=False)


@contextmanager
def migration(
    spec: FakeSpec,
    pair: tuple[Deployment, Deployment],
    dst: MongoClient[Any],
    db: str,
    *,
    synced: bool = True,
    **cutover: Any,
) -> Iterator[tuple[Migration, FakeMongod]]:
    """A migration from a scripted source into the real destination: begun, cloned and ready to cut over."""
    with fake_mongod(spec) as fake, fake.client() as src:
        cfg = make_config(fake.uri, pair[1].uri, db, cutover={"ready_after_seconds": 0.2, **cutover})
        with Migration(cfg, src, dst) as m:
            m.begin()
            if synced:
                m.clone()
                assert m.wait_ready(20), "the sync from the scripted source never became ready"
            yield m, fake


def blocks(fake: FakeMongod) -> list[bool]:
    """The `global` of every setUserWriteBlockMode the source received, in order."""
    return [bool(d["global"]) for d in fake.sent("setUserWriteBlockMode")]


def stored(dst: MongoClient[Any], m: Migration) -> MigrationDoc:
    return MetadataStore(dst).load(m.name)


# -- write blocking ------------------------------------------------------------------------
def test_block_and_unblock_writes(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    with migration(replica_set(), pair, dst_client, dbname, synced=False) as (m, fake):
        assert m._block_writes() is True
        (cmd,) = fake.sent("setUserWriteBlockMode")
        assert cmd["setUserWriteBlockMode"] == 1 and cmd["global"] is True and cmd["$db"] == "admin"
        assert fake.write_blocked and stored(dst_client, m).write_blocked
        m._unblock_writes(stored(dst_client, m))
        assert blocks(fake) == [True, False] and not fake.write_blocked
        assert stored(dst_client, m).write_blocked is False


def test_cutover_blocks_source_writes_and_verifies_while_blocked(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    seen: list[tuple[bool, bool]] = []
    with migration(replica_set(), pair, dst_client, dbname) as (m, fake):

        def verify(doc: MigrationDoc) -> dict[str, Any]:
            seen.append((fake.write_blocked, doc.write_blocked))
            return {"equal": True}

        result = m.cutover("alice", "planned", verify)
    assert result.phase == Phase.COMPLETE and result.warnings == []
    assert seen == [(True, True)]
    # A completed cutover leaves the source blocked: the application now writes to the destination.
    assert blocks(fake) == [True] and fake.write_blocked
    doc = stored(dst_client, m)
    assert doc.phase == Phase.COMPLETE and doc.write_blocked


def _unequal(doc: MigrationDoc) -> dict[str, Any]:
    return {"equal": False}


def _cannot_verify(doc: MigrationDoc) -> dict[str, Any]:
    raise TerminalError("verification could not read the destination")


@pytest.mark.parametrize("verify", [_unequal, _cannot_verify], ids=["differences", "verify-raises"])
def test_failed_cutover_unblocks_source_writes(
    pair: tuple[Deployment, Deployment],
    dst_client: MongoClient[Any],
    dbname: str,
    verify: Callable[[MigrationDoc], dict[str, Any]],
) -> None:
    with migration(replica_set(), pair, dst_client, dbname) as (m, fake):
        with pytest.raises(TerminalError):
            m.cutover("alice", "planned", verify)
    assert blocks(fake) == [True, False] and not fake.write_blocked
    doc = stored(dst_client, m)
    assert doc.write_blocked is False and doc.phase == Phase.FAILED


def test_cutover_interrupted_by_a_driver_error_unblocks_source_writes(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    def lost(doc: MigrationDoc) -> dict[str, Any]:
        raise AutoReconnect("verification lost its connection")

    with migration(replica_set(), pair, dst_client, dbname) as (m, fake):
        with pytest.raises(AutoReconnect):
            m.cutover("alice", "planned", lost)
    assert blocks(fake) == [True, False] and stored(dst_client, m).write_blocked is False


@pytest.mark.parametrize(
    "refusal",
    [UNAUTHORIZED, command_not_found("setUserWriteBlockMode")],
    ids=["Unauthorized-13", "CommandNotFound-59"],
)
def test_refused_write_blocking_falls_back_to_the_quiesce_watch(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str, refusal: dict[str, Any]
) -> None:
    """No write blocking: the cutover watches the source's latest write stand still, and says so if it moves."""
    with migration(replica_set(), pair, dst_client, dbname) as (m, fake):

        def last_writes() -> None:  # the application is still finishing its last writes
            for _ in range(6):
                time.sleep(0.1)
                fake.advance()

        writer = threading.Thread(target=last_writes)

        def refuse(request: Any) -> dict[str, Any]:
            writer.start()
            return refusal

        fake.spec.overrides["setuserwriteblockmode"] = refuse
        result = m.cutover("alice", "planned", EQUAL)
        writer.join()
    assert result.phase == Phase.COMPLETE
    assert blocks(fake) == [True] and not fake.write_blocked  # tried once, refused, never unblocked
    assert any("still arriving" in w for w in result.warnings), result.warnings
    assert stored(dst_client, m).write_blocked is False


def test_cutover_approved_while_writes_keep_arriving_is_refused_and_the_sync_goes_on(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    """Where writes cannot be blocked, an application that keeps writing makes the cutover a refusal with
    the reason (the flow pauses again), not a failed migration: nothing was blocked, the sync goes on, and
    the cutover asked again once the writes stop completes."""
    with migration(replica_set(), pair, dst_client, dbname, quiesce_timeout_seconds=1.5) as (m, fake):
        fake.spec.overrides["setuserwriteblockmode"] = command_not_found("setUserWriteBlockMode")
        stop = threading.Event()

        def application() -> None:
            while not stop.wait(0.1):
                fake.advance()

        writer = threading.Thread(target=application)
        writer.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(CutoverRefused, match="writes keep arriving on the source"):
                m.cutover("alice", "planned", EQUAL)
            assert time.monotonic() - t0 < 10  # quiesce_timeout_seconds, not drain_timeout_seconds
            doc = stored(dst_client, m)
            assert doc.phase == Phase.SYNCING and not doc.write_blocked and doc.error is None
            assert m.runner is not None and m.runner.alive()
        finally:
            stop.set()
            writer.join()
        result = m.cutover("alice", "the application is stopped", EQUAL)
    assert result.phase == Phase.COMPLETE
    assert [d.action for d in stored(dst_client, m).decisions] == ["cutover", "cutover"]


@pytest.mark.parametrize(
    ("listed", "blocks_writes", "said"),
    [
        ({"setUserWriteBlockMode": {"adminOnly": True}, "hello": {}}, True, "setUserWriteBlockMode (MongoDB 6.0+)"),
        ({"hello": {}}, False, "no setUserWriteBlockMode"),
        (None, False, "does not list its commands"),
    ],
    ids=["listed", "not-listed", "listCommands-refused"],
)
def test_the_form_says_whether_this_source_blocks_writes(
    pair: tuple[Deployment, Deployment],
    dst_client: MongoClient[Any],
    dbname: str,
    listed: dict[str, Any] | None,
    blocks_writes: bool,
    said: str,
) -> None:
    # listCommands' reply (MongoDB 6.0-8.0 manual, "listCommands"): {commands: {<name>: {help, adminOnly, ...}}}.
    with migration(replica_set(), pair, dst_client, dbname, synced=False) as (m, fake):
        if listed is not None:
            fake.spec.overrides["listcommands"] = {"commands": listed}
        blocks_now, how = m.write_block_plan()
        assert blocks_now is blocks_writes and said in how
        assert "watches the source stand still" in how  # the fallback is always stated
        assert m.write_block_plan() == (blocks_now, how) and len(fake.sent("listCommands")) == 1  # asked once


def test_lost_reply_to_write_blocking_still_unblocks(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    with migration(replica_set(), pair, dst_client, dbname) as (m, fake):

        def applied_then_lost(request: Any) -> dict[str, Any] | None:
            fake.write_blocked = bool(request.doc["global"])
            if fake.write_blocked:  # applied, but the connection dropped before the reply
                hangup(request)
                return None
            return {}

        fake.spec.overrides["setuserwriteblockmode"] = applied_then_lost
        with pytest.raises(AutoReconnect):
            m.cutover("alice", "planned", EQUAL)
        assert not fake.write_blocked, "the source was left write-blocked"
        assert stored(dst_client, m).write_blocked is False


# -- the balancer restart at the end (a failure is a warning) --------------------------
BALANCER_FAILURES: list[Any] = [UNAUTHORIZED, hangup]
BALANCER_IDS = ["Unauthorized-13", "connection-closed"]


@pytest.mark.parametrize("failure", BALANCER_FAILURES, ids=BALANCER_IDS)
def test_cancel_with_a_failed_balancer_restart_still_cancels(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str, failure: Any
) -> None:
    with migration(mongos(), pair, dst_client, dbname, synced=False) as (m, fake):
        assert stored(dst_client, m).balancer_stopped and not fake.balancer_running
        fake.spec.overrides["balancerstart"] = failure
        doc = m.cancel("alice", "changed plans")
    assert doc.phase == Phase.CANCELLED and fake.sent("balancerStart")
    assert any(RESTART_BY_HAND in w for w in doc.warnings), doc.warnings
    assert doc.balancer_stopped  # still true: it was not restarted
    assert MetadataStore(dst_client).lock_holder() is None


def test_cancel_restarts_the_balancer(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    with migration(mongos(), pair, dst_client, dbname, synced=False) as (m, fake):
        doc = m.cancel("alice", "changed plans")
    assert doc.phase == Phase.CANCELLED and fake.balancer_running
    assert not doc.balancer_stopped and doc.warnings == []


@pytest.mark.parametrize("failure", BALANCER_FAILURES, ids=BALANCER_IDS)
def test_cutover_with_a_failed_balancer_restart_completes_with_a_warning(
    pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str, failure: Any
) -> None:
    with migration(mongos(), pair, dst_client, dbname) as (m, fake):
        fake.spec.overrides["balancerstart"] = failure
        result = m.cutover("alice", "planned", EQUAL)
    assert result.phase == Phase.COMPLETE and blocks(fake) == [True]  # a mongos blocks writes cluster-wide
    assert any(RESTART_BY_HAND in w for w in result.warnings), result.warnings
    doc = stored(dst_client, m)
    assert doc.phase == Phase.COMPLETE and any(RESTART_BY_HAND in w for w in doc.warnings)
    assert MetadataStore(dst_client).lock_holder() is None
