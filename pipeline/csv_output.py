"""Build the output CSV from the image records. Pure: records in, rows and bytes out."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter

from pipeline.models import ImageRecord, ImageStatus

OUTPUT_COLUMNS = ("S. No.", "Product Name", "Input Image Urls", "Output Image Urls")
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark

# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV
# injection"); a leading quote makes it text. A serial such as "-1" is changed too:
# acceptable, since it cannot be told apart from "-1+cmd|..." in general.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def output_csv_rows(
    images: Iterable[ImageRecord], url_for: Callable[[str], str]
) -> Iterator[list[str]]:
    """The header, then one row per product in input order.

    `images` must be ordered by row (as the record stores return them). Output
    URLs line up with the input URLs; a failed image leaves an empty slot.
    """
    yield list(OUTPUT_COLUMNS)
    for _, group in itertools.groupby(images, key=attrgetter("row")):
        product = sorted(group, key=attrgetter("position"))
        first = product[0]
        inputs = ",".join(image.input_url for image in product)
        # Only a finished image has an object to link to; anything else stays empty.
        outputs = ",".join(
            url_for(image.output_key)
            if image.status is ImageStatus.DONE and image.output_key
            else ""
            for image in product
        )
        yield [neutralise(cell) for cell in (first.serial, first.product_name, inputs, outputs)]


FAILURE_COLUMNS = ("Line", "S. No.", "Product Name", "Input Image Url", "Reason")


def failure_rows(images: Iterable[ImageRecord]) -> Iterator[list[str]]:
    """The failures CSV: its header, then each failed image with its product's line
    in the uploaded file and its reason (cells neutralised as the output CSV's)."""
    yield list(FAILURE_COLUMNS)
    for image in images:
        cells = (image.serial, image.product_name, image.input_url, image.error or "")
        yield [str(image.file_line), *(neutralise(cell) for cell in cells)]


def render_csv(
    rows: Iterable[list[str]], rows_per_chunk: int = 1000, *, bom: bool = False
) -> Iterator[bytes]:
    """UTF-8 CSV bytes in chunks of `rows_per_chunk` rows, so a large file streams;
    `bom`: the first chunk starts with the byte order mark."""
    mark = BOM if bom else b""  # in the first chunk, with the rows: never alone
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    for count, row in enumerate(rows, 1):
        writer.writerow(row)
        if count % rows_per_chunk == 0:
            yield mark + buffer.getvalue().encode("utf-8")
            mark = b""
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield mark + buffer.getvalue().encode("utf-8")
