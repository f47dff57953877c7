"""Adaptive write concurrency (tasks/concurrency.py) and the cheap sources of the sync's lag: pure logic."""

from __future__ import annotations

import threading
import time

import pytest
from bson.timestamp import Timestamp

from tasks.concurrency import Climber, WriteGate
from tasks.partition import uses_index
from tasks.sync import token_time


def run_climber(ceiling: int, rate_at: dict[int, float], windows: int, reprobe_every: int = 10) -> list[int]:
    """Feed a climber the rate of whatever limit it chose; the limits it ran at, window by window."""
    c = Climber(ceiling, reprobe_every=reprobe_every)
    seen = []
    for _ in range(windows):
        seen.append(c.limit)
        c.observe(rate_at[c.limit])
    return seen


def test_climbs_while_a_step_up_pays() -> None:
    # MongoDB-like: every extra stream helps.
    seen = run_climber(4, {1: 10.0, 2: 18.0, 3: 25.0, 4: 30.0}, 6)
    assert seen[:4] == [1, 2, 3, 4]
    assert seen[4:] == [4, 4]


def test_steps_back_when_more_streams_are_slower() -> None:
    # SecantusDB-like: two streams write less than one.
    seen = run_climber(4, {1: 8.0, 2: 5.0, 3: 2.5, 4: 2.0}, 5)
    assert seen == [1, 2, 1, 1, 1]


def test_a_gain_under_ten_percent_is_not_worth_a_stream() -> None:
    seen = run_climber(4, {1: 10.0, 2: 10.5, 3: 30.0, 4: 30.0}, 4)
    assert seen == [1, 2, 1, 1]


def test_settled_limit_is_looked_at_again_up_and_down() -> None:
    c = Climber(4, reprobe_every=3)
    rates = {1: 10.0, 2: 20.0, 3: 21.0, 4: 21.0}
    seen = []
    for _ in range(16):
        seen.append(c.limit)
        c.observe(rates[c.limit])
    assert seen[:4] == [1, 2, 3, 2]  # 3 did not pay: settled at 2
    assert 3 in seen[4:] and 1 in seen[4:]  # later looks go up and down from 2
    assert c.limit == 2 or c.probe is not None


def test_a_changed_destination_moves_the_settled_limit() -> None:
    c = Climber(4, reprobe_every=2)
    rates = {1: 8.0, 2: 5.0, 3: 5.0, 4: 5.0}
    for _ in range(4):
        c.observe(rates[c.limit])
    assert c.home == 1
    rates = {1: 8.0, 2: 16.0, 3: 24.0, 4: 24.0}  # the load changed: more streams pay now
    for _ in range(12):
        c.observe(rates[c.limit])
    assert c.home == 3


def test_ceiling_one_never_climbs() -> None:
    assert run_climber(1, {1: 5.0}, 15, reprobe_every=2) == [1] * 15


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_gate_measures_busy_time_only_and_limits_concurrency() -> None:
    clock = FakeClock()
    gate = WriteGate(3, window_seconds=1.0, clock=clock)
    for _ in range(4):  # 4 writes of 100 units, 0.5 s each, with long idle gaps between them
        with gate.slot(100):
            clock.t += 0.5
        clock.t += 10.0
    assert gate.history[0] == (1, pytest.approx(200.0))  # 200 units per busy second; the gaps do not count
    assert gate.limit == 2

    # Real threads: never more than `limit` writes inside the gate at once.
    real = WriteGate(4, window_seconds=60.0)
    inside = peak = 0
    lock = threading.Lock()

    def write() -> None:
        nonlocal inside, peak
        with real.slot(1):
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.01)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 1  # the limit starts at one


def test_failed_write_is_not_counted() -> None:
    clock = FakeClock()
    gate = WriteGate(2, window_seconds=0.1, clock=clock)
    with pytest.raises(RuntimeError), gate.slot(1000):
        clock.t += 1.0
        raise RuntimeError("refused")
    assert list(gate.history) == []  # busy, but nothing written: no window closes on a failure alone


# MongoDB's explain output, shaped as real servers send it.
IXSCAN = {"stage": "FETCH", "filter": {"_id": {"$type": [16]}}, "inputStage": {"stage": "IXSCAN", "indexName": "_id_"}}
EXPRESS = {"stage": "EXPRESS_IXSCAN", "keyPattern": "{ _id: 1 }"}
CLUSTERED = {"stage": "CLUSTERED_IXSCAN", "direction": "forward", "minRecord": 0, "maxRecord": 1}
OLD_CLUSTERED = {"stage": "COLLSCAN", "direction": "forward", "minRecord": 0, "maxRecord": 1}
SBE = {"queryPlan": {"stage": "FETCH", "inputStage": {"stage": "IXSCAN"}}, "slotBasedPlan": {"stages": "..."}}
SHARDED = {"stage": "SHARD_MERGE", "shards": [{"shardName": "a", "winningPlan": IXSCAN}]}
COLLSCAN = {
    "stage": "COLLSCAN",
    "filter": {"$and": [{"_id": {"$lt": 1}}, {"_id": {"$gte": 0}}]},
    "direction": "forward",
}


@pytest.mark.parametrize("plan", [IXSCAN, EXPRESS, CLUSTERED, OLD_CLUSTERED, SBE, SHARDED], ids=str)
def test_plans_that_read_the_id_index(plan: dict[str, object]) -> None:
    assert uses_index(plan)


def test_a_collection_scan_is_not_a_range_read() -> None:
    assert not uses_index(COLLSCAN)
    assert not uses_index({"stage": "SHARD_MERGE", "shards": [{"winningPlan": COLLSCAN}]})


def test_token_time_reads_mongodb_tokens_only() -> None:
    # A MongoDB 6+ resume token: 0x82, then the timestamp's seconds and increment, big-endian.
    token = {"_data": "8263F0A1B2000000012B022C0100296E5A1004A5C7"}
    assert token_time(token) == Timestamp(0x63F0A1B2, 1)
    assert token_time({"_data": "3b000000107300020000"}) is None  # SecantusDB's own format
    assert token_time(None) is None
    assert token_time({"_data": "82zz"}) is None
