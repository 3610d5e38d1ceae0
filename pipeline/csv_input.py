"""Validate an uploaded products CSV into `Product` values.

Pure: bytes in, products out. Anything unusable raises `CsvError` (or
`PayloadTooLarge` for size limits) with a message a person can act on, naming
the 1-based line of the file (the header is line 1; a record whose quoted cell
spans lines is reported at the line where it starts) and the column.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.errors import CsvError, PayloadTooLarge
from pipeline.models import Product
from pipeline.settings import DEFAULTS, Settings

SERIAL = "S. No."
NAME = "Product Name"
URLS = "Input Image Urls"
COLUMNS = (SERIAL, NAME, URLS)
ALLOWED_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class CsvLimits:
    max_bytes: int = DEFAULTS.max_upload_bytes
    max_rows: int = DEFAULTS.max_rows
    max_urls: int = DEFAULTS.max_urls
    max_urls_per_row: int = 100
    max_cell_chars: int = 100_000
    max_url_chars: int = 2048


DEFAULT_LIMITS = CsvLimits()


def csv_limits(settings: Settings) -> CsvLimits:
    """The upload limits the settings set (MAX_UPLOAD_BYTES, MAX_ROWS, MAX_URLS)."""
    return CsvLimits(
        max_bytes=settings.max_upload_bytes,
        max_rows=settings.max_rows,
        max_urls=settings.max_urls,
    )


# People upload spreadsheets, images and archives by mistake; naming what the
# file looks like is more useful than a decoding error.
_MAGIC = (
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Excel workbook (XLS)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF-", "a PDF document"),
)
# Office documents are ZIP archives; the names of their parts are stored in the
# clear (local headers and the central directory), so a search finds them.
_ZIP_KINDS = (
    (b"xl/workbook", "an Excel workbook (XLSX)"),
    (b"application/vnd.oasis.opendocument.spreadsheet", "an OpenDocument spreadsheet (ODS)"),
    (b"Index/Document.iwa", "an Apple Numbers spreadsheet"),
    (b"word/document", "a Word document (DOCX)"),
)
_SPREADSHEETS = ("workbook", "spreadsheet")
_SAVE_AS = "in Excel use Save As > 'CSV UTF-8 (Comma delimited)'"
_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "'|' characters"}
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")  # how csv (newline="") counts lines
_LINE_BREAK = re.compile(r"[\r\n]")
_ASCII_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
# Most URLs look like this; they need none of the slower checks (urlsplit is ~5 us).
# a port 1..65535, so the fast path never accepts what urlsplit would refuse
_PORT = (
    r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
    r"|655[0-2][0-9]|6553[0-5]))?"
)
_PLAIN_URL = re.compile(
    r"(?i)(https?)(://[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?" + _PORT + r"(?:/[!-~]*)?)"
)


def parse_products(data: bytes, limits: CsvLimits = DEFAULT_LIMITS) -> list[Product]:
    """Validated products in input order; `Product.row` is the 0-based data-row index."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"the file is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes, "
            "so split it into smaller files"
        )
    records = _records(_decode(data), limits)
    first = next(records, None)
    if first is None:
        raise CsvError("the file is empty (it has only blank lines)")
    header_line, header = first
    positions = _column_positions(header_line, header)
    products: list[Product] = []
    total_urls = 0
    for line, cells in records:
        if len(products) == limits.max_rows:
            raise PayloadTooLarge(
                f"the file has more than {limits.max_rows:,} product rows; "
                "split it into smaller files"
            )
        product = _product(len(products), line, cells, positions, limits)
        total_urls += len(product.urls)
        if total_urls > limits.max_urls:
            raise PayloadTooLarge(
                f"the file has more than {limits.max_urls:,} image URLs in total; "
                "split it into smaller files"
            )
        products.append(product)
    if not products:
        raise CsvError("the file has a header but no product rows", row=header_line)
    return products


