"""The data half of verification: hash a partition on both sides, drill into one that differs.

Why: comparing documents one by one across two servers needs a sort and
holds state; instead each side's ``_id`` partition is reduced to (count, sum
of 128-bit document digests mod 2**128) - order-independent, so a plain
unsorted scan of raw batches suffices and memory stays at one batch.  Only a
partition whose figures differ is scanned again into ``{_id bytes: digest}``
maps (bounded by the partition size) to name each differing document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pymongo.collection import Collection

from checks.verify_bson import HASH_MOD, canonical, digest, digest_int, id_key, id_value
from tasks.partition import IdRange

FETCH_CHUNK = 1000  # _ids per {$in} query when re-reading named documents


@dataclass
class Entry:
    """One differing document: its ``_id`` key, each side's digest (None = absent) and its bucket."""

    key: bytes
    src: bytes | None
    dst: bytes | None
    bucket: str  # missing, extra, changed or field_order_only


@dataclass
class PartitionOutcome:
    """Figures for one partition on both sides and the documents that differ in it."""

    src_count: int = 0
    src_sum: int = 0
    dst_count: int = 0
    dst_sum: int = 0
    entries: list[Entry] = field(default_factory=list)
    drilled: bool = False


class Interrupted(Exception):  # noqa: N818 - a request, not a failure
    """A scan stopped between batches because its owner asked (the background verification at a cutover)."""


def iter_raw(
    coll: Collection[Any], flt: dict[str, Any], batch_size: int, stop: Callable[[], bool] | None = None
) -> Iterator[memoryview]:
    """Each document of a query as a view into its raw batch: no per-document objects, no decoding.

    ``stop`` is asked between batches; when it says so the scan raises :class:`Interrupted`.
    """
    for batch in coll.find_raw_batches(flt, batch_size=batch_size):
        if stop is not None and stop():
            raise Interrupted(coll.full_name)
        mv = memoryview(batch)
        pos, end = 0, len(batch)
        while pos < end:
            size = int.from_bytes(mv[pos : pos + 4], "little")
            yield mv[pos : pos + size]
            pos += size


def scan_hash(
    coll: Collection[Any], flt: dict[str, Any], batch_size: int, stop: Callable[[], bool] | None = None
) -> tuple[int, int]:
    """(documents, sum of digests mod 2**128) of one side of a partition."""
    count = total = 0
    for doc in iter_raw(coll, flt, batch_size, stop):
        total += digest_int(digest(doc))
        count += 1
    return count, total % HASH_MOD


def scan_map(
    coll: Collection[Any], flt: dict[str, Any], batch_size: int, stop: Callable[[], bool] | None = None
) -> tuple[dict[bytes, bytes], int, int]:
    """``{_id key: digest}`` for one side of a partition, with its count and hash sum."""
    out: dict[bytes, bytes] = {}
    total = 0
    for doc in iter_raw(coll, flt, batch_size, stop):
        raw = bytes(doc)
        d = digest(raw)
        out[id_key(raw)] = d
        total += digest_int(d)
    return out, len(out), total % HASH_MOD


def fetch(coll: Collection[Any], keys: list[bytes], batch_size: int) -> dict[bytes, bytes]:
    """The current raw bytes of the named documents (absent ones are left out)."""
    out: dict[bytes, bytes] = {}
    if not keys:
        return out
    for doc in iter_raw(coll, {"_id": {"$in": [id_value(k) for k in keys]}}, batch_size):
        raw = bytes(doc)
        out[id_key(raw)] = raw  # an $in on 1 also matches 1.0: the byte-exact key tells them apart
    return out


def classify(src: bytes | None, dst: bytes | None, ignore_field_order: bool) -> str | None:
    """Which bucket a document pair belongs to, or None when the bytes are equal."""
    if src is None and dst is None:
        return None
    if dst is None:
        return "missing"
    if src is None:
        return "extra"
    if src == dst:
        return None
    if ignore_field_order and canonical(src) == canonical(dst):
        return "field_order_only"
    return "changed"


