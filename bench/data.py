"""The benchmark's documents: about 1 KB each, mixed BSON types, three collections with two secondary indexes each.

Why: a clone's speed depends on document size and shape; every figure in the
report is for the same reproducible data (seeded random), written to the
source as raw BSON so seeding is as fast as the server allows.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bson import encode
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient

from tasks.mongo import RAW

EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SEED_BATCH = 5_000
POOL = 4096  # distinct document bodies
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
CITIES = ("Paris", "Lyon", "Berlin", "Madrid", "Lisbon", "Oslo", "Rome", "Vienna")


@dataclass(frozen=True)
class CollectionShape:
    """One benchmark collection: its share of the documents, its ``_id`` type and its secondary indexes."""

    name: str
    share: float
    id_kind: str  # objectId, long or string
    indexes: tuple[tuple[tuple[str, int], ...], ...]


SHAPES = (
    CollectionShape("users", 0.5, "objectId", ((("name", 1),), (("addr.city", 1), ("score", -1)))),
    CollectionShape("orders", 0.3, "long", ((("customer", 1),), (("when", -1),))),
    CollectionShape("events", 0.2, "string", ((("kind", 1),), (("tags", 1),))),
)


def id_element(kind: str, i: int) -> bytes:
    """The encoded ``_id`` element for document ``i``: an ObjectId, an int64 or a string."""
    if kind == "objectId":
        return b"\x07_id\x00" + i.to_bytes(12, "big")
    if kind == "long":
        return b"\x12_id\x00" + i.to_bytes(8, "little", signed=True)
    text = f"ev-{i:09d}".encode() + b"\x00"
    return b"\x02_id\x00" + len(text).to_bytes(4, "little") + text


def make_body(rnd: random.Random, k: int) -> dict[str, Any]:
    """The fields after ``_id``, ``seq`` and ``when``: strings, int32, int64, doubles, Decimal128, binary, arrays."""
    word = WORDS[k % len(WORDS)]
    return {
        "name": f"{word}-{rnd.randrange(1_000_000):06d}",
        "customer": rnd.randrange(50_000),
        "kind": WORDS[rnd.randrange(len(WORDS))],
        "score": rnd.random() * 1000,
        "balance": Decimal128(f"{rnd.randrange(10**8)}.{rnd.randrange(100):02d}"),
        "big": Int64(2**40 + k),
        "active": k % 3 != 0,
        "missing": None,
        "blob": Binary(rnd.randbytes(96)),
        "tags": [WORDS[rnd.randrange(len(WORDS))] for _ in range(6)],
        "addr": {
            "street": f"{rnd.randrange(1, 300)} {word.title()} Street",
            "city": CITIES[rnd.randrange(len(CITIES))],
            "zip": f"{rnd.randrange(100_000):05d}",
            "geo": [rnd.uniform(-180, 180), rnd.uniform(-90, 90)],
        },
        "history": [{"at": EPOCH + dt.timedelta(days=d), "v": rnd.randrange(100), "ok": d % 2 == 0} for d in range(4)],
        "notes": " ".join(WORDS[rnd.randrange(len(WORDS))] for _ in range(60)),
    }


def make_medium_body(rnd: random.Random, k: int) -> dict[str, Any]:
    """The same fields without the long text and the binary: documents of about 480 bytes.

    The memory benchmark uses these: small enough that a million of them seed and copy in minutes, large
    enough that even the 100,000-document run fills every worker's 8 MB batch (so both runs reach the
    engine's steady state and their peaks compare the same thing).
    """
    body = make_body(rnd, k)
    del body["notes"], body["blob"]
    return body


@functools.cache
def body_pool(seed: int, medium: bool = False) -> tuple[bytes, ...]:
    """Encoded bodies (elements only, no length or trailing NUL) that documents cycle through."""
    rnd = random.Random(seed)
    make = make_medium_body if medium else make_body
    return tuple(encode(make(rnd, k))[4:-1] for k in range(POOL))


def raw_docs(kind: str, start: int, count: int, seed: int, medium: bool = False) -> Iterator[RawBSONDocument]:
    """``count`` documents with ids ``start .. start+count-1``, assembled from encoded parts.

    Building each document with ``bson.encode`` costs ~50 us in Python (a
    million documents: most of a minute); joining pre-encoded elements costs
    ~2 us, so seeding is bounded by the server, not by the generator.
    """
    pool = body_pool(seed, medium)
    base_ms = int(EPOCH.timestamp() * 1000)
    for i in range(start, start + count):
        body = (
            id_element(kind, i)
            + b"\x10seq\x00"
            + (i & 0x7FFFFFFF).to_bytes(4, "little")
            + b"\x09when\x00"
            + (base_ms + i * 1000 + i % 997).to_bytes(8, "little", signed=True)
            + pool[(i * 2654435761) % POOL]
        )
        yield RawBSONDocument((len(body) + 5).to_bytes(4, "little") + body + b"\x00", RAW)


def split_counts(total: int) -> list[tuple[CollectionShape, int]]:
    """How many documents each collection gets (the last one takes the rounding)."""
    out: list[tuple[CollectionShape, int]] = []
    left = total
    for k, shape in enumerate(SHAPES):
        n = left if k == len(SHAPES) - 1 else int(total * shape.share)
        out.append((shape, n))
        left -= n
    return out


def insert_batches(coll: Any, docs: Iterable[Any], size: int) -> None:
    """Unordered ``insert_many`` of ``docs``, ``size`` at a time (seeding, and the naive copy's write side)."""
    batch: list[Any] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            coll.insert_many(batch, ordered=False)
            batch = []
    if batch:
        coll.insert_many(batch, ordered=False)


def seed_database(
    client: MongoClient[Any], db: str, total: int, seed: int = 1, indexes: bool = True, medium: bool = False
) -> int:
    """Write ``total`` documents over the three collections of ``db`` (with their indexes); returns bytes written."""
    nbytes = 0

    def tallied(docs: Iterator[RawBSONDocument]) -> Iterator[RawBSONDocument]:
        nonlocal nbytes
        for doc in docs:
            nbytes += len(doc.raw)
            yield doc

    for shape, n in split_counts(total):
        coll = client[db].get_collection(shape.name, codec_options=RAW)
        insert_batches(coll, tallied(raw_docs(shape.id_kind, 0, n, seed, medium)), SEED_BATCH)
        if indexes:
            create_indexes(client, db, shape)
    return nbytes


def create_indexes(client: MongoClient[Any], db: str, shape: CollectionShape) -> None:
    """The collection's two secondary indexes, in one createIndexes command."""
    models = [{"key": dict(key), "name": "_".join(f"{f}_{d}" for f, d in key)} for key in shape.indexes]
    client[db].command({"createIndexes": shape.name, "indexes": models})


def db_stats(client: MongoClient[Any], db: str) -> tuple[int, int]:
    """(documents, bytes of raw BSON) in a benchmark database, from a raw scan."""
    docs = nbytes = 0
    for shape in SHAPES:
        for batch in client[db].get_collection(shape.name, codec_options=RAW).find_raw_batches({}, batch_size=5000):
            nbytes += len(batch)
            docs += _count_in_batch(batch)
    return docs, nbytes


def _count_in_batch(batch: bytes) -> int:
    n = pos = 0
    while pos < len(batch):
        pos += int.from_bytes(batch[pos : pos + 4], "little")
        n += 1
    return n
