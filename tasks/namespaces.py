"""Which namespaces a migration touches: one immutable filter for every stage.

Why: clone, the change-stream ``$match``, the event applier and verification
must agree exactly on scope (mongo-tools' ns.Matcher does this for
mongorestore).  Rules are ``db.coll`` globs, ``db.*``, or regexes written as
``/pattern/`` matched against ``db.coll``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from tasks.config import METADATA_DB, NamespaceRules

SYSTEM_DBS = frozenset({"admin", "config", "local", METADATA_DB})


def compile_rule(rule: str) -> re.Pattern[str]:
    """Turn one include/exclude rule into a regex; ValueError names the bad rule."""
    if not isinstance(rule, str) or not rule:
        raise ValueError("namespace rule must be a non-empty string")
    if len(rule) >= 2 and rule.startswith("/") and rule.endswith("/"):
        try:
            return re.compile(rule[1:-1])
        except re.error as exc:
            raise ValueError(f"invalid regex in namespace rule {rule!r}: {exc}") from None
    if "." not in rule:
        raise ValueError(f"namespace rule {rule!r} must look like 'db.collection', 'db.*' or /regex/")
    return re.compile(fnmatch.translate(rule))


@dataclass(frozen=True)
class Namespace:
    db: str
    coll: str

    @property
    def full(self) -> str:
        return f"{self.db}.{self.coll}"

    def __str__(self) -> str:
        return self.full

    @classmethod
    def parse(cls, ns: str) -> Namespace:
        db, _, coll = ns.partition(".")
        return cls(db, coll)


@dataclass(frozen=True)
class NamespaceFilter:
    """Decides whether a namespace is in scope."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _inc: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)
    _exc: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_rules(cls, rules: NamespaceRules | None) -> NamespaceFilter:
        inc = tuple(rules.include) if rules else ()
        exc = tuple(rules.exclude) if rules else ()
        return cls(inc, exc, tuple(compile_rule(r) for r in inc), tuple(compile_rule(r) for r in exc))

    @staticmethod
    def is_system(db: str, coll: str = "") -> bool:
        """Never migrated: admin/config/local, the metadata database and system.* collections."""
        return db in SYSTEM_DBS or coll.startswith("system.")

    def db_in_scope(self, db: str) -> bool:
        """Could any collection of this database be in scope?  (Used for database-level events.)"""
        if db in SYSTEM_DBS:
            return False
        if not self.include:
            return True
        for rule in self.include:
            if rule.startswith("/"):
                return True  # a regex may match some collection of any database
            if fnmatch.fnmatchcase(db, rule.split(".", 1)[0]):
                return True
        return False

    def matches(self, db: str, coll: str) -> bool:
        """True when db.coll is migrated."""
        if self.is_system(db, coll):
            return False
        full = f"{db}.{coll}"
        if self._inc and not any(p.match(full) for p in self._inc):
            return False
        return not any(p.match(full) for p in self._exc)

    def matches_ns(self, ns: Namespace) -> bool:
        return self.matches(ns.db, ns.coll)

    def change_stream_match(self) -> dict[str, Any]:
        """Server-side $match that drops what is never in scope; the fine filter runs client-side."""
        return {
            "$match": {
                "$or": [
                    {"ns.db": {"$nin": sorted(SYSTEM_DBS)}},
                    {"ns": {"$exists": False}},  # invalidate and cluster-level events
                ]
            }
        }
