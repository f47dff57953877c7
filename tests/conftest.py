"""Shared fixtures: real server pairs (SecantusDB by default, Docker or URIs on request) and Prefect.

LIVEMIGRATE_TEST_BACKEND=secantus|docker|uri picks the servers.  A chosen
backend that cannot start fails the run with the reason; it never skips.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest
from pymongo import MongoClient

from flows.localservers import LocalServer, ServerPair, create_user
from tasks.config import METADATA_DB
from tests.certs import make_tls_material

BACKEND = os.environ.get("LIVEMIGRATE_TEST_BACKEND", "secantus")
SOURCE_USER, SOURCE_PASSWORD = "migrator", "s3cret-Pa55word-xyz"


@dataclass
class Deployment:
    """One test server as the tests see it."""

    side: str
    uri: str
    server: LocalServer | None = None
    ca_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self, **kw: Any) -> MongoClient[Any]:
        opts: dict[str, Any] = {"serverSelectionTimeoutMS": 10000}
        if self.ca_file:
            opts["tlsCAFile"] = str(self.ca_file)
        opts.update(kw)
        return MongoClient(self.uri, **opts)


_started: list[ServerPair] = []


def _secantus_pair(root: Path, **kw: Any) -> tuple[Deployment, Deployment, ServerPair]:
    pair = ServerPair(root, **kw).start()
    _started.append(pair)
    return (
        Deployment("source", pair.source.uri(), pair.source),
        Deployment("destination", pair.destination.uri(), pair.destination),
        pair,
    )


def _docker_pair() -> tuple[Deployment, Deployment, list[Any]]:
    try:
        from testcontainers.mongodb import MongoDbContainer  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - older layout
        from testcontainers.community.mongodb import MongoDbContainer  # type: ignore[import-not-found,no-redef]
    containers, deps = [], []
    for side in ("source", "destination"):
        c = MongoDbContainer("mongo:7.0").with_command("--replSet rs0 --bind_ip_all")
        c.start()
        containers.append(c)
        host, port = c.get_container_host_ip(), c.get_exposed_port(27017)
        uri = f"mongodb://{c.username}:{c.password}@{host}:{port}/?directConnection=true&authSource=admin"
        with MongoClient(uri) as cl:
            cl.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": "localhost:27017"}]})
        deps.append(Deployment(side, uri))
    return deps[0], deps[1], containers


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="livemigrate-test-") as d:
        yield Path(d)


def _dispose(sp: ServerPair) -> None:
    """The end of the servers' scope: their data is thrown away, so they are killed, not shut down (a graceful
    stop takes about 2 s per SecantusDB server, 12 s of every `make test` for six of them)."""
    sp.source.kill()
    sp.destination.kill()
    if sp in _started:
        _started.remove(sp)
    sp.stop()  # removes what it owns


def _pair_scope(fixture_name: str, config: pytest.Config) -> Literal["module", "session"]:
    """SecantusDB: a fresh pair for each test module.  It reads its whole oplog for every oplog query (the
    latest write behind the lag, the drain target, the quiet-source watch): measured on one server, 5 ms
    with 100 entries, 235 ms with 10,000, 780 ms with 30,000, and a session's oplog reaches its cap within
    minutes, so late tests ran up to ten times slower than alone.  A pair starts in about 1 s.  Docker
    containers and given URIs are shared by the whole session."""
    return "module" if BACKEND == "secantus" else "session"


_pairs_started = 0


@pytest.fixture(scope=_pair_scope)
def pair(server_root: Path) -> Iterator[tuple[Deployment, Deployment]]:
    """The default source/destination pair for integration tests."""
    global _pairs_started
    if BACKEND == "secantus":
        # A small oplog as well: 30k entries hold any one test's history.
        _pairs_started += 1
        root = server_root / f"plain-{_pairs_started}"
        src, dst, sp = _secantus_pair(root, test_commands=True, oplog_max_entries=30_000)
        yield src, dst
        _dispose(sp)
    elif BACKEND == "uri":
        s, d = os.environ.get("LIVEMIGRATE_TEST_SOURCE_URI"), os.environ.get("LIVEMIGRATE_TEST_DEST_URI")
        if not s or not d:
            pytest.exit(
                "LIVEMIGRATE_TEST_BACKEND=uri needs LIVEMIGRATE_TEST_SOURCE_URI and LIVEMIGRATE_TEST_DEST_URI", 2
            )
        yield Deployment("source", s), Deployment("destination", d)
    elif BACKEND == "docker":
        try:
            src, dst, containers = _docker_pair()
        except Exception as exc:  # noqa: BLE001
            pytest.exit(f"docker backend cannot start: {type(exc).__name__}: {exc}", 2)
        yield src, dst
        for c in containers:
            c.stop()
    else:
        pytest.exit(f"unknown LIVEMIGRATE_TEST_BACKEND={BACKEND!r} (secantus|docker|uri)", 2)


def requires_secantus(reason: str = "needs servers this suite starts itself") -> pytest.MarkDecorator:
    return pytest.mark.skipif(BACKEND != "secantus", reason=f"{reason} (backend {BACKEND})")


@pytest.fixture(scope="session")
def auth_pair(server_root: Path) -> Iterator[tuple[Deployment, Deployment]]:
    """Source with --auth and a user holding backup + readAnyDatabase on admin (SCRAM-SHA-1 and -256)."""
    if BACKEND != "secantus":
        pytest.skip("auth pair is started by the suite only on the secantus backend")
    sp = ServerPair(server_root / "auth", oplog_max_entries=200_000).start()
    _started.append(sp)
    create_user(sp.source, "root", "rootpw", [{"role": "root", "db": "admin"}])
    create_user(
        sp.source,
        SOURCE_USER,
        SOURCE_PASSWORD,
        [{"role": "backup", "db": "admin"}, {"role": "readAnyDatabase", "db": "admin"}],
        ["SCRAM-SHA-1", "SCRAM-SHA-256"],
    )
    create_user(sp.source, "weak", "weakpw", [{"role": "read", "db": "app"}], ["SCRAM-SHA-256"])
    sp.source.restart(auth=True)
    src = Deployment("source", sp.source.uri(SOURCE_USER, SOURCE_PASSWORD, authSource="admin"), sp.source)
    src.extra["root_uri"] = sp.source.uri("root", "rootpw", authSource="admin")
    yield src, Deployment("destination", sp.destination.uri(), sp.destination)
    _dispose(sp)


@pytest.fixture(scope="session")
def tls_pair(server_root: Path) -> Iterator[tuple[Deployment, Deployment]]:
    """Both servers speak TLS with a certificate from a CA the test made."""
    if BACKEND != "secantus":
        pytest.skip("TLS pair is started by the suite only on the secantus backend")
    material = make_tls_material(server_root / "tls-material")
    sp = ServerPair(server_root / "tls", tls=material, oplog_max_entries=200_000).start()
    _started.append(sp)
    src = Deployment("source", sp.source.uri(), sp.source, ca_file=material["ca"], extra=dict(material))
    dst = Deployment("destination", sp.destination.uri(), sp.destination, ca_file=material["ca"], extra=dict(material))
    yield src, dst
    _dispose(sp)


@pytest.fixture
def dbname(request: pytest.FixtureRequest, pair: tuple[Deployment, Deployment]) -> Iterator[str]:
    """A database name unique to this test; dropped on both sides afterwards, with the metadata store."""
    base = re.sub(r"[^A-Za-z0-9]", "_", request.node.name)[:40]
    name = f"t_{base}_{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]}"
    src, dst = pair
    yield name
    for dep in (src, dst):
        with dep.client() as c:
            for db in c.list_database_names():
                if db == name or db.startswith(name + "_"):
                    c.drop_database(db)
            if dep is dst:
                c.drop_database(METADATA_DB)


@pytest.fixture
def src_client(pair: tuple[Deployment, Deployment]) -> Iterator[MongoClient[Any]]:
    with pair[0].client() as c:
        yield c


@pytest.fixture
def dst_client(pair: tuple[Deployment, Deployment]) -> Iterator[MongoClient[Any]]:
    with pair[1].client() as c:
        yield c


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the servers' log tails to a failing test."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for sp in _started:
            for srv in (sp.source, sp.destination):
                report.sections.append((f"server log {srv.name} {srv.address}", srv.log_tail(30)))
