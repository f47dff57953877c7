"""Prechecks against scripted servers: replies no available test server gives, over the real wire protocol.

The fakes (tests/fake_mongod.py, mockupdb) answer like mongod/mongos would;
the Atlas Admin API is a local HTTP server with digest auth (tests/fake_atlas.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from checks.prechecks import CHECK_IDS, REVERSE_CHECK_IDS, PrecheckReport, Status, run_prechecks
from tasks.config import config_from_dict
from tests.fake_atlas import PROJECT_ID, atlas_error, dedicated_cluster, fake_atlas, shared_cluster
from tests.fake_mongod import UNAUTHORIZED, FakeMongod, FakeSpec, fake_mongod
from tests.privilege_replies import REVERSE_READY, roles

pytestmark = pytest.mark.integration
SHARDED_ROLES = [("backup", "admin"), ("readAnyDatabase", "admin"), ("clusterMonitor", "admin")]


@contextmanager
def fakes(src: FakeSpec | None = None, dst: FakeSpec | None = None) -> Iterator[tuple[FakeMongod, FakeMongod]]:
    with ExitStack() as stack:
        s = stack.enter_context(fake_mongod(src or FakeSpec()))
        d = stack.enter_context(fake_mongod(dst or FakeSpec(databases={})))
        yield s, d


def check(s: FakeMongod, d: FakeMongod, **extra: Any) -> PrecheckReport:
    cfg: dict[str, Any] = {
        "name": "fake",
        "source": {"uri": s.uri},
        "destination": {"uri": d.uri, **extra.pop("destination", {})},
        "tuning": {"connect_timeout_seconds": 5},
    }
    cfg.update(extra)
    return run_prechecks(config_from_dict(cfg))


def test_fakes_pass_every_check() -> None:
    with fakes() as (s, d):
        report = check(s, d)
    assert {c.id: c.status for c in report.checks} == {c.id: Status.PASS for c in report.checks}, report.to_json()
    assert report.check("connect").evidence["identity"]["same"] is False


def test_reverse_checks_only_for_a_reversible_migration() -> None:
    """reversible: true reads both sides' privileges over the wire and adds the reverse checks; else nothing new."""
    dst = FakeSpec(databases={}, privileges=roles("readWriteAnyDatabase", "dbAdminAnyDatabase"))
    with fakes(FakeSpec(privileges=REVERSE_READY), dst) as (s, d):
        plain = check(s, d)
        assert d.sent("connectionStatus") == []  # the plain run asks the destination nothing new
        rev = check(s, d, reversible=True)
        assert d.sent("connectionStatus")[-1]["showPrivileges"] is True
    assert [c.id for c in plain.checks] == list(CHECK_IDS)
    assert [c.id for c in rev.checks] == list(CHECK_IDS) + list(REVERSE_CHECK_IDS)
    assert rev.check("reverse-source").status == Status.PASS, rev.check("reverse-source")
    assert rev.check("reverse-source").evidence["namespaces"] == 1  # app.orders
    r = rev.check("reverse-destination")
    assert r.status == Status.WARN and "setUserWriteBlockMode" in r.summary


# -- version / fcv ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "dst", "status"),
    [
        ("6.0.13", "6.0.13", Status.PASS),
        ("6.0.12", "6.0.13", Status.FAIL),
        ("7.0.7", "7.0.8", Status.FAIL),
        ("8.0.0", "8.0.4", Status.PASS),
    ],
)
def test_version_minimum_patch(src: str, dst: str, status: Status) -> None:
    with fakes(FakeSpec(version=src), FakeSpec(version=dst, databases={})) as (s, d):
        r = check(s, d).check("version")
    assert r.status == status and r.evidence["source"] == src


def test_version_series_must_match() -> None:
    with fakes(FakeSpec(version="6.0.13"), FakeSpec(version="7.0.8", databases={})) as (s, d):
        r = check(s, d).check("version")
    assert r.status == Status.FAIL and "different release series" in r.summary


def test_fcv_mismatch_fails() -> None:
    with fakes(FakeSpec(version="7.0.8", fcv="6.0"), FakeSpec(version="7.0.8", databases={})) as (s, d):
        r = check(s, d).check("fcv")
    assert r.status == Status.FAIL and r.evidence == {"source": "6.0", "destination": "7.0", "minimum": "6.0"}


