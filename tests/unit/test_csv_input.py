"""parse_products: what users upload, good and bad, and what they are told."""

from __future__ import annotations

import contextlib
import csv
import io
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.csv_input import DEFAULT_LIMITS, CsvLimits, parse_products
from pipeline.errors import CsvError, InputError, PayloadTooLarge
from pipeline.models import Product

HEADER = "S. No.,Product Name,Input Image Urls\n"


def csv_bytes(*lines: str, header: str = HEADER) -> bytes:
    return (header + "".join(line + "\n" for line in lines)).encode()


def csv_error(data: bytes, limits: CsvLimits = DEFAULT_LIMITS) -> CsvError:
    with pytest.raises(CsvError) as caught:
        parse_products(data, limits)
    return caught.value


# --- happy paths -------------------------------------------------------------


def test_single_url() -> None:
    products = parse_products(csv_bytes("1,SKU1,https://img.example/a.jpg"))
    assert products == [
        Product(row=0, serial="1", name="SKU1", urls=("https://img.example/a.jpg",), line=2)
    ]


@pytest.mark.parametrize(
    "cell",
    [
        '"http://a.example/1.jpg,http://a.example/2.jpg,https://b.example/3.png"',
        '"http://a.example/1.jpg, http://a.example/2.jpg ,  https://b.example/3.png"',
    ],
)
def test_several_urls_with_and_without_spaces(cell: str) -> None:
    (product,) = parse_products(csv_bytes(f"1,Shoe,{cell}"))
    assert product.urls == (
        "http://a.example/1.jpg",
        "http://a.example/2.jpg",
        "https://b.example/3.png",
    )


def test_quoted_cells_with_commas_and_escaped_quotes() -> None:
    (product,) = parse_products(csv_bytes('"7","Shoe, size 9 ""wide""","http://a.example/x"'))
    assert (product.serial, product.name) == ("7", 'Shoe, size 9 "wide"')


def test_hand_written_spaces_after_commas() -> None:
    (product,) = parse_products(
        csv_bytes('1, "Shoe, red", "http://a.example/1, http://a.example/2"')
    )
    assert product.name == "Shoe, red"
    assert product.urls == ("http://a.example/1", "http://a.example/2")


def test_utf8_bom_crlf_and_unicode_names() -> None:
    data = "\ufeffS. No.,Product Name,Input Image Urls\r\n1,Café crème ☕,http://a.example/1\r\n"
    (product,) = parse_products(data.encode())
    assert product.name == "Café crème ☕"


def test_blank_lines_and_empty_spreadsheet_rows_are_skipped() -> None:
    data = csv_bytes("", "1,A,http://a.example/1", "", ",,", "  ", "2,B,http://a.example/2", "")
    assert [(p.row, p.serial) for p in parse_products(data)] == [(0, "1"), (1, "2")]


def test_products_keep_input_order_and_duplicate_serials() -> None:
    data = csv_bytes("3,C,http://a/3", "1,A,http://a/1", "3,D,http://a/4")
    products = parse_products(data)
    assert [(p.row, p.serial, p.name) for p in products] == [
        (0, "3", "C"),
        (1, "1", "A"),
        (2, "3", "D"),
    ]


def test_columns_in_another_order_and_padded_header() -> None:
    data = csv_bytes(
        "http://a.example/1,Shoe,1", header=" Input Image Urls , Product Name,S. No.\n"
    )
    assert parse_products(data) == [Product(0, "1", "Shoe", ("http://a.example/1",), line=2)]


def test_line_breaks_in_a_product_name_become_spaces() -> None:
    (product,) = parse_products(csv_bytes('1,"Shoe\r\n  red\n\nleft",http://a.example/1'))
    assert product.name == "Shoe red left"


def test_uppercase_scheme_is_normalised() -> None:
    (product,) = parse_products(csv_bytes("1,A,HTTPS://Img.Example/A.jpg"))
    assert product.urls == ("https://Img.Example/A.jpg",)


# --- the file as a whole -----------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"  \r\n\n\t", b"\xef\xbb\xbf", b",,\n,,\n"])
def test_empty_file(data: bytes) -> None:
    assert "empty" in csv_error(data).message


def test_header_only() -> None:
    error = csv_error(csv_bytes("", ""))
    assert "no product rows" in error.message
    assert error.row == 1


def test_not_utf8_names_the_line_of_the_bad_byte() -> None:
    data = csv_bytes("1,A,http://a/1") + "2,Crème,http://a/2\n".encode("latin-1")
    error = csv_error(data)
    assert error.row == 3
    assert "UTF-8" in error.message and "0xE8" in error.message


