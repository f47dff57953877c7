"""The reverse sync's prechecks (``reversible: true``) over connectionStatus replies shaped as MongoDB 6.0-8.0 send them.

The replies (tests/privilege_replies.py) go through the real reading (facts.gather_privileges) by way of a
stub client; no server.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import OperationFailure

from checks.prechecks import CHECK_IDS, REVERSE_CHECK_IDS, Facts, Status, apply_rules
from checks.prechecks.facts import SideFacts, gather_privileges
from checks.prechecks.reverse import SOURCE_NS_ACTIONS, rule_reverse_destination, rule_reverse_source
from tests.privilege_replies import (
    ANY_ACTION,
    FORWARD_SOURCE,
    READ_WRITE,
    REVERSE_READY,
    ROOT,
    Privilege,
    merge,
    reply,
    roles,
)
from tests.unit.test_precheck_rules import good_facts

pytestmark = pytest.mark.unit


class _Admin:
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert "connectionStatus" in cmd
        return self.status


class _Client:
    """Just enough of a MongoClient for gather_privileges: admin.command."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.admin = _Admin(status)


def read(side: SideFacts, status: dict[str, Any], auth_on: bool = True) -> None:
    """The side's connectionStatus, and what the unauthenticated probe found (access_control_on; its
    replies are tested against real servers in tests/integration/test_servers.py)."""
    gather_privileges(_Client(status), side)  # type: ignore[arg-type]
    side.access_control = auth_on


def reversible(src: list[Privilege] | None = None, dst: list[Privilege] | None = None, **kw: Any) -> Facts:
    """good_facts of a reversible migration whose users hold ``src`` / ``dst`` (default: all they need)."""
    f = good_facts(reversible=True)
    read(f.source, reply(REVERSE_READY if src is None else src), **kw)
    read(f.destination, reply(REVERSE_READY if dst is None else dst), **kw)
    return f


def missing_actions(r: Any) -> set[str]:
    return {m["action"] for m in r.evidence["missing"]}


# -- only for a reversible migration -------------------------------------------------
def test_not_reversible_runs_nothing_new() -> None:
    assert [r.id for r in apply_rules(good_facts())] == list(CHECK_IDS)
    f = good_facts()
    f.source.privileges = f.destination.privileges = []  # even with privileges read, the rules stay out
    assert not {r.id for r in apply_rules(f)} & set(REVERSE_CHECK_IDS)


def test_reversible_adds_both_checks_after_the_others() -> None:
    results = apply_rules(reversible())
    assert [r.id for r in results] == list(CHECK_IDS) + list(REVERSE_CHECK_IDS)
    assert {r.id: r.status for r in results} == {cid: Status.PASS for cid in CHECK_IDS + REVERSE_CHECK_IDS}


@pytest.mark.parametrize(
    "held", [REVERSE_READY, ROOT, ANY_ACTION], ids=["mongosync-reversing-roles", "root", "anyAction"]
)
def test_every_privilege_held_passes(held: list[Privilege]) -> None:
    f = reversible(held, held)
    src, dst = rule_reverse_source(f), rule_reverse_destination(f)
    assert src.status == Status.PASS and dst.status == Status.PASS, (src, dst)
    assert src.evidence["missing"] == [] and dst.evidence["rollback_closes_destination"] is True
    assert src.remedy == "" and dst.remedy == ""


# -- source ----------------------------------------------------------------------------
def test_source_with_the_forward_roles_only_fails_naming_what_is_missing() -> None:
    r = rule_reverse_source(reversible(src=FORWARD_SOURCE))
    assert r.status == Status.FAIL and r.summary.startswith("source user migrator@admin lacks ")
    # backup carries setUserWriteBlockMode, nothing here carries a write or bypassWriteBlockingMode
    assert missing_actions(r) == set(SOURCE_NS_ACTIONS) | {"bypassWriteBlockingMode"}
    assert "bypassWriteBlockingMode on the cluster resource" in r.summary and "\n" not in r.summary
    assert "readWriteAnyDatabase and restore" in r.remedy


def test_source_without_bypass_write_blocking_fails_naming_it() -> None:
    r = rule_reverse_source(reversible(src=roles("readWriteAnyDatabase", "dbAdminAnyDatabase", "backup")))
    assert r.status == Status.FAIL
    assert missing_actions(r) == {"bypassWriteBlockingMode"}
    assert "lacks bypassWriteBlockingMode on the cluster resource" in r.summary
    assert r.remedy.startswith("grant the source user restore on the admin database")
    assert "bypassWriteBlockingMode on {cluster: true}" in r.remedy


def test_any_action_on_the_cluster_does_not_reach_the_namespaces() -> None:
    held = merge(roles("readWriteAnyDatabase"), [{"resource": {"cluster": True}, "actions": ["anyAction"]}])
    r = rule_reverse_source(reversible(src=held))
    assert r.status == Status.FAIL and missing_actions(r) == {"collMod", "bypassDocumentValidation"}
    assert r.evidence["missing"][0]["on"] == ["app.orders", "app.v"]


def test_source_privileges_are_judged_per_migrated_namespace() -> None:
    everything = [*READ_WRITE, "collMod", "bypassDocumentValidation"]
    cluster = [{"resource": {"cluster": True}, "actions": ["bypassWriteBlockingMode", "setUserWriteBlockMode"]}]
    orders_only = [{"resource": {"db": "app", "collection": "orders"}, "actions": everything}, *cluster]
    r = rule_reverse_source(reversible(src=orders_only))
    assert r.status == Status.FAIL and {tuple(m["on"]) for m in r.evidence["missing"]} == {("app.v",)}
    whole_db = [{"resource": {"db": "app", "collection": ""}, "actions": everything}, *cluster]
    assert rule_reverse_source(reversible(src=whole_db)).status == Status.PASS


