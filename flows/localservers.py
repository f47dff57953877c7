"""Start and stop local MongoDB-compatible test servers (SecantusDB) as child processes.

Why: the demo and the test suite need real servers over real connections.
SecantusDB is GPL, so it runs only as a separate process from its own
virtualenv (``.secantus/``); it is never imported.  Only processes started
here are ever stopped here.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


def secantusd_path() -> Path:
    """The server launcher: $LIVEMIGRATE_SECANTUSD, else .secantus/bin/secantusd-py in the repo."""
    env = os.environ.get("LIVEMIGRATE_SECANTUSD")
    if env:
        return Path(env)
    return REPO_ROOT / ".secantus" / "bin" / "secantusd-py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalServer:
    """One SecantusDB process on a loopback port with its own storage directory."""

    name: str
    storage: Path
    port: int = 0
    auth: bool = False
    tls: dict[str, Path] | None = None
    test_commands: bool = False
    oplog_max_entries: int | None = 1_000_000
    oplog_retention_seconds: int | None = None
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def uri(self, user: str | None = None, password: str | None = None, **params: str) -> str:
        cred = f"{user}:{password}@" if user else ""
        query = {"directConnection": "true", **params}
        if self.tls:
            query["tls"] = "true"
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"mongodb://{cred}{self.address}/?{q}"

    def command_line(self) -> list[str]:
        exe = secantusd_path()
        args = [str(exe), "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.storage / "data")]
        args += ["--log-level", "WARNING", "--cache-size", "256M"]
        if self.auth:
            args.append("--auth")
        if self.test_commands:
            args.append("--enable-test-commands")
        if self.oplog_max_entries:
            args += ["--oplog-max-entries", str(self.oplog_max_entries)]
        if self.oplog_retention_seconds:
            args += ["--oplog-retention-seconds", str(self.oplog_retention_seconds)]
        if self.tls:
            args += ["--tls-cert-file", str(self.tls["cert"]), "--tls-key-file", str(self.tls["key"])]
        return args + self.extra_args

    def start(self, timeout_s: float = 30.0) -> LocalServer:
        exe = secantusd_path()
        if not exe.exists():
            raise RuntimeError(f"SecantusDB launcher not found at {exe}: run `make setup` first")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log_path = self.storage / "server.log"
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own launcher, fixed arguments
            self.command_line(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        logf.close()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Ping until the server answers or the deadline passes (then raise with its log)."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with self.admin_client(timeout_ms=1000) as c:
                    c.admin.command("ping")
                return
            except PyMongoError as exc:
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} on {self.address} not ready after {timeout_s}s: {last}; {self.log_tail()}")

    def admin_client(self, timeout_ms: int = 5000, **kw: Any) -> MongoClient[Any]:
        """A client without credentials (works before --auth, or for ping)."""
        opts: dict[str, Any] = {"serverSelectionTimeoutMS": timeout_ms, "directConnection": True}
        if self.tls:
            opts.update(tls=True, tlsCAFile=str(self.tls["ca"]))
        opts.update(kw)
        return MongoClient(f"mongodb://{self.address}/", **opts)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after the grace period; only our own process."""
        p = self.proc
        if p is None or p.poll() is not None:
            self.proc = None
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, **changes: Any) -> LocalServer:
        self.stop()
        for k, v in changes.items():
            setattr(self, k, v)
        return self.start()

    def log_tail(self, n: int = 40) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return "(no log)"


def create_user(
    server: LocalServer, user: str, password: str, roles: list[Any], mechanisms: list[str] | None = None
) -> None:
    with server.admin_client() as c:
        cmd: dict[str, Any] = {"createUser": user, "pwd": password, "roles": roles}
        if mechanisms:
            cmd["mechanisms"] = mechanisms
        c.admin.command(cmd)


class ServerPair:
    """Source and destination servers started together (demo and tests)."""

    def __init__(self, root: Path | None = None, **kw: Any) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="livemigrate-servers-"))
        self.source = LocalServer("source", self.root / "source", **kw)
        self.destination = LocalServer("destination", self.root / "destination", **kw)

    def start(self) -> ServerPair:
        try:
            self.source.start()
            self.destination.start()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.source.stop()
        self.destination.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ServerPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
