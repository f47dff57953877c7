"""One retry rule for the engine: transient errors are retried with backoff, up to a budget of failures in a row.

Why: the clone's steps (copy a partition, prepare, finish) and the sync's stream both meet elections, dropped
connections and killed cursors; both must ride them out the same way and give up the same way.  A step
that is retried whole uses :func:`retry_transient`; a loop that keeps going (the sync) holds a
:class:`RetryBudget` and resets it after every piece of work that went all the way through.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from pymongo.errors import PyMongoError

from tasks.errors import LiveMigrateError, TransientError, classify

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryBudget:
    """Counts transient failures in a row; each one waits longer, and past ``attempts`` the error stands."""

    def __init__(self, what: str, attempts: int, cap_seconds: float, base_seconds: float = 0.2) -> None:
        self.what, self.attempts, self.cap, self.base = what, attempts, cap_seconds, base_seconds
        self.failures = 0  # in a row, since the last success

    def failed(self, exc: BaseException) -> float:
        """Record a failure: the error to raise (terminal, or over budget), or the seconds to wait first.

        Full jitter (a random wait up to the exponential step, at least half of it), so several
        workers that failed together do not come back together.
        """
        err = classify(exc, self.what) if not isinstance(exc, LiveMigrateError) else exc
        if not isinstance(err, TransientError):
            raise err from None
        self.failures += 1
        if self.failures > self.attempts:
            raise TransientError(f"{self.what}: gave up after {self.failures} failures in a row: {err}") from None
        step = min(self.cap, self.base * 2**self.failures)
        delay = random.uniform(step / 2, step)
        log.warning("%s: %s; retrying in %.1fs (%d/%d)", self.what, err, delay, self.failures, self.attempts)
        return delay

    def succeeded(self) -> None:
        self.failures = 0


def retry_transient(what: str, step: Callable[[int], T], attempts: int, cap: float) -> T:
    """Run an idempotent step (given the attempt number), again after each transient error, with backoff."""
    budget = RetryBudget(what, attempts, cap)
    attempt = 0
    while True:
        try:
            return step(attempt)
        except (PyMongoError, TransientError) as exc:
            delay = budget.failed(exc)
        time.sleep(delay)
        attempt += 1
