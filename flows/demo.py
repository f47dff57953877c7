"""`make demo`: the whole job on the embedded default, start to finish, on this machine.

Starts two local SecantusDB servers, loads a realistic sample (several
databases, about 100k documents of mixed types, several kinds of index, a view,
a capped collection), then runs the `migrate` flow - prechecks, clone, sync
under a live write load, the approval pause, cutover and verification - and
approves the cutover through the same code path `livemigrate cutover` uses.
Every process it started is stopped at the end.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from bson import Binary, Decimal128, Int64, ObjectId
from pymongo import MongoClient
from rich.console import Console

from flows.localservers import ServerPair

console = Console(soft_wrap=True)
REPO = Path(__file__).resolve().parent.parent
EVENTS_TTL_SECONDS = 365 * 24 * 3600
RECENT = dt.timedelta(days=30)
"""Orders and events are spread over the 30 days before the load, well inside the events' one-year TTL,
so no sample document expires (the source's TTL monitor deleting it) while the demo runs."""
N_AUDIT = 100


def load_sample(client: MongoClient[Any], n_docs: int, now: dt.datetime | None = None) -> dict[str, int]:
    """A small shop: customers, orders, events; mixed _id types, indexes, a view and a capped log.

    Dates count back from ``now`` (the current time by default); everything else is the same on every run.
    Returns the documents loaded per collection, the capped log's included.
    """
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    rnd = random.Random(42)
    shop, analytics = client["shop"], client["analytics"]
    n_cust = max(100, n_docs // 10)
    n_orders = max(100, n_docs // 2)
    n_events = max(100, n_docs - n_cust - n_orders - N_AUDIT)
    shop["customers"].insert_many(
        [
            {
                "_id": i,
                "email": f"customer{i}@example.com",
                "name": f"Customer {i}",
                "since": now - dt.timedelta(days=i % 1500),
                "vip": i % 17 == 0,
                "balance": Decimal128(f"{rnd.uniform(0, 5000):.2f}"),
                "address": {
                    "city": rnd.choice(["Oslo", "Lyon", "Lima", "Pune"]),
                    "zip": f"{rnd.randrange(10000, 99999)}",
                },
                "loc": [rnd.uniform(-180, 180), rnd.uniform(-90, 90)],
            }
            for i in range(n_cust)
        ]
    )
    shop["customers"].create_index("email", unique=True)
    shop["customers"].create_index([("address.city", 1), ("since", -1)])
    shop["customers"].create_index([("loc", "2dsphere")])
    batch = []
    for i in range(n_orders):
        batch.append(
            {
                "_id": ObjectId(),
                "customer": rnd.randrange(n_cust),
                "items": [
                    {"sku": f"SKU-{rnd.randrange(500)}", "qty": rnd.randrange(1, 5)} for _ in range(rnd.randrange(1, 4))
                ],
                "total": rnd.uniform(5, 500),
                "count": Int64(rnd.randrange(1, 10)),
                "status": rnd.choice(["new", "paid", "shipped"]),
                "created": now - RECENT + RECENT * i / n_orders,
            }
        )
        if len(batch) == 5000:
            shop["orders"].insert_many(batch)
            batch = []
    if batch:
        shop["orders"].insert_many(batch)
    shop["orders"].create_index([("customer", 1), ("created", -1)])
    shop["orders"].create_index("status", partialFilterExpression={"status": "new"}, name="open_orders")
    shop.create_collection("paid_orders", viewOn="orders", pipeline=[{"$match": {"status": "paid"}}])
    batch = []
    for i in range(n_events):
        key: Any = (
            str(uuid.UUID(int=rnd.getrandbits(128))) if i % 2 else Binary(uuid.UUID(int=rnd.getrandbits(128)).bytes, 4)
        )
        batch.append(
            {
                "_id": key,
                "kind": rnd.choice(["view", "click", "buy"]),
                "at": now - RECENT + RECENT * i / n_events,
                "score": rnd.random(),
            }
        )
        if len(batch) == 5000:
            analytics["events"].insert_many(batch)
            batch = []
    if batch:
        analytics["events"].insert_many(batch)
    analytics["events"].create_index("at", expireAfterSeconds=EVENTS_TTL_SECONDS)
    analytics.create_collection("audit_log", capped=True, size=4 * 1024 * 1024, max=5000)
    analytics["audit_log"].insert_many([{"_id": i, "msg": f"boot {i}"} for i in range(N_AUDIT)])
    return {
        "shop.customers": n_cust,
        "shop.orders": n_orders,
        "analytics.events": n_events,
        "analytics.audit_log": N_AUDIT,
    }


class LiveWriter(threading.Thread):
    """The application: keeps writing to the source until the engineer stops it before cutover."""

    def __init__(self, client: MongoClient[Any], n_cust: int) -> None:
        super().__init__(daemon=True, name="demo-writer")
        self.client, self.n_cust = client, n_cust
        self.stop_event = threading.Event()
        self.ops = 0
        self.inserts = 0  # new documents (the rest of its writes change existing ones)

    def run(self) -> None:
        rnd = random.Random(7)
        shop = self.client["shop"]
        while not self.stop_event.is_set():
            r = rnd.random()
            if r < 0.4:
                shop["orders"].insert_one(
                    {
                        "customer": rnd.randrange(self.n_cust),
                        "total": rnd.uniform(5, 50),
                        "status": "new",
                        "created": dt.datetime.now(dt.UTC),
                    }
                )
                self.inserts += 1
            elif r < 0.8:
                shop["customers"].update_one(
                    {"_id": rnd.randrange(self.n_cust)},
                    {"$inc": {"visits": 1}, "$set": {"seen": dt.datetime.now(dt.UTC)}},
                )
            elif r < 0.9:
                shop["orders"].update_many({"status": "new", "total": {"$lt": 6}}, {"$set": {"status": "paid"}})
            else:
                self.client["analytics"]["audit_log"].insert_one({"msg": "tick", "at": dt.datetime.now(dt.UTC)})
                self.inserts += 1
            self.ops += 1
            time.sleep(0.005)


def main() -> int:
    from flows.common import install_terminal_log

    install_terminal_log()  # as `livemigrate`: warnings and outcomes on the terminal, Prefect's lines in the run log
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    n_docs = int(os.environ.get("LIVEMIGRATE_DEMO_DOCS", "100000"))
    out_dir = Path(os.environ.get("LIVEMIGRATE_DEMO_OUT", REPO / "demo-output"))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="livemigrate-demo-"))
    pair = ServerPair(root, oplog_max_entries=2_000_000)
    writer: LiveWriter | None = None
    try:
        console.rule("[bold]livemigrate demo")
        console.print("starting two local SecantusDB servers (source and destination) ...")
        pair.start()
        console.print(f"  source      {pair.source.address}\n  destination {pair.destination.address}")
        src: MongoClient[Any]
        with MongoClient(pair.source.uri()) as src:
            counts = load_sample(src, n_docs)
            console.print(f"loaded {sum(counts.values())} documents into the source: {counts}, plus a view")
            cfg_path = out_dir / "demo-migration.yaml"
            cfg_path.write_text(
                yaml.safe_dump(
                    {
                        "name": "demo",
                        "source": {"uri": pair.source.uri()},
                        "destination": {"uri": pair.destination.uri()},
                        "cutover": {"max_lag_seconds": 5, "ready_after_seconds": 2, "quiesce_seconds": 1},
                        "tuning": {"workers": 4, "partition_docs": 20000},
                    }
                )
            )
            writer = LiveWriter(src, counts["shop.customers"])
            writer.start()
            console.print("the application is writing to the source while the migration runs")
            approver = threading.Thread(target=_approve_when_ready, args=(cfg_path, pair, writer), daemon=True)
            approver.start()
            from flows.migrate import migrate_flow

            console.print(
                "running the [bold]migrate[/] flow: prechecks -> clone -> sync -> approval pause -> cutover -> verification"
            )
            from flows.console import LiveView
            from tasks.metadata import MetadataStore

            dst: MongoClient[Any]
            with MongoClient(pair.destination.uri()) as dst, LiveView(MetadataStore(dst), "demo", console):
                result = migrate_flow(config=str(cfg_path), report_dir=str(out_dir / "verification"))
        cut = result.get("cutover") or {}
        console.rule("[bold]result")
        console.print(f"phase: [bold]{result['phase']}[/]")
        console.print(copy_account(sum(counts.values()), result["clone"]["docs"], writer.inserts if writer else 0))
        console.print(f"change events applied by the sync: {result['lag']['applied_events']}")
        console.print(f"destination ready to accept writes: {cut.get('destination_ready_at')}")
        console.print(f"migration complete:                 {cut.get('completed_at')}")
        console.print(f"final verification equal: {cut.get('verification_equal')}")
        console.print(f"migration report (copy-rate and lag charts): {cut.get('report')}")
        docs = out_dir / "verification" / "data_docs" / "index.html"
        console.print(
            f"verification report: {docs if docs.exists() else out_dir / 'verification'} (Great Expectations Data "
            f"Docs: open in a browser; their styles load from the internet); config: {cfg_path}"
        )
        console.print(f"demo finished in {time.monotonic() - t0:.0f} s")
        return 0 if result["phase"] == "complete" and cut.get("verification_equal") else 1
    finally:
        if writer is not None:
            writer.stop_event.set()
        pair.stop()
        shutil.rmtree(root, ignore_errors=True)
        console.print("stopped both servers")


def copy_account(loaded: int, copied: int, app_inserts: int) -> str:
    """What the clone copied, squared with what was loaded: the application writes while the copy runs.

    Its new documents that the copy reached are copied; the sync brings the rest, with its other writes.
    """
    if copied >= loaded:
        return (
            f"copied {copied} documents = {loaded} loaded + {copied - loaded} the application inserted before "
            f"the copy reached them (it inserted {app_inserts}; the sync brought the rest)"
        )
    return (
        f"copied {copied} documents: {loaded - copied} fewer than the {loaded} loaded, deleted on the source "
        "before the copy reached them (a TTL index or a capped collection); the verification compares what is left"
    )


def _approve_when_ready(cfg_path: Path, pair: ServerPair, writer: LiveWriter) -> None:
    """Play the on-call engineer: wait for 'ready', stop the application, approve through the CLI path."""
    from flows.operate import decision_cli
    from tasks.metadata import MetadataStore

    dst: MongoClient[Any]
    with MongoClient(pair.destination.uri()) as dst:
        store = MetadataStore(dst)
        while True:
            doc = store.get("demo")
            if doc is not None and doc.ready and doc.phase.value == "syncing":
                break
            if doc is not None and doc.phase.value in ("failed", "cancelled", "expired", "complete"):
                return
            time.sleep(1)
        console.print(
            f"[green]ready to cut over[/]: lag {doc.lag.lag_seconds} s; letting the application run 3 s more ..."
        )
        time.sleep(3)
        writer.stop_event.set()
        writer.join(10)
        console.print(f"the engineer stops the application ({writer.ops} writes made during the migration)")
        console.print(
            "[bold]approving the cutover with `livemigrate cutover --config ... --yes --approver demo-oncall`[/] (the same call the CLI makes)"
        )
        code = decision_cli(cfg_path, "cutover", approver="demo-oncall", reason="demo", yes=True, as_json=False)
        if code != 0:
            console.print(f"[red]cutover request refused (exit {code}); retrying in 2 s[/]")
            time.sleep(2)
            decision_cli(cfg_path, "cutover", approver="demo-oncall", reason="demo", yes=True, as_json=False)


if __name__ == "__main__":
    sys.exit(main())
