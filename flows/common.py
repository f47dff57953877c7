"""The edge between people (CLI, Prefect parameters) and the engine.

Why: secrets are resolved only here (Prefect Secret blocks and links), and every
engine error becomes one line on stderr with a documented exit code - never a
traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tasks.config import MigrationConfig, config_from_dict, load_config
from tasks.errors import EXIT_ERROR, ConfigError, LiveMigrateError, classify, error_payload
from tasks.shutdown import ShutdownRequested

log = logging.getLogger(__name__)
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
        return resolve(config_from_dict(config, "config parameter"))
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
