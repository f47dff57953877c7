"""Typed migration configuration, loaded from YAML.

Why: every stage reads the same validated model; a broken file is refused with
the field path and one reason (exit code 2) before anything connects.  URIs are
``SecretStr`` so reprs, logs and Prefect parameters never show a password; a
URI may instead come from a Prefect Secret block or a named link, resolved at
the edge (flows/ and the CLI) through :meth:`MigrationConfig.resolve`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_plus

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from tasks.errors import ConfigError

METADATA_DB = "__livemigrate"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCHEMES = ("mongodb://", "mongodb+srv://")
_URI_FILE_OPTIONS = ("tlsCAFile", "tlsCertificateKeyFile", "tlsCRLFile")
_ESCAPE_HINT = "percent-encode ':', '/', '?' and '@' in the user name and password (RFC 3986)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AtlasRef(_Strict):
    """Atlas identifiers for Atlas-only checks (BI Connector, tier)."""

    project_id: str
    cluster_name: str
    api_public_key: str | None = None
    api_private_key: SecretStr | None = None
    api_key_secret: str | None = Field(default=None, description="Prefect Secret block holding 'public:private'")
    base_url: str = "https://cloud.mongodb.com/api/atlas/v2"


class Endpoint(_Strict):
    """One side of the migration: where it is and how to trust it."""

    uri: SecretStr | None = None
    secret: str | None = Field(default=None, description="name of a Prefect Secret block holding the URI")
    tls_ca_file: Path | None = None
    atlas: AtlasRef | None = None

    @field_validator("uri", mode="before")
    @classmethod
    def _expand_env(cls, v: Any) -> Any:
        if isinstance(v, str):
            missing = [m for m in _ENV_RE.findall(v) if m not in os.environ]
            if missing:
                raise ValueError(f"environment variable {missing[0]} is not set")
            return _ENV_RE.sub(lambda m: os.environ[m.group(1)], v)
        return v

    @field_validator("uri")
    @classmethod
    def _uri_ok(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_uri(v.get_secret_value())
        return v


class NamespaceRules(_Strict):
    """Include/exclude rules: 'db.coll' globs, 'db.*', or regex written as /pattern/."""

    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("include", "exclude")
    @classmethod
    def _valid_rules(cls, rules: list[str]) -> list[str]:
        from tasks.namespaces import compile_rule

        for rule in rules:
            compile_rule(rule)  # raises ValueError with the rule named
        return rules


class ShardCollection(_Strict):
    key: dict[str, Any]

    @field_validator("key")
    @classmethod
    def _key_ok(cls, key: dict[str, Any]) -> dict[str, Any]:
        if not key:
            raise ValueError("shard key must name at least one field")
        for field, kind in key.items():
            if not field or field.startswith("$"):
                raise ValueError(f"invalid shard key field {field!r}")
            if kind not in (1, -1, "hashed") or isinstance(kind, bool):
                raise ValueError(f"shard key field {field!r} must be 1 or 'hashed', not {kind!r}")
            if kind == -1:
                raise ValueError(f"shard key field {field!r}: descending shard keys are not allowed")
        if sum(1 for k in key.values() if k == "hashed") > 1:
            raise ValueError("a shard key can have at most one hashed field")
        return key


class ShardingEntry(_Strict):
    """Same JSON shape as mongosync's start API."""

    database: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    shardCollection: ShardCollection  # noqa: N815 - mongosync's field name


class Sharding(_Strict):
    createSupportingIndexes: bool = False  # noqa: N815 - mongosync's field name
    shardingEntries: list[ShardingEntry] = Field(default_factory=list)  # noqa: N815


