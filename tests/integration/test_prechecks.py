"""Prechecks against real server pairs (SecantusDB): what a real server can show, CLI exit codes, the flow."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import MongoClient

from checks.prechecks import PrecheckReport, Status, run_prechecks
from tasks.config import METADATA_DB, config_from_dict
from tasks.metadata import MetadataStore
from tasks.state import MigrationDoc
from tests.conftest import SOURCE_PASSWORD, SOURCE_USER, Deployment, requires_secantus

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CLI = str(REPO / ".venv" / "bin" / "livemigrate")


def make_config(src: Deployment, dst: Deployment, include: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": extra.pop("name", "pc-" + uuid.uuid4().hex[:8]),
        "source": {"uri": extra.pop("source_uri", src.uri)},
        "destination": {"uri": extra.pop("destination_uri", dst.uri)},
        "tuning": {"connect_timeout_seconds": 5, **extra.pop("tuning", {})},
    }
    if src.ca_file:
        cfg["source"]["tls_ca_file"] = str(src.ca_file)
    if dst.ca_file:
        cfg["destination"]["tls_ca_file"] = str(dst.ca_file)
    if include:
        cfg["namespaces"] = {"include": include}
    cfg.update(extra)
    return cfg


def run(cfg: dict[str, Any], **kw: Any) -> PrecheckReport:
    return run_prechecks(config_from_dict(cfg), **kw)


def statuses(report: PrecheckReport) -> dict[str, str]:
    return {c.id: c.status.value for c in report.checks}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(tmp_path: Path, cfg: dict[str, Any] | str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "migration.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return subprocess.run([CLI, "validate", "--config", str(path), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def seeded(pair: tuple[Deployment, Deployment], dbname: str) -> Iterator[str]:
    """Some source data in this test's database (the destination stays empty)."""
    with pair[0].client() as c:
        c[dbname]["orders"].insert_many([{"_id": i, "v": "x" * 100} for i in range(200)])
        # The oplog window counts whole seconds: on a pair started for this module (tests/conftest.py) it is
        # 0 s until the oplog spans a second, and the oplog-window check rightly warns.  The index comes later.
        first = c.local["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", 1)])
        while first is not None and int(time.time()) <= first["ts"].time:
            time.sleep(0.05)
        c[dbname]["orders"].create_index("v")
    yield dbname


# -- the plain pair -----------------------------------------------------------
def test_clean_pair_passes_and_stores_the_report(pair: tuple[Deployment, Deployment], seeded: str) -> None:
    src, dst = pair
    cfg = make_config(src, dst, [f"{seeded}.*"])
    report = run(cfg, store=True)
    st = statuses(report)
    assert report.exit_code == 0, report.to_json()
    for cid in (
        "connect",
        "topology",
        "version",
        "fcv",
        "dbstats",
        "bi-connector",
        "capacity",
        "destination-data",
        "lock",
        "oplog-window",
        "unsupported",
    ):
        assert st[cid] == "pass", (cid, report.check(cid))
    assert st["roles"] == "warn"  # the plain source has no authentication
    assert st["disk"] == "warn" and report.check("disk").evidence["destination_reported"] is False
    assert report.check("dbstats").evidence["databases"] == [seeded]
    assert report.check("connect").evidence["identity"]["same"] is False
    assert report.stored
    with dst.client() as c:
        store = MetadataStore(c)
        assert store.last_report(cfg["name"], "validation")["schema"] == "livemigrate.prechecks/1"
        assert store.get(cfg["name"]) is None  # no migration record: none is created


def test_last_validation_is_set_when_the_migration_exists(pair: tuple[Deployment, Deployment], seeded: str) -> None:
    src, dst = pair
    cfg = make_config(src, dst, [f"{seeded}.*"])
    with dst.client() as c:
        MetadataStore(c).create(MigrationDoc(_id=cfg["name"]))
        run(cfg, store=True)
        doc = MetadataStore(c).load(cfg["name"])
    assert doc.last_validation is not None and doc.last_validation["status"] == "warn"


