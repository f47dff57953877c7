"""Connecting to an endpoint: bounded time, TLS CA checks, names without secrets.

Why: every stage connects the same way, and every error must name the host
involved without leaking the password or the full URI.
"""

from __future__ import annotations

import logging
import re
import ssl
from pathlib import Path
from typing import Any

from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import ConfigurationError, InvalidURI, OperationFailure, PyMongoError
from pymongo.uri_parser import parse_uri
from pymongo.write_concern import WriteConcern

from tasks.errors import ConfigError, ConnectError, LiveMigrateError, classify

log = logging.getLogger(__name__)

RAW = CodecOptions(document_class=RawBSONDocument, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
"""Codec for data paths: documents stay raw BSON bytes and are never decoded."""

DATA_WRITE_CONCERN = WriteConcern("majority")
"""For every write of migrated data (clone inserts, sync lanes), as for the checkpoints and partition records:
with w:1, an election on the destination between a batch and its checkpoint could roll the batch back while
the checkpoint (majority) survives, and the sync would never redo it."""

APP_NAME = "livemigrate"
PROBE_APP_NAME = f"{APP_NAME}-probe"
"""The appName of the unauthenticated connection :func:`access_control_enforced` opens."""
# Not the application's writes: the server's own databases, and livemigrate's metadata (on a reverse sync's
# source, the destination cluster, the migration's own records move the oplog all the time).
_BOOKKEEPING_NS = re.compile(r"^(admin|config|local|__livemigrate)\.")


def describe_endpoint(uri: str, side: str = "") -> str:
    """'source (host1:27017,host2:27017)' - the hosts, never the credentials."""
    try:
        parsed = parse_uri(uri, validate=False, warn=True, connect_timeout=1)
        hosts = ",".join(f"{h}:{p}" for h, p in parsed["nodelist"]) or parsed.get("fqdn") or "?"
    except Exception:  # noqa: BLE001 - malformed URIs are described, not raised here
        hosts = "unparseable URI"
    return f"{side} ({hosts})" if side else hosts


def check_ca_file(path: Path, side: str) -> None:
    """The CA file exists, is readable and holds valid PEM certificates."""
    if not path.exists():
        raise ConfigError(f"{side}.tls_ca_file: {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{side}.tls_ca_file: {path} is not readable ({exc.strerror})") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{side}.tls_ca_file: {path} is not a PEM certificate file")
    try:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{side}.tls_ca_file: {path} is not valid PEM ({exc})") from None


def connect(
    uri: str,
    *,
    side: str,
    tls_ca_file: Path | None = None,
    timeout_s: float = 10.0,
    ping: bool = True,
    **kwargs: Any,
) -> MongoClient[Any]:
    """Open a client and (by default) prove it works within ``timeout_s``.

    Raises ConfigError for malformed URIs or CA files, ConnectError when the
    endpoint cannot be reached or refuses the credentials.
    """
    where = describe_endpoint(uri, side)
    opts: dict[str, Any] = {
        "appname": APP_NAME,
        "serverSelectionTimeoutMS": int(timeout_s * 1000),
        "connectTimeoutMS": int(timeout_s * 1000),
        "socketTimeoutMS": None,
        "retryWrites": True,
        "retryReads": True,
        # Always the primary, whatever the URI asks: the clone must read at or after the change stream's start
        # point, the drain target (latest_optime) is the newest write of the primary's oplog, and verification
        # re-reads must see the current documents.  A lagging secondary would break all three.
        "readPreference": "primary",
    }
    if tls_ca_file is not None:
        check_ca_file(Path(tls_ca_file), side)
        opts["tls"] = True
        opts["tlsCAFile"] = str(tls_ca_file)
    opts.update(kwargs)
    try:
        client: MongoClient[Any] = MongoClient(uri, **opts)
    except (InvalidURI, ConfigurationError, ValueError, TypeError) as exc:
        raise ConfigError(f"{side}.uri: invalid connection string ({_redact(str(exc), uri)})") from None
    if ping:
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            client.close()
            err = classify(exc, where)
            msg = _redact(str(err), uri)
            if "uthentication failed" in msg or "not authorized" in msg:
                user = parse_uri(uri, validate=False).get("username") or "?"
                raise ConnectError(f"{where}: authentication failed for user {user!r}") from None
            raise ConnectError(f"{where}: cannot connect within {timeout_s:g}s: {msg.split(': ', 1)[-1]}") from None
    return client


def _redact(text: str, uri: str) -> str:
    """Remove the URI and its password from a message, in case a driver echoed them."""
    text = text.replace(uri, "<uri>")
    try:
        pw = parse_uri(uri, validate=False).get("password")
    except Exception:  # noqa: BLE001
        pw = None
    if pw:
        text = text.replace(pw, "***")
    return text


USER_WRITE_FILTER: dict[str, Any] = {
    "op": {"$ne": "n"},
    "$or": [
        {"ns": {"$not": _BOOKKEEPING_NS}},
        # MongoDB writes a committed transaction as `applyOps` in admin.$cmd (one entry, or a chain with
        # partialTxn on 4.2+ for large ones), a batched delete (6.1+) likewise, a prepared transaction's
        # commit (sharded clusters) as `commitTransaction`, and a rename as `renameCollection` there too
        # (MongoDB manual "Replica Set Oplog"; server source repl/oplog_entry.idl, 7.0/8.0).
        {
            "ns": "admin.$cmd",
            "$or": [
                {"o.applyOps": {"$exists": True}},
                {"o.commitTransaction": {"$exists": True}},
                {"o.renameCollection": {"$exists": True}},
            ],
        },
    ],
}
"""Oplog entries that are an application's writes: not no-ops, not the server's own bookkeeping in
admin/config/local, but transactions and batched writes in admin.$cmd."""


def is_mongos(client: MongoClient[Any]) -> bool:
    """Whether ``client`` talks to a mongos (``hello`` answers ``msg: "isdbgrid"``, MongoDB manual "hello")."""
    return bool(client.admin.command("hello").get("msg") == "isdbgrid")


def latest_write(oplog: Any) -> Any:
    """The ``ts`` of the newest entry of ``oplog`` (a collection shaped like local.oplog.rs) that is a user write."""
    entry = oplog.find_one(USER_WRITE_FILTER, {"ts": 1}, sort=[("$natural", -1)])
    return entry["ts"] if entry is not None else None


def latest_optime(client: MongoClient[Any]) -> Any:
    """The time of the deployment's latest write (a bson Timestamp).

    Read from the newest oplog entry that is a real write (:data:`USER_WRITE_FILTER`):
    ``hello``'s lastWrite is not reliable across servers (SecantusDB advances it on every
    command).  A transaction counts: the drain and the quiet-source watch at cutover wait for it.
    Falls back to ``hello`` when the oplog cannot be read.
    """
    try:
        ts = latest_write(client.local["oplog.rs"])
        if ts is not None:
            return ts
    except PyMongoError:
        pass
    hello = client.admin.command("hello")
    last = hello.get("lastWrite", {}).get("opTime", {}).get("ts")
    if last is not None:
        return last
    return hello.get("operationTime") or hello.get("$clusterTime", {}).get("clusterTime")


_AUTH_OPTIONS = {"authsource", "authmechanism", "authmechanismproperties"}
UNAUTHORIZED = 13


def without_credentials(uri: str) -> str:
    """``uri`` with no user name, password or authentication option: the same hosts, TLS and other options,
    as a client that does not authenticate connects to them."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    authority, tail = rest[:cut].rpartition("@")[2], rest[cut:]
    path, _, query = tail.partition("?")
    kept = [o for o in re.split("[&;]", query) if o and o.partition("=")[0].lower() not in _AUTH_OPTIONS]
    return f"{scheme}://{authority}{path}" + ("?" + "&".join(kept) if kept else "")


def access_control_enforced(
    uri: str, *, side: str, tls_ca_file: Path | None = None, timeout_s: float = 10.0
) -> tuple[bool | None, str]:
    """Whether the server enforces access control (True), does not (False) or cannot be told (None, and why).

    Why: a write block (setUserWriteBlockMode) holds off only the clients that lack
    ``bypassWriteBlockingMode``, and with access control off every client may bypass it (server source
    ``AuthorizationSessionImpl``: ``_mayBypassWriteBlockingMode`` is true when auth is disabled).  The
    migration's own connection cannot tell: a server without ``--auth`` still authenticates a user the URI
    names, so ``connectionStatus`` shows one either way.  An unauthenticated connection to the same hosts
    can: with access control on, every command that requires authentication is refused with Unauthorized
    (13) "command listDatabases requires authentication" (server source ``commands.cpp``,
    checkAuthorizationImplPreParse, MongoDB 4.0-8.0); with it off, listDatabases answers.  Any other outcome
    (unreachable, another error) leaves it unknown.
    """
    try:
        client = connect(
            without_credentials(uri), side=side, tls_ca_file=tls_ca_file, timeout_s=timeout_s, appname=PROBE_APP_NAME
        )
    except LiveMigrateError as exc:
        return None, f"an unauthenticated connection to the {side} failed: {exc}"
    try:
        client.admin.command({"listDatabases": 1, "nameOnly": True})
        return False, ""
    except OperationFailure as exc:
        if exc.code == UNAUTHORIZED:
            return True, ""
        return None, f"listDatabases on an unauthenticated connection to the {side} failed (code {exc.code})"
    except PyMongoError as exc:
        return None, f"listDatabases on an unauthenticated connection to the {side} failed ({type(exc).__name__})"
    finally:
        client.close()


__all__ = [
    "DATA_WRITE_CONCERN",
    "RAW",
    "access_control_enforced",
    "check_ca_file",
    "connect",
    "connect_side",
    "describe_endpoint",
    "is_mongos",
    "latest_optime",
    "latest_write",
    "without_credentials",
]


def connect_side(config: Any, side: str, **kwargs: Any) -> MongoClient[Any]:
    """Connect to config.source or config.destination with the configured timeout and CA file."""
    ep = config.source if side == "source" else config.destination
    uri = config.source_uri() if side == "source" else config.destination_uri()
    return connect(
        uri, side=side, tls_ca_file=ep.tls_ca_file, timeout_s=config.tuning.connect_timeout_seconds, **kwargs
    )
