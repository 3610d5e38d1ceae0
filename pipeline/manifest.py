"""The Parquet manifest: one row per image, one row group per task batch.

Staging the validated CSV as Parquet gives every worker a cheap, typed,
random-access view: a batch task reads only its own row group (a ranged read
on S3), never the whole CSV.
"""

from __future__ import annotations

import functools
import uuid
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.models import ImageItem
from pipeline.storage import Storage

_SLOT = pa.struct([("row", pa.int32()), ("position", pa.int16())])
SCHEMA = pa.schema(
    [
        ("row", pa.int32()),
        ("position", pa.int16()),
        ("serial", pa.string()),
        ("product_name", pa.string()),
        ("input_url", pa.string()),
        # A repeated URL (models.ImageItem): its first slot lists the others, each
        # of those names the first. Null for most images; absent from manifests
        # staged before repeats were fetched once (read as no repeats).
        ("copies", pa.list_(_SLOT)),
        ("copy_of", _SLOT),
        # The product's line in the uploaded file; absent (read as 0) before lines.
        ("line", pa.int32()),
    ]
)


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    key: str
    images: int
    batches: int
    batch_size: int


def to_table(items: Sequence[ImageItem]) -> pa.Table:
    return pa.table(
        {
            "row": [i.row for i in items],
            "position": [i.position for i in items],
            "serial": [i.serial for i in items],
            "product_name": [i.product_name for i in items],
            "input_url": [i.input_url for i in items],
            "copies": [[_slot(c) for c in i.copies] if i.copies else None for i in items],
            "copy_of": [_slot(i.copy_of) if i.copy_of else None for i in items],
            "line": [i.line for i in items],
        },
        schema=SCHEMA,
    )


def from_table(table: pa.Table) -> list[ImageItem]:
    columns = table.to_pydict()
    count = table.num_rows
    copies = columns.get("copies") or [None] * count
    copy_of = columns.get("copy_of") or [None] * count
    lines = columns.get("line") or [0] * count
    return [
        ImageItem(
            row=r,
            position=p,
            serial=s,
            product_name=n,
            input_url=u,
            copies=tuple((c["row"], c["position"]) for c in cs) if cs else (),
            copy_of=(of["row"], of["position"]) if of else None,
            line=line,
        )
        for r, p, s, n, u, cs, of, line in zip(
            columns["row"],
            columns["position"],
            columns["serial"],
            columns["product_name"],
            columns["input_url"],
            copies,
            copy_of,
            lines,
            strict=True,
        )
    ]


def _slot(slot: tuple[int, int]) -> dict[str, int]:
    return {"row": slot[0], "position": slot[1]}


# The batch size a manifest was cut with, kept in its footer: a process that takes
# a request over must use the manifest's batches, whatever its own BATCH_SIZE.
BATCH_SIZE_META = b"imagepipe.batch_size"


def write_manifest(
    storage: Storage, key: str, items: Sequence[ImageItem], batch_size: int
) -> ManifestInfo:
    """Write once: the file appears whole under `key` or not at all.

    It is written under a temporary name and moved into place, so a reader
    (another process's tasks) never sees a half-written or truncated manifest.
    """
    table = to_table(items).replace_schema_metadata({BATCH_SIZE_META: str(batch_size).encode()})
    partial = f"{key}.partial-{uuid.uuid4().hex}"
    with storage.open(partial, "wb") as fh:
        pq.write_table(table, fh, row_group_size=batch_size, compression="zstd")
    storage.move(partial, key)
    return _info(key, len(items), batch_size)


def describe(storage: Storage, key: str) -> ManifestInfo | None:
    """The info of a manifest already staged, or None when there is none."""
    if not storage.exists(key):
        return None
    metadata = _footer(storage, key, storage.stamp(key))
    batch_size = int(metadata.metadata[BATCH_SIZE_META])
    return _info(key, metadata.num_rows, batch_size)


