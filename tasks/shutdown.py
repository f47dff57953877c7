"""Graceful stop on SIGTERM and SIGINT (Ctrl-C): unwind, stop the sync, keep the checkpoint.

Why: an orchestrator (systemd, Kubernetes, a Prefect worker, a person at the
terminal) stops a migrator with SIGTERM or Ctrl-C and waits a grace period
before SIGKILL.  Python's default for SIGTERM kills the process on the spot,
skipping every ``finally``.  Inside :func:`graceful_shutdown` both signals
raise :class:`ShutdownRequested` in the main thread instead, so the
``with Migration(...)`` block unwinds the normal way:

- the sync thread stops after applying the batch in hand and writes its
  checkpoint (the resume token of that last fully applied batch);
- the lock heartbeat stops, and the destination lock is **kept**: it belongs
  to the migration, not to the process, so ``livemigrate migrate`` resumes at
  once while a different migration is refused until the lock's heartbeat is
  older than ``lock_timeout_seconds`` (the same rule as after a crash);
- the phase is left as it was (``cloning`` or ``syncing``, not ``failed``);
- the process exits with ``128 + signal number`` (130 for SIGINT, 143 for
  SIGTERM) after one line on stderr, never a traceback.

A second signal during that unwinding raises again and ends the wait at once;
the checkpoint on disk is still safe, because it is only ever written after
its batch was applied.

:class:`ShutdownRequested` derives from ``KeyboardInterrupt`` so that no
``except Exception`` on the way swallows it, and Prefect records a flow run
stopped this way as crashed by an interrupt, not failed.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

_requested = threading.Event()


class ShutdownRequested(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: stop cleanly (raised in the main thread by the handler)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 + the signal number (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum

    def one_line(self, name: str | None = None, resume_hint: str = "") -> str:
        """What a person sees on stderr: what stopped, what was kept, how to go on."""
        who = f"migration {name!r}" if name else "the migration"
        hint = f"; {resume_hint}" if resume_hint else ""
        return (
            f"stopped by {self.signal_name}: the sync stopped after its last applied batch and saved its checkpoint; "
            f"{who} keeps the destination lock{hint}"
        )


_stopped_by: list[int] = []


def note_stop(signum: int) -> None:
    """Record a stop that reached the code without :func:`_handler` (Prefect's own SIGTERM bridge in a flow)."""
    _requested.set()
    _stopped_by[:] = [signum]


def stopped_by() -> int | None:
    """The signal of the last stop in this :func:`graceful_shutdown` block, if any."""
    return _stopped_by[0] if _stopped_by else None


def requested() -> bool:
    """True once a handled signal arrived (engine loops in other threads may poll this)."""
    return _requested.is_set()


def _handler(signum: int, frame: FrameType | None) -> None:
    again = _requested.is_set()
    note_stop(signum)
    if again:
        log.warning("%s again: stopping now", signal.Signals(signum).name)
    raise ShutdownRequested(signum)


@contextmanager
def graceful_shutdown(signals: tuple[signal.Signals, ...] = HANDLED_SIGNALS) -> Iterator[None]:
    """Turn ``signals`` into :class:`ShutdownRequested` for the duration of the block.

    Only the main thread can install signal handlers; called from another
    thread this is a no-op.  The previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}
    _requested.clear()
    _stopped_by.clear()
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, _handler)
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _requested.clear()
        _stopped_by.clear()


__all__ = ["HANDLED_SIGNALS", "ShutdownRequested", "graceful_shutdown", "requested"]