class Cutover(_Strict):
    window_hours: float = Field(default=120.0, gt=0)
    extension_hours: float = Field(default=24.0, gt=0)
    max_lag_seconds: float = Field(default=10.0, gt=0)
    ready_after_seconds: float = Field(default=5.0, ge=0, description="lag must stay under max for this long")
    drain_timeout_seconds: float = Field(default=300.0, gt=0)
    quiesce_seconds: float = Field(default=2.0, ge=0, description="source optime must stay still this long")
    quiesce_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="where writes cannot be blocked: how long an approved cutover waits for the source to "
        "stand still before it is refused (the migration goes on syncing and asks again)",
    )
    final_verification: Literal["incremental", "full"] = Field(
        default="incremental",
        description="incremental: after the drain, re-read only what the sync changed since the background "
        "verification proved it (checks/continuous.py); full: hash both clusters whole inside the window",
    )


class Verification(_Strict):
    """The verification that runs in the background while the sync runs (checks/continuous.py)."""

    continuous: bool = Field(default=True, description="prove partitions equal during the sync")
    dirty_limit: int = Field(
        default=200_000, ge=100, description="changed _ids remembered; past it a namespace is hashed again"
    )
    interval_seconds: float = Field(default=5.0, gt=0, description="pause between background rounds")
    duty_cycle: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="while the application writes, the share of time a background scan may read (the source "
        "serves the change stream and the application first)",
    )
    max_docs_per_second: float | None = Field(
        default=None, gt=0, description="cap on documents read per second per side (null: what the sync spares)"
    )
    rehash_seconds: float | None = Field(
        default=3600.0,
        gt=0,
        description="hash a proven partition again after this long, to find writes to the destination by "
        "anything but the sync (null: never; the source is read again each time)",
    )


class SyncOptions(_Strict):
    update_mode: Literal["lookup", "delta"] = Field(
        default="lookup",
        description="lookup: every update event carries the document as the source holds it when read "
        "(fullDocument: updateLookup, a second read on the source per update); delta: the destination "
        "applies the update's changes (updateDescription, as mongosync does) and looks a document up only "
        "where the changes cannot be applied; needs a source of MongoDB 6.1 or newer",
    )


