"""`--help` of every command (and sub-command) works, exits 0 and says what the command does."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app

pytestmark = pytest.mark.unit


def _commands() -> list[tuple[list[str], Any]]:
    root = typer.main.get_command(app)
    out: list[tuple[list[str], Any]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        out.append((path, cmd))
        if hasattr(cmd, "commands"):  # a group (typer ships its own click classes)
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(root, [])
    return out


COMMANDS = _commands()


def test_every_documented_command_exists() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    for expected in (
        "validate",
        "verify",
        "migrate",
        "describe",
        "watch",
        "report",
        "cutover",
        "extend",
        "cancel",
        "clone-worker",
        "link create",
        "link delete",
    ):
        assert expected in names, expected


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "livemigrate")
def test_help(path: list[str]) -> None:
    cmd = dict((tuple(p), c) for p, c in COMMANDS)[tuple(path)]
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert cmd.help, f"{' '.join(path)} has no help text"
    first_word = cmd.help.strip().split()[0]
    assert first_word in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("livemigrate ")
