"""The reverse sync (``reversible: true``): after the cutover, destination -> source, until a rollback or finish.

Why (issue 19): the worst hour is the one after the cutover, when the new cluster misbehaves and the old
one is stale.  With ``reversible: true`` the cutover captures the destination's change-stream start point
while user writes there are still held off (before "destination ready"), and the same flow run then syncs
the destination's history back onto the source, with the same engine (idempotent apply, checkpoints,
lag, continuous verification) while the source stays write-blocked for the application.  A rollback is
the reverse migration's cutover: drain, verify what changed, reopen the source, close the destination.
``finish`` ends the reverse sync for good (the source stays closed).

The reverse migration is a :class:`tasks.migration.Migration` of its own, named ``<name>~reverse`` (a
name no config can take: ``~`` is not allowed in one), with the two sides swapped; its record and
checkpoint live in the destination's metadata store beside the forward migration's, so ``describe`` and
the CLI read both from one place.  The source's unique indexes are real (the forward sync held the
destination's back until the cutover), so a reverse write that meets a duplicate key is deferred and
retried (tasks/apply.py, ``Applier.deferred``) rather than refused.
"""

from __future__ import annotations

from typing import Any

from tasks.config import MigrationConfig, Sharding

REVERSE_SUFFIX = "~reverse"


def reverse_name(name: str) -> str:
    """The reverse record's name for the forward migration ``name``."""
    return f"{name}{REVERSE_SUFFIX}"


def forward_name(name: str) -> str:
    """The forward migration's name for a name that may be a reverse record's."""
    return name[: -len(REVERSE_SUFFIX)] if name.endswith(REVERSE_SUFFIX) else name


def reversed_config(cfg: MigrationConfig) -> MigrationConfig:
    """The reverse migration's config: the two sides swapped, its own name, nothing that acts on its own.

    ``model_copy`` keeps the resolved URIs and TLS settings of each side (no validation runs again: the
    name holds ``~`` on purpose).  No write blocking is asked of the reverse's destination (the source is
    already blocked since the cutover, and the reverse record owns that block), no sharding entries (the
    source's collections exist), no reverse of the reverse.
    """
    update: dict[str, Any] = {
        "name": reverse_name(cfg.name),
        "source": cfg.destination,
        "destination": cfg.source,
        "destination_write_blocking": False,
        "reversible": False,
        "sharding": Sharding(),
        "clear_destination": False,
    }
    return cfg.model_copy(update=update)