def png_bytes() -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("products.csv", HEADER + "1,A,http://a/1\n")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (png_bytes(), "PNG image"),
        (zip_bytes(), "ZIP archive"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "gzip"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
    ],
)
def test_binary_files_are_named(data: bytes, kind: str) -> None:
    message = csv_error(data).message
    assert "not a text CSV file" in message and kind in message


def office_file(*parts: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for part in parts:
            archive.writestr(part, "<xml/>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "kind", "advice"),
    [
        (
            office_file("[Content_Types].xml", "_rels/.rels", "xl/workbook.xml"),
            "it looks like an Excel workbook (XLSX)",
            "save it as CSV",
        ),
        (
            b"PK\x03\x04" + bytes(26) + b"mimetypeapplication/vnd.oasis.opendocument.spreadsheet",
            "it looks like an OpenDocument spreadsheet (ODS)",
            "save it as CSV",
        ),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100),
            "an old-style Excel workbook (XLS)",
            "save it as CSV",
        ),
        (png_bytes(), "a PNG image", "upload the CSV that lists the image URLs"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "a WebP image", "not an image"),
        (zip_bytes(), "a ZIP archive", "upload a comma-separated .csv file"),
    ],
)
def test_binary_files_say_what_they_look_like_and_what_to_do(
    data: bytes, kind: str, advice: str
) -> None:
    error = csv_error(data)
    assert error.message.startswith("this is not a text CSV file")
    assert kind in error.message and advice in error.message


def test_nul_bytes_are_not_text() -> None:
    assert "not a text CSV file" in csv_error(csv_bytes("1,A\x00B,http://a/1")).message


def test_utf16_is_explained() -> None:
    data = ("\ufeff" + HEADER + "1,A,http://a/1\n").encode("utf-16")
    assert "UTF-16" in csv_error(data).message


def test_file_over_max_bytes() -> None:
    with pytest.raises(PayloadTooLarge, match="limit is 100 bytes"):
        parse_products(csv_bytes("1,A,http://a/1" + "x" * 100), CsvLimits(max_bytes=100))


def test_too_many_rows() -> None:
    data = csv_bytes(*(f"{i},P{i},http://a/{i}" for i in range(4)))
    assert len(parse_products(data, CsvLimits(max_rows=4))) == 4
    with pytest.raises(PayloadTooLarge, match="more than 3 product rows"):
        parse_products(data, CsvLimits(max_rows=3))


def test_too_many_urls_in_total() -> None:
    data = csv_bytes('1,A,"http://a/1,http://a/2"', '2,B,"http://a/3,http://a/4"')
    with pytest.raises(PayloadTooLarge, match="more than 3 image URLs"):
        parse_products(data, CsvLimits(max_urls=3))


# --- the header --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Product Name,Input Image Urls\n", "missing column 'S. No.'"),
        ("S. No.,Product Name,Input Image Urls,Price\n", "unknown column 'Price'"),
        ("S. No.,Product Nmae,Input Image Urls\n", "(did you mean 'Product Name'?)"),
        ("S. No.,Product Name,Input Image Url\n", "(did you mean 'Input Image Urls'?)"),
        ("Serial,Product Name,Input Image Urls\n", "unknown column 'Serial'; expected"),
        ("S. No.,Product Name,Input Image Urls,\n", "header cell 4 is empty"),
        ("S. No.,Product Name,Input Image Urls,S. No.\n", "'S. No.' appears twice"),
    ],
)
def test_bad_headers(header: str, expected: str) -> None:
    error = csv_error(csv_bytes("1,A,http://a/1", header=header))
    assert expected in error.message
    assert error.row == 1
    assert "'S. No.', 'Product Name', 'Input Image Urls'" in error.message or "twice" in expected


@pytest.mark.parametrize(
    ("header", "row"),
    [
        ("s. no.,product name,input image urls\n", "7,Shoe,http://a/1"),
        ("S. NO.,PRODUCT NAME,INPUT IMAGE URLS\n", "7,Shoe,http://a/1"),
        ("S. No.,Product  Name, Input Image URLs \n", "7,Shoe,http://a/1"),
        ("S.No.,Product Name,Input Image Urls\n", "7,Shoe,http://a/1"),
        ("SNo,product_name,Input-Image-URLs\n", "7,Shoe,http://a/1"),
        ("S.\u00a0No.,Product\tName,Input Image Urls\n", "7,Shoe,http://a/1"),  # NBSP, tab
        ("S. N\u00ba,Product Name,Input Image Urls\n", "7,Shoe,http://a/1"),  # numero sign
        ("Input Image URLs,product name,s.no.\n", "http://a/1,Shoe,7"),
    ],
)
def test_header_spelled_differently_is_accepted_when_unambiguous(header: str, row: str) -> None:
    (product,) = parse_products(csv_bytes(row, header=header))
    assert (product.serial, product.name, product.urls) == ("7", "Shoe", ("http://a/1",))


