"""The edge between people (CLI, Prefect parameters) and the engine.

Why: secrets are resolved only here (Prefect Secret blocks and links), every
engine error becomes one line on stderr with a documented exit code - never a
traceback - and the terminal shows people warnings and outcomes while Prefect's
own log lines go to the run (:class:`TerminalLogHandler`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tasks.config import MigrationConfig, checked_files, config_from_dict, load_config
from tasks.errors import EXIT_ERROR, ConfigError, LiveMigrateError, classify, error_payload
from tasks.shutdown import ShutdownRequested

log = logging.getLogger(__name__)
NOT_ON_TERMINAL = "livemigrate_not_on_terminal"  # a log record shown already, copied to a run's log (headstart.py)
P = ParamSpec("P")
R = TypeVar("R")


def read_secret_block(name: str) -> str:
    """Value of a Prefect Secret block; ConfigError naming the block when it is missing."""
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(name, _sync=True).get()  # type: ignore[union-attr,call-arg]  # async_dispatch keyword
    except ValueError:
        raise ConfigError(
            f"Prefect Secret block {name!r} not found (create it, or `livemigrate link create`)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Prefect API unreachable etc.
        raise ConfigError(f"cannot read Prefect Secret block {name!r}: {type(exc).__name__}") from None
    return str(value)


def resolve(config: MigrationConfig) -> MigrationConfig:
    """Fill URIs that come from Secret blocks or a link; no-op when the file has them."""
    return config.resolve(read_secret_block) if config.needs_resolution() else config


def load_resolved(path: str | Path) -> MigrationConfig:
    return resolve(load_config(path))


def config_param(config: str | dict[str, Any] | MigrationConfig) -> MigrationConfig:
    """Accept a flow's ``config`` parameter: a file path, a mapping, or a model; resolve secrets."""
    if isinstance(config, MigrationConfig):
        return resolve(config)
    if isinstance(config, dict):
        return resolve(checked_files(config_from_dict(config, "config parameter"), "config parameter"))
    return load_resolved(config)


def emit_error(exc: LiveMigrateError, as_json: bool) -> int:
    if as_json:
        print(json.dumps(error_payload(exc)))
    print(f"livemigrate: error: {exc.one_line()}", file=sys.stderr)
    return exc.exit_code


def cli_guard(fn: Callable[P, int]) -> Callable[P, int]:
    """Run a CLI command: engine errors become one line and their exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        as_json = bool(kwargs.get("as_json", False))
        try:
            return fn(*args, **kwargs)
        except LiveMigrateError as exc:
            return emit_error(exc, as_json)
        except ShutdownRequested as exc:
            print(f"livemigrate: {exc.one_line()}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("livemigrate: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            err = classify(exc)
            log.debug("unexpected error", exc_info=True)
            return emit_error(err, as_json) if isinstance(err, LiveMigrateError) else EXIT_ERROR

    return wrapper


class TerminalLogHandler(logging.StreamHandler):  # type: ignore[type-arg]  # the stream is sys.stderr's, whatever it is
    """What a person at the terminal reads besides the progress bars and the outcome.

    Why: Prefect logs a run's life (the temporary server, "Beginning flow run", "Finished in state",
    the flow's traceback, its services' "Still processing items" at exit) for the run in the Prefect
    API, where it belongs; on the terminal the same lines buried the one-line error.  By default this
    handler drops every record Prefect's own code makes and shows warnings and errors from everything
    else (the engine, the flows' run logger), one line each, the same warning twice in a row once (the
    migrate flow copies the engine's warnings into its run log).  Verbose, it shows INFO and up from
    everyone, tracebacks included.  It only decides what the terminal shows: Prefect's API log handler
    is left alone, so the run log keeps every line.

    The class name must not start with "_": Prefect keeps a root handler it did not make only then.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        spec = importlib.util.find_spec("prefect")
        locations = list(spec.submodule_search_locations or []) if spec else []
        self.prefect_dir = os.path.join(locations[0], "") if locations else None
        self.verbose = False
        self._last: tuple[tuple[int, str], float] | None = None
        self.set_verbose(False)

    def set_verbose(self, verbose: bool) -> None:
        self.verbose = verbose
        self.setLevel(logging.INFO if verbose else logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if verbose else _OneLine())

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, NOT_ON_TERMINAL, False):
            return False  # shown when it happened; now only copied to the run's log (flows/headstart.py)
        if self.verbose:
            return bool(super().filter(record))
        if self.prefect_dir is not None and record.pathname.startswith(self.prefect_dir):
            return False  # Prefect's own line: it is in the run's log
        try:
            key = (record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed log call is emit's to report (handleError), not the caller's
            return True
        if self._last is not None and self._last[0] == key and record.created - self._last[1] < 1.0:
            return False
        self._last = (key, record.created)
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # as it is now: rich's live display redirects it above the progress bars
        super().emit(record)


class _OneLine(logging.Formatter):
    """'livemigrate: warning: ...' on one line; an exception as its type and message, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {exc})"
        return f"livemigrate: {record.levelname.lower()}: " + text.replace("\n", " ")


def install_terminal_log() -> TerminalLogHandler:
    """Log to the terminal through :class:`TerminalLogHandler` for the life of this process (the CLI's main)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, TerminalLogHandler)]:
        root.removeHandler(old)
    handler = TerminalLogHandler()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    return handler


def set_terminal_verbose(verbose: bool) -> None:
    """``--verbose``: INFO and up from everyone, Prefect's own lines and tracebacks included.

    A no-op where :func:`install_terminal_log` did not run (the CLI called in-process by tests keeps the
    host's logging).
    """
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, TerminalLogHandler)]
    for h in handlers:
        h.set_verbose(verbose)
    if handlers:
        logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per Prefect API call