def test_destination_namespaces_fail_unless_cleared(pair: tuple[Deployment, Deployment], seeded: str) -> None:
    src, dst = pair
    with dst.client() as c:
        c[seeded]["orders"].insert_one({"_id": "already here"})
        c[seeded]["leftover"].insert_one({})
    r = run(make_config(src, dst, [f"{seeded}.*"])).check("destination-data")
    assert r.status == Status.FAIL
    assert r.evidence["existing"] == [f"{seeded}.leftover", f"{seeded}.orders"]
    assert r.evidence["also_on_source"] == [f"{seeded}.orders"]
    cleared = run(make_config(src, dst, [f"{seeded}.*"], clear_destination=True)).check("destination-data")
    assert cleared.status == Status.WARN and cleared.evidence["will_drop"] == [f"{seeded}.leftover", f"{seeded}.orders"]


def test_same_deployment_is_refused_and_two_servers_are_not(pair: tuple[Deployment, Deployment], seeded: str) -> None:
    src, dst = pair
    twice = src.uri.replace("127.0.0.1", "localhost")
    r = run(make_config(src, dst, [f"{seeded}.*"], destination_uri=twice)).check("connect")
    assert r.status == Status.FAIL and "same deployment" in r.summary
    assert run(make_config(src, dst, [f"{seeded}.*"])).check("connect").status == Status.PASS


def test_lock_held_by_another_migration(pair: tuple[Deployment, Deployment], seeded: str) -> None:
    src, dst = pair
    cfg = make_config(src, dst, [f"{seeded}.*"])
    with dst.client() as c:
        MetadataStore(c).acquire_lock("someone-else", "host:1:abc", 60)
        r = run(cfg).check("lock")
        assert r.status == Status.FAIL and r.evidence["holder"] == "someone-else"
        MetadataStore(c).locks.delete_many({})
        MetadataStore(c).acquire_lock(cfg["name"], "host:1:abc", 60)
        assert run(cfg).check("lock").status == Status.PASS


def test_mongosqld_client_on_the_destination_fails(pair: tuple[Deployment, Deployment], seeded: str) -> None:
    src, dst = pair
    with MongoClient(dst.uri, appname="mongosqld", serverSelectionTimeoutMS=5000) as bi:
        bi.admin.command("ping")
        r = run(make_config(src, dst, [f"{seeded}.*"])).check("bi-connector")
    assert r.status == Status.FAIL and "mongosqld" in r.summary


def test_short_oplog_window_warns(pair: tuple[Deployment, Deployment], seeded: str) -> None:
    src, dst = pair
    r = run(make_config(src, dst, [f"{seeded}.*"], tuning={"copy_rate_mb_s": 1e-6})).check("oplog-window")
    assert r.status == Status.WARN and r.evidence["estimated_copy_seconds"] > r.evidence["window_seconds"]


def test_unreachable_host_fails_within_the_timeout(pair: tuple[Deployment, Deployment]) -> None:
    src, dst = pair
    port = closed_port()
    cfg = make_config(
        src,
        dst,
        destination_uri=f"mongodb://127.0.0.1:{port}/?directConnection=true",
        tuning={"connect_timeout_seconds": 2},
    )
    t0 = time.monotonic()
    report = run(cfg)
    assert time.monotonic() - t0 < 6
    r = report.check("connect")
    assert r.status == Status.FAIL and f"127.0.0.1:{port}" in r.summary
    assert report.exit_code == 1 and statuses(report)["lock"] == "skip"


# -- authentication -----------------------------------------------------------
@pytest.fixture
def auth_db(auth_pair: tuple[Deployment, Deployment]) -> Iterator[str]:
    """A database with one document on the auth source, written and dropped as root."""
    name = f"pca_{uuid.uuid4().hex[:8]}"
    with MongoClient(auth_pair[0].extra["root_uri"], serverSelectionTimeoutMS=5000) as root:
        root[name]["c"].insert_one({"v": 1})
        yield name
        root.drop_database(name)
        with auth_pair[1].client() as dst:
            dst.drop_database(METADATA_DB)


@requires_secantus()
def test_auth_user_with_roles_and_both_mechanisms_passes(
    auth_pair: tuple[Deployment, Deployment], auth_db: str
) -> None:
    src, dst = auth_pair
    report = run(make_config(src, dst, [f"{auth_db}.*"]))
    st = statuses(report)
    assert st["connect"] == st["roles"] == st["scram"] == st["dbstats"] == "pass", report.to_json()
    assert report.check("roles").evidence["users"] == [f"{SOURCE_USER}@admin"]
    assert set(report.check("scram").evidence["mechanisms"]) == {"SCRAM-SHA-1", "SCRAM-SHA-256"}
    assert SOURCE_PASSWORD not in report.to_json()


