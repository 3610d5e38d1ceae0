"""A corpus of hostile uploads through the HTTP layer.

Every bad one gets a 4xx JSON error that names the problem, and leaves
nothing behind: no record, no stored object, nothing submitted.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from dataclasses import replace

import pytest
from waitress.adjustments import Adjustments

from api.connections import refusal
from api.uploads import max_body_bytes
from tests.api.support import make_client, multipart, upload

HEADER = b"S. No.,Product Name,Input Image Urls\n"
URL = b"https://img.example.com/a.jpg"


def zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("products.csv", b"0" * 20_000_000)  # 20 MB inflates from ~20 KB
    return buf.getvalue()


def gzip_bomb() -> bytes:
    return gzip.compress(b"0" * 20_000_000)


def image_bytes() -> bytes:
    from tests import imagefactory

    return imagefactory.jpeg_rgb()[:2000]


U = "Input Image Urls"

# name: (file, status, what the description must say, line, column). The line and
# column are what the error names; None where the problem has no one place.
BAD_CSVS = {
    "empty file": (b"", 422, "empty", None, None),
    "whitespace only": (b"  \n\n", 422, "empty", None, None),
    "header only": (HEADER, 422, "no product rows", 1, None),
    "missing column": (b"S. No.,Product Name\n1,Lamp\n", 422, "missing column", 1, U),
    "wrong columns": (b"id,name,urls\n1,Lamp," + URL + b"\n", 422, "expected", 1, "S. No."),
    "no header row": (
        b"1,Lamp," + URL + b"\n",
        422,
        "the first line must be the header",
        1,
        "S. No.",
    ),
    "misspelled column": (
        b"S. No.,Product Nmae,Input Image Urls\n1,Lamp," + URL + b"\n",
        422,
        "did you mean 'Product Name'",
        1,
        "Product Name",
    ),
    "extra column": (
        b"S. No.,Product Name,Input Image Urls,Price\n1,Lamp," + URL + b",9\n",
        422,
        "Price",
        1,
        "Price",
    ),
    "duplicate header": (
        b"S. No.,Product Name,Input Image Urls,S. No.\n1,L," + URL + b",1\n",
        422,
        "appears twice",
        1,
        "S. No.",
    ),
    "two columns that could be one": (
        b"S. No.,Product Name,Input Image Urls,product  name\n1,L," + URL + b",L\n",
        422,
        "2 columns that could be 'Product Name': 'Product Name' (cell 2) and 'product  name'",
        1,
        "Product Name",
    ),
    "an Excel workbook": (
        b"PK\x03\x04" + bytes(26) + b"[Content_Types].xml" + b"PK\x03\x04xl/workbook.xml",
        422,
        "looks like an Excel workbook (XLSX); save it as CSV",
        None,
        None,
    ),
    "semicolon delimiter": (
        b"S. No.;Product Name;Input Image Urls\n1;Lamp;" + URL + b"\n",
        422,
        "separated by semicolons",
        1,
        None,
    ),
    "tab delimiter": (
        b"S. No.\tProduct Name\tInput Image Urls\n1\tLamp\t" + URL + b"\n",
        422,
        "separated by tabs",
        1,
        None,
    ),
    "pipe delimiter": (
        b"S. No.|Product Name|Input Image Urls\n1|Lamp|" + URL + b"\n",
        422,
        "separated by '|'",
        1,
        None,
    ),
    "trailing comma on the header": (
        HEADER.replace(b"\n", b",\n") + b"1,Lamp," + URL + b"\n",
        422,
        "header cell 4 is empty",
        1,
        None,
    ),
    "trailing comma on a row": (HEADER + b"1,Lamp," + URL + b",\n", 422, "4 cells", 2, None),
    "quoted newline in URL cell": (
        HEADER + b'1,Lamp,"' + URL + b'\nhttps://b.example/x.jpg"\n',
        422,
        "cannot contain line breaks",
        2,
        U,
    ),
    "unclosed quote": (
        HEADER + b'1,"Lamp,' + URL + b"\n2,Mug," + URL + b"\n",
        422,
        "never closed",
        2,
        None,
    ),
    "text after a closing quote": (
        HEADER + b'1,"Lamp" large,' + URL + b"\n",
        422,
        "after its closing quote",
        2,
        None,
    ),
    "non-UTF-8 bytes": (HEADER + b"1,L\xe4mpe," + URL + b"\n", 422, "UTF-8", 2, None),
    "UTF-16 text": (HEADER.decode().encode("utf-16"), 422, "UTF-16", None, None),
    "NUL bytes in text": (HEADER + b"1,Lamp\x00," + URL + b"\n", 422, "NUL bytes", None, None),
    "binary file (image)": (image_bytes(), 422, "not a text CSV", None, None),
    "random bytes": (bytes(range(256)) * 8, 422, "binary", None, None),
    "zip bomb renamed .csv": (zip_bomb(), 422, "zip archive", None, None),
    "gzip bomb renamed .csv": (gzip_bomb(), 422, "gzip archive", None, None),
    "URL with a space inside": (
        HEADER + b"1,Lamp,https://img.example.com/my image.jpg\n",
        422,
        "space",
        2,
        U,
    ),
    "URL with a zero-width space": (
        HEADER + b"1,Lamp," + URL + "\u200b".encode() + b"\n",
        422,
        "U+200B",
        2,
        U,
    ),
    "trailing comma in URL cell": (HEADER + b'1,Lamp,"' + URL + b',"\n', 422, "empty", 2, U),
    "empty URL between commas": (
        HEADER + b'1,Lamp,"' + URL + b",," + URL + b'"\n',
        422,
        "URL 2 of 3 is empty",
        2,
        U,
    ),
    "row without URLs": (HEADER + b"1,Lamp,\n", 422, "no image URLs", 2, U),
    "blank URL cell": (HEADER + b'1,Lamp,"   "\n', 422, "no image URLs", 2, U),
    "file: scheme": (HEADER + b"1,Lamp,file:///etc/passwd\n", 422, "'file:' scheme", 2, U),
    "gopher: scheme": (
        HEADER + b"1,Lamp,gopher://127.0.0.1:6379/_FLUSHALL\n",
        422,
        "'gopher:' scheme",
        2,
        U,
    ),
    "javascript: scheme": (
        HEADER + b"1,Lamp,javascript:alert(1)\n",
        422,
        "'javascript:' scheme",
        2,
        U,
    ),
    "data: scheme": (HEADER + b'1,Lamp,"data:image/png;base64,AAAA"\n', 422, "'data:'", 2, U),
    "ftp: scheme": (HEADER + b"1,Lamp,ftp://img.example.com/a.jpg\n", 422, "'ftp:'", 2, U),
    "URL without a scheme": (
        HEADER + b"1,Lamp,img.example.com/a.jpg\n",
        422,
        "no scheme",
        2,
        U,
    ),
    "URL without a host": (HEADER + b"1,Lamp,https:///a.jpg\n", 422, "no host", 2, U),
    "unquoted URL list": (HEADER + b"1,Lamp," + URL + b"," + URL + b"\n", 422, "quote", 2, U),
    "missing serial": (HEADER + b",Lamp," + URL + b"\n", 422, "serial", 2, "S. No."),
    "missing product name": (HEADER + b"1,," + URL + b"\n", 422, "Product Name", 2, "Product Name"),
    "10 MB single cell": (
        HEADER + b'1,"' + b"x" * 10_000_000 + b'",' + URL + b"\n",
        413,
        "limit",
        None,
        None,
    ),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_bad_csv_is_refused_with_a_clear_error(client, case, assert_nothing_recorded):
    data, status, needle, row, column = BAD_CSVS[case]
    response = upload(client, data, filename="products.csv")
    assert response.status_code == status, response.json
    assert response.headers["content-type"].startswith("application/json")
    assert response.json["title"]
    assert needle.lower() in response.json["description"].lower(), response.json["description"]
    assert (response.json.get("row"), response.json.get("column")) == (row, column)
    assert_nothing_recorded()


def test_big_cell_under_the_upload_limit_is_named_by_the_csv_check(
    settings, store, storage, runner
):
    client = make_client(replace(settings, max_upload_bytes=16 * 2**20), store, storage, runner)
    data = HEADER + b'1,"' + b"x" * 10_000_000 + b'",' + URL + b"\n"
    response = upload(client, data)
    assert response.status_code == 422
    assert response.json["row"] == 2


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf" + HEADER + b"1,Lamp," + URL + b"\n",  # BOM, as Excel writes it
        HEADER.replace(b"\n", b"\r\n") + b"1,Lamp," + URL + b"\r\n",  # CRLF
        HEADER + b'1,"Lamp\nwith a line break",' + URL + b"\n",  # Alt+Enter in a name
        HEADER + b'1,Lamp,"' + URL + b", " + URL + b'"\n',  # spaces after commas
        b"s. no.,Product  Name, Input Image URLs \n1,Lamp," + URL + b"\n",  # typed by hand
        b"S.No.,PRODUCT NAME,Input Image URLS\n1,Lamp," + URL + b"\n",
    ],
    ids=[
        "bom",
        "crlf",
        "newline-in-name",
        "spaces-after-commas",
        "header-case-and-spacing",
        "header-punctuation",
    ],
)
def test_ordinary_spreadsheet_output_is_accepted(client, data):
    response = upload(client, data)
    assert response.status_code == 202, response.json
    # Read as written: one product (a BOM, CRLFs or a line break in a name add no
    # row), every URL of its cell (spaces after commas are not part of a URL).
    urls = 2 if b", " + URL in data else 1
    assert (response.json["total_products"], response.json["total_images"]) == (1, urls)
    status = client.simulate_get(f"/api/v1/requests/{response.json['request_id']}").json
    assert (status["total_products"], status["total_images"]) == (1, urls)


def test_request_shapes_that_are_not_an_upload(client, assert_nothing_recorded):
    body, headers = multipart({"document": ("p.csv", HEADER, "text/csv")})
    no_file = client.simulate_post("/api/v1/upload", body=body, headers=headers)
    assert no_file.status_code == 400 and "'file'" in no_file.json["description"]

    plain = client.simulate_post(
        "/api/v1/upload", body=HEADER, headers={"Content-Type": "text/csv"}
    )
    assert plain.status_code == 415 and "multipart" in plain.json["description"]

    broken = client.simulate_post(
        "/api/v1/upload",
        body=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nno end',
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code == 400 and broken.json["title"] == "Malformed multipart body"

    body, headers = multipart({"file": ("p.csv", HEADER + b"1,L," + URL + b"\n", "text/csv")})
    squeezed = client.simulate_post(
        "/api/v1/upload",
        body=gzip.compress(body),
        headers=headers | {"Content-Encoding": "gzip"},
    )
    assert squeezed.status_code == 415 and "uncompressed" in squeezed.json["description"]

    body, headers = multipart(
        {"file": ("a.csv", HEADER + b"1,L," + URL + b"\n", "text/csv"), "file2": "x"}
    )
    two = client.simulate_post(
        "/api/v1/upload", body=body.replace(b'name="file2"', b'name="file"'), headers=headers
    )
    assert two.status_code == 400 and "one CSV" in two.json["description"]
    assert_nothing_recorded()


def test_filename_is_sanitised(client, store):
    response = upload(
        client, HEADER + b"1,Lamp," + URL + b"\n", filename="../../etc/pass\x00wd.csv"
    )
    assert response.status_code == 202
    assert store.get_request(response.json["request_id"]).source_name == "passwd.csv"


def test_rows_and_urls_limits_answer_413(settings, store, storage, runner, assert_nothing_recorded):
    client = make_client(replace(settings, max_rows=2, max_urls=3), store, storage, runner)
    rows = HEADER + b"".join(b"%d,P,%s\n" % (n, URL) for n in range(3))
    too_many_rows = upload(client, rows)
    assert too_many_rows.status_code == 413 and "row" in too_many_rows.json["description"]
    urls = HEADER + b'1,P,"' + b",".join([URL] * 4) + b'"\n'
    too_many_urls = upload(client, urls)
    assert too_many_urls.status_code == 413 and "URL" in too_many_urls.json["description"]
    assert_nothing_recorded()


@pytest.mark.parametrize(
    "webhook",
    [
        "ftp://hooks.example.com/x",
        "http://user:pw@hooks.example.com/x",
        "javascript:alert(1)",
        "https://hooks.example.com\\@127.0.0.1/",
        "http://",
        "https://a.example:99999/",
    ],
)
def test_bad_webhook_url_is_refused_at_upload(client, webhook, assert_nothing_recorded):
    response = upload(client, HEADER + b"1,Lamp," + URL + b"\n", webhook_url=webhook)
    assert response.status_code == 422
    assert "webhook_url" in response.json["description"]
    assert_nothing_recorded()


def _cut(body: bytes, where: str) -> bytes:
    if where == "inside the CSV":
        return body[: body.index(b"Lamp")]
    return body[: body.rindex(b"--")]  # the closing boundary is missing


@pytest.mark.parametrize(
    ("make_body", "headers", "needle"),
    [
        (lambda b: b"not a multipart body at all", None, "not valid multipart"),
        (lambda b: _cut(b, "inside the CSV"), None, "not valid multipart"),
        (lambda b: _cut(b, "closing boundary"), None, "not valid multipart"),
        (lambda b: b.replace(b"\r\n\r\n", b"\r\n", 1), None, "not valid multipart"),
        (lambda b: b, {"Content-Type": "multipart/form-data"}, "boundary"),
    ],
    ids=["garbage", "cut in the CSV", "no closing boundary", "broken part headers", "no boundary"],
)
def test_malformed_multipart_is_400_and_records_nothing(
    client, assert_nothing_recorded, make_body, headers, needle
):
    body, form_headers = multipart(
        {"file": ("p.csv", HEADER + b"1,Lamp," + URL + b"\n", "text/csv")}
    )
    response = client.simulate_post(
        "/api/v1/upload", body=make_body(body), headers=headers or form_headers
    )
    assert response.status_code == 400
    assert response.json["title"] and needle in response.json["description"]
    assert_nothing_recorded()


def test_an_oversized_form_field_is_refused(client, assert_nothing_recorded):
    # The file is read with its own limit; any other field is capped by the parser
    # (a few KiB), whatever room the body limit leaves.
    response = upload(
        client, HEADER + b"1,Lamp," + URL + b"\n", webhook_url="https://h.example/" + "a" * 40_000
    )
    assert response.status_code == 400
    assert "too large" in response.json["description"]
    assert_nothing_recorded()


@pytest.mark.parametrize("path", ["/api/v1/upload", "/api/images/upload"])
def test_get_on_an_upload_route_says_how_to_upload(client, path, assert_nothing_recorded):
    response = client.simulate_get(path)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json["title"] == "Method not allowed"
    example = f"curl -F file=@products.csv http://api.test{path}"
    assert example in response.json["description"] and response.json["example"] == example
    assert "http://api.test/docs" in response.json["description"]
    assert response.json["docs"] == "http://api.test/docs"
    assert_nothing_recorded()


def test_waitress_refusing_a_body_answers_like_the_app(client, settings):
    """waitress's own 413 (tests/integration/test_hostile_http.py) has the app's shape."""
    body_limit = max_body_bytes(settings)
    declared = body_limit * 10
    app_answer = client.simulate_post(
        "/api/v1/upload",
        body=b"",
        headers={
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(declared),
        },
    )
    adj = Adjustments(max_request_body_size=body_limit)
    server_answer = refusal(413, "exceeds max_body of 1", adj, declared)
    assert app_answer.status_code == 413
    assert server_answer == {
        "title": app_answer.json["title"],
        "description": app_answer.json["description"],
    }
    chunked = refusal(413, "exceeds max_body of 1", adj, 0)["description"]
    assert f"the limit is {settings.max_upload_bytes:,} bytes for the CSV" in chunked
