"""`livemigrate link create|delete`: keep connection strings in Prefect Secret blocks.

Why: a URI with a password should live in exactly one place that workers on any
machine can read, not in a YAML file, a shell history or a flow parameter.  A
*link* is a pair of Secret blocks (source and destination) named by
:func:`tasks.config.link_block_name`; a config that says ``link: NAME`` gets its
URIs from them through :func:`flows.common.resolve`.  Nothing here ever prints,
logs or puts a URI into an exception message.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flows.common import cli_guard
from tasks.config import link_block_name
from tasks.errors import EXIT_OK, ConfigError

__all__ = ["block_names", "link_create", "link_create_cli", "link_delete", "link_delete_cli"]

log = logging.getLogger(__name__)

SIDES = ("source", "destination")
_SCHEMES = ("mongodb://", "mongodb+srv://")
# Prefect block document names allow only lowercase letters, digits and dashes.
_BLOCK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def block_names(name: str) -> dict[str, str]:
    """Secret block name per side for link ``name``; ConfigError when Prefect would refuse it.

    Why: the block name is derived, so a bad link name must be reported as the
    *link* name the user typed, before any API call.
    """
    names = {side: link_block_name(name, side) for side in SIDES}
    if not name or not all(_BLOCK_NAME_RE.match(n) for n in names.values()):
        raise ConfigError(f"link name {name!r}: use letters, digits and '-' only (it becomes a Prefect block name)")
    return names


def _check_uri(side: str, uri: str) -> None:
    """Refuse a value that is not a MongoDB URI, naming the side and never the value."""
    if not isinstance(uri, str) or not uri.strip().startswith(_SCHEMES):
        raise ConfigError(f"{side} URI: must start with mongodb:// or mongodb+srv://")


def _existing_blocks(names: dict[str, str]) -> dict[str, Any]:
    """Block document id per existing Secret block among ``names`` (values are never fetched)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        for block in names.values():
            try:
                found[block] = client.read_block_document_by_name(block, "secret", include_secrets=False).id
            except ObjectNotFound:
                continue
    return found


def link_create(name: str, source_uri: str, dest_uri: str, *, overwrite: bool) -> None:
    """Store both URIs as Prefect Secret blocks for link ``name``.

    Why: ``overwrite`` is explicit so that rotating a password is deliberate and
    a typo in the link name cannot silently replace another migration's link.
    Both URIs are validated, and without ``overwrite`` both block names are
    checked free, before anything is written, so a link is never half-created.
    """
    names = block_names(name)
    uris = {"source": source_uri.strip(), "destination": dest_uri.strip()}
    for side in SIDES:
        _check_uri(side, uris[side])

    from prefect.blocks.system import Secret

    try:
        taken = [] if overwrite else sorted(_existing_blocks(names))
    except Exception as exc:  # noqa: BLE001 - API unreachable etc.
        raise ConfigError(f"link {name!r}: cannot reach the Prefect API: {type(exc).__name__}") from None
    if taken:
        raise ConfigError(
            f"link {name!r}: Prefect block {taken[0]!r} already exists", remedy="pass --overwrite to replace it"
        )
    for side in SIDES:
        block = names[side]
        try:
            Secret(value=uris[side]).save(block, overwrite=overwrite, _sync=True)  # type: ignore[call-arg]
        except ValueError as exc:
            if "already in use" in str(exc):  # created concurrently since the check above
                raise ConfigError(
                    f"link {name!r}: Prefect block {block!r} already exists", remedy="pass --overwrite to replace it"
                ) from None
            raise ConfigError(f"link {name!r}: cannot save Prefect block {block!r}: {type(exc).__name__}") from None
        except Exception as exc:  # noqa: BLE001 - API unreachable etc.; the message may not echo the value
            raise ConfigError(f"link {name!r}: cannot save Prefect block {block!r}: {type(exc).__name__}") from None
    log.info("link %s stored in Prefect blocks %s and %s", name, names["source"], names["destination"])


def link_delete(name: str) -> bool:
    """Delete link ``name``'s Secret blocks; True when at least one existed.

    Why: deleting through the block-document API (not ``Secret.load``) never
    fetches the secret values, and a missing half is not an error so a partly
    deleted link can always be cleaned up.
    """
    names = block_names(name)
    from prefect.client.orchestration import get_client

    try:
        existing = _existing_blocks(names)
        with get_client(sync_client=True) as client:
            for doc_id in existing.values():
                client.delete_block_document(doc_id)
    except Exception as exc:  # noqa: BLE001 - API unreachable etc.
        raise ConfigError(f"link {name!r}: cannot delete its Prefect blocks: {type(exc).__name__}") from None
    found = bool(existing)
    log.info("link %s %s", name, "deleted" if found else "did not exist")
    return found


@cli_guard
def link_create_cli(name: str, source_uri: str, dest_uri: str, overwrite: bool = False) -> int:
    """`livemigrate link create`: one confirmation line naming the link and its blocks, never the URIs."""
    link_create(name, source_uri, dest_uri, overwrite=overwrite)
    names = block_names(name)
    print(f"link {name!r} saved: Prefect Secret blocks {names['source']} and {names['destination']}")
    return EXIT_OK


@cli_guard
def link_delete_cli(name: str) -> int:
    """`livemigrate link delete`: exit 0 when deleted, 2 (ConfigError) when there was no such link."""
    names = block_names(name)
    if not link_delete(name):
        raise ConfigError(f"link {name!r} not found (no Prefect blocks {names['source']} or {names['destination']})")
    print(f"link {name!r} deleted: Prefect Secret blocks {names['source']} and {names['destination']}")
    return EXIT_OK