# -- topology -----------------------------------------------------------------------
def test_standalone_source_fails() -> None:
    with fakes(FakeSpec(topology="standalone")) as (s, d):
        r = check(s, d).check("topology")
    assert r.status == Status.FAIL and "convert the standalone to a replica set first" in r.remedy


def test_standalone_destination_fails() -> None:
    with fakes(dst=FakeSpec(topology="standalone", databases={})) as (s, d):
        r = check(s, d).check("topology")
    assert r.status == Status.FAIL and "destination is a standalone" in r.summary


def test_sharded_source_with_csrs_passes() -> None:
    with fakes(
        FakeSpec(topology="sharded", roles=SHARDED_ROLES), FakeSpec(topology="sharded", shards=3, databases={})
    ) as (s, d):
        report = check(s, d)
    topo = report.check("topology")
    assert (
        topo.status == Status.PASS and topo.evidence["source_shards"] == 2 and topo.evidence["destination_shards"] == 3
    )
    assert report.check("roles").status == Status.PASS
    assert report.check("oplog-window").status == Status.PASS  # the fake mongos serves an oplog; real ones do not


def test_sharded_source_without_csrs_fails() -> None:
    sccc = "cfg1.example.net:27019,cfg2.example.net:27019,cfg3.example.net:27019"
    with fakes(FakeSpec(topology="sharded", config_server=sccc, roles=SHARDED_ROLES)) as (s, d):
        r = check(s, d).check("topology")
    assert r.status == Status.FAIL and r.evidence["source_config_server"] == sccc and "CSRS" in r.remedy


def test_sharded_source_without_cluster_monitor_fails_roles() -> None:
    with fakes(FakeSpec(topology="sharded")) as (s, d):
        r = check(s, d).check("roles")
    assert r.status == Status.FAIL and r.evidence["missing"] == ["clusterMonitor@admin"]


def test_sharding_entries_validated_against_a_sharded_destination() -> None:
    good = {"database": "app", "collection": "orders", "shardCollection": {"key": {"customer": 1}}}
    missing = {"database": "app", "collection": "nope", "shardCollection": {"key": {"customer": "hashed"}}}
    with fakes(dst=FakeSpec(topology="sharded", databases={})) as (s, d):
        ok = check(s, d, sharding={"shardingEntries": [good]}).check("topology")
        bad = check(s, d, sharding={"shardingEntries": [good, missing]}).check("topology")
    assert ok.status == Status.PASS
    assert bad.status == Status.FAIL and "app.nope" in bad.summary


def test_sharding_entries_for_a_replica_set_destination_fail() -> None:
    entry = {"database": "app", "collection": "orders", "shardCollection": {"key": {"customer": 1}}}
    with fakes() as (s, d):
        r = check(s, d, sharding={"shardingEntries": [entry]}).check("topology")
    assert r.status == Status.FAIL and "shardingEntries" in r.summary


# -- roles / scram / dbstats ---------------------------------------------------------
def test_scram_from_users_info() -> None:
    with fakes(FakeSpec(mechanisms=["SCRAM-SHA-256"])) as (s, d):
        r = check(s, d).check("scram")
    assert r.status == Status.FAIL and r.evidence["source"] == "usersInfo"


def test_dbstats_refused_fails() -> None:
    with fakes(FakeSpec(overrides={"dbstats": UNAUTHORIZED})) as (s, d):
        r = check(s, d).check("dbstats")
    assert r.status == Status.FAIL and list(r.evidence["errors"]) == ["app"]


def test_fcv_unreadable_is_skipped_with_the_reason() -> None:
    with fakes(FakeSpec(overrides={"getparameter": UNAUTHORIZED})) as (s, d):
        r = check(s, d).check("fcv")
    assert r.status == Status.SKIP and "not authorized" in r.summary


# -- disk / capacity / unsupported -----------------------------------------------------
@pytest.mark.parametrize(
    ("free_mb", "status"),
    [(100, Status.PASS), (1.4, Status.WARN), (1.0, Status.FAIL)],
    ids=["plenty", "under-1.5x", "under-1x"],
)
def test_disk_against_source_size(free_mb: float, status: Status) -> None:
    # Source: 1 MiB storage + 256 KiB indexes = 1.25 MiB.
    total = 10 * 1024**3
    dst = FakeSpec(databases={}, fs_total=total, fs_used=total - int(free_mb * 1.25 * 1024 * 1024) + 1)
    with fakes(dst=dst) as (s, d):
        r = check(s, d).check("disk")
    assert r.status == status, r
    assert r.evidence["source_bytes"] == 1024 * 1024 + 256 * 1024


