"""Sharding steps: shard the destination's collections, stop and restart the source's balancer.

Why: a move to a sharded cluster shards each configured collection before any data arrives (mongosync's
``shardingEntries``), and a sharded source must not move chunks while it is copied.  Kept apart from the
copy itself so the clone and the cutover call the same steps.
"""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure

from tasks.errors import TerminalError
from tasks.mongo import is_mongos

SIMPLE_COLLATION = {"locale": "simple"}


def shard_collection(dst: MongoClient[Any], entries: list[Any], supporting_indexes: bool) -> None:
    """shardCollection for each configured entry (mongosync's shardingEntries shape)."""
    for e in entries:
        ns = f"{e.database}.{e.collection}"
        key = dict(e.shardCollection.key)
        if supporting_indexes:
            # Simple collation: an index inheriting the collection's default collation cannot back a shard key.
            dst[e.database][e.collection].create_index(list(key.items()), collation=SIMPLE_COLLATION)
        try:
            dst.admin.command({"enableSharding": e.database})
        except OperationFailure:
            pass  # already enabled / implicit on newer servers
        try:
            # Required when the collection has a default collation (shard keys always compare binary).
            dst.admin.command({"shardCollection": ns, "key": key, "collation": SIMPLE_COLLATION})
        except OperationFailure as exc:
            if "already sharded" not in str(exc):
                raise TerminalError(
                    f"{ns}: shardCollection failed on the destination: {exc.details.get('errmsg') if exc.details else exc}"
                ) from None


def balancer_stop(src: MongoClient[Any]) -> bool:
    """Stop a sharded source's balancer; True when it was stopped by us."""
    if not is_mongos(src):
        return False
    src.admin.command({"balancerStop": 1})
    return True


def balancer_start(src: MongoClient[Any]) -> None:
    src.admin.command({"balancerStart": 1})
