"""A cutover that fails after "destination ready" goes forward only.

From the moment the destination is declared ready the application may write there.  A failure after it
(here: the destination's metadata store lost as it opens, as in an election) used to take the failure
path of an unfinished cutover: the source's write block was lifted (both clusters then took writes) and
the migration was marked failed, so running it again synced forward from its checkpoint, replaying source
events over the application's new writes, and a reversible migration never started its reverse sync.

Now the source stays closed, the record stays ``cutting_over`` with its ready moment, and the same command
finishes the cutover without syncing or verifying again.  The source's write block runs against
tests/write_block_proxy.py (SecantusDB has no setUserWriteBlockMode); the destination is the real server.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect

from tasks.metadata import MetadataStore
from tasks.migration import Migration
from tasks.state import MigrationDoc, Phase
from tests.conftest import Deployment
from tests.helpers import make_config
from tests.integration.test_continuous_verification import _verify
from tests.write_block_proxy import WriteBlockProxy, WriteBlockScript, backend_of

pytestmark = pytest.mark.integration


class _LosesDestinationAsItOpens(Migration):
    def _unblock_destination(self, doc: MigrationDoc) -> None:
        super()._unblock_destination(doc)
        raise AutoReconnect("the destination's primary stepped down")


def test_a_failure_after_destination_ready_keeps_the_source_closed_and_finishes_on_resume(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
) -> None:
    src_client[dbname]["orders"].insert_many([{"_id": i, "v": i} for i in range(100)])
    script = WriteBlockScript()
    with WriteBlockProxy(backend_of(pair[0].uri), script) as proxy:
        cfg = make_config(proxy.uri(), pair[1].uri, dbname, cutover={"ready_after_seconds": 0.2})
        with _LosesDestinationAsItOpens(cfg) as m:
            m.begin()
            m.clone()
            assert m.wait_ready(30)
            src_client[dbname]["orders"].update_one({"_id": 1}, {"$set": {"v": "before the cutover"}})
            with pytest.raises(AutoReconnect):
                m.cutover("alice", "go", _verify(m))
            doc = m.store.load(m.name)
        assert script.blocks == [True] and script.blocked  # the source was not reopened
        assert doc.phase == Phase.CUTTING_OVER and doc.destination_ready_at is not None and doc.write_blocked

        # The application has moved: its writes on the destination must survive the resumed cutover.
        dst_client[dbname]["orders"].update_one({"_id": 1}, {"$set": {"v": "written by the application"}})
        dst_client[dbname]["orders"].delete_one({"_id": 2})
        verified: list[str] = []
        with Migration(cfg) as again:
            again.begin()
            assert again.interrupted_cutover() is not None
            result = again.resume_cutover(lambda d: verified.append(d.id) or {"equal": True})
            assert result.phase == Phase.COMPLETE and result.destination_ready_at == doc.destination_ready_at
            assert again.runner is None  # nothing synced again
        assert verified == [] and script.blocks == [True] and script.blocked
    orders = dst_client[dbname]["orders"]
    assert orders.find_one({"_id": 1}) == {"_id": 1, "v": "written by the application"}
    assert orders.find_one({"_id": 2}) is None and orders.count_documents({}) == 99
    final = MetadataStore(dst_client).load(cfg.name)
    assert final.phase == Phase.COMPLETE and final.write_blocked