def _info(key: str, images: int, batch_size: int) -> ManifestInfo:
    batches = -(-images // batch_size)
    return ManifestInfo(key=key, images=images, batches=batches, batch_size=batch_size)


def read_batch(storage: Storage, key: str, batch: int) -> list[ImageItem]:
    metadata = _footer(storage, key, storage.stamp(key))
    with storage.open(key, "rb") as fh:
        return from_table(pq.ParquetFile(fh, metadata=metadata).read_row_group(batch))


# The footer describes every row group: at 100k images (3,125 groups) it is
# ~1.7 MB and takes ~15 ms to parse, against <1 ms to read one group. Each
# worker process parses it once per manifest version, not once per task.
@functools.lru_cache(maxsize=8)
def _footer(storage: Storage, key: str, stamp: str) -> pq.FileMetaData:
    with storage.open(key, "rb") as fh:
        return pq.read_metadata(fh)


def iter_items(storage: Storage, key: str, chunk: int = 10_000) -> Iterator[list[ImageItem]]:
    """Every image in manifest order, `chunk` at a time (memory stays flat)."""
    with storage.open(key, "rb") as fh:
        for batch in pq.ParquetFile(fh).iter_batches(batch_size=chunk):
            yield from_table(pa.Table.from_batches([batch]))


def batch_of(index: int, batch_size: int) -> int:
    """The row group holding the image at `index` in manifest order."""
    return index // batch_size


class Layout:
    """Where each image sits in the manifest, in 8 bytes per product (and 16 per
    repeated URL).

    The driver needs it for a request's whole life (which batch an image is
    in, which images a batch holds); a dict of every image would be ~100 MB
    for a 1M-image request. A repeat of a URL is processed with its first slot,
    so it belongs to that slot's batch, wherever it sits in the manifest.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.images = 0
        self._starts = array("q")  # index of each row's first image; rows are 0..n-1
        self._copies = array("q")  # index of each repeat, ascending
        self._firsts = array("q")  # index of its first slot, in the same order
        # Per batch: results it gives beyond its own images (repeats of its URLs
        # sitting in other batches), less its repeats of other batches' URLs.
        self._extra: dict[int, int] = {}

    def add(self, items: Sequence[ImageItem]) -> None:
        """Extend with the next images in manifest order."""
        for item in items:
            if item.position == 0:
                while len(self._starts) < item.row:  # a row without images (none today)
                    self._starts.append(self.images)
                self._starts.append(self.images)
            if item.copy_of is not None:
                first = self._starts[item.copy_of[0]] + item.copy_of[1]
                self._copies.append(self.images)
                self._firsts.append(first)
                own, theirs = self._batch_of(self.images), self._batch_of(first)
                if own != theirs:
                    self._extra[own] = self._extra.get(own, 0) - 1
                    self._extra[theirs] = self._extra.get(theirs, 0) + 1
            self.images += 1

    def batch(self, row: int, position: int) -> int:
        """The batch whose task gives this image its result."""
        index = self._starts[row] + position
        found = bisect_left(self._copies, index)
        if found < len(self._copies) and self._copies[found] == index:
            index = self._firsts[found]
        return self._batch_of(index)

    def batch_length(self, batch: int) -> int:
        """The images stored in `batch`'s row group."""
        return min(self.batch_size, self.images - batch * self.batch_size)

    def batch_results(self, batch: int) -> int:
        """How many images get their result from `batch`'s task."""
        return self.batch_length(batch) + self._extra.get(batch, 0)

    def rows_of(self, batch: int) -> range:
        """The rows with at least one image in `batch`."""
        first = batch * self.batch_size
        last = first + self.batch_length(batch) - 1
        return range(bisect_right(self._starts, first) - 1, bisect_right(self._starts, last))

    def copies_elsewhere(self, batch: int) -> list[tuple[int, int]]:
        """Repeats of `batch`'s URLs that sit in other batches, as (row, position).

        A scan of the repeats: asked only when a batch is re-run or failed whole.
        """
        low, high = batch * self.batch_size, (batch + 1) * self.batch_size
        return [
            self._slot(copy)
            for copy, first in zip(self._copies, self._firsts, strict=True)
            if low <= first < high and not low <= copy < high
        ]

    def is_copy_elsewhere(self, row: int, position: int) -> bool:
        """Whether this image is a repeat whose first slot sits in another batch."""
        index = self._starts[row] + position
        return self.batch(row, position) != self._batch_of(index)

    def _batch_of(self, index: int) -> int:
        return batch_of(index, self.batch_size)

    def _slot(self, index: int) -> tuple[int, int]:
        row = bisect_right(self._starts, index) - 1
        return row, index - self._starts[row]