class Tuning(_Strict):
    workers: int = Field(default=4, ge=1, le=64)
    clone_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="clone-worker flow runs the migrate flow starts on the clone-worker deployment's work pool, "
        "so Prefect workers on other machines share the copy (0: the migrate flow copies alone)",
    )
    batch_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=47 * 1024 * 1024)
    partition_docs: int = Field(default=50_000, ge=100)
    partitioning: Literal["auto", "ranges", "whole"] = Field(
        default="auto",
        description="auto: split into _id ranges only where the source reads a range from the _id index; "
        "ranges: always split; whole: one partition per collection",
    )
    sync_lanes: int = Field(default=4, ge=1, le=64)
    sync_batch_events: int = Field(default=5000, ge=1)
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    lock_timeout_seconds: float = Field(default=60.0, gt=0)
    retry_attempts: int = Field(default=8, ge=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    copy_rate_mb_s: float | None = Field(default=None, gt=0, description="for the oplog-window estimate")
    metrics_port: int | None = Field(default=None, ge=0, le=65535)


class MigrationConfig(_Strict):
    """The whole migration, as written in the YAML file."""

    name: str
    source: Endpoint = Field(default_factory=Endpoint)
    destination: Endpoint = Field(default_factory=Endpoint)
    link: str | None = Field(default=None, description="use the URIs stored by `livemigrate link create`")
    namespaces: NamespaceRules = Field(default_factory=NamespaceRules)
    sharding: Sharding = Field(default_factory=Sharding)
    clear_destination: bool = False
    destination_write_blocking: bool = Field(
        default=False,
        description="block user writes on the destination from the start of the migration until 'destination "
        "ready' (setUserWriteBlockMode, as mongosync's enableUserWriteBlocking; the migration user needs "
        "setUserWriteBlockMode and bypassWriteBlockingMode); where that cannot be done, the destination is "
        "watched for writes by others instead",
    )
    reversible: bool = Field(
        default=False,
        description="after the cutover, keep the source in sync with the destination (a reverse sync, as "
        "mongosync's reversible) so that a rollback is a second approved cutover; the prechecks then also "
        "prove the reverse direction's privileges (read the destination's change stream, write to the source "
        "through its write block)",
    )
    cutover: Cutover = Field(default_factory=Cutover)
    sync: SyncOptions = Field(default_factory=SyncOptions)
    verification: Verification = Field(default_factory=Verification)
    tuning: Tuning = Field(default_factory=Tuning)
    metadata_db: Literal["__livemigrate"] = "__livemigrate"

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _endpoints_given(self) -> MigrationConfig:
        for side in ("source", "destination"):
            ep: Endpoint = getattr(self, side)
            given = [x for x in (ep.uri, ep.secret) if x is not None]
            if len(given) > 1:
                raise ValueError(f"{side}: give either uri or secret, not both")
            if not given and self.link is None:
                raise ValueError(f"{side}: uri, secret or a top-level link is required")
        return self

    def needs_resolution(self) -> bool:
        """True when a URI must come from a Prefect Secret block or a link."""
        return self.source.uri is None or self.destination.uri is None

    def resolve(self, lookup: Callable[[str], str]) -> MigrationConfig:
        """Return a copy whose URIs are filled from Secret blocks via ``lookup(block_name)``."""
        out = self
        for side in ("source", "destination"):
            ep: Endpoint = getattr(out, side)
            if ep.uri is not None:
                continue
            block = ep.secret or link_block_name(out.link or "", side)
            value = lookup(block)
            try:
                check_uri(value)
            except ValueError as exc:
                raise ConfigError(f"{side}.uri (from Prefect Secret block {block!r}): {exc}") from None
            new_ep = ep.model_copy(update={"uri": SecretStr(value)})
            out = out.model_copy(update={side: new_ep})
        return out

    def check_files(self) -> MigrationConfig:
        """Each side's ``tls_ca_file`` exists on this machine, is readable and holds PEM certificates.

        Why apart from the model's own validation: the model is the config's shape, which a config built
        in code may have without the files (the prechecks report a missing CA file as their connect
        check); a config loaded to be used (:func:`load_config`) is refused at once, before anything
        connects, with ConfigError naming the field and the path.
        """
        from tasks.mongo import check_ca_file

        for side in ("source", "destination"):
            ep: Endpoint = getattr(self, side)
            if ep.tls_ca_file is not None:
                check_ca_file(Path(ep.tls_ca_file), side)
        return self

    def source_uri(self) -> str:
        return _require(self.source.uri, "source")

    def destination_uri(self) -> str:
        return _require(self.destination.uri, "destination")


def link_block_name(link: str, side: str) -> str:
    """Name of the Prefect Secret block that `livemigrate link create` writes."""
    return f"livemigrate-link-{link}-{'source' if side == 'source' else 'dest'}".lower()


def _require(uri: SecretStr | None, side: str) -> str:
    if uri is None:
        raise ConfigError(
            f"{side}.uri: not resolved (the URI comes from a Secret block or link; run through the CLI or a flow)"
        )
    return uri.get_secret_value()


def check_uri(uri: str) -> None:
    """Refuse a connection string that cannot work, before anything connects; ``ValueError`` says why.

    Why: the driver finds these only when a flow connects (a port of 70000, an option it refuses, a TLS
    file named in the options that is not there), minutes into a run and behind a traceback.  Every
    check is static: no DNS (a mongodb+srv:// name is resolved when connecting), no connection.  The
    message names a host, a port or an option, never the user name, the password or the URI.
    """
    scheme = next((s for s in _SCHEMES if uri.startswith(s)), None)
    if scheme is None:
        raise ValueError("must start with mongodb:// or mongodb+srv://")
    srv = scheme == "mongodb+srv://"
    rest = uri[len(scheme) :]
    before_options, _, options = rest.partition("?")  # the driver's own split: options, then the database
    host_part = before_options.partition("/")[0]
    userinfo, _, hosts = host_part.rpartition("@")
    # An '@' after the host list means the credentials hold an unescaped '/' or '?': what looks like a
    # host may then be part of the password, so no host is named.
    named = "@" in host_part or "@" not in rest
    _check_hosts(hosts, srv=srv, named=named)
    _check_file_options(options)
    from pymongo.errors import PyMongoError
    from pymongo.uri_parser import parse_uri, parse_userinfo, split_options

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an option the driver ignores is its warning when connecting, not an error
        try:
            if not srv:
                parse_uri(uri, validate=True, warn=True)
            else:  # parse_uri would look the name up in DNS
                if userinfo:
                    parse_userinfo(userinfo)
                if options and split_options(options, validate=True, warn=True).get("directConnection"):
                    raise ValueError("directConnection=true is not allowed with mongodb+srv://")
        except (PyMongoError, ValueError, TypeError, OSError) as exc:
            raise ValueError(f"invalid connection string: {_scrub(str(exc), uri, userinfo)}") from None


def _check_hosts(hosts: str, *, srv: bool, named: bool) -> None:
    """Every host's port is a number from 1 to 65535; a mongodb+srv:// URI has one host and no port."""
    entities = hosts.split(",")
    if not hosts:
        raise ValueError("names no host")
    if srv and len(entities) != 1:
        raise ValueError("a mongodb+srv:// URI names exactly one host (its DNS name)")
    for entity in entities:
        if not entity:
            raise ValueError("an empty host in the host list (an extra comma?)")
        if entity.endswith(".sock"):
            continue  # a Unix domain socket has no port
        if entity.startswith("["):  # an IPv6 literal: [::1]:27017
            i = entity.find("]:")
            host, port = (entity, None) if i == -1 else (entity[: i + 1], entity[i + 2 :])
        elif entity.count(":") == 1:
            host, port = entity.split(":")
        else:
            continue  # no port, or a shape the driver's parser names below
        if port is None:
            continue
        if srv:
            raise ValueError(
                "a mongodb+srv:// URI takes no port (DNS gives the ports)" + (f": {host}" if named else "")
            )
        where = f" of host {host}" if named else ""
        if not port.isdigit():
            raise ValueError(f"a port{where} is not a number; {_ESCAPE_HINT}")
        if not 1 <= int(port) <= 65535:
            raise ValueError(
                f"port {port}{where} is out of range (1-65535)" if named else f"a port is out of range; {_ESCAPE_HINT}"
            )


def _check_file_options(options: str) -> None:
    """The TLS files a URI's options name exist and are readable here (the driver opens them when connecting)."""
    if not options:
        return
    from pymongo.uri_parser import split_options

    try:
        parsed = split_options(options, validate=False)
    except Exception:  # noqa: BLE001 - malformed options are named by the driver's parser afterwards
        return
    for name in _URI_FILE_OPTIONS:
        value = parsed.get(name)
        if value is None:
            continue
        path = Path(str(value))
        if not path.exists():
            raise ValueError(f"{name} {path} does not exist")
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ValueError(f"{name} {path} is not a readable file")


def _scrub(text: str, uri: str, userinfo: str) -> str:
    """The driver's message without the URI, the credentials or the password (raw or decoded).

    A secret is replaced where it stands alone (between non-alphanumerics), so a short password does not
    eat the letters of ordinary words.
    """
    password = userinfo.partition(":")[2]
    for secret in sorted({uri, userinfo, password, unquote_plus(password)} - {""}, key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line per problem: 'file: field.path: reason'; never echoes input values."""
    first = err.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    more = len(err.errors()) - 1
    return f"{source}: {loc}: {msg}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def config_from_dict(data: Any, source: str = "config") -> MigrationConfig:
    """Validate a mapping (from YAML or from Prefect parameters)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings")
    try:
        return MigrationConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_config(path: str | Path) -> MigrationConfig:
    """Read and validate a YAML config file; every failure is a one-line ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}:{where}: invalid YAML: {problem}") from None
    return checked_files(config_from_dict(data, str(p)), str(p))


def checked_files(config: MigrationConfig, source: str) -> MigrationConfig:
    """:meth:`MigrationConfig.check_files`, its error prefixed with where the config came from."""
    try:
        return config.check_files()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
