#!/usr/bin/env python3
"""Compare two deployments' databases on their own, without livemigrate's code: what a skeptic runs.

For each database named: the collections and views (``listCollections``: type and options, ``uuid`` aside),
the indexes (``listIndexes``: every field but the server's ``v``/``ns``), and every document byte for byte
(raw BSON, keyed by the raw ``_id``).  It reads the servers' own replies and uses nothing from livemigrate,
so it can judge livemigrate's result.  One difference is named, not counted: a unique index that shows
``prepareUnique: false`` on one side only (some servers keep the field after a unique conversion; MongoDB
7.0+ removes it; after a rollback the source holds such conversions).

usage: compare_clusters.py --source URI --destination URI --db NAME [--db NAME ...]
exit 0: equal; 1: different (each difference on stdout, one per line); 2: could not compare.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bson import encode
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.errors import PyMongoError

RAW = CodecOptions(document_class=RawBSONDocument)


def collections(client: MongoClient[Any], db: str) -> dict[str, dict[str, Any]]:
    reply = client[db].command({"listCollections": 1})
    out = {}
    for info in reply["cursor"]["firstBatch"]:
        options = {k: v for k, v in dict(info.get("options", {})).items() if k != "uuid"}
        out[info["name"]] = {"type": info.get("type", "collection"), "options": options}
    return out


def indexes(client: MongoClient[Any], db: str, coll: str) -> dict[str, dict[str, Any]]:
    reply = client[db].command({"listIndexes": coll})
    return {i["name"]: {k: v for k, v in i.items() if k not in ("v", "ns")} for i in reply["cursor"]["firstBatch"]}


def documents(client: MongoClient[Any], db: str, coll: str) -> dict[bytes, bytes]:
    c = client[db].get_collection(coll, codec_options=RAW)
    return {encode({"_id": d["_id"]}): bytes(d.raw) for d in c.find()}


def compare(src: MongoClient[Any], dst: MongoClient[Any], dbs: list[str]) -> tuple[list[str], list[str]]:
    diffs: list[str] = []
    notes: list[str] = []
    for db in dbs:
        a, b = collections(src, db), collections(dst, db)
        for name in sorted(a.keys() | b.keys()):
            where = f"{db}.{name}"
            if name not in b or name not in a:
                diffs.append(f"{where}: only on the {'source' if name in a else 'destination'}")
                continue
            if a[name] != b[name]:
                diffs.append(f"{where}: listCollections differs: {a[name]} vs {b[name]}")
            if a[name]["type"] == "view":
                continue
            ia, ib = indexes(src, db, name), indexes(dst, db, name)
            for idx in sorted(ia.keys() | ib.keys()):
                sa, sb = ia.get(idx), ib.get(idx)
                if sa == sb:
                    continue
                if sa is not None and sb is not None:
                    # Either side: after a rollback (reversible migrations) the source holds converted indexes.
                    side, has, lacks = ("destination", sb, sa) if "prepareUnique" in sb else ("source", sa, sb)
                    plain = {k: v for k, v in has.items() if k != "prepareUnique"}
                    if has.get("prepareUnique") is False and has.get("unique") and plain == lacks:
                        notes.append(f"{where} index {idx}: prepareUnique: false on the {side} only")
                        continue
                diffs.append(f"{where} index {idx}: {sa} vs {sb}")
            da, dbb = documents(src, db, name), documents(dst, db, name)
            missing, extra = da.keys() - dbb.keys(), dbb.keys() - da.keys()
            changed = [k for k in da.keys() & dbb.keys() if da[k] != dbb[k]]
            if missing or extra or changed:
                diffs.append(f"{where}: {len(missing)} missing, {len(extra)} extra, {len(changed)} changed documents")
    return diffs, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True)
    p.add_argument("--destination", required=True)
    p.add_argument("--db", action="append", required=True)
    args = p.parse_args(argv)
    try:
        with (
            MongoClient(args.source, serverSelectionTimeoutMS=10000) as s,
            MongoClient(args.destination, serverSelectionTimeoutMS=10000) as d,
        ):
            diffs, notes = compare(s, d, args.db)
    except PyMongoError as exc:
        print(f"compare_clusters: cannot compare: {type(exc).__name__}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"note: {n}")
    for line in diffs:
        print(f"DIFFERENT {line}")
    print("EQUAL" if not diffs else f"{len(diffs)} difference(s)")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
