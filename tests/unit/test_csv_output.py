"""output_csv_rows and render_csv: the CSV users download at the end."""

from __future__ import annotations

import csv
import io

from pipeline.csv_output import BOM, OUTPUT_COLUMNS, output_csv_rows, render_csv
from pipeline.keys import input_csv_key
from pipeline.models import ImageRecord, ImageStatus
from pipeline.outputs import input_has_bom
from pipeline.storage import storage_config, storage_for


def image(
    row: int,
    position: int,
    *,
    status: ImageStatus = ImageStatus.DONE,
    serial: str = "1",
    name: str = "Shoe",
    output_key: str | None = "",
) -> ImageRecord:
    return ImageRecord(
        row=row,
        position=position,
        serial=serial,
        product_name=name,
        input_url=f"https://in.example/{row}-{position}.jpg",
        status=status,
        output_key=f"out/{row}-{position}.jpg" if output_key == "" else output_key,
    )


def url_for(key: str) -> str:
    return f"https://media.example/{key}"


def parsed(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_header_then_one_row_per_product_in_order() -> None:
    images = [
        image(0, 0, serial="1", name="Shoe"),
        image(0, 1, serial="1", name="Shoe"),
        image(1, 0, serial="2", name="Hat, red"),
    ]
    rows = list(output_csv_rows(images, url_for))
    assert rows == [
        list(OUTPUT_COLUMNS),
        [
            "1",
            "Shoe",
            "https://in.example/0-0.jpg,https://in.example/0-1.jpg",
            "https://media.example/out/0-0.jpg,https://media.example/out/0-1.jpg",
        ],
        ["2", "Hat, red", "https://in.example/1-0.jpg", "https://media.example/out/1-0.jpg"],
    ]


def test_failed_middle_image_leaves_an_aligned_gap() -> None:
    images = [
        image(0, 0),
        image(0, 1, status=ImageStatus.FAILED, output_key=None),
        image(0, 2),
    ]
    (_, row) = output_csv_rows(images, url_for)
    inputs, outputs = row[2].split(","), row[3].split(",")
    assert len(inputs) == len(outputs) == 3
    assert outputs == ["https://media.example/out/0-0.jpg", "", "https://media.example/out/0-2.jpg"]


def test_failed_or_unfinished_images_never_link_to_an_object() -> None:
    images = [
        image(0, 0, status=ImageStatus.FAILED),  # a key recorded before it failed
        image(0, 1, status=ImageStatus.PENDING),
        image(0, 2, output_key=None),
    ]
    (_, row) = output_csv_rows(images, url_for)
    assert row[3] == ",,"


def test_positions_are_ordered_within_a_product() -> None:
    (_, row) = output_csv_rows([image(0, 1), image(0, 0)], url_for)
    assert row[2] == "https://in.example/0-0.jpg,https://in.example/0-1.jpg"


def test_no_images_gives_only_the_header() -> None:
    assert list(output_csv_rows([], url_for)) == [list(OUTPUT_COLUMNS)]


def test_formula_cells_are_neutralised() -> None:
    images = [
        image(0, 0, serial="=1+1", name="+SUM(A1)"),
        image(1, 0, serial="-1", name="@cmd|' /C calc'!A0"),
        image(2, 0, serial="\t3", name="\rname"),
        image(3, 0, serial="4", name="Safe = name"),
    ]
    rows = list(output_csv_rows(images, url_for))[1:]
    assert [(row[0], row[1]) for row in rows] == [
        ("'=1+1", "'+SUM(A1)"),
        ("'-1", "'@cmd|' /C calc'!A0"),  # "-1" changes too: accepted, see csv_output
        ("'\t3", "'\rname"),
        ("4", "Safe = name"),
    ]


def test_round_trip_through_csv_reader() -> None:
    images = [
        image(0, 0, serial="1", name='Shoe "wide", size 9'),
        image(0, 1, serial="1", name='Shoe "wide", size 9', status=ImageStatus.FAILED),
        image(1, 0, serial="2", name="Café ☕\nline two"),
    ]
    rows = list(output_csv_rows(images, url_for))
    data = b"".join(render_csv(rows))
    assert data.startswith(b"S. No.,Product Name,Input Image Urls,Output Image Urls\r\n")
    assert parsed(data) == rows
    assert parsed(data)[1][3] == "https://media.example/out/0-0.jpg,"


def test_chunked_rendering_equals_whole_rendering() -> None:
    rows = [list(OUTPUT_COLUMNS)] + [[str(i), f"P{i}", "https://a/x", ""] for i in range(2500)]
    chunks = list(render_csv(rows, rows_per_chunk=1000))
    assert len(chunks) == 3
    assert b"".join(chunks) == b"".join(render_csv(rows, rows_per_chunk=10**9))
    assert parsed(b"".join(chunks)) == rows


def test_render_csv_streams_lazily() -> None:
    def rows():
        yield ["a", "b"]
        raise AssertionError("rendered past the first chunk")

    first = next(render_csv(rows(), rows_per_chunk=1))
    assert first == b"a,b\r\n"


def test_exact_multiple_of_chunk_size_has_no_empty_chunk() -> None:
    assert list(render_csv([["a"], ["b"]], rows_per_chunk=1)) == [b"a\r\n", b"b\r\n"]
    assert list(render_csv([])) == []


def test_a_bom_starts_the_first_chunk_once() -> None:
    rows = [list(OUTPUT_COLUMNS)] + [["1", f"Café {i}", "u", "o"] for i in range(5)]
    chunks = list(render_csv(rows, rows_per_chunk=2, bom=True))
    assert chunks[0].startswith(BOM + b"S. No.,") and all(BOM not in c for c in chunks[1:])
    assert b"".join(chunks) == BOM + b"".join(render_csv(rows, rows_per_chunk=2))
    # Read as Excel does: the BOM says UTF-8.
    assert "Café 4" in b"".join(chunks).decode("utf-8-sig")


def test_the_output_mirrors_the_inputs_bom(tmp_path) -> None:
    storage = storage_for(storage_config(f"file://{tmp_path}", ""))
    for rid, data, expected in (
        ("a" * 32, BOM + b"S. No.,Product Name,Input Image Urls\r\n", True),
        ("b" * 32, b"S. No.,Product Name,Input Image Urls\r\n", False),
        ("c" * 32, None, False),  # the input is gone: no mark, no error
    ):
        if data is not None:
            storage.put(input_csv_key(rid), data)
        assert input_has_bom(storage, rid) is expected
