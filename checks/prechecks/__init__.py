"""Prechecks: can this migration start?  Facts are gathered once, pure rules judge them.

Why a package: gathering (facts.py), judging (compat.py, data.py, atlas.py, reverse.py) and
running (runner.py) change for different reasons; callers use only what is exported here.
"""

from __future__ import annotations

from checks.prechecks.facts import AuthFacts, CannotCheck, DestinationFacts, Facts, ScopeFacts, SideFacts
from checks.prechecks.runner import (
    CHECK_IDS,
    REVERSE_CHECK_IDS,
    RULES,
    PrechecksFailedError,
    apply_rules,
    run_prechecks,
    store_report,
)
from checks.results import PRECHECKS_SCHEMA, CheckResult, PrecheckReport, Status, render_table, to_markdown

__all__ = [
    "CHECK_IDS",
    "PRECHECKS_SCHEMA",
    "REVERSE_CHECK_IDS",
    "RULES",
    "AuthFacts",
    "CannotCheck",
    "CheckResult",
    "DestinationFacts",
    "Facts",
    "PrecheckReport",
    "PrechecksFailedError",
    "ScopeFacts",
    "SideFacts",
    "Status",
    "apply_rules",
    "render_table",
    "run_prechecks",
    "store_report",
    "to_markdown",
]
