"""The clone's progress artifact keeps per-namespace sums as reports arrive (flows/artifacts.py)."""

from __future__ import annotations

import random

from flows.artifacts import CloneProgressArtifact


def test_per_namespace_sums_match_a_recount_of_every_partition() -> None:
    bar = CloneProgressArtifact.__new__(CloneProgressArtifact)  # no Prefect: only the bookkeeping
    bar.name, bar.metrics, bar.by_part, bar.by_ns, bar.artifact_id = "m", None, {}, {}, None
    bar._throttle = type("T", (), {"maybe": staticmethod(lambda: None)})()
    rnd = random.Random(7)
    latest: dict[str, tuple[int, int]] = {}
    for _ in range(2000):
        key = f"m|db{rnd.randrange(3)}.c{rnd.randrange(4)}|{rnd.randrange(5)}"
        done, nbytes = rnd.randrange(1000), rnd.randrange(10**6)
        latest[key] = (done, nbytes)
        bar("clone", key, done, 0, {"bytes": nbytes})
    expected: dict[str, tuple[int, int]] = {}
    for key, (done, nbytes) in latest.items():
        ns = key.split("|")[1]
        d, b = expected.get(ns, (0, 0))
        expected[ns] = (d + done, b + nbytes)
    assert bar.by_ns == expected
