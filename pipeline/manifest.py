"""The Parquet manifest: one row per image, one row group per task batch.

Staging the validated CSV as Parquet gives every worker a cheap, typed,
random-access view: a batch task reads only its own row group (a ranged read
on S3), never the whole CSV.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.models import ImageItem
from pipeline.storage import Storage

SCHEMA = pa.schema(
    [
        ("row", pa.int32()),
        ("position", pa.int16()),
        ("serial", pa.string()),
        ("product_name", pa.string()),
        ("input_url", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    key: str
    images: int
    batches: int
    batch_size: int


def manifest_key(request_id: str) -> str:
    return f"requests/{request_id}/manifest.parquet"


def to_table(items: Sequence[ImageItem]) -> pa.Table:
    return pa.table(
        {
            "row": [i.row for i in items],
            "position": [i.position for i in items],
            "serial": [i.serial for i in items],
            "product_name": [i.product_name for i in items],
            "input_url": [i.input_url for i in items],
        },
        schema=SCHEMA,
    )


def from_table(table: pa.Table) -> list[ImageItem]:
    columns = table.to_pydict()
    return [
        ImageItem(row=r, position=p, serial=s, product_name=n, input_url=u)
        for r, p, s, n, u in zip(
            columns["row"],
            columns["position"],
            columns["serial"],
            columns["product_name"],
            columns["input_url"],
            strict=True,
        )
    ]


def write_manifest(
    storage: Storage, key: str, items: Sequence[ImageItem], batch_size: int
) -> ManifestInfo:
    table = to_table(items)
    with storage.open(key, "wb") as fh:
        pq.write_table(table, fh, row_group_size=batch_size, compression="zstd")
    batches = -(-len(items) // batch_size)
    return ManifestInfo(key=key, images=len(items), batches=batches, batch_size=batch_size)


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
