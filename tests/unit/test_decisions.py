"""One set of rules for cutover, extend and cancel (tasks/migration.judge_decision), used by the flow's form
and by `livemigrate cutover`: the same request gets the same answer from both."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.config import config_from_dict
from tasks.migration import judge_decision
from tasks.state import MigrationDoc, Phase

pytestmark = pytest.mark.unit

CFG = config_from_dict(
    {
        "name": "m",
        "source": {"uri": "mongodb://src.example:27017"},
        "destination": {"uri": "mongodb://dst.example:27017"},
        "cutover": {"max_lag_seconds": 10},
    }
)


def judge(phase: Phase, action: str, **kw: Any) -> tuple[str, str]:
    doc = MigrationDoc(_id="m", phase=phase)
    args: dict[str, Any] = {"approver": "alice", "confirm": True, "lag": 1.0, "ready": True, **kw}
    v = judge_decision(doc, CFG, action, **args)
    return v.status, v.reason


@pytest.mark.parametrize(
    ("phase", "action", "kw", "status", "says"),
    [
        (Phase.SYNCING, "cutover", {}, "accepted", ""),
        (Phase.SYNCING, "cutover", {"confirm": False}, "refused", "confirmation box was not ticked"),
        (Phase.SYNCING, "cutover", {"approver": "  "}, "refused", "no approver"),
        (Phase.SYNCING, "cutover", {"lag": 12.5}, "refused", "lag is 12.5 s, above max_lag_seconds 10"),
        (Phase.SYNCING, "cutover", {"lag": None}, "refused", "lag is unknown"),
        (Phase.SYNCING, "cutover", {"ready": False}, "refused", "not ready"),
        (Phase.SYNCING, "cutover", {"ready": None}, "accepted", ""),  # an engine call: readiness not asked
        (Phase.SYNCING, "cutover", {"differences": 2}, "refused", "2 document(s) that differ"),
        (Phase.SYNCING, "cutover", {"differences": 2, "full_verification": True}, "accepted", ""),
        (Phase.CLONING, "cutover", {}, "refused", "is cloning, not syncing"),
        (Phase.CUTTING_OVER, "cutover", {}, "already", "already cutting_over"),
        (Phase.COMPLETE, "cutover", {}, "already", "already complete"),
        (Phase.CANCELLED, "cutover", {}, "refused", "has ended (cancelled)"),
        (Phase.SYNCING, "extend", {"lag": 99.0, "confirm": False}, "accepted", ""),
        (Phase.CLONING, "extend", {}, "refused", "not syncing"),
        (Phase.CLONING, "cancel", {}, "accepted", ""),
        (Phase.EXPIRED, "cancel", {}, "refused", "has ended (expired)"),
        (Phase.SYNCING, "rollback", {}, "refused", "unknown action"),
    ],
)
def test_decision_rules(phase: Phase, action: str, kw: dict[str, Any], status: str, says: str) -> None:
    got, reason = judge(phase, action, **kw)
    assert got == status
    assert says in reason
