"""A clean destination before the cutover (issue 19): destination_write_blocking.

Write blocking itself runs against tests/write_block_proxy.py: a wire-protocol proxy in front of
the real destination server that answers setUserWriteBlockMode and connectionStatus as MongoDB
6.0-8.0 does and refuses other clients' writes with UserWritesBlocked (371) while blocked; every
other command reaches the real server.  The fallback (watching the destination) runs on the real
test server, whose access control is off: there a block would hold nobody off.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from tasks.migration import CutoverRefused, Migration
from tasks.status import describe
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config, wait_until
from tests.integration.test_continuous_verification import _proven, _verify
from tests.write_block_proxy import WriteBlockProxy, WriteBlockScript, backend_of

pytestmark = pytest.mark.integration


@pytest.fixture
def proxied(pair: tuple[Deployment, Deployment]) -> Iterator[tuple[WriteBlockProxy, WriteBlockScript]]:
    script = WriteBlockScript()
    with WriteBlockProxy(backend_of(pair[1].uri), script) as proxy:
        yield proxy, script


def _application(proxy: WriteBlockProxy) -> MongoClient[Any]:
    return MongoClient(proxy.uri(appName="shop"), serverSelectionTimeoutMS=5000)


def test_the_destination_is_closed_to_others_until_it_is_ready(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    proxied: tuple[WriteBlockProxy, WriteBlockScript],
) -> None:
    proxy, script = proxied
    src_client[dbname]["orders"].insert_many([{"_id": i, "v": i} for i in range(300)])
    cfg = make_config(pair[0].uri, proxy.uri(), dbname, destination_write_blocking=True, cutover={"quiesce_seconds": 0})
    with Migration(cfg) as m, _application(proxy) as app:
        doc = m.begin()
        assert script.blocks == [True] and doc.destination_write_blocked and doc.destination_writes == "blocked"
        with pytest.raises(OperationFailure) as refused:  # the application, or anything else, cannot write there
            app[dbname]["orders"].insert_one({"_id": "early"})
        assert refused.value.code == 371
        m.clone()  # the migration writes through the block (bypassWriteBlockingMode)
        assert m.wait_ready(30)
        src_client[dbname]["orders"].update_one({"_id": 7}, {"$set": {"v": "changed"}})
        result = m.cutover("oncall", "go", _verify(m))
        assert result.phase.value == "complete"
        assert script.blocks == [True, False]  # unblocked at "destination ready", not before
        assert m.store.load(m.name).destination_write_blocked is False
        assert_same_data(src_client, dst_client, [dbname])
        app[dbname]["orders"].insert_one({"_id": "after"})  # the application's turn
    assert script.refused_writes == [("shop", "insert")]


def test_a_cancel_unblocks_the_destination_and_without_the_privilege_it_is_watched_not_blocked(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dbname: str,
    proxied: tuple[WriteBlockProxy, WriteBlockScript],
) -> None:
    proxy, script = proxied
    cfg = make_config(pair[0].uri, proxy.uri(), dbname, destination_write_blocking=True)
    with Migration(cfg) as m:
        m.begin()
        m.cancel("oncall", "not today")
        assert script.blocks == [True, False] and not m.store.load(m.name).destination_write_blocked
    script.may_bypass = False  # the block would stop the migration's own writes: never sent
    cfg = make_config(pair[0].uri, proxy.uri(), dbname, destination_write_blocking=True, name=f"nb-{dbname}"[:60])
    with Migration(cfg) as m:
        doc = m.begin()
        assert script.blocks == [True, False]
        assert doc.destination_writes == (
            "watched: the migration user lacks bypassWriteBlockingMode on the destination's cluster resource"
        )
        assert any("destination writes are not blocked" in w for w in doc.warnings)
        m.cancel("oncall", "done")


def test_where_writes_cannot_be_blocked_a_foreign_write_is_reported_before_the_cutover(
    pair: tuple[Deployment, Deployment], src_client: MongoClient[Any], dst_client: MongoClient[Any], dbname: str
) -> None:
    """The real test server runs without access control, so a block would hold nobody off: the migration
    watches the destination, and an insert there after the partitions were proven (no rehash) is named
    while the sync runs and refuses the cutover, instead of surfacing only in the cutover's counts."""
    src_client[dbname]["items"].insert_many([{"_id": i} for i in range(500)])
    cfg = make_config(
        pair[0].uri,
        pair[1].uri,
        dbname,
        destination_write_blocking=True,
        verification={"interval_seconds": 0.2, "rehash_seconds": None},
        cutover={"quiesce_seconds": 0},
    )
    with Migration(cfg, src_client, dst_client) as m:
        doc = m.begin()
        assert doc.destination_writes == (
            "watched: access control is off on the destination, so every client would bypass a write block"
        )
        m.clone()
        assert m.wait_ready(60)
        _proven(m)
        assert wait_until(lambda: m.destination_watch is not None, 10)
        dst_client[dbname]["items"].insert_one({"_id": "foreign"})
        assert wait_until(lambda: m.verification_differences() >= 1, 30, 0.2)
        assert wait_until(lambda: (describe(m.store, m.name)["continuous_verification"] or {}).get("differences"), 10)
        differing = describe(m.store, m.name)["continuous_verification"]["differing"]
        assert [(x["ns"], x["_id"], x["kind"]) for x in differing] == [(f"{dbname}.items", '"foreign"', "extra")]
        with pytest.raises(CutoverRefused):
            m.cutover("oncall", "too early", _verify(m))
        dst_client[dbname]["items"].delete_one({"_id": "foreign"})
        assert wait_until(lambda: m.verification_differences() == 0, 30, 0.2)
        assert m.cutover("oncall", "clean again", _verify(m)).phase.value == "complete"
    assert_same_data(src_client, dst_client, [dbname])