def test_capacity_smaller_destination_warns() -> None:
    with fakes(dst=FakeSpec(databases={}, mem_mb=4096, cores=2)) as (s, d):
        r = check(s, d).check("capacity")
    assert r.status == Status.WARN and r.evidence["destination"] == {"mem_mb": 4096, "cores": 2}


def test_queryable_encryption_collection_is_unsupported() -> None:
    def collections(request: Any) -> dict[str, Any]:
        batch = [
            {"name": "orders", "type": "collection", "options": {}},
            {"name": "secrets", "type": "collection", "options": {"encryptedFields": {"fields": []}}},
        ]
        return {"cursor": {"id": 0, "ns": "app.$cmd.listCollections", "firstBatch": batch}}

    with fakes(FakeSpec(overrides={"listcollections": collections})) as (s, d):
        r = check(s, d).check("unsupported")
    assert r.status == Status.WARN and r.evidence["unsupported"][0]["ns"] == "app.secrets"


# -- bi-connector ------------------------------------------------------------------------
def test_mongosqld_in_current_op_fails() -> None:
    op = {"client": "10.1.2.3:40000", "desc": "conn9", "clientMetadata": {"application": {"name": "mongosqld"}}}
    with fakes(dst=FakeSpec(databases={}, current_op=[op])) as (s, d):
        r = check(s, d).check("bi-connector")
    assert r.status == Status.FAIL and "10.1.2.3:40000" in r.summary


def _atlas_cfg(base_url: str, private: str = "priv-0123456789-secret") -> dict[str, Any]:
    return {
        "atlas": {
            "project_id": PROJECT_ID,
            "cluster_name": "dest",
            "api_public_key": "pubkey",
            "api_private_key": private,
            "base_url": base_url,
        }
    }


@pytest.mark.parametrize(
    ("cluster", "status"),
    [
        (dedicated_cluster("dest"), Status.PASS),
        (dedicated_cluster("dest", bi=True), Status.FAIL),
        (shared_cluster("dest", "M0"), Status.FAIL),
        (shared_cluster("dest", "M5"), Status.FAIL),
        (atlas_error(400, "CANNOT_USE_SERVERLESS_INSTANCE_IN_CLUSTER_API", "serverless"), Status.FAIL),
    ],
    ids=["dedicated", "bi-enabled", "m0", "m5", "serverless"],
)
def test_atlas_api(cluster: Any, status: Status) -> None:
    with fake_atlas(clusters={"dest": cluster}) as atlas, fakes() as (s, d):
        r = check(s, d, destination=_atlas_cfg(atlas.base_url)).check("bi-connector")
        assert atlas.requests[-1]["auth"] == "Digest" and atlas.requests[-1]["accept"].startswith(
            "application/vnd.atlas."
        )
    assert r.status == status, r
    assert "Atlas Admin API cluster settings" in r.evidence["checked"] or status == Status.FAIL


def test_atlas_api_wrong_key_fails_without_showing_it() -> None:
    with fake_atlas(clusters={"dest": dedicated_cluster("dest")}) as atlas, fakes() as (s, d):
        report = check(s, d, destination=_atlas_cfg(atlas.base_url, private="WrongPrivateKey-123"))
    r = report.check("bi-connector")
    assert r.status == Status.FAIL and "HTTP 401" in r.summary
    assert "WrongPrivateKey-123" not in report.to_json()


def test_atlas_key_from_a_secret_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """flows/ fills the API key from the Secret block named by api_key_secret ('public:private')."""
    import flows.prechecks as fp

    monkeypatch.setattr(fp, "read_secret_block", lambda name: "pubkey:priv-0123456789-secret")
    with fake_atlas(clusters={"dest": dedicated_cluster("dest", bi=True)}) as atlas, fakes() as (s, d):
        atlas_ref = {
            "project_id": PROJECT_ID,
            "cluster_name": "dest",
            "api_key_secret": "atlas-key",
            "base_url": atlas.base_url,
        }
        cfg = config_from_dict(
            {"name": "fake", "source": {"uri": s.uri}, "destination": {"uri": d.uri, "atlas": atlas_ref}}
        )
        r = run_prechecks(fp.resolve_atlas_key(cfg)).check("bi-connector")
    assert r.status == Status.FAIL and "BI Connector for Atlas is enabled" in r.summary