def _decode(data: bytes) -> str:
    if kind := _binary_kind(data):
        if any(word in kind for word in _SPREADSHEETS):
            advice = f"save it as CSV ({_SAVE_AS}) and upload that"
        elif "image" in kind:
            advice = "upload the CSV that lists the image URLs, not an image"
        else:
            advice = f"upload a comma-separated .csv file ({_SAVE_AS})"
        raise CsvError(f"this is not a text CSV file: it looks like {kind}; {advice}")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise CsvError(f"the file is UTF-16 text but must be UTF-8 ({_SAVE_AS})")
    if b"\x00" in data:
        raise CsvError(
            "this is not a text CSV file: it contains NUL bytes, so it is binary data; "
            f"upload a comma-separated .csv file ({_SAVE_AS})"
        )
    data = data.removeprefix(codecs.BOM_UTF8)
    if not data.strip():
        raise CsvError("the file is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(_LINE_BREAK_BYTES.split(data[: exc.start]))
        raise CsvError(
            f"the file must be UTF-8 encoded, but byte 0x{data[exc.start]:02X} is not "
            f"valid UTF-8 ({_SAVE_AS})",
            row=line,
        ) from exc


def _binary_kind(data: bytes) -> str | None:
    """What a file that is not text looks like, judged by its first bytes."""
    kind = next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        kind = "a WebP image"
    if kind == "a ZIP archive":
        kind = next((name for part, name in _ZIP_KINDS if part in data), kind)
    return kind


def _records(text: str, limits: CsvLimits) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, cells) for each record that is not blank."""
    # strict: a stray quote becomes an error here instead of silently merged text;
    # skipinitialspace: hand-written `1, "Shoe", "http://a, http://b"` still parses.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, skipinitialspace=True)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CsvError(_unreadable(str(exc), limits), row=start) from exc
        # Spreadsheets export trailing empty rows as ",,": treat them as blank lines.
        if any(cell.strip() for cell in cells):
            yield start, cells


def _unreadable(reason: str, limits: CsvLimits) -> str:
    if "field larger than field limit" in reason:
        # The csv module stops at its own (global) limit, so a huge cell fails fast.
        limit = min(limits.max_cell_chars, csv.field_size_limit())
        return f"a cell is longer than the {limit:,} characters allowed"
    if "unexpected end of data" in reason:
        return "a quoted cell starting on this line is never closed (missing closing '\"')"
    if "expected after" in reason:
        return (
            "a quoted cell has text after its closing quote; inside a quoted cell "
            'write a double quote as two ("")'
        )
    return f"this record is not valid CSV ({reason})"


def _column_positions(line: int, cells: list[str]) -> tuple[int, ...]:
    """Index of each of COLUMNS in the file, in any order.

    A header cell names a column when it has the same letters and digits, whatever
    the case, spacing and punctuation (`s. no.`, `S.No.`, ` Input Image URLs `):
    spreadsheets and people spell them so. Two cells that could name one column
    are refused, naming both, rather than one picked.
    """
    names = [cell.strip() for cell in cells]
    if len(names) == 1:
        for delimiter, label in _OTHER_DELIMITERS.items():
            if delimiter in names[0]:
                raise CsvError(
                    f"the file must be comma-separated, but the header looks separated "
                    f"by {label}; expected the columns {_listed(COLUMNS)} ({_SAVE_AS})",
                    row=line,
                )
    seen: set[str] = set()
    for number, name in enumerate(names, 1):
        if not name:
            raise CsvError(
                f"header cell {number} is empty (an extra comma?); "
                f"the header must be exactly {_listed(COLUMNS)}",
                row=line,
            )
        if name in seen:
            raise CsvError(
                f"column {_show(name)} appears twice in the header", row=line, column=name
            )
        seen.add(name)
    found = {
        column: [i for i, name in enumerate(names) if _loose(name) == _loose(column)]
        for column in COLUMNS
    }
    for column, positions in found.items():
        if len(positions) > 1:
            cells_named = " and ".join(f"{_show(names[i], 40)} (cell {i + 1})" for i in positions)
            raise CsvError(
                f"the header has {len(positions)} columns that could be {_show(column)}: "
                f"{cells_named}; keep one of them and rename or remove the others",
                row=line,
                column=column,
            )
    missing = [column for column, positions in found.items() if not positions]
    claimed = {i for positions in found.values() for i in positions}
    unknown = [name for i, name in enumerate(names) if i not in claimed]
    if missing or unknown:
        problems = (
            [f"missing column{'s' * (len(missing) > 1)} {_listed(missing)}"] if missing else []
        )
        problems += [f"unknown column {_show(name)}{_did_you_mean(name)}" for name in unknown[:3]]
        hint = "the first line must be the header; " if len(missing) == len(COLUMNS) else ""
        raise CsvError(
            f"{'; '.join(problems)}; {hint}expected exactly {_listed(COLUMNS)}, "
            f"found {_listed(names)}",
            row=line,
            column=(missing or unknown)[0],
        )
    return tuple(found[column][0] for column in COLUMNS)


def _loose(text: str) -> str:
    """A header name's letters and digits: `S.No.`, `s. no.` and `S. Nº` are all "sno"."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if ch.isalnum())


def _did_you_mean(name: str) -> str:
    loose_columns = {_loose(column): column for column in COLUMNS}
    close = difflib.get_close_matches(_loose(name), loose_columns, n=1, cutoff=0.75)
    return f" (did you mean {_show(loose_columns[close[0]])}?)" if close else ""


