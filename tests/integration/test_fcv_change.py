"""A featureCompatibilityVersion change stops the sync (#5).

SecantusDB reports its FCV (getParameter answers ``{"version": "8.2"}``) but
refuses setFeatureCompatibilityVersion (CommandNotFound), so the source here is
mockupdb (tests/fake_mongod.py) following the whole SyncRunner: the change
stream, the oplog read behind the lag and getParameter, whose answer the test
changes mid-sync.  The destination and its metadata store are the real server.

SyncRunner polls both sides' FCV every ``tasks.syncstatus.FCV_POLL_SECONDS`` (10 s);
the tests shorten it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pymongo import MongoClient

import tasks.syncstatus
from tasks.errors import FCVChangedError
from tasks.migration import Migration
from tasks.sync import SyncRunner
from tests.conftest import Deployment
from tests.fake_mongod import FakeMongod, FakeSpec, fake_mongod
from tests.helpers import make_config, wait_until

pytestmark = pytest.mark.integration

POLL = 0.3
MAX_TIME_MS_EXPIRED = {"ok": 0, "errmsg": "operation exceeded time limit", "code": 50, "codeName": "MaxTimeMSExpired"}


@pytest.fixture
def fast_fcv_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks.syncstatus, "FCV_POLL_SECONDS", POLL)


@contextmanager
def begun(
    pair: tuple[Deployment, Deployment], dst: MongoClient[Any], db: str, spec: FakeSpec | None = None
) -> Iterator[tuple[Migration, FakeMongod]]:
    """A migration from a scripted 8.0 source into the real destination, with its start point stored."""
    with fake_mongod(spec or FakeSpec(version="8.0.4", databases={})) as fake, fake.client() as src:
        with Migration(make_config(fake.uri, pair[1].uri, db), src, dst) as m:
            m.begin()
            yield m, fake


def fcv_reads(fake: FakeMongod) -> int:
    return sum(1 for d in fake.sent("getParameter") if d.get("featureCompatibilityVersion"))


def test_source_fcv_change_stops_the_sync(
    fast_fcv_poll: None, pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    with begun(pair, dst_client, dbname) as (m, fake):
        runner = m.start_sync()
        assert wait_until(lambda: fcv_reads(fake) >= 1, 10), "the sync never read the source's FCV"
        fake.spec.fcv = "7.0"  # setFeatureCompatibilityVersion "7.0" on the source
        with pytest.raises(FCVChangedError) as err:
            runner.wait(lambda st: False, 15)
        assert wait_until(lambda: not runner.alive(), 5), "the sync kept running after the FCV changed"
    assert isinstance(runner.state.error, FCVChangedError)
    assert "source 8.0 -> 7.0" in str(err.value)


def test_unchanged_fcv_keeps_the_sync_running(
    fast_fcv_poll: None, pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    with begun(pair, dst_client, dbname) as (m, fake):
        runner = m.start_sync()
        assert runner.wait(lambda st: False, 1.5) is False
        assert runner.alive() and runner.state.error is None
        assert fcv_reads(fake) >= 3


def test_fcv_unreadable_at_the_first_poll_is_not_a_change(
    fast_fcv_poll: None, pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    reads: list[int] = []

    def busy_then_fine(request: Any) -> dict[str, Any]:
        reads.append(1)
        if len(reads) == 1:  # the first reading of the source's FCV meets a busy server
            return MAX_TIME_MS_EXPIRED
        return {"featureCompatibilityVersion": {"version": "8.0"}}

    spec = FakeSpec(version="8.0.4", databases={}, overrides={"getparameter": busy_then_fine})
    with begun(pair, dst_client, dbname, spec) as (m, fake):
        runner = m.start_sync()
        assert runner.wait(lambda st: fcv_reads(fake) >= 4, 10)
        assert runner.alive() and runner.state.error is None


def test_fcv_change_during_the_clone_stops_the_sync(
    fast_fcv_poll: None, pair: tuple[Deployment, Deployment], dst_client: MongoClient[Any], dbname: str
) -> None:
    with begun(pair, dst_client, dbname) as (m, fake):
        fake.spec.fcv = "7.0"  # changed while the clone ran, before the sync started
        runner: SyncRunner = m.start_sync()
        with pytest.raises(FCVChangedError):
            runner.wait(lambda st: False, 5)
