"""Reversible migration (issue 19): after the cutover the destination's writes flow back to the source, and a
rollback is a second approved cutover.

Engine-level, on the shared test pair: migrate and cut over; the application writes to the destination
(inserts, updates, deletes, a new index, unique values moved between documents); the reverse sync follows;
the rollback is approved; the source equals the destination byte for byte, indexes included, compared here
directly (not by livemigrate's verification).  SecantusDB has no setUserWriteBlockMode, so both cutovers
take the "stand still" path here; write blocking on both sides is proven against the scripted proxy in
test_reverse_write_block.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pymongo import ASCENDING, MongoClient

from tasks.migration import Migration
from tasks.mongo import latest_optime
from tasks.reverse import ReverseMigration, reverse_name
from tasks.state import Phase
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config
from tests.integration.test_continuous_verification import _verify

pytestmark = pytest.mark.integration


def index_specs(client: MongoClient[Any], db: str) -> dict[str, list[dict[str, Any]]]:
    """Every collection's indexes as comparable dicts (name, key, options; not the server's version field).

    ``prepareUnique: false`` on a unique index is dropped: the collMod that made the index unique again at the
    forward cutover leaves it on the test server, while MongoDB 7.0+ resets the setting (coll_mod_index.cpp);
    on a unique index it has no effect.
    """
    out = {}
    for name in sorted(client[db].list_collection_names()):
        specs = [
            {k: v for k, v in ix.items() if k not in ("v", "ns") and not (k == "prepareUnique" and v is False)}
            for ix in client[db][name].list_indexes()
        ]
        out[name] = sorted(specs, key=lambda s: s["name"])
    return out


def reversible_config(pair: tuple[Deployment, Deployment], dbname: str, **over: Any) -> Any:
    return make_config(
        pair[0].uri,
        pair[1].uri,
        dbname,
        reversible=True,
        cutover={"quiesce_seconds": 0.2, "ready_after_seconds": 0.2},
        **over,
    )


def seed(client: MongoClient[Any], dbname: str) -> None:
    users = client[dbname]["users"]
    users.create_index([("email", ASCENDING)], unique=True, name="email_1")
    users.insert_many([{"_id": i, "email": f"u{i}@x", "n": i} for i in range(200)])
    client[dbname]["orders"].insert_many([{"_id": f"o{i}", "user": i % 50, "total": i * 1.5} for i in range(300)])


def forward_cutover(cfg: Any, src: MongoClient[Any], dst: MongoClient[Any]) -> None:
    with Migration(cfg, src, dst) as m:
        m.begin()
        m.clone()
        assert m.wait_ready(30)
        result = m.cutover("alice", "moving to the new cluster", _verify(m))
        assert result.phase == Phase.COMPLETE


def application_on_destination(dst: MongoClient[Any], dbname: str) -> None:
    """What an application does on the new cluster after the cutover (one new field per update: on the test
    server an update adding two fields at once orders them differently than its event says, README limits)."""
    users, orders = dst[dbname]["users"], dst[dbname]["orders"]
    users.insert_many([{"_id": 1000 + i, "email": f"new{i}@x", "n": -i} for i in range(30)])
    for i in range(0, 60, 3):
        users.update_one({"_id": i}, {"$set": {"n": i * 10}})
        orders.update_one({"_id": f"o{i}"}, {"$inc": {"total": 1}})
    # Unique values moved between documents, through a free value (as an application must): the source's
    # unique index sees every step.
    users.update_one({"_id": 5}, {"$set": {"email": "tmp@x"}})
    users.update_one({"_id": 6}, {"$set": {"email": "u5@x"}})
    users.update_one({"_id": 5}, {"$set": {"email": "u6@x"}})
    users.delete_many({"_id": {"$gte": 190, "$lt": 200}})
    orders.delete_many({"user": 7})
    users.insert_one({"_id": 190, "email": "u191@x", "n": "reused"})  # a deleted document's value, reused
    orders.create_index([("user", ASCENDING), ("total", -1)], name="user_total")
    users.create_index([("n", ASCENDING)], name="n_1", sparse=True)
    # A new unique index: built non-unique on the source during the reverse sync, made unique at the rollback.
    orders.create_index([("ref", ASCENDING)], name="ref_1", unique=True, sparse=True)
    orders.update_one({"_id": "o1"}, {"$set": {"ref": "R-1"}})
    dst[dbname]["audit"].insert_many([{"_id": i, "what": "created after the cutover"} for i in range(20)])


@pytest.mark.parametrize("update_mode", ["lookup", "delta"])
def test_reverse_sync_follows_the_destination_and_rollback_reopens_the_source(
    update_mode: str,
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
) -> None:
    seed(src_client, dbname)
    cfg = reversible_config(pair, dbname, sync={"update_mode": update_mode})
    forward_cutover(cfg, src_client, dst_client)
    rdoc = dst_client["__livemigrate"]["migrations"].find_one({"_id": reverse_name(cfg.name)})
    assert rdoc is not None and rdoc["phase"] == "syncing" and rdoc["direction"] == "reverse"

    application_on_destination(dst_client, dbname)
    with ReverseMigration(cfg, src_client, dst_client) as rm:
        rm.begin()
        assert rm.wait_ready(30)
        target = latest_optime(dst_client)
        runner = rm.start_sync()
        assert runner.wait(lambda st: runner.applied_through(target), 30)
        assert rm.runner is not None and rm.runner.state.stats.upserts > 0
        applier = rm.runner._applier
        assert applier is not None
        if update_mode == "lookup":
            # Documents 5 and 6 swapped emails: written at their latest states they collide on the source's
            # unique index until both are written; deferred, then written, not refused.
            assert applier.deferrals >= 1
        else:
            assert rm.runner.update_mode == "delta" and rm.runner.state.stats.deltas > 0
        assert rm.runner.deferred() == []
        # The reverse sync's writes are on the source already, before any rollback.
        assert src_client[dbname]["audit"].count_documents({}) == 20
        assert src_client[dbname]["users"].find_one({"_id": 5})["email"] == "u6@x"

        assert not rm.judge("rollback", "bob", confirm=False).accepted  # the same rules as the cutover's
        assert rm.judge("rollback", "bob").accepted
        result = rm.rollback("bob", "the new cluster misbehaves", _verify(rm))
        assert result.phase == Phase.COMPLETE and result.destination_ready_at is not None
        assert (result.verification or {}).get("equal") is True

    assert assert_same_data(src_client, dst_client, [dbname]) > 400
    assert index_specs(src_client, dbname) == index_specs(dst_client, dbname)
    assert src_client[dbname]["users"].index_information()["email_1"].get("unique") is True
    assert src_client[dbname]["orders"].index_information()["ref_1"].get("unique") is True

    store = dst_client["__livemigrate"]["migrations"]
    forward = store.find_one({"_id": cfg.name})
    reverse = store.find_one({"_id": reverse_name(cfg.name)})
    assert [(d["action"], d["approver"]) for d in forward["decisions"]] == [("cutover", "alice")]
    assert [(d["action"], d["approver"]) for d in reverse["decisions"]] == [
        ("reverse-sync", "alice"),
        ("rollback", "bob"),
    ]
    assert reverse["phase"] == "complete" and reverse["destination_ready_at"] is not None


def test_finish_ends_the_reverse_sync_and_the_cli_refuses_what_does_not_apply(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
    tmp_path: Path,
) -> None:
    import yaml

    from flows.operate import decision_cli
    from tasks.errors import TerminalError
    from tasks.metadata import MetadataStore

    src_client[dbname]["items"].insert_many([{"_id": i} for i in range(50)])
    cfg = reversible_config(pair, dbname)
    path = tmp_path / "m.yaml"  # what `livemigrate rollback --config` reads: the name and the destination
    path.write_text(
        yaml.safe_dump({"name": cfg.name, "source": {"uri": pair[0].uri}, "destination": {"uri": pair[1].uri}})
    )

    def cli(action: str) -> int:
        return decision_cli(path, action, approver="carol", reason="test", yes=True, as_json=False)

    assert cli("rollback") == 1  # no reverse sync yet: the migration has not been cut over
    forward_cutover(cfg, src_client, dst_client)
    assert cli("rollback") == 1  # the reverse sync has not run: not ready (no lag known)
    store = MetadataStore(dst_client)
    with ReverseMigration(cfg, src_client, dst_client) as rm:
        rm.begin()
        assert rm.wait_ready(30)
        assert rm.judge("finish", "carol").accepted and not rm.judge("cutover-now", "carol").accepted
        assert cli("cancel") == 1  # the forward migration is complete: finish or rollback, not cancel
        doc = rm.finish("carol", "the new cluster is fine")
        assert doc.phase == Phase.FINISHED
        with pytest.raises(TerminalError):
            rm.begin()  # ended for good
    assert store.lock_holder() is None
    reverse = store.load(reverse_name(cfg.name))
    assert [(d.action, d.approver) for d in reverse.decisions] == [("reverse-sync", "alice"), ("finish", "carol")]
    assert reverse.destination_write_blocked == store.load(cfg.name).write_blocked  # the source: as it was
    assert cli("rollback") == 1  # ended: nothing to roll back
