"""A migration whose lock was taken over (its heartbeat went stale) stops writing instead of racing the other."""

from __future__ import annotations

import datetime as dt

import pytest
from pymongo import MongoClient

from tasks.errors import LockHeldError
from tasks.metadata import LOCK_ID, MetadataStore
from tasks.migration import Migration
from tasks.state import Phase
from tests.conftest import Deployment
from tests.helpers import make_config, wait_until

pytestmark = pytest.mark.integration


def test_lost_lock_stops_the_sync_and_fails_the_migration(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str
) -> None:
    src_client[dbname]["c"].insert_many([{"_id": i} for i in range(100)])
    tuning = {"lock_timeout_seconds": 2}
    first = Migration(make_config(pair[0].uri, pair[1].uri, dbname, name=f"a-{dbname}", tuning=tuning))
    second = Migration(make_config(pair[0].uri, pair[1].uri, dbname, name=f"b-{dbname}", tuning=tuning))
    store = MetadataStore(dst_client)
    try:
        first.begin()
        first.clone()
        assert first.wait_ready(30)
        # As if the first migrator's process froze past the lock timeout: the second takes the lock.
        stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)
        store.locks.update_one({"_id": LOCK_ID}, {"$set": {"heartbeat_at": stale}})
        second.begin()
        runner = first.runner
        assert runner is not None
        assert wait_until(lambda: not runner.alive(), 10), "the sync kept writing without the lock"
        assert isinstance(runner.state.error, LockHeldError)
        assert isinstance(first.lock_lost, LockHeldError)
        assert store.load(first.name).phase == Phase.FAILED
        assert store.lock_holder()["holder"] == second.name  # type: ignore[index]
    finally:
        first.close()
        second.close()
