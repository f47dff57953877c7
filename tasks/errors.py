"""One error hierarchy for the whole engine.

Why: flows retry only what is worth retrying, and the CLI maps every error to a
documented exit code and a one-line message.  pymongo's exceptions are
classified in exactly one place (:func:`classify`).  Messages name a host,
namespace or field, never a password or a full URI.
"""

from __future__ import annotations

from typing import Any

import pymongo.errors as pe

# Documented exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # a check or verification ran and found a problem
EXIT_ERROR = 2  # usage, config, connection or other could-not-run errors
EXIT_INTERRUPTED = 130  # stopped by SIGINT (Ctrl-C): checkpoint saved, resumable (128 + signal number)
EXIT_TERMINATED = 143  # stopped by SIGTERM: checkpoint saved, resumable (128 + signal number)


class LiveMigrateError(Exception):
    """Base class: every error the engine raises on purpose."""

    exit_code: int = EXIT_ERROR
    transient: bool = False
    remedy: str = ""

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        if remedy is not None:
            self.remedy = remedy

    def one_line(self) -> str:
        """The message shown to people: one line, with the remedy when there is one."""
        msg = str(self).replace("\n", " ")
        return f"{msg} ({self.remedy})" if self.remedy else msg


class TransientError(LiveMigrateError):
    """Worth retrying with backoff: network drops, elections, killed cursors."""

    transient = True


class TerminalError(LiveMigrateError):
    """Retrying cannot help: the migration stops and a person must act."""


class ConfigError(TerminalError):
    """The configuration file or a command-line value is invalid."""


class ConnectError(TerminalError):
    """An endpoint cannot be reached or refuses our credentials."""


class HistoryLostError(TerminalError):
    """The change stream's resume point fell out of the source's oplog."""

    remedy = "change stream history lost: restart the migration from the beginning"


class FCVChangedError(TerminalError):
    """featureCompatibilityVersion changed on one side during the migration."""

    remedy = "do not change featureCompatibilityVersion during a migration: restart the migration"


class DocumentRejectedError(TerminalError):
    """The destination refused a document; the migration stops rather than skip it.

    ``ns`` and ``doc_id`` name the document (also in the message), so a person
    can find it on the source and a program need not parse the text.
    """

    def __init__(self, message: str, *, remedy: str | None = None, ns: str | None = None, doc_id: Any = None) -> None:
        super().__init__(message, remedy=remedy)
        self.ns = ns
        self.doc_id = doc_id


class LockHeldError(TerminalError):
    """Another migration holds the destination."""


class SchemaVersionError(TerminalError):
    """The metadata store holds a schema version this code does not understand."""


class PhaseError(TerminalError):
    """A state transition that the phase table does not allow."""


class NotFoundError(TerminalError):
    """No migration with that name in the metadata store."""


# Server error codes that mean "try again" (mongo's own RetryableError labels
# cover most; these cover the rest we have met).
_TRANSIENT_CODES = {
    6,  # HostUnreachable
    7,  # HostNotFound
    89,  # NetworkTimeout
    91,  # ShutdownInProgress
    189,  # PrimarySteppedDown
    262,  # ExceededTimeLimit
    9001,  # SocketException
    10107,  # NotWritablePrimary
    11600,  # InterruptedAtShutdown
    11602,  # InterruptedDueToReplStateChange
    13435,  # NotPrimaryNoSecondaryOk
    13436,  # NotPrimaryOrSecondary
    64,  # WriteConcernFailed (wtimeout: the write may not be replicated yet; redoing it converges)
    43,  # CursorNotFound (killed cursor: re-open from the checkpoint)
    237,  # CursorKilled
    175,  # QueryPlanKilled
    134,  # ReadConcernMajorityNotAvailableYet
}
_HISTORY_LOST_CODES = {286, 280, 136}  # ChangeStreamHistoryLost, ChangeStreamFatalError, CappedPositionLost


def classify(exc: BaseException, where: str = "") -> LiveMigrateError:
    """Map any exception (usually pymongo's) to our hierarchy.

    ``where`` names the host or namespace involved; it must never contain
    credentials (use :func:`tasks.mongo.describe_endpoint`).
    """
    if isinstance(exc, LiveMigrateError):
        return exc
    prefix = f"{where}: " if where else ""
    if isinstance(exc, pe.BulkWriteError):
        details = exc.details or {}
        wces = details.get("writeConcernErrors") or []
        if wces and not details.get("writeErrors"):
            # Every write was applied but not replicated as asked: judge by the write concern error.
            first = wces[0]
            wce = pe.WriteConcernError(str(first.get("errmsg", "")), first.get("code"), first)
            return classify(wce, where)
    if isinstance(exc, pe.OperationFailure):
        code = exc.code or 0
        text = _short(exc)
        if (
            code in _HISTORY_LOST_CODES
            or "history lost" in text.lower()
            or "resume point may no longer be in the oplog" in text.lower()
        ):
            return HistoryLostError(f"{prefix}change stream history lost ({text})")
        if code in (18, 13) or (isinstance(exc, pe.WriteError) and code == 13):
            return ConnectError(f"{prefix}{'authentication failed' if code == 18 else 'not authorized'}: {text}")
        if (
            code in _TRANSIENT_CODES
            or exc.has_error_label("RetryableWriteError")
            or exc.has_error_label("ResumableChangeStreamError")
            or exc.has_error_label("TransientTransactionError")
        ):
            return TransientError(f"{prefix}{text}")
        return TerminalError(f"{prefix}{text}")
    if isinstance(exc, pe.ConfigurationError | pe.InvalidURI):
        return ConfigError(f"{prefix}{_short(exc)}")
    if isinstance(exc, pe.ServerSelectionTimeoutError):
        return TransientError(f"{prefix}server selection timed out: {_short(exc)}")
    if isinstance(exc, pe.AutoReconnect | pe.NetworkTimeout | pe.ConnectionFailure):
        return TransientError(f"{prefix}network error: {_short(exc)}")
    if isinstance(exc, pe.PyMongoError):
        return TerminalError(f"{prefix}{_short(exc)}")
    if isinstance(exc, OSError):
        return TransientError(f"{prefix}{exc}")
    return TerminalError(f"{prefix}{type(exc).__name__}: {exc}")


def _short(exc: BaseException) -> str:
    """First line of a pymongo error, without the 'full error' dump and topology description."""
    text = str(exc).split(", full error:")[0]
    text = text.split(", Timeout:")[0]
    text = text.split("Topology Description:")[0]
    return text.strip().rstrip(",").replace("\n", " ")[:400]


def error_payload(exc: LiveMigrateError) -> dict[str, Any]:
    """What `--json` prints for an error."""
    return {"error": type(exc).__name__, "message": str(exc), "remedy": exc.remedy, "exit_code": exc.exit_code}
