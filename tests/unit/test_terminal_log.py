"""The terminal shows warnings and errors, one line each; Prefect's own lines go to the run, or with --verbose."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

import pytest

from flows.common import TerminalLogHandler

pytestmark = pytest.mark.unit
spec = importlib.util.find_spec("prefect")
assert spec is not None and spec.submodule_search_locations
PREFECT = next(iter(spec.submodule_search_locations))


def _record(name: str, level: int, pathname: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, level, pathname, 1, msg, None, exc_info)


def _boom() -> BaseException:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        return exc


RECORDS = [
    _record("prefect.flow_runs", logging.INFO, os.path.join(PREFECT, "flow_engine.py"), "Beginning flow run 'x'"),
    _record(
        "prefect.flow_runs", logging.ERROR, os.path.join(PREFECT, "flow_engine.py"), "Encountered exception", _boom()
    ),
    _record("prefect.flow_runs", logging.ERROR, os.path.join(PREFECT, "flow_engine.py"), "Crash detected! signal"),
    _record(
        "EventsWorker",
        logging.WARNING,
        os.path.join(PREFECT, "_internal", "concurrency", "services.py"),
        "Still processing items: 1 items remaining...",
    ),
    _record("tasks.sync", logging.INFO, "/repo/tasks/sync.py", "applied a batch"),
    _record("tasks.sync", logging.WARNING, "/repo/tasks/sync.py", "writes keep arriving", _boom()),
    # The migrate flow copies the engine's warnings into its run log: the same line through its run logger.
    _record("prefect.flow_runs", logging.WARNING, "/repo/flows/migrate.py", "writes keep arriving"),
    _record("prefect.flow_runs", logging.WARNING, "/repo/flows/migrate.py", "cutover refused: lag 12 s"),
]


def _shown(verbose: bool, capsys: pytest.CaptureFixture[str]) -> list[str]:
    handler = TerminalLogHandler()
    handler.set_verbose(verbose)
    logger = logging.Logger("terminal-test")  # not in the hierarchy: only this handler, which sets the level
    logger.addHandler(handler)
    for r in RECORDS:
        logger.handle(r)
    out, err = capsys.readouterr()
    assert out == ""
    return err.splitlines()


def test_default_shows_warnings_one_line_each_and_nothing_of_prefect(capsys: pytest.CaptureFixture[str]) -> None:
    assert _shown(False, capsys) == [
        "livemigrate: warning: writes keep arriving (RuntimeError: boom)",
        "livemigrate: warning: cutover refused: lag 12 s",
    ]


def test_verbose_shows_everything_with_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _shown(True, capsys)
    text = "\n".join(lines)
    for expected in (
        "INFO prefect.flow_runs: Beginning flow run 'x'",
        "ERROR prefect.flow_runs: Crash detected! signal",
        "WARNING EventsWorker: Still processing items",
        "INFO tasks.sync: applied a batch",
        "Traceback (most recent call last):",
    ):
        assert expected in text, text


def test_the_stream_is_stderr_as_it_is_when_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich's live display swaps sys.stderr to print above the progress bars; the handler follows it."""
    handler = TerminalLogHandler()
    lines: list[str] = []

    class Sink:
        def write(self, s: str) -> None:
            lines.append(s)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Sink())
    handler.handle(RECORDS[-1])
    assert "".join(lines) == "livemigrate: warning: cutover refused: lag 12 s\n"
