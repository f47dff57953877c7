"""The precheck rules as pure functions: facts in, one result out (no server)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from bson import ObjectId, Timestamp
from rich.console import Console
from rich.table import Table

from checks.prechecks import (
    CHECK_IDS,
    RULES,
    CannotCheck,
    CheckResult,
    Facts,
    PrecheckReport,
    SideFacts,
    Status,
    apply_rules,
)
from checks.prechecks.atlas import rule_bi_connector
from checks.prechecks.compat import (
    rule_connect,
    rule_fcv,
    rule_roles,
    rule_scram,
    rule_topology,
    rule_version,
    version_problem,
)
from checks.prechecks.data import (
    disk_status,
    rule_capacity,
    rule_dbstats,
    rule_destination_data,
    rule_disk,
    rule_lock,
    rule_oplog_window,
    rule_unsupported,
)
from checks.results import PRECHECKS_SCHEMA, jsonable, render_table, to_markdown
from tasks.catalog import Unsupported

pytestmark = pytest.mark.unit
GB = 1024**3


def side(name: str, **kw: Any) -> SideFacts:
    base: dict[str, Any] = dict(
        endpoint=f"{name} (h-{name}:27017)",
        connected=True,
        topology="replicaset",
        set_name="rs0",
        hosts=[f"h-{name}:27017"],
        me=f"h-{name}:27017",
        process_id=str(ObjectId()),
        version=(7, 0, 8),
        fcv="7.0",
        mem_mb=16384,
        cores=8,
    )
    base.update(kw)
    return SideFacts(name, **base)


def good_facts(**kw: Any) -> Facts:
    """Facts on which every check passes."""
    f = Facts(name="m1", source=side("source"), destination=side("destination"))
    f.identity = {"same": False, "method": "marker written on the destination not found on the source"}
    f.auth.users = ["migrator@admin"]
    f.auth.roles = ["backup@admin", "readAnyDatabase@admin"]
    f.auth.auth_enforced = True
    f.auth.mechanisms = ["SCRAM-SHA-1", "SCRAM-SHA-256"]
    f.auth.mechanisms_source = "usersInfo"
    f.scope.databases = ["app"]
    f.scope.db_stats = {"app": {"dataSize": GB, "storageSize": GB, "indexSize": GB // 4}}
    f.scope.namespaces = ["app.orders", "app.v"]
    f.scope.kinds = {"app.orders": "collection", "app.v": "view"}
    f.scope.oplog_first, f.scope.oplog_last = 1_700_000_000, 1_700_000_000 + 86400
    f.dest.existing = []
    f.dest.fs_total, f.dest.fs_used = 100 * GB, 10 * GB
    f.dest.lock_read = True
    f.dest.current_op_checked = 3
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def test_good_facts_pass_every_check() -> None:
    results = apply_rules(good_facts())
    assert [r.id for r in results] == list(CHECK_IDS)
    assert {r.id: r.status for r in results} == {cid: Status.PASS for cid in CHECK_IDS}


# -- connect ----------------------------------------------------------------
def test_connect_fails_when_a_side_is_unreachable() -> None:
    f = good_facts()
    f.destination.connected = False
    f.destination.connect_error = "destination (h:1): cannot connect within 2s: connection refused"
    r = rule_connect(f)
    assert r.status == Status.FAIL and "destination (h:1)" in r.summary and r.remedy


def test_connect_refuses_the_same_deployment() -> None:
    f = good_facts(identity={"same": True, "method": "same server process (hello topologyVersion.processId)"})
    r = rule_connect(f)
    assert r.status == Status.FAIL and "same deployment" in r.summary


def test_rules_needing_an_unconnected_side_are_skipped() -> None:
    f = good_facts()
    f.source.connected = False
    results = {r.id: r for r in apply_rules(f)}
    assert results["connect"].status == Status.FAIL
    assert results["version"].status == Status.SKIP and "not connected" in results["version"].summary


# -- topology ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "dst"),
    [("replicaset", "replicaset"), ("replicaset", "sharded"), ("sharded", "sharded"), ("sharded", "replicaset")],
)
def test_topology_supported_pairs(src: str, dst: str) -> None:
    f = good_facts()
    f.source.topology, f.destination.topology = src, dst
    f.source.config_server = "csrs/cfg1:27019,cfg2:27019"
    assert rule_topology(f).status == Status.PASS


@pytest.mark.parametrize(
    ("which", "words"), [("source", "convert the standalone"), ("destination", "replica set or sharded")]
)
def test_topology_standalone_fails(which: str, words: str) -> None:
    f = good_facts()
    getattr(f, which).topology = "standalone"
    r = rule_topology(f)
    assert r.status == Status.FAIL and words in r.remedy


def test_topology_sharded_source_without_csrs_fails() -> None:
    f = good_facts()
    f.source.topology = "sharded"
    f.source.config_server = "cfg1:27019,cfg2:27019,cfg3:27019"
    r = rule_topology(f)
    assert r.status == Status.FAIL and "CSRS" in r.remedy


def test_topology_sharding_entries_need_a_sharded_destination() -> None:
    entry = {"database": "app", "collection": "orders", "key": {"region": 1}}
    f = good_facts(sharding_entries=[entry])
    assert rule_topology(f).status == Status.FAIL
    f.destination.topology = "sharded"
    assert rule_topology(f).status == Status.PASS


@pytest.mark.parametrize(
    "entries",
    [
        [{"database": "app", "collection": "missing", "key": {"a": 1}}],
        [{"database": "app", "collection": "v", "key": {"a": 1}}],
        [{"database": "app", "collection": "orders", "key": {"a": 1}}] * 2,
        [{"database": "app", "collection": "orders", "key": {"a": "hashed", "b": "hashed"}}],
        [{"database": "app", "collection": "orders", "key": {"a": -1}}],
    ],
    ids=["missing-collection", "view", "duplicate", "two-hashed", "descending"],
)
def test_topology_bad_sharding_entries_fail(entries: list[dict[str, Any]]) -> None:
    f = good_facts(sharding_entries=entries)
    f.destination.topology = "sharded"
    assert rule_topology(f).status == Status.FAIL


# -- version / fcv ----------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ((6, 0, 13), True),
        ((6, 0, 12), False),
        ((7, 0, 8), True),
        ((7, 0, 7), False),
        ((8, 0, 0), True),
        ((8, 2, 11), True),
        ((5, 0, 30), False),
        ((7, 1, 0), False),
    ],
)
def test_version_minimums(version: tuple[int, int, int], ok: bool) -> None:
    assert (version_problem(version) is None) is ok


def test_version_rule_pass_and_fail() -> None:
    f = good_facts()
    assert rule_version(f).status == Status.PASS
    f.source.version = (6, 0, 12)
    f.destination.version = (6, 0, 13)
    r = rule_version(f)
    assert r.status == Status.FAIL and "6.0.12" in r.summary and "destination" not in r.summary


def test_version_rule_different_series_fails() -> None:
    f = good_facts()
    f.source.version, f.destination.version = (6, 0, 13), (7, 0, 8)
    r = rule_version(f)
    assert r.status == Status.FAIL and "different release series" in r.summary


@pytest.mark.parametrize(
    ("src", "dst", "status"), [("7.0", "7.0", Status.PASS), ("6.0", "7.0", Status.FAIL), ("5.0", "5.0", Status.FAIL)]
)
def test_fcv(src: str, dst: str, status: Status) -> None:
    f = good_facts()
    f.source.fcv, f.destination.fcv = src, dst
    assert rule_fcv(f).status == status


def test_missing_fact_is_a_skip_with_the_reason() -> None:
    f = good_facts()
    f.source.fcv = None
    f.source.problems["fcv"] = "not authorized on admin to execute command"
    with pytest.raises(CannotCheck):
        rule_fcv(f)
    r = {x.id: x for x in apply_rules(f)}["fcv"]
    assert r.status == Status.SKIP and "not authorized" in r.summary


# -- roles / scram ----------------------------------------------------------
def test_roles_missing_backup_fails() -> None:
    f = good_facts()
    f.auth.roles = ["readAnyDatabase@admin"]
    r = rule_roles(f)
    assert r.status == Status.FAIL and r.evidence["missing"] == ["backup@admin"]


def test_roles_sharded_source_needs_cluster_monitor() -> None:
    f = good_facts()
    f.source.topology = "sharded"
    r = rule_roles(f)
    assert r.status == Status.FAIL and r.evidence["missing"] == ["clusterMonitor@admin"]
    f.auth.roles.append("clusterMonitor@admin")
    assert rule_roles(f).status == Status.PASS


def test_roles_root_covers_everything_but_roles_elsewhere_do_not() -> None:
    f = good_facts()
    f.source.topology = "sharded"
    f.auth.roles = ["root@admin"]
    assert rule_roles(f).status == Status.PASS
    f.auth.roles = ["backup@app", "readAnyDatabase@app"]
    assert rule_roles(f).status == Status.FAIL


def test_roles_without_authentication_warns() -> None:
    f = good_facts()
    f.auth.users, f.auth.roles, f.auth.auth_enforced = [], [], False
    r = rule_roles(f)
    assert r.status == Status.WARN and "not migrated" in r.summary and "enforces authentication" in r.remedy


def test_roles_no_user_on_an_auth_source_fails() -> None:
    f = good_facts()
    f.auth.users, f.auth.roles = [], []
    assert rule_roles(f).status == Status.FAIL


def test_scram_needs_both_mechanisms() -> None:
    f = good_facts()
    assert rule_scram(f).status == Status.PASS
    f.auth.mechanisms = ["SCRAM-SHA-256"]
    r = rule_scram(f)
    assert r.status == Status.FAIL and "SCRAM-SHA-1" in r.summary


def test_scram_not_applicable_without_a_user() -> None:
    f = good_facts()
    f.auth.users = []
    assert rule_scram(f).status == Status.SKIP


# -- dbstats / disk / capacity ---------------------------------------------
def test_dbstats_fails_on_an_unreadable_database() -> None:
    f = good_facts()
    f.scope.db_stats_errors = {"secret": "not authorized on secret to execute command"}
    r = rule_dbstats(f)
    assert r.status == Status.FAIL and "secret" in r.summary


def test_dbstats_warns_when_nothing_is_in_scope() -> None:
    f = good_facts()
    f.scope.databases, f.scope.db_stats = [], {}
    assert rule_dbstats(f).status == Status.WARN


@pytest.mark.parametrize(
    ("free", "need", "status"),
    [
        (150, 100, Status.PASS),
        (149, 100, Status.WARN),
        (100, 100, Status.WARN),
        (99, 100, Status.FAIL),
        (0, 0, Status.PASS),
    ],
)
def test_disk_rule_thresholds(free: int, need: int, status: Status) -> None:
    assert disk_status(free, need) == status


def test_disk_rule_from_facts() -> None:
    f = good_facts()
    assert rule_disk(f).status == Status.PASS
    f.dest.fs_total, f.dest.fs_used = 10 * GB, 9 * GB  # 1 GB free for 1.25 GB
    assert rule_disk(f).status == Status.FAIL
    f.dest.fs_used = 8 * GB + GB // 2  # 1.5 GB free: between 1x and 1.5x
    assert rule_disk(f).status == Status.WARN


def test_disk_warns_when_the_destination_does_not_report() -> None:
    f = good_facts()
    f.dest.fs_total = f.dest.fs_used = None
    r = rule_disk(f)
    assert r.status == Status.WARN and r.evidence["destination_reported"] is False and "did not report" in r.summary


def test_capacity_warns_when_destination_is_smaller() -> None:
    f = good_facts()
    f.destination.mem_mb = 8192
    r = rule_capacity(f)
    assert r.status == Status.WARN and "RAM" in r.summary
    f.destination.mem_mb, f.destination.cores = 32768, 2
    assert "CPU" in rule_capacity(f).summary


# -- bi-connector -----------------------------------------------------------
def test_bi_connector_found_in_current_op_fails() -> None:
    f = good_facts()
    f.dest.mongosqld_clients = ["10.0.0.5:51234"]
    r = rule_bi_connector(f)
    assert r.status == Status.FAIL and "10.0.0.5" in r.summary


def test_bi_connector_without_atlas_says_what_was_not_checked() -> None:
    r = rule_bi_connector(good_facts())
    assert r.status == Status.PASS and any("Atlas" in x for x in r.evidence["not_checked"])


@pytest.mark.parametrize(
    ("atlas", "status"),
    [
        ({"bi_connector_enabled": False, "instance_sizes": ["M30"], "serverless": False}, Status.PASS),
        ({"bi_connector_enabled": True, "instance_sizes": ["M30"], "serverless": False}, Status.FAIL),
        ({"bi_connector_enabled": False, "instance_sizes": ["M0"], "serverless": False}, Status.FAIL),
        ({"bi_connector_enabled": False, "instance_sizes": ["FLEX"]}, Status.FAIL),
        ({"serverless": True}, Status.FAIL),
        ({"error": "Atlas API answered HTTP 401 NOT_AUTHORIZED"}, Status.FAIL),
    ],
    ids=["dedicated", "bi-enabled", "m0", "flex", "serverless", "api-error"],
)
def test_bi_connector_from_atlas(atlas: dict[str, Any], status: Status) -> None:
    f = good_facts()
    f.dest.atlas = {"cluster_name": "c1", **atlas}
    assert rule_bi_connector(f).status == status


def test_bi_connector_with_nothing_to_look_at_is_skipped() -> None:
    f = good_facts()
    f.dest.current_op_checked = None
    with pytest.raises(CannotCheck):
        rule_bi_connector(f)


# -- destination state ------------------------------------------------------
def test_destination_data_fails_listing_namespaces() -> None:
    f = good_facts()
    f.dest.existing = ["app.orders", "app.other"]
    r = rule_destination_data(f)
    assert r.status == Status.FAIL and r.evidence["existing"] == ["app.orders", "app.other"]
    assert r.evidence["also_on_source"] == ["app.orders"]


def test_destination_data_with_clear_destination_lists_what_is_dropped() -> None:
    f = good_facts(clear_destination=True)
    f.dest.existing = ["app.orders"]
    r = rule_destination_data(f)
    assert r.status == Status.WARN and r.evidence["will_drop"] == ["app.orders"]


def test_lock_held_by_another_migration_fails() -> None:
    f = good_facts()
    f.dest.lock = {"holder": "other", "owner": "h:1:x", "heartbeat_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}
    r = rule_lock(f)
    assert r.status == Status.FAIL and "'other'" in r.summary
    f.dest.lock["holder"] = "m1"
    assert rule_lock(f).status == Status.PASS


def test_oplog_window_too_short_warns() -> None:
    f = good_facts(copy_rate_mb_s=0.01)  # 1 GiB at 10 KiB/s: about 29 hours
    r = rule_oplog_window(f)
    assert r.status == Status.WARN and r.evidence["rate_source"] == "tuning.copy_rate_mb_s"
    assert rule_oplog_window(good_facts()).evidence["copy_rate_mb_s"] == 20.0


def test_oplog_window_unreadable_is_skipped() -> None:
    f = good_facts()
    f.scope.oplog_first = None
    with pytest.raises(CannotCheck):
        rule_oplog_window(f)


def test_unsupported_warns_or_fails_by_severity() -> None:
    f = good_facts()
    f.scope.unsupported = [Unsupported("app.qe", "Queryable Encryption collections are not migrated")]
    r = rule_unsupported(f)
    assert r.status == Status.WARN and r.evidence["unsupported"][0]["ns"] == "app.qe"
    f.scope.unsupported.append(Unsupported("app.x", "cannot", "fail"))
    assert rule_unsupported(f).status == Status.FAIL


def test_a_time_series_collection_in_scope_fails_up_front() -> None:
    f = good_facts()
    f.scope.kinds["app.ts"] = "timeseries"
    r = rule_unsupported(f)
    assert r.status == Status.FAIL and r.evidence["unsupported"][0]["ns"] == "app.ts"
    assert "change stream" in r.summary and "exclude" in r.remedy


# -- the report -------------------------------------------------------------
def test_a_crashing_rule_fails_only_its_own_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import checks.prechecks.runner as runner

    def boom(f: Facts) -> CheckResult:
        raise ZeroDivisionError("x")

    rules = tuple((cid, boom if cid == "disk" else fn) for cid, fn in RULES)
    monkeypatch.setattr(runner, "RULES", rules)
    results = {r.id: r for r in runner.apply_rules(good_facts())}
    assert results["disk"].status == Status.FAIL and "ZeroDivisionError" in results["disk"].summary
    assert results["lock"].status == Status.PASS


def _report(f: Facts) -> PrecheckReport:
    t = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    return PrecheckReport("m1", apply_rules(f), t, t + dt.timedelta(seconds=2), "source (a:1)", "destination (b:1)")


def test_report_json_schema_and_exit_codes() -> None:
    ok = _report(good_facts())
    d = ok.to_dict()
    assert d["schema"] == PRECHECKS_SCHEMA and d["exit_code"] == 0 and d["status"] == "pass"
    assert set(d) >= {
        "migration",
        "started_at",
        "finished_at",
        "duration_seconds",
        "source",
        "destination",
        "counts",
        "failed",
        "checks",
    }
    assert all(set(c) == {"id", "status", "summary", "evidence", "remedy"} for c in d["checks"])
    json.loads(ok.to_json())
    f = good_facts()
    f.source.version = (6, 0, 12)
    bad = _report(f)
    assert bad.exit_code == 1 and bad.to_dict()["failed"] == ["version"] and bad.status == Status.FAIL


def test_evidence_is_plain_json() -> None:
    r = CheckResult(
        "x", Status.PASS, "s", {"ts": Timestamp(5, 1), "oid": ObjectId(), "at": dt.datetime(2025, 1, 1), "b": b"\x01"}
    )
    json.dumps(r.to_dict())
    assert r.evidence["ts"] == {"t": 5, "i": 1} and r.evidence["at"].endswith("+00:00")
    assert jsonable({"s": {3, 1}}) == {"s": [1, 3]}


def test_table_and_markdown_show_every_check() -> None:
    f = good_facts()
    f.auth.roles = []
    report = _report(f)
    table = render_table(report)
    assert isinstance(table, Table) and table.row_count == len(CHECK_IDS)
    console = Console(width=200, record=True)
    console.print(table)
    assert "FAIL" in console.export_text()
    md = to_markdown(report)
    assert all(f"`{cid}`" in md for cid in CHECK_IDS) and "## Evidence" in md


def test_facts_are_plain_dataclasses() -> None:
    """Unit tests (and callers) can build facts by hand: every field has a default."""
    assert all(
        fl.default is not dataclasses.MISSING or fl.default_factory is not dataclasses.MISSING
        for fl in dataclasses.fields(SideFacts)
        if fl.name != "side"
    )
