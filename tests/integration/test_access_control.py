"""A write block holds no one off where access control is off: it is then neither trusted nor sent.

MongoDB 6.0-8.0 (server source ``AuthorizationSessionImpl``): with authorization disabled every client
may bypass setUserWriteBlockMode, so a block the server accepts stops no application write.  A server
without ``--auth`` still authenticates the user a URI names, so the migration's own connectionStatus shows
a user with privileges either way; livemigrate asks an unauthenticated connection instead
(``tasks.mongo.access_control_enforced``: listDatabases is refused with Unauthorized 13 "requires
authentication" exactly when access control is on, server source commands.cpp).

The probe runs against the real test servers (with and without ``--auth``); the cutover against
tests/write_block_proxy.py, which accepts setUserWriteBlockMode and, with ``access_control=False``, lets
every client write through it, as MongoDB does.  Before this rule the cutover trusted such a block and
skipped the quiet-source watch while the application went on writing: the writes that arrived after the
drain failed the final verification here (the migration was marked failed), and any arriving after the
verification would have been lost without a word.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from pymongo import MongoClient

from tasks.migration import Migration
from tasks.mongo import access_control_enforced
from tests.conftest import Deployment
from tests.helpers import assert_same_data, make_config
from tests.integration.test_continuous_verification import _verify
from tests.write_block_proxy import WriteBlockProxy, WriteBlockScript, backend_of

pytestmark = pytest.mark.integration


def test_the_probe_tells_access_control_on_from_off(
    pair: tuple[Deployment, Deployment], auth_pair: tuple[Deployment, Deployment]
) -> None:
    assert access_control_enforced(pair[0].uri, side="source", timeout_s=5) == (False, "")
    # The auth pair's source runs with --auth; its URI names a user, whom the probe leaves out.
    assert access_control_enforced(auth_pair[0].uri, side="source", timeout_s=5) == (True, "")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    enforced, why = access_control_enforced(
        f"mongodb://u:secret-pw@127.0.0.1:{free}/?directConnection=true", side="destination", timeout_s=0.5
    )
    assert enforced is None and "destination" in why and "secret-pw" not in why


class _AppWriter(threading.Thread):
    """The application, still writing to the source for ``seconds`` after the cutover is approved."""

    def __init__(self, client: MongoClient[Any], db: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.client, self.db, self.n = client, db, 0
        self.until = time.monotonic() + seconds

    def run(self) -> None:
        while time.monotonic() < self.until:
            self.client[self.db]["orders"].insert_one({"_id": f"app-{self.n}"})
            self.n += 1
            time.sleep(0.02)


def test_a_block_that_holds_no_one_off_is_not_trusted_at_the_cutover(
    pair: tuple[Deployment, Deployment],
    src_client: MongoClient[Any],
    dst_client: MongoClient[Any],
    dbname: str,
) -> None:
    """The application stops a second after the approval: the cutover waits for the source to stand still
    (it does not send the block) and every write of that second reaches the destination."""
    src_client[dbname]["orders"].insert_many([{"_id": i, "v": i} for i in range(200)])
    script = WriteBlockScript(access_control=False)  # the command is there and accepted; it binds no one
    with (
        WriteBlockProxy(backend_of(pair[0].uri), script) as proxy,
        MongoClient(proxy.uri(appName="shop"), serverSelectionTimeoutMS=5000) as app,
    ):
        cfg = make_config(
            proxy.uri(),
            pair[1].uri,
            dbname,
            cutover={"ready_after_seconds": 0.2, "quiesce_seconds": 0.3, "quiesce_timeout_seconds": 10},
        )
        with Migration(cfg) as m:
            m.begin()
            m.clone()
            assert m.wait_ready(30)
            blocks, why = m.write_block_plan()
            assert blocks is False and "access control is off on the source" in why  # what the form says
            writer = _AppWriter(app, dbname, seconds=1.0)
            writer.start()
            try:
                result = m.cutover("alice", "go", _verify(m))
            finally:
                writer.join(10)
            assert result.phase.value == "complete" and result.downtime and result.downtime["blocked"] is False
            assert result.downtime["parts"]["quiesce"] >= 0.3 and writer.n > 10
        assert script.blocks == []  # never sent: it would have protected nothing
    assert src_client[dbname]["orders"].count_documents({"_id": {"$regex": "^app-"}}) == writer.n
    assert_same_data(src_client, dst_client, [dbname])


def test_destination_write_blocking_watches_where_access_control_is_off(
    pair: tuple[Deployment, Deployment], dbname: str
) -> None:
    """The migration user authenticates and holds both privileges, yet every client bypasses a block."""
    script = WriteBlockScript(access_control=False)
    with WriteBlockProxy(backend_of(pair[1].uri), script) as proxy:
        cfg = make_config(pair[0].uri, proxy.uri(), dbname, destination_write_blocking=True)
        with Migration(cfg) as m:
            doc = m.begin()
            assert script.blocks == [] and not doc.destination_write_blocked
            assert doc.destination_writes.startswith("watched: access control is off on the destination")
            m.cancel("oncall", "done")