def _product(
    row: int, line: int, cells: list[str], positions: tuple[int, ...], limits: CsvLimits
) -> Product:
    if len(cells) != len(COLUMNS):
        raise _field_count_error(line, cells)
    values = dict(zip(COLUMNS, (cells[p] for p in positions), strict=True))
    for column, value in values.items():
        if len(value) > limits.max_cell_chars:
            raise CsvError(
                f"the cell has {len(value):,} characters; the limit is {limits.max_cell_chars:,}",
                row=line,
                column=column,
            )
    # Excel's Alt+Enter puts line breaks in names; they are layout, not data, and a
    # one-line name keeps logs, records and the output CSV simple.
    serial, name = _one_line(values[SERIAL]), _one_line(values[NAME])
    if not serial:
        raise CsvError("the serial number is empty", row=line, column=SERIAL)
    if not name:
        raise CsvError("the product name is empty", row=line, column=NAME)
    urls = _urls(line, values[URLS], limits)
    return Product(row=row, serial=serial, name=name, urls=urls, line=line)


def _field_count_error(line: int, cells: list[str]) -> CsvError:
    count = f"{len(cells)} cell{'s' * (len(cells) != 1)}"
    message = f"this row has {count} but the header has {len(COLUMNS)} columns"
    if len(cells) > len(COLUMNS) and any("://" in cell for cell in cells[len(COLUMNS) :]):
        return CsvError(
            f"{message}: the image URLs seem split across cells; quote the {URLS} cell, "
            'e.g. "https://a.example/1.jpg,https://a.example/2.jpg"',
            row=line,
            column=URLS,
        )
    return CsvError(f"{message}; a cell that contains a comma must be quoted", row=line)


def _one_line(value: str) -> str:
    return " ".join(part.strip() for part in value.splitlines() if part.strip())


def _urls(line: int, cell: str, limits: CsvLimits) -> tuple[str, ...]:
    if _LINE_BREAK.search(cell):
        raise CsvError(
            "the cell spans several lines, but URLs cannot contain line breaks; "
            "separate the URLs with commas",
            row=line,
            column=URLS,
        )
    if not cell.strip():
        raise CsvError("no image URLs", row=line, column=URLS)
    items = [item.strip() for item in cell.split(",")]
    if len(items) > limits.max_urls_per_row:
        raise CsvError(
            f"{len(items)} image URLs; at most {limits.max_urls_per_row} are allowed per row",
            row=line,
            column=URLS,
        )
    urls = []
    for position, url in enumerate(items, 1):
        where = f"URL {position} of {len(items)}"
        if not url:
            raise CsvError(
                f"{where} is empty: remove the extra comma (a trailing comma or two in a row?)",
                row=line,
                column=URLS,
            )
        try:
            urls.append(_checked_url(url, limits))
        except ValueError as exc:
            raise CsvError(f"{where} ({_show(url)}) {exc}", row=line, column=URLS) from None
    return tuple(urls)


def _checked_url(url: str, limits: CsvLimits) -> str:
    """The URL with its scheme lower-cased; ValueError says what is wrong with it."""
    if len(url) > limits.max_url_chars:
        raise ValueError(f"is {len(url):,} characters long; the limit is {limits.max_url_chars:,}")
    if plain := _PLAIN_URL.fullmatch(url):
        return plain[1].lower() + plain[2]
    bad = _ASCII_SPACE_OR_CONTROL.search(url)
    bad_char = bad.group() if bad else None
    if bad_char is None and not url.isascii():
        bad_char = next((ch for ch in url if ch.isspace() or _is_control(ch)), None)
    if bad_char is not None:
        raise ValueError(
            f"contains {_describe(bad_char)}; a URL cannot contain spaces (write %20) "
            "or invisible characters"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError as exc:
        raise ValueError(f"is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    # urlsplit reads "shop.example:8080/a.jpg" as scheme "shop.example"; that is a
    # missing scheme, not an unusual one.
    looks_like_host = "." in scheme or url[len(scheme) + 1 : len(scheme) + 2].isdigit()
    if not scheme or looks_like_host:
        raise ValueError("has no scheme; it must start with http:// or https://")
    if scheme not in ALLOWED_SCHEMES:
        raise ValueError(f"uses the '{scheme}:' scheme; only http and https are allowed")
    if not parts.hostname:
        raise ValueError(f"has no host; it must look like {scheme}://host/path")
    return scheme + url[len(scheme) :]


def _is_control(ch: str) -> bool:
    # Cc/Cf/Co/Cn: control, format (zero-width space, BOM, bidi marks) and unassigned
    return unicodedata.category(ch).startswith("C")


def _describe(ch: str) -> str:
    names = {" ": "a space", "\t": "a tab"}
    return names.get(ch) or f"the character U+{ord(ch):04X} {unicodedata.name(ch, '')}".rstrip()


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _listed(names: tuple[str, ...] | list[str], limit: int = 6) -> str:
    shown = ", ".join(_show(name, 40) for name in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