def test_source_without_access_control_warns() -> None:
    f = reversible(auth_on=False)
    read(f.source, reply([], user=None), auth_on=False)
    r = rule_reverse_source(f)
    assert r.status == Status.WARN and r.evidence["access_control"] is False
    assert "access control is off on the source" in r.summary and "application could write" in r.summary


def test_source_without_access_control_warns_even_with_an_authenticated_user() -> None:
    """A server without --auth still authenticates the user the URI names: connectionStatus shows it with
    every privilege, yet the write block holds no client off (AuthorizationSessionImpl)."""
    f = reversible(auth_on=False)
    assert f.source.users == ["migrator@admin"]
    r = rule_reverse_source(f)
    assert r.status == Status.WARN and r.evidence == {"users": ["migrator@admin"], "access_control": False}
    assert "access control is off on the source" in r.summary
    d = rule_reverse_destination(f)
    assert d.status == Status.PASS and "a block there holds no client off" in d.summary


# -- destination -------------------------------------------------------------------------
def test_destination_without_change_stream_fails() -> None:
    no_stream = merge(
        [{"resource": {"db": "", "collection": ""}, "actions": [a for a in READ_WRITE if a != "changeStream"]}],
        roles("restore"),
    )
    r = rule_reverse_destination(reversible(dst=no_stream))
    assert r.status == Status.FAIL and missing_actions(r) == {"changeStream"}
    assert r.summary.startswith("destination user migrator@admin lacks changeStream on every database")
    assert "readAnyDatabase" in r.remedy


def test_destination_catalog_reads_are_named_per_database_and_namespace() -> None:
    f = reversible(
        dst=merge(roles("restore"), [{"resource": {"db": "", "collection": ""}, "actions": ["changeStream", "find"]}])
    )
    f.scope.namespaces = ["app.orders", "shop.carts", "shop.items", "zoo.a", "zoo.b"]
    r = rule_reverse_destination(f)
    assert r.status == Status.FAIL and missing_actions(r) == {"listIndexes"}
    # restore carries listCollections on anyResource; listIndexes is missing on every namespace
    assert "lacks listIndexes on all 5 migrated namespaces" in r.summary, r.summary
    f.destination.privileges = [p for p in f.destination.privileges or [] if p["resource"] != {"anyResource": True}]
    r = rule_reverse_destination(f)
    assert missing_actions(r) == {"listCollections", "listIndexes"}
    assert "listCollections on app, shop, zoo" in r.summary, r.summary


def test_a_database_role_cannot_open_the_deployment_wide_stream() -> None:
    db_scoped = merge([{"resource": {"db": "app", "collection": ""}, "actions": READ_WRITE}], roles("restore"))
    r = rule_reverse_destination(reversible(dst=db_scoped))
    assert r.status == Status.FAIL and missing_actions(r) == {"changeStream", "find"}


def test_destination_without_set_user_write_block_mode_warns() -> None:
    r = rule_reverse_destination(reversible(dst=roles("readWriteAnyDatabase", "dbAdminAnyDatabase")))
    assert r.status == Status.WARN
    assert "lacks setUserWriteBlockMode on the cluster resource: a rollback cannot close the destination" in r.summary
    assert r.evidence["rollback_closes_destination"] is False and "restore" in r.remedy


def test_destination_blocking_without_bypass_fails() -> None:
    """backup carries setUserWriteBlockMode alone: the rollback would close the destination, then be refused."""
    r = rule_reverse_destination(reversible(dst=roles("readWriteAnyDatabase", "backup")))
    assert r.status == Status.FAIL and missing_actions(r) == {"bypassWriteBlockingMode"}
    assert "refused its own writes" in r.summary and "restore" in r.remedy


def test_destination_without_access_control_passes_saying_so() -> None:
    f = reversible()
    read(f.destination, reply([], user=None), auth_on=False)
    r = rule_reverse_destination(f)
    assert r.status == Status.PASS and r.evidence == {"users": [], "access_control": False}
    assert "access control is off on the destination" in r.summary


# -- both -------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", [rule_reverse_source, rule_reverse_destination])
def test_no_user_where_authentication_is_required_fails(rule: Any) -> None:
    f = reversible()
    read(f.source, reply([], user=None), auth_on=True)
    read(f.destination, reply([], user=None), auth_on=True)
    r = rule(f)
    assert r.status == Status.FAIL and "requires authentication" in r.summary and r.evidence["access_control"] is True


def test_unreadable_privileges_are_skipped_with_the_reason() -> None:
    f = good_facts(reversible=True)

    class Refusing:
        class admin:  # noqa: N801 - stands in for client.admin
            @staticmethod
            def command(cmd: dict[str, Any]) -> dict[str, Any]:
                raise OperationFailure("connection reset", 6, {"codeName": "HostUnreachable"})

    gather_privileges(Refusing(), f.destination)  # type: ignore[arg-type]
    read(f.source, reply(REVERSE_READY))
    results = {r.id: r for r in apply_rules(f)}
    assert results["reverse-destination"].status == Status.SKIP
    assert "destination privileges unavailable" in results["reverse-destination"].summary
    assert results["reverse-source"].status == Status.PASS
