"""The Parquet manifest on real local storage: batches, streaming, rewrites."""

from __future__ import annotations

import pytest

from pipeline import manifest
from pipeline.models import ImageItem
from pipeline.storage import storage_config, storage_for

KEY = "requests/r1/manifest.parquet"


def items(n: int, tag: str = "") -> list[ImageItem]:
    return [
        ImageItem(
            i // 3, i % 3, str(i // 3 + 1), f"Product {i // 3}", f"https://img.example/{tag}{i}"
        )
        for i in range(n)
    ]


@pytest.fixture
def storage(tmp_path):
    return storage_for(storage_config(f"file://{tmp_path}/objects", ""))


def test_each_batch_is_its_row_group_in_input_order(storage):
    written = items(25)
    info = manifest.write_manifest(storage, KEY, written, batch_size=4)
    assert (info.images, info.batches, info.batch_size) == (25, 7, 4)
    read = [manifest.read_batch(storage, KEY, b) for b in range(info.batches)]
    assert [len(b) for b in read] == [4, 4, 4, 4, 4, 4, 1]
    assert [i for b in read for i in b] == written
    assert manifest.batch_of(24, 4) == 6


def test_items_stream_in_chunks_in_manifest_order(storage):
    written = items(25)
    manifest.write_manifest(storage, KEY, written, batch_size=4)
    chunks = list(manifest.iter_items(storage, KEY, chunk=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [i for c in chunks for i in c] == written


def test_a_rewritten_manifest_is_read_afresh(storage):
    # Workers keep each manifest's parsed footer; a rewrite under the same key
    # (another layout) must not be read through the old one.
    manifest.write_manifest(storage, KEY, items(10, "old-"), batch_size=5)
    assert manifest.read_batch(storage, KEY, 1)[0].input_url == "https://img.example/old-5"
    manifest.write_manifest(storage, KEY, items(12, "new-"), batch_size=3)
    assert [i.input_url for i in manifest.read_batch(storage, KEY, 1)] == [
        "https://img.example/new-3",
        "https://img.example/new-4",
        "https://img.example/new-5",
    ]
