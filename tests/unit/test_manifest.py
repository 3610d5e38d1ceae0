"""The Parquet manifest on real local storage: batches, streaming, rewrites."""

from __future__ import annotations

import pytest

from pipeline import manifest
from pipeline.models import ImageItem, Product, image_items
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


# --- repeated URLs ------------------------------------------------------------------------


def products(*rows: tuple[str, ...]) -> list[Product]:
    return [Product(row, str(row + 1), f"P{row}", urls) for row, urls in enumerate(rows)]


def test_a_repeated_url_is_one_item_with_its_copies():
    a, b, c = "https://x.example/a.jpg", "https://x.example/b.jpg", "https://x.example/c.jpg"
    got = image_items(products((a, b, a), (c,), (b, a)))
    assert [(i.row, i.position, i.input_url) for i in got] == [
        (0, 0, a), (0, 1, b), (0, 2, a), (1, 0, c), (2, 0, b), (2, 1, a),
    ]  # fmt: skip
    assert [i.copies for i in got] == [((0, 2), (2, 1)), ((2, 0),), (), (), (), ()]
    assert [i.copy_of for i in got] == [None, None, (0, 0), None, (0, 1), (0, 0)]
    # Each copy keeps its own product: it is its own line of the output CSV.
    assert (got[4].serial, got[4].product_name) == ("3", "P2")


def test_copies_survive_the_manifest(storage):
    a = "https://x.example/a.jpg"
    written = image_items(products((a, "https://x.example/b.jpg"), (a,), (a,)))
    manifest.write_manifest(storage, KEY, written, batch_size=2)
    assert [i for b in range(2) for i in manifest.read_batch(storage, KEY, b)] == written


def test_a_manifest_from_before_copies_reads_as_none(storage):
    import pyarrow.parquet as pq

    old = manifest.to_table(items(4)).drop_columns(["copies", "copy_of"])
    with storage.open(KEY, "wb") as fh:
        meta = {manifest.BATCH_SIZE_META: b"2"}
        pq.write_table(old.replace_schema_metadata(meta), fh, row_group_size=2)
    read = manifest.read_batch(storage, KEY, 1)
    assert read == items(4)[2:] and all(i.copies == () and i.copy_of is None for i in read)


def test_layout_puts_a_copy_in_its_first_slots_batch():
    a = "https://x.example/a.jpg"
    urls = [f"https://x.example/{i}.jpg" for i in range(5)]
    # Batches of 2: [0:(0,0) a, 1:(0,1)] [2:(1,0), 3:(1,1) a] [4:(2,0), 5:(3,0) a] [6:(3,1)]
    rows = products((a, urls[0]), (urls[1], a), (urls[2],), (a, urls[3]))
    layout = manifest.Layout(batch_size=2)
    layout.add(image_items(rows))
    assert [layout.batch(*slot) for slot in [(0, 0), (0, 1), (1, 0), (1, 1), (3, 0), (3, 1)]] == [
        0, 0, 1, 0, 0, 3,
    ]  # fmt: skip
    # Batch 0 gives results to its two images and to the two copies of a elsewhere.
    assert [layout.batch_results(b) for b in range(4)] == [4, 1, 1, 1]
    assert layout.batch_length(0) == 2
    assert layout.copies_elsewhere(0) == [(1, 1), (3, 0)]
    assert layout.copies_elsewhere(1) == []
    assert layout.is_copy_elsewhere(1, 1) and not layout.is_copy_elsewhere(0, 0)
