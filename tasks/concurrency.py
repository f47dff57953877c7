"""Adaptive write concurrency: measure how many concurrent writes the destination takes best.

Why: MongoDB takes parallel insert streams into several collections faster
than one; other servers take them slower (SecantusDB, the test server: three
concurrent insert streams were measured at a third of one stream's rate).  The
right number depends on the destination and its load, so it is measured, not
configured: a :class:`WriteGate` lets ``limit`` writes run at once, starting at
one; each window it compares the amount written per busy second (time with a
write in flight, so idle gaps do not count) with the rate one step lower, climbs while a step up pays, then settles, and looks again (up and
down in turn) every few windows.  ``tuning.workers`` is the ceiling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

WINDOW_SECONDS = 3.0
STEP_GAIN = 1.10  # a step up is kept when it writes at least 10% more per second
REPROBE_WINDOWS = 10  # windows between two looks at the neighbouring limits once settled
HISTORY_WINDOWS = 100  # closed windows kept for inspection


@dataclass
class Climber:
    """The decision rule alone (pure, unit-tested): feed it one rate per window, it returns the next limit."""

    ceiling: int
    limit: int = 1
    gain: float = STEP_GAIN
    reprobe_every: int = REPROBE_WINDOWS
    rates: dict[int, float] = field(default_factory=dict)
    settled: bool = False
    probe: int | None = None  # the limit being tried while settled (None: not probing)
    home: int = 1  # the limit settled on
    quiet: int = 0  # windows since settling
    next_up: bool = True  # direction of the next look once settled

    def observe(self, rate: float) -> int:
        self.rates[self.limit] = rate
        if not self.settled:
            lower = self.rates.get(self.limit - 1)
            if lower is not None and rate < lower * self.gain:
                self._settle(self.limit - 1)  # the last step up did not pay
            elif self.limit < self.ceiling:
                self.limit += 1
            else:
                self._settle(self.limit)
            return self.limit
        if self.probe is not None:  # a look at a neighbour just ended
            home_rate = self.rates.get(self.home, 0.0)
            better = rate >= home_rate * self.gain if self.probe > self.home else rate >= home_rate / self.gain
            if better and self.probe > self.home:
                self.settled, self.probe = False, None  # keep climbing from here
                if self.limit < self.ceiling:
                    self.limit += 1
                else:
                    self._settle(self.limit)
                return self.limit
            self._settle(self.probe if better else self.home)
            return self.limit
        self.quiet += 1
        if self.quiet >= self.reprobe_every:
            step = 1 if self.next_up else -1
            self.next_up = not self.next_up
            if 1 <= self.home + step <= self.ceiling:
                self.probe = self.limit = self.home + step
            else:
                self.quiet = 0
        return self.limit

    def _settle(self, limit: int) -> None:
        self.settled, self.probe, self.quiet = True, None, 0
        self.home = self.limit = max(1, min(self.ceiling, limit))


class WriteGate:
    """At most ``limit`` writes at once; the limit follows the measured write rate (see module doc)."""

    def __init__(
        self,
        ceiling: int,
        *,
        what: str = "writes",
        unit: tuple[str, float] = ("MB/s", 1e6),
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.climber = Climber(max(1, ceiling))
        self.what = what
        self.unit = unit
        self.window_seconds = window_seconds
        self.clock = clock
        self._cond = threading.Condition()
        self._active = 0
        self._busy_since = 0.0  # when the current run of in-flight writes began
        self._window_busy = 0.0  # busy seconds of the window before that run
        self._window_amount = 0.0
        self._window_writes = 0
        self._announced = 0
        # (limit, rate) of the last closed windows; bounded, since a sync keeps its gate for days
        self.history: deque[tuple[int, float]] = deque(maxlen=HISTORY_WINDOWS)

    @property
    def limit(self) -> int:
        return self.climber.limit

    @contextmanager
    def slot(self, amount: float) -> Iterator[None]:
        """Hold one of the ``limit`` write slots for a write of ``amount`` (bytes, writes); counted if it succeeds."""
        with self._cond:
            while self._active >= self.climber.limit:
                self._cond.wait()
            if self._active == 0:
                self._busy_since = self.clock()
            self._active += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._cond:
                self._active -= 1
                now = self.clock()
                if ok:
                    self._window_amount += amount
                    self._window_writes += 1
                if self._active == 0:
                    self._window_busy += now - self._busy_since
                    self._busy_since = now
                self._maybe_close(now)
                self._cond.notify_all()

    def _maybe_close(self, now: float) -> None:
        busy = self._window_busy + (now - self._busy_since if self._active else 0.0)
        if busy < self.window_seconds or self._window_writes < 2 * self.climber.limit:
            return
        rate = self._window_amount / busy
        before = self.climber.limit
        after = self.climber.observe(rate)
        self.history.append((before, rate))
        self._window_busy, self._window_amount, self._window_writes = 0.0, 0.0, 0
        self._busy_since = now
        name, scale = self.unit
        if after != before:
            log.debug("%s: %d at once wrote %.1f %s; trying %d", self.what, before, rate / scale, name, after)
        if self.climber.settled and self.climber.probe is None and self.climber.limit != self._announced:
            self._announced = self.climber.limit
            log.info(
                "%s: %d at once measured best (%s)",
                self.what,
                self.climber.limit,
                ", ".join(f"{k}: {v / scale:.1f} {name}" for k, v in sorted(self.climber.rates.items())),
            )


__all__ = ["Climber", "WriteGate"]
