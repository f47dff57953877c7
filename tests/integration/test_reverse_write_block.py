"""Write blocking around a reversible migration (issue 19), against tests/write_block_proxy.py on both sides:
a proxy in front of each real test server that answers setUserWriteBlockMode and connectionStatus as
MongoDB 6.0-8.0 does and refuses other clients' writes with UserWritesBlocked (371) while blocked; the
migration (appName ``livemigrate``) holds bypassWriteBlockingMode, as the prechecks require for
``reversible: true``.  SecantusDB itself has no setUserWriteBlockMode.

The forward cutover blocks the source and leaves it blocked; the reverse sync writes the destination's
history onto the source through that block while the application cannot; the rollback blocks the
destination first, drains, verifies, and only then reopens the source.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from tasks.metadata import MetadataStore
from tasks.migration import Migration
from tasks.mongo import latest_optime
from tasks.reverse import ReverseMigration
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config
from tests.integration.test_continuous_verification import _verify
from tests.integration.test_reverse import seed
from tests.write_block_proxy import WriteBlockProxy, WriteBlockScript, backend_of

pytestmark = pytest.mark.integration


def _refused(app: MongoClient[Any], db: str) -> bool:
    try:
        app[db]["users"].insert_one({"email": "app-write@x"})
    except OperationFailure as exc:
        assert exc.code == 371, exc
        return True
    return False


@pytest.mark.parametrize(
    "destination",
    [{}, {"may_bypass": False}, {"access_control": False}],
    ids=["bypass", "no-bypass", "access-control-off"],
)
def test_rollback_closes_the_destination_then_reopens_the_source(
    destination: dict[str, bool],
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
) -> None:
    """Without bypassWriteBlockingMode on the destination the rollback must not block it (its own records
    live there), nor where access control is off there (every client would write through the block): it
    watches the destination stand still instead, and still reopens the source."""
    seed(src_client, dbname)
    s_script, d_script = WriteBlockScript(), WriteBlockScript(**destination)
    bypass_on_destination = not destination  # only then does the rollback close the destination
    with (
        WriteBlockProxy(backend_of(pair[0].uri), s_script) as s_proxy,
        WriteBlockProxy(backend_of(pair[1].uri), d_script) as d_proxy,
        MongoClient(s_proxy.uri(appName="shop"), serverSelectionTimeoutMS=5000) as app_src,
        MongoClient(d_proxy.uri(appName="shop"), serverSelectionTimeoutMS=5000) as app_dst,
    ):
        cfg = make_config(s_proxy.uri(), d_proxy.uri(), dbname, reversible=True, cutover={"ready_after_seconds": 0.2})
        with Migration(cfg) as m:
            m.begin()
            m.clone()
            assert m.wait_ready(30)
            result = m.cutover("alice", "go", _verify(m))
            assert result.phase.value == "complete" and result.downtime and result.downtime["blocked"] is True
        assert s_script.blocks == [True] and s_script.blocked  # the source stays closed after the cutover
        assert _refused(app_src, dbname)

        app_dst[dbname]["users"].insert_one({"_id": "after-cutover", "email": "new@x"})
        app_dst[dbname]["users"].update_one({"_id": 3}, {"$set": {"n": "changed on the destination"}})
        with ReverseMigration(cfg) as rm:
            rm.begin()
            assert rm.wait_ready(30)
            target = latest_optime(dst_client)
            runner = rm.start_sync()
            assert runner.wait(lambda st: runner.applied_through(target), 30)
            # Written through the source's block by the migration, while the application is still refused.
            assert src_client[dbname]["users"].find_one({"_id": "after-cutover"}) is not None
            assert _refused(app_src, dbname)
            assert d_script.blocks == []

            back = rm.rollback("bob", "roll back", _verify(rm))
            assert back.phase.value == "complete" and back.downtime
            assert back.downtime["blocked"] is bypass_on_destination
        # The destination was blocked first (its writes stop), the source reopened last.
        assert d_script.blocks == ([True] if bypass_on_destination else [])
        assert s_script.blocks == [True, False] and not s_script.blocked
        assert _refused(app_dst, dbname) is bypass_on_destination
        assert not _refused(app_src, dbname)  # the application's turn on the source again
        store = MetadataStore(dst_client)
        assert store.load(cfg.name).write_blocked is False  # the forward record: its source is open
        assert store.load(rm.name).write_blocked is bypass_on_destination  # the destination stays closed
        dst_client[dbname]["users"].delete_many({"email": "app-write@x"})
    src_client[dbname]["users"].delete_one({"email": "app-write@x"})
    assert_same_data(src_client, dst_client, [dbname])
