"""Config problems the flow used to find only when connecting are refused when the config is loaded.

A CA file that is not there, a port out of range, a mongodb+srv:// URI with a port: every command exits 2
with one line naming the field and the bad value, before anything connects; never a password.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.config import config_from_dict, load_config
from tasks.errors import ConfigError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-very-secret"


def _write(tmp_path: Path, source: dict[str, Any], name: str = "c.yaml") -> Path:
    data = {
        "name": "m",
        "source": source,
        "destination": {"uri": "mongodb://127.0.0.1:2/"},  # nothing listens: a command that connects fails fast
        "tuning": {"connect_timeout_seconds": 0.5},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_missing_ca_file_is_refused_at_load(tmp_path: Path) -> None:
    path = _write(tmp_path, {"uri": f"mongodb://u:{PASSWORD}@h1:27017", "tls_ca_file": str(tmp_path / "ca.pem")})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "source.tls_ca_file" in msg and str(tmp_path / "ca.pem") in msg and "does not exist" in msg
    assert PASSWORD not in msg and "\n" not in msg


def test_a_ca_file_that_is_no_certificate_is_refused_at_load(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    path = _write(tmp_path, {"uri": "mongodb://h1", "tls_ca_file": str(junk)})
    with pytest.raises(ConfigError, match=r"source\.tls_ca_file: .*junk\.pem is not a PEM"):
        load_config(path)


def test_the_model_alone_keeps_a_missing_ca_file_for_the_prechecks(tmp_path: Path) -> None:
    """Built in code, the config may name a CA file this machine lacks: the connect precheck reports it."""
    cfg = config_from_dict({"name": "m", "source": {"uri": "mongodb://h1", "tls_ca_file": "/no/ca.pem"}, "link": "x"})
    assert cfg.source.tls_ca_file == Path("/no/ca.pem")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"mongodb://u:{PASSWORD}@db1:27017,db2:70000/?replicaSet=rs0", "port 70000 of host db2 is out of range"),
        (f"mongodb://u:{PASSWORD}@db1:0", "port 0 of host db1 is out of range"),
        (f"mongodb://u:{PASSWORD}@[::1]:99999", "port 99999 of host [::1] is out of range"),
        (f"mongodb+srv://u:{PASSWORD}@cluster0.example.net:27017/", "mongodb+srv:// URI takes no port"),
        (f"mongodb+srv://u:{PASSWORD}@a.example.net,b.example.net/", "exactly one host"),
        (f"mongodb://u:{PASSWORD}@h1,h2/?directConnection=true", "multiple hosts with directConnection"),
        (f"mongodb://u:{PASSWORD}@h1/?tlsCAFile=/no/such/ca.pem", "tlsCAFile /no/such/ca.pem does not exist"),
        (f"mongodb://u:{PASSWORD}@h1,,h2", "empty host"),
        # Unescaped '/' or '?' in a password: what looks like a port is part of it and is never named.
        ("mongodb://u:70000/" + PASSWORD + "@h1", "a port is out of range; percent-encode"),
        ("mongodb://u:abc?" + PASSWORD + "@h1:1/", "a port is not a number; percent-encode"),
        ("mongodb://u:" + PASSWORD + ":x@h1", "Username and password must be escaped"),
    ],
)
def test_a_bad_uri_is_refused_naming_the_field_never_the_password(uri: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"name": "m", "source": {"uri": uri}, "destination": {"uri": "mongodb://h9"}}, "f.yaml")
    msg = str(info.value)
    assert msg.startswith("f.yaml: source.uri: ") and expected in msg, msg
    assert PASSWORD not in msg and "70000/" not in msg and "\n" not in msg


def test_good_uris_pass() -> None:
    for uri in (
        "mongodb://u:p%40ss@db1.example.internal:27017,db2.example.internal/?replicaSet=rs0&authSource=admin",
        "mongodb://127.0.0.1:65535/?directConnection=true",
        "mongodb://%2Ftmp%2Fmongodb-27017.sock",
        "mongodb+srv://u:p@cluster0.example.mongodb.net/?retryWrites=true&w=majority",
    ):
        config_from_dict({"name": "m", "source": {"uri": uri}, "destination": {"uri": "mongodb://h9"}})


def test_a_uri_from_a_secret_block_is_checked_when_resolved() -> None:
    cfg = config_from_dict({"name": "m", "link": "prod"})
    with pytest.raises(ConfigError) as info:
        cfg.resolve(lambda block: f"mongodb://u:{PASSWORD}@h1:123456")
    msg = str(info.value)
    assert "source.uri" in msg and "livemigrate-link-prod-source" in msg and "123456" in msg
    assert PASSWORD not in msg


def _bad_configs(tmp_path: Path) -> dict[str, Path]:
    return {
        "source.tls_ca_file: /no/such/ca.pem does not exist": _write(
            tmp_path, {"uri": f"mongodb://u:{PASSWORD}@127.0.0.1:1/", "tls_ca_file": "/no/such/ca.pem"}, "a.yaml"
        ),
        "source.uri: port 70000 of host 127.0.0.1 is out of range (1-65535)": _write(
            tmp_path, {"uri": f"mongodb://u:{PASSWORD}@127.0.0.1:70000/"}, "b.yaml"
        ),
    }


COMMANDS = [
    "validate",
    "migrate",
    "verify",
    "describe",
    "watch",
    "report",
    "cutover",
    "extend",
    "cancel",
    "clone-worker",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_exits_2_with_one_line(command: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    for field, path in _bad_configs(tmp_path).items():
        result = CliRunner().invoke(app, [command, "--config", str(path)])
        assert result.exit_code == 2, (command, field, result.output)
        lines = result.stderr.strip().splitlines()
        assert lines == [f"livemigrate: error: {path}: {field}"], (command, result.output)
        assert PASSWORD not in result.output


def test_migrate_process_prints_one_line(tmp_path: Path) -> None:
    """The real process: before, the flow started and Prefect printed its traceback first."""
    path = _bad_configs(tmp_path)["source.uri: port 70000 of host 127.0.0.1 is out of range (1-65535)"]
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "migrate", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"livemigrate: error: {path}: source.uri: port 70000 of host 127.0.0.1 is out of range (1-65535)"
    ]
    assert PASSWORD not in r.stdout + r.stderr
