"""Progress is a protocol: engine objects report (done, total); the edges render it.

Why: the same numbers feed Prefect progress artifacts, rich bars in the CLI and
Prometheus gauges (mongo-tools' progressor), and the engine does not care which.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class ProgressSink(Protocol):
    def __call__(self, stage: str, key: str, done: int, total: int, extra: dict[str, float]) -> None: ...


def null_sink(stage: str, key: str, done: int, total: int, extra: dict[str, float]) -> None:
    """Discard progress."""


@dataclass
class RateMeter:
    """Exponentially weighted rate (units per second) and an ETA."""

    alpha: float = 0.3
    rate: float = 0.0
    _last_t: float = field(default_factory=time.monotonic)
    _last_v: float = 0.0

    def update(self, value: float) -> float:
        now = time.monotonic()
        dt = now - self._last_t
        if dt >= 0.5:
            inst = (value - self._last_v) / dt
            self.rate = inst if self.rate == 0 else self.alpha * inst + (1 - self.alpha) * self.rate
            self._last_t, self._last_v = now, value
        return self.rate


class Throttle:
    """Call a function at most every ``interval`` seconds (progress must not be per batch)."""

    def __init__(self, interval: float, fn: Callable[[], None]) -> None:
        self.interval, self.fn = interval, fn
        self._next = 0.0
        self._lock = threading.Lock()

    def maybe(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now < self._next:
                return
            self._next = now + self.interval
        self.fn()