@pytest.mark.parametrize(
    ("header", "column", "cells"),
    [
        (
            "S. No.,Product Name,Input Image Urls,product name\n",
            "Product Name",
            "'Product Name' (cell 2) and 'product name' (cell 4)",
        ),
        ("S. No.,S.No,Product Name,Input Image Urls\n", "S. No.", "'S. No.' (cell 1) and 'S.No'"),
        (
            "S No,Product Name,Input Image URLs,input_image_urls\n",
            "Input Image Urls",
            "'Input Image URLs' (cell 3) and 'input_image_urls' (cell 4)",
        ),
    ],
)
def test_two_cells_that_could_name_one_column_are_refused_naming_both(
    header: str, column: str, cells: str
) -> None:
    error = csv_error(csv_bytes("1,A,http://a/1,x", header=header))
    assert (error.row, error.column) == (1, column)
    assert f"2 columns that could be {column!r}: {cells}" in error.message
    assert "keep one of them" in error.message


def test_missing_header_row() -> None:
    error = csv_error(b"1,A,http://a/1\n2,B,http://a/2\n")
    assert "the first line must be the header" in error.message


@pytest.mark.parametrize(("delimiter", "name"), [(";", "semicolons"), ("\t", "tabs"), ("|", "'|'")])
def test_other_delimiters(delimiter: str, name: str) -> None:
    header = delimiter.join(["S. No.", "Product Name", "Input Image Urls"]) + "\n"
    data = csv_bytes(delimiter.join(["1", "A", "http://a/1"]), header=header)
    error = csv_error(data)
    assert "must be comma-separated" in error.message and name in error.message
    assert error.row == 1


# --- rows and cells ----------------------------------------------------------


def test_unquoted_url_list_says_to_quote_the_cell() -> None:
    error = csv_error(csv_bytes("1,A,http://a/1", "2,B,http://a/2,http://a/3"))
    assert (error.row, error.column) == (3, "Input Image Urls")
    assert "quote the Input Image Urls cell" in error.message


def test_too_few_cells() -> None:
    error = csv_error(csv_bytes("1,http://a/1"))
    assert error.row == 2
    assert "2 cells but the header has 3 columns" in error.message


@pytest.mark.parametrize(
    ("line", "column", "expected"),
    [
        (" ,A,http://a/1", "S. No.", "serial number is empty"),
        ("1,  ,http://a/1", "Product Name", "product name is empty"),
        ('1,A,""', "Input Image Urls", "no image URLs"),
        ("1,A,   ", "Input Image Urls", "no image URLs"),
    ],
)
def test_empty_cells(line: str, column: str, expected: str) -> None:
    error = csv_error(csv_bytes(line))
    assert (error.row, error.column) == (2, column)
    assert expected in error.message


def test_line_is_where_a_multiline_record_starts() -> None:
    data = csv_bytes('1,"A\nlong\nname",http://a/1', "2,B,ftp://a/2")
    error = csv_error(data)
    assert (error.row, error.column) == (5, "Input Image Urls")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('"http://a/1.jpg,"', "URL 2 of 2 is empty"),
        ('"http://a/1.jpg,,http://a/3.jpg"', "URL 2 of 3 is empty"),
        ('",http://a/1.jpg"', "URL 1 of 2 is empty"),
        ('"http://a/my image.jpg"', "contains a space"),
        ('"http://a/1.jpg http://a/2.jpg"', "contains a space"),
        ("http://a/\u200bx.jpg", "U+200B ZERO WIDTH SPACE"),
        ('"http://a/1.jpg\nhttp://a/2.jpg"', "line breaks"),
        ("file:///etc/passwd", "'file:' scheme"),
        ("gopher://a.example/1", "'gopher:' scheme"),
        ("javascript:alert(1)", "'javascript:' scheme"),
        ("ftp://a.example/x.jpg", "'ftp:' scheme"),
        ("www.example.com/a.jpg", "no scheme"),
        ("//cdn.example.com/a.jpg", "no scheme"),
        ("shop.example:8080/a.jpg", "no scheme"),
        ("http:///a.jpg", "no host"),
        ("http:/a.example/x.jpg", "no host"),
        ("http://a.example:80x/x.jpg", "malformed"),
        ("http://a.example:99999/x.jpg", "malformed"),
        ("http://[::1/x.jpg", "malformed"),
        ("http://a.example/" + "x" * 3000, "limit is 2,048"),
    ],
)
def test_bad_url_cells(cell: str, expected: str) -> None:
    error = csv_error(csv_bytes("1,A,http://a/1", f"2,B,{cell}"))
    assert (error.row, error.column) == (3, "Input Image Urls")
    assert expected in error.message


