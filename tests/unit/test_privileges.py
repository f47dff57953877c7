"""Reading connectionStatus privileges as the server judges them (tasks/privileges.py; no server).

The expected answers follow mongodb/mongo ``src/mongo/db/auth/resource_pattern_search_list.h``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tasks.privileges import ANY_NORMAL, CLUSTER, Target, covers, database, holds, lacking, namespace

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("resource", "target", "expected"),
    [
        ({"anyResource": True}, CLUSTER, True),
        ({"anyResource": True}, namespace("local.oplog.rs"), True),
        ({"cluster": True}, CLUSTER, True),
        ({"cluster": True}, namespace("app.orders"), False),
        ({"db": "", "collection": ""}, CLUSTER, False),
        ({"db": "", "collection": ""}, ANY_NORMAL, True),
        ({"db": "app", "collection": ""}, ANY_NORMAL, False),
        ({"db": "", "collection": ""}, namespace("app.orders"), True),
        ({"db": "", "collection": ""}, namespace("config.orders"), False),  # local/config are not "normal"
        ({"db": "", "collection": ""}, namespace("app.system.views"), False),
        ({"db": "app", "collection": ""}, namespace("app.orders"), True),
        ({"db": "app", "collection": ""}, namespace("app.system.js"), False),
        ({"db": "app", "collection": ""}, namespace("shop.orders"), False),
        ({"db": "", "collection": "orders"}, namespace("shop.orders"), True),
        ({"db": "", "collection": "system.js"}, namespace("shop.system.js"), True),
        ({"db": "app", "collection": "orders"}, namespace("app.order"), False),
        ({"db": "app", "collection": ""}, database("app"), True),
        ({"db": "", "collection": ""}, database("app"), True),
        ({"db": "", "collection": ""}, database("local"), False),
        ({"system_buckets": ""}, namespace("app.orders"), False),
        ({"db": "app", "system_buckets": ""}, database("app"), False),  # a db key alone is no database resource
    ],
)
def test_which_resources_cover_a_target(resource: dict[str, Any], target: Target, expected: bool) -> None:
    assert covers(resource, target) is expected


def test_any_action_holds_every_action_on_its_resource_only() -> None:
    on_cluster = [{"resource": {"cluster": True}, "actions": ["anyAction"]}]
    assert holds(on_cluster, "bypassWriteBlockingMode", CLUSTER)
    assert not holds(on_cluster, "insert", namespace("app.orders"))
    everywhere = [{"resource": {"anyResource": True}, "actions": ["anyAction"]}]
    assert holds(everywhere, "changeStream", ANY_NORMAL) and holds(everywhere, "setUserWriteBlockMode", CLUSTER)


def test_lacking_keeps_the_order_asked() -> None:
    privs = [{"resource": {"db": "app", "collection": ""}, "actions": ["insert"]}]
    asked = [("insert", namespace("app.a")), ("update", namespace("app.a")), ("insert", namespace("shop.b"))]
    assert lacking(privs, asked) == asked[1:]
    assert str(ANY_NORMAL) == "every database" and str(namespace("app.a")) == "app.a"