def chunks(items: list[Entry], size: int = FETCH_CHUNK) -> Iterable[list[Entry]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class PartitionVerifier:
    """Verifies partitions of one namespace; the two sides of each scan run in parallel threads."""

    def __init__(
        self,
        src: Collection[Any],
        dst: Collection[Any],
        side_pool: ThreadPoolExecutor,
        *,
        batch_size: int,
        ignore_field_order: bool,
    ) -> None:
        self.src, self.dst, self.side_pool = src, dst, side_pool
        self.batch_size = batch_size
        self.ignore_field_order = ignore_field_order
        self.stop: Callable[[], bool] | None = None  # asked between batches of a scan (see iter_raw)

    def verify(self, rng: IdRange) -> PartitionOutcome:
        """Hash the partition on both sides; drill down only when the figures differ."""
        flt = rng.filter()
        fut = self.side_pool.submit(scan_hash, self.src, flt, self.batch_size, self.stop)
        try:
            dst_count, dst_sum = scan_hash(self.dst, flt, self.batch_size, self.stop)
        finally:
            fut.exception()  # never leave the other side's scan running behind an error
        src_count, src_sum = fut.result()
        if (src_count, src_sum) == (dst_count, dst_sum):
            return PartitionOutcome(src_count, src_sum, dst_count, dst_sum)
        return self.drill_down(flt)

    def drill_down(self, flt: dict[str, Any]) -> PartitionOutcome:
        """Name every differing document of one partition (its maps are the partition's new figures)."""
        fut = self.side_pool.submit(scan_map, self.src, flt, self.batch_size, self.stop)
        try:
            dst_map, dst_count, dst_sum = scan_map(self.dst, flt, self.batch_size, self.stop)
        finally:
            fut.exception()
        src_map, src_count, src_sum = fut.result()
        out = PartitionOutcome(src_count, src_sum, dst_count, dst_sum, drilled=True)
        for key, sd in src_map.items():
            dd = dst_map.pop(key, None)
            if dd is None:
                out.entries.append(Entry(key, sd, None, "missing"))
            elif dd != sd:
                out.entries.append(Entry(key, sd, dd, "changed"))
        out.entries.extend(Entry(key, None, dd, "extra") for key, dd in dst_map.items())
        del src_map, dst_map
        if self.ignore_field_order:
            self.refine_field_order([e for e in out.entries if e.bucket == "changed"])
        return out

    def fetch_both(self, keys: list[bytes]) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """The named documents from both sides, read concurrently."""
        fut = self.side_pool.submit(fetch, self.src, keys, self.batch_size)
        dst_docs = fetch(self.dst, keys, self.batch_size)
        return fut.result(), dst_docs

    def refine_field_order(self, changed: list[Entry]) -> None:
        """Move documents whose only difference is field order to their own bucket."""
        for part in chunks(changed):
            src_docs, dst_docs = self.fetch_both([e.key for e in part])
            for e in part:
                s, d = src_docs.get(e.key), dst_docs.get(e.key)
                if s is not None and d is not None and canonical(s) == canonical(d):
                    e.bucket = "field_order_only"

    def recheck(self, entries: list[Entry]) -> tuple[list[Entry], int, int, int, int]:
        """Re-read the named documents after the sync applied the events in flight.

        Returns the entries that still differ and the (count, sum) deltas for
        source and destination, so the namespace figures describe the settled
        state (the partition hash is a sum, so one document's share can be
        swapped out exactly).
        """
        still: list[Entry] = []
        dsc = dss = ddc = dds = 0
        for part in chunks(entries):
            src_docs, dst_docs = self.fetch_both([e.key for e in part])
            for e in part:
                s, d = src_docs.get(e.key), dst_docs.get(e.key)
                sd, dd = (digest(s) if s is not None else None), (digest(d) if d is not None else None)
                dsc += (sd is not None) - (e.src is not None)
                ddc += (dd is not None) - (e.dst is not None)
                dss += digest_int(sd) - digest_int(e.src)
                dds += digest_int(dd) - digest_int(e.dst)
                bucket = classify(s, d, self.ignore_field_order)
                if bucket is not None:
                    still.append(Entry(e.key, sd, dd, bucket))
        return still, dsc, dss, ddc, dds
