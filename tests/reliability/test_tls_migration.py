"""A whole migration over TLS, both servers' certificates signed by a custom CA named in the config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import ServerSelectionTimeoutError

from tasks.migration import Migration
from tasks.mongo import latest_optime
from tests.conftest import Deployment
from tests.helpers import Writer, assert_same_data, make_config, seed_writer_data

pytestmark = pytest.mark.integration


def test_migration_over_tls_with_a_custom_ca(tls_pair: tuple[Deployment, Deployment], tmp_path: Path) -> None:
    src_dep, dst_dep = tls_pair
    ca = src_dep.ca_file
    assert ca is not None and "tls=true" in src_dep.uri and "tls=true" in dst_dep.uri
    # Without the CA the servers are not trusted: the config's tls_ca_file is what makes it work.
    with (
        MongoClient(src_dep.uri, serverSelectionTimeoutMS=1500) as untrusting,
        pytest.raises(ServerSelectionTimeoutError),
    ):
        untrusting.admin.command("ping")
    db = "tls_app"
    with src_dep.client() as src, dst_dep.client() as dst:
        for c in (src, dst):
            c.drop_database(db)
            c.drop_database("__livemigrate")
        seed_writer_data(src, db)
        src[db]["big"].insert_many([{"_id": i, "pad": "t" * 200, "n": i} for i in range(3000)])
        cfg = make_config(
            src_dep.uri,
            dst_dep.uri,
            db,
            name="tls-migration",
            source={"uri": src_dep.uri, "tls_ca_file": str(ca)},
            destination={"uri": dst_dep.uri, "tls_ca_file": str(ca)},
        )
        writer = Writer(src, db, seed=21, rate_sleep=0.003)
        try:
            with Migration(cfg) as m:  # the engine's own clients: trust comes from the config's CA file
                m.begin()
                writer.start()
                m.clone()
                runner = m.start_sync()
                assert runner.wait(lambda st: st.applied_events > 20, 30)
                writer.stop()
                target = latest_optime(src)
                assert runner.wait(lambda st: runner.applied_through(target), 60)
        finally:
            writer.stop_event.set()
        try:
            assert assert_same_data(src, dst, [db]) > 3000
        finally:
            for c in (src, dst):  # the TLS pair is shared by the session: leave it as found
                c.drop_database(db)
                c.drop_database("__livemigrate")
