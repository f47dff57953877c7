"""`livemigrate link`: URIs round-trip through Prefect Secret blocks and never reach the output."""

from __future__ import annotations

import logging
import uuid

import pytest

from flows.common import resolve
from flows.link import block_names, link_create, link_create_cli, link_delete, link_delete_cli
from tasks.config import MigrationConfig, link_block_name
from tasks.errors import EXIT_ERROR, EXIT_OK, ConfigError

pytestmark = [pytest.mark.flows, pytest.mark.usefixtures("prefect_harness")]

PASSWORD = "Sup3r-s3cret-P4ss"
SRC = f"mongodb://migrator:{PASSWORD}@src.example:27017/?authSource=admin"
DST = f"mongodb+srv://writer:{PASSWORD}@dst.example/?retryWrites=true"


def _link() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _config(link: str) -> MigrationConfig:
    return MigrationConfig.model_validate({"name": "linked", "link": link})


def test_create_resolve_delete_round_trip() -> None:
    name = _link()
    link_create(name, SRC, DST, overwrite=False)

    cfg = resolve(_config(name))
    assert cfg.source_uri() == SRC
    assert cfg.destination_uri() == DST
    assert PASSWORD not in repr(cfg)

    assert link_delete(name) is True
    with pytest.raises(ConfigError):
        resolve(_config(name))
    assert link_delete(name) is False


def test_create_refuses_to_replace_without_overwrite() -> None:
    name = _link()
    link_create(name, SRC, DST, overwrite=False)
    try:
        with pytest.raises(ConfigError):
            link_create(name, DST, SRC, overwrite=False)
        assert resolve(_config(name)).source_uri() == SRC
        link_create(name, DST, SRC, overwrite=True)
        assert resolve(_config(name)).source_uri() == DST
    finally:
        link_delete(name)


def test_an_existing_half_blocks_creation_and_nothing_is_written() -> None:
    from prefect.blocks.system import Secret

    name = _link()
    names = block_names(name)
    Secret(value=DST).save(names["destination"], _sync=True)
    with pytest.raises(ConfigError):
        link_create(name, SRC, DST, overwrite=False)
    with pytest.raises(ConfigError):
        resolve(_config(name))  # the source half was not written
    assert link_delete(name) is True  # cleans up the lone half


@pytest.mark.parametrize(
    ("src", "dst"),
    [("postgres://u:Sup3r-s3cret-P4ss@h/db", DST), (SRC, "Sup3r-s3cret-P4ss"), (SRC, "")],
)
def test_bad_uri_is_refused_without_echo_and_nothing_is_written(src: str, dst: str) -> None:
    name = _link()
    with pytest.raises(ConfigError) as info:
        link_create(name, src, dst, overwrite=False)
    assert PASSWORD not in str(info.value)
    assert link_delete(name) is False  # neither half was saved


@pytest.mark.parametrize("bad", ["has space", "under_score", "dot.ted", ""])
def test_link_name_must_be_a_valid_block_name(bad: str) -> None:
    with pytest.raises(ConfigError):
        block_names(bad)


def test_block_names_match_what_config_resolution_reads() -> None:
    assert block_names("Prod-1") == {
        "source": link_block_name("Prod-1", "source"),
        "destination": link_block_name("Prod-1", "destination"),
    }


def test_cli_never_shows_the_password(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    name = _link()
    caplog.set_level(logging.DEBUG)

    assert link_create_cli(name, SRC, DST, False) == EXIT_OK
    out = capsys.readouterr()
    assert name in out.out and block_names(name)["source"] in out.out

    assert link_create_cli(name, SRC, DST, False) == EXIT_ERROR  # exists, no --overwrite
    assert link_create_cli(name, "http://x:" + PASSWORD + "@h", DST, True) == EXIT_ERROR
    assert resolve(_config(name)).source_uri() == SRC
    assert link_delete_cli(name) == EXIT_OK
    assert link_delete_cli(name) == EXIT_ERROR  # already gone
    out2 = capsys.readouterr()

    seen = out.out + out.err + out2.out + out2.err + caplog.text
    for rec in caplog.records:
        seen += rec.getMessage() + repr(rec.args)
    assert PASSWORD not in seen
    assert "src.example" not in seen and "dst.example" not in seen