@requires_secantus()
def test_auth_user_without_roles_or_sha1_fails(auth_pair: tuple[Deployment, Deployment], auth_db: str) -> None:
    src, dst = auth_pair
    weak = src.server.uri("weak", "weakpw", authSource="admin")  # type: ignore[union-attr]
    report = run(make_config(src, dst, [f"{auth_db}.*"], source_uri=weak))
    roles, scram = report.check("roles"), report.check("scram")
    assert roles.status == Status.FAIL and set(roles.evidence["missing"]) == {"backup@admin", "readAnyDatabase@admin"}
    assert scram.status == Status.FAIL and scram.evidence["mechanisms"] == ["SCRAM-SHA-256"]
    assert "weakpw" not in report.to_json()


@requires_secantus()
def test_dbstats_fails_on_a_database_the_user_cannot_read(auth_pair: tuple[Deployment, Deployment]) -> None:
    src, dst = auth_pair
    tag = uuid.uuid4().hex[:6]
    readable, hidden, user = f"pcr_{tag}", f"pch_{tag}", f"partial_{tag}"
    with MongoClient(src.extra["root_uri"], serverSelectionTimeoutMS=5000) as root:
        root[readable]["c"].insert_one({})
        root[hidden]["c"].insert_one({})
        root.admin.command(
            {
                "createRole": f"lister_{tag}",
                "privileges": [{"resource": {"cluster": True}, "actions": ["listDatabases"]}],
                "roles": [],
            }
        )
        root.admin.command(
            {"createUser": user, "pwd": "pw", "roles": [f"lister_{tag}", {"role": "read", "db": readable}]}
        )
        try:
            uri = src.server.uri(user, "pw", authSource="admin")  # type: ignore[union-attr]
            ok = run(make_config(src, dst, [f"{readable}.*"], source_uri=uri)).check("dbstats")
            bad = run(make_config(src, dst, [f"{readable}.*", f"{hidden}.*"], source_uri=uri)).check("dbstats")
        finally:
            root.admin.command({"dropUser": user})
            root.admin.command({"dropRole": f"lister_{tag}"})
            root.drop_database(readable)
            root.drop_database(hidden)
    assert ok.status == Status.PASS
    assert bad.status == Status.FAIL and list(bad.evidence["errors"]) == [hidden]


@requires_secantus()
def test_wrong_password_fails_naming_the_user(auth_pair: tuple[Deployment, Deployment]) -> None:
    src, dst = auth_pair
    uri = src.server.uri(SOURCE_USER, "Wr0ng-Passw0rd-zz", authSource="admin")  # type: ignore[union-attr]
    report = run(make_config(src, dst, source_uri=uri))
    r = report.check("connect")
    assert r.status == Status.FAIL and SOURCE_USER in r.summary and "authentication failed" in r.summary
    assert "Wr0ng-Passw0rd-zz" not in report.to_json()


# -- TLS ------------------------------------------------------------------------
@requires_secantus()
def test_tls_with_the_right_ca_passes(tls_pair: tuple[Deployment, Deployment]) -> None:
    src, dst = tls_pair
    r = run(make_config(src, dst, ["nothing.*"])).check("connect")
    assert r.status == Status.PASS and "TLS verified" in r.summary


@requires_secantus()
def test_tls_with_a_missing_ca_file_fails(tls_pair: tuple[Deployment, Deployment], tmp_path: Path) -> None:
    src, dst = tls_pair
    cfg = make_config(src, dst)
    cfg["source"]["tls_ca_file"] = str(tmp_path / "nope.pem")
    r = run(cfg).check("connect")
    assert r.status == Status.FAIL and "source.tls_ca_file" in r.summary and "does not exist" in r.summary