def test_too_many_urls_in_a_row() -> None:
    cell = ",".join(f"http://a/{i}" for i in range(4))
    error = csv_error(csv_bytes(f'1,A,"{cell}"'), CsvLimits(max_urls_per_row=3))
    assert error.column == "Input Image Urls"
    assert "at most 3" in error.message


def test_cell_over_max_cell_chars() -> None:
    error = csv_error(csv_bytes("1," + "n" * 501 + ",http://a/1"), CsvLimits(max_cell_chars=500))
    assert (error.row, error.column) == (2, "Product Name")
    assert "limit is 500" in error.message


@pytest.mark.parametrize("quoted", [True, False])
def test_ten_megabyte_cell_is_an_error_not_a_hang(quoted: bool) -> None:
    cell = "http://a/" + "x" * 10_000_000
    data = csv_bytes(f'1,A,"{cell}"' if quoted else f"1,A,{cell}")
    error = csv_error(data)
    assert error.row == 2
    assert "longer than" in error.message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('1,"A,http://a/1', "never closed"),
        ('1,"A"x,http://a/1', "after its closing quote"),
    ],
)
def test_broken_quoting(line: str, expected: str) -> None:
    error = csv_error(csv_bytes("0,Z,http://a/0", line))
    assert error.row == 3
    assert expected in error.message


# --- fuzzing -----------------------------------------------------------------


def check_products(products: list[Product]) -> None:
    assert [p.row for p in products] == list(range(len(products)))
    for product in products:
        assert product.serial and product.name and product.urls
        for url in product.urls:
            assert url.startswith(("http://", "https://"))
            assert not any(ch.isspace() for ch in url)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(InputError):
        check_products(parse_products(data, CsvLimits(max_bytes=1500)))


@settings(max_examples=300)
@given(st.binary(max_size=500))
def test_arbitrary_bytes_after_a_valid_header_never_crash(data: bytes) -> None:
    with contextlib.suppress(InputError):
        check_products(parse_products(HEADER.encode() + data))


host = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6})?(:[0-9]{1,4})?", fullmatch=True
)
path = st.text("abcXYZ019-._~/%?=&#;+()'!*$@:", max_size=20)
valid_url = st.builds("{}://{}/{}".format, st.sampled_from(["http", "https"]), host, path)
url_like = st.one_of(
    valid_url,
    st.text(max_size=30),
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "file:", "", " http://"]),
        st.text(max_size=15),
        st.sampled_from(["", "/a.jpg", ":8080/x", ":bad/", " x", ",", ",http://b/c"]),
    ),
)
cells = st.tuples(st.text(max_size=10), st.text(max_size=20), url_like)


@settings(max_examples=300)
@given(
    st.lists(cells, max_size=6),
    st.sampled_from(["\n", "\r\n"]),
    st.permutations(["S. No.", "Product Name", "Input Image Urls"]),
)
def test_arbitrary_text_csvs_never_crash(
    rows: list[tuple[str, str, str]], newline: str, header: list[str]
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    try:
        products = parse_products(buffer.getvalue().encode())
    except InputError:
        return
    check_products(products)
    assert len(products) <= len(rows)


single_line = (
    st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(single_line, single_line, st.lists(valid_url, min_size=1, max_size=4)),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([",", ", "]),
)
def test_valid_rows_round_trip(rows: list[tuple[str, str, list[str]]], separator: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    writer.writerows((serial, name, separator.join(urls)) for serial, name, urls in rows)
    products = parse_products(buffer.getvalue().encode())
    assert products == [
        Product(row, serial, name, tuple(urls), line=row + 2)
        for row, (serial, name, urls) in enumerate(rows)
    ]


@pytest.mark.parametrize("url", ["http://img.example.com:8080/a.jpg", "https://127.0.0.1:65535/a"])
def test_urls_with_ports_are_accepted(url):
    products = parse_products(f"S. No.,Product Name,Input Image Urls\n1,Lamp,{url}\n".encode())
    assert products[0].urls == (url,)


@pytest.mark.parametrize("port", ["65536", "99999", "x"])
def test_urls_with_impossible_ports_are_refused(port):
    data = f"S. No.,Product Name,Input Image Urls\n1,Lamp,http://img.example.com:{port}/a.jpg\n"
    with pytest.raises(CsvError):
        parse_products(data.encode())


def test_each_product_knows_the_line_it_starts_on() -> None:
    # Blank lines and a quoted line break make a product's line differ from its row:
    # people name it by the line their editor shows.
    data = (
        b"S. No.,Product Name,Input Image Urls\n"
        b"\n"
        b'1,"Shoe\nleft",http://a.example/1\n'
        b"2,Sock,http://a.example/2\n"
    )
    assert [(p.row, p.line) for p in parse_products(data)] == [(0, 3), (1, 5)]