@requires_secantus()
def test_tls_with_the_wrong_ca_fails_within_the_timeout(tls_pair: tuple[Deployment, Deployment]) -> None:
    src, dst = tls_pair
    cfg = make_config(src, dst, tuning={"connect_timeout_seconds": 2})
    cfg["destination"]["tls_ca_file"] = str(dst.extra["wrong_ca"])
    t0 = time.monotonic()
    r = run(cfg).check("connect")
    assert time.monotonic() - t0 < 6
    assert r.status == Status.FAIL and r.evidence["destination"]["connected"] is False
    assert r.evidence["source"]["connected"] is True


@requires_secantus()
def test_tls_ca_file_that_is_not_pem_fails(tls_pair: tuple[Deployment, Deployment], tmp_path: Path) -> None:
    src, dst = tls_pair
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cfg = make_config(src, dst)
    cfg["destination"]["tls_ca_file"] = str(junk)
    r = run(cfg).check("connect")
    assert r.status == Status.FAIL and "PEM" in r.summary


# -- the CLI ----------------------------------------------------------------------
def test_cli_json_exit_0(pair: tuple[Deployment, Deployment], seeded: str, tmp_path: Path) -> None:
    out = cli(tmp_path, make_config(*pair, [f"{seeded}.*"]), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "livemigrate.prechecks/1" and doc["exit_code"] == 0
    assert [c["id"] for c in doc["checks"]][:3] == ["connect", "topology", "version"]


def test_cli_table_exit_1_on_a_failed_check(pair: tuple[Deployment, Deployment], seeded: str, tmp_path: Path) -> None:
    port = closed_port()
    cfg = make_config(
        *pair, [f"{seeded}.*"], source_uri=f"mongodb://127.0.0.1:{port}/", tuning={"connect_timeout_seconds": 2}
    )
    out = cli(tmp_path, cfg)
    assert out.returncode == 1
    assert "connect" in out.stdout and "FAIL" in out.stdout and f"127.0.0.1:{port}" in out.stdout
    assert "Traceback" not in out.stderr + out.stdout


@requires_secantus()
def test_cli_wrong_password_never_shows_it(auth_pair: tuple[Deployment, Deployment], tmp_path: Path) -> None:
    src, dst = auth_pair
    secret = "Wr0ng-Passw0rd-zz"
    cfg = make_config(src, dst, source_uri=src.server.uri(SOURCE_USER, secret, authSource="admin"))  # type: ignore[union-attr]
    out = cli(tmp_path, cfg, "--json")
    assert out.returncode == 1
    assert secret not in out.stdout + out.stderr and "Traceback" not in out.stderr
    connect = json.loads(out.stdout)["checks"][0]
    assert connect["status"] == "fail" and SOURCE_USER in connect["summary"]


def test_cli_malformed_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    text = (
        "name: ok\nsource: {uri: 'mongodb://a/'}\ndestination: {uri: 'mongodb://b/'}\n"
        "tuning: {connect_timeout_seconds: -1}\n"
    )
    out = cli(tmp_path, text, "--json")
    assert out.returncode == 2
    assert "tuning.connect_timeout_seconds" in out.stderr and "Traceback" not in out.stderr
    assert json.loads(out.stdout)["error"] == "ConfigError"


# -- the Prefect flow ---------------------------------------------------------------
@pytest.mark.flows
def test_prechecks_flow_passes_and_fails(
    prefect_harness: None, pair: tuple[Deployment, Deployment], seeded: str
) -> None:
    from prefect.client.orchestration import get_client

    from flows.prechecks import prechecks_flow

    src, dst = pair
    cfg = make_config(src, dst, [f"{seeded}.*"], name="flow-pc")
    report = prechecks_flow(cfg)
    assert report["schema"] == "livemigrate.prechecks/1" and report["exit_code"] == 0
    with dst.client() as c:
        assert MetadataStore(c).last_report("flow-pc", "validation") is not None

    async def artifacts() -> list[str]:
        async with get_client() as client:
            return [a.key for a in await client.read_artifacts() if a.key]

    import asyncio

    keys = asyncio.run(artifacts())
    assert "prechecks-flow-pc" in keys and "prechecks-flow-pc-report" in keys

    with dst.client() as c:
        c[seeded]["orders"].insert_one({"_id": "dup"})
    state = prechecks_flow(cfg, return_state=True)
    assert state.is_failed()
    with dst.client() as c:
        c.drop_database(METADATA_DB)
