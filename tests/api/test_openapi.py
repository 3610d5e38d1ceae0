"""The OpenAPI document: valid, complete, and true of the live app (schemathesis)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace

import falcon.inspect
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api import openapi
from api.app import create_app
from pipeline.models import ImageItem, ImageResult, RequestStatus, output_key
from pipeline.options import FIELDS, FORMATS, MAX_SIDE, OptionDefaults
from tests.api.support import GOOD_CSV, T0, upload


def test_document_is_valid_openapi():
    validate(openapi.document("http://api.test"))


def test_every_status_is_documented():
    schemas = openapi.document()["components"]["schemas"]
    assert schemas["Status"]["properties"]["status"]["enum"] == [s.value for s in RequestStatus]
    assert {"queued", "cancelled"} <= set(schemas["Status"]["properties"]["status"]["enum"])
    assert "cancelled" in schemas["Image"]["properties"]["status"]["enum"]
    for field in ("cancelled_images", "cancel_requested_at", "cancel_url"):
        assert field in schemas["Status"]["properties"], field


UPLOADS = ("/api/v1/upload", "/api/images/upload")


@pytest.mark.parametrize("path", UPLOADS)
def test_upload_documents_the_output_options(path):
    upload = openapi.document()["paths"][path]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert list(form["properties"]) == ["file", "webhook_url", *FIELDS]
    assert form["required"] == ["file"]  # every option may be left out
    fields = form["properties"]
    assert set(FORMATS) | {"jpg"} == set(fields["format"]["enum"])
    assert fields["format"]["default"] == "jpeg"
    assert (fields["quality"]["type"], fields["quality"]["minimum"]) == ("integer", 1)
    assert fields["quality"]["maximum"] == 95
    assert "JPEG_QUALITY" in fields["quality"]["description"]
    assert "WEBP_QUALITY" in fields["quality"]["description"]
    for side in ("max_width", "max_height"):
        assert fields[side]["type"] == "integer" and fields[side]["minimum"] == 1
        assert fields[side]["maximum"] == max(MAX_SIDE.values())
        assert "webp 16383" in fields[side]["description"]  # each format's own limit
        assert "never enlarged" in fields[side]["description"]
    assert "`field`" in upload["responses"]["422"]["description"]
    assert upload["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Accepted"
    }


def test_options_are_in_every_status_and_error():
    schemas = openapi.document()["components"]["schemas"]
    ref = {"$ref": "#/components/schemas/Options"}
    assert schemas["Accepted"]["properties"]["options"] == ref
    # The list items and the cancel answer are Status too; null for a request
    # recorded before options existed.
    status_options = schemas["Status"]["properties"]["options"]
    assert status_options["allOf"] == [ref] and status_options["nullable"] is True
    for name in ("Accepted", "Status"):
        assert "options" in schemas[name]["required"]
    options = schemas["Options"]
    assert options["required"] == list(FIELDS)
    assert options["properties"]["format"]["enum"] == list(FORMATS)
    assert options["properties"]["max_height"]["nullable"] is True
    assert "field" in schemas["Error"]["properties"]


def test_media_is_documented_in_every_format():
    media = openapi.document()["paths"]["/media/{key}"]["get"]["responses"]["200"]
    assert set(media["content"]) == {"image/jpeg", "image/webp", "image/avif"}


def test_the_servers_defaults_are_stated_when_given():
    defaults = OptionDefaults(format="webp", webp_quality=61, max_width=800)
    doc = openapi.document("http://api.test", defaults)
    validate(doc)
    form = doc["paths"]["/api/v1/upload"]["post"]["requestBody"]["content"]
    fields = form["multipart/form-data"]["schema"]["properties"]
    assert fields["format"]["default"] == "webp"
    assert "61 for webp" in fields["quality"]["description"]
    assert "800 (this server's default)" in fields["max_width"]["description"]
    assert "no bound on the height" in fields["max_height"]["description"]


def test_every_route_is_documented(settings, store, storage, runner):
    app = create_app(settings, store, storage, runner)
    routes = {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.method.lower())
        for route in falcon.inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal
    }
    documented = {
        (path, method) for path, ops in openapi.document()["paths"].items() for method in ops
    }
    assert routes == documented


def test_served_and_rendered(client):
    served = client.simulate_get("/api/v1/openapi.json")
    assert served.status_code == 200
    assert served.json["paths"]["/api/v1/upload"]["post"]["operationId"] == "upload"
    page = client.simulate_get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/api/v1/status/{request_id}" in page.text and "Output Image Urls" in page.text
    for route in ("/api/v1/requests", "/api/v1/requests/{request_id}/cancel"):
        assert f"<code class=''>{route}</code>" in page.text
    assert "<span class='method delete'>delete</span>" in page.text
    assert "ends `cancelled` shortly" in page.text  # what a cancel promises, in words
    for field in FIELDS:  # each option with its type and meaning, on both upload routes
        assert page.text.count(f"<td><code>{field}</code></td>") == 2, field
    assert "never enlarged" in page.text
    home = client.simulate_get("/")
    assert home.status_code == 200 and 'id="upload"' in home.text


@pytest.fixture
def live_app(settings, store, storage, runner):
    # Unlimited, so generated calls reach the handlers instead of mostly drawing 429s.
    app = create_app(replace(settings, rate_limit_per_minute=0), store, storage, runner)
    client = falcon.testing.TestClient(app)
    pending = upload(client, GOOD_CSV).json["request_id"]
    final = upload(client, GOOD_CSV).json["request_id"]
    store.add_images(
        final,
        [
            ImageItem(0, 0, "1", "Shoe", "https://img.example.com/a.jpg"),
            ImageItem(1, 0, "2", "Mug", "https://img.example.com/b.jpg"),
        ],
    )
    key = output_key(final, 0, 0)
    storage.put(key, b"\xff\xd8\xff")
    store.apply_results(
        final,
        [
            ImageResult(0, 0, ok=True, output_key=key, bytes_in=9, bytes_out=3),
            ImageResult(1, 0, ok=False, error="download failed: HTTP 404"),
        ],
        T0,
    )
    storage.put(f"requests/{final}/output.csv", b"S. No.,Product Name\r\n")
    store.finish(
        final, RequestStatus.COMPLETED_WITH_ERRORS, T0, output_key=f"requests/{final}/output.csv"
    )
    return app, {"pending": pending, "final": final, "media": key}


def test_known_requests_fit_the_document(live_app):
    app, known = live_app
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    ops = {op.ok().path: op.ok() for op in schema.get_all_operations() if op.ok().method == "get"}
    cases = [
        (ops[path], {"request_id": rid}, query)
        for path in ("/api/v1/status/{request_id}", "/api/status/{request_id}")
        for rid in (known["pending"], known["final"])
        for query in ({}, {"page": 1}, {"page": 1, "per_page": 1}, {"page": 3, "per_page": 1})
    ]
    cases += [
        (ops["/api/v1/output/{request_id}.csv"], {"request_id": r}, {}) for r in known.values()
    ]
    cases.append((ops["/media/{key}"], {"key": known["media"]}, {}))
    cases += [
        (ops["/api/v1/requests"], {}, query)
        for query in ({}, {"status": ["pending", "completed_with_errors"]}, {"per_page": 1})
    ]
    statuses = []
    for op, path_parameters, query in cases:
        case = op.Case(path_parameters=path_parameters, query=query)
        statuses.append(case.call_and_validate(checks=CHECKS).status_code)
    assert statuses.count(200) >= 21 and 409 in statuses and 404 in statuses

    # Uploads with options: accepted with the options resolved, or refused naming the field.
    posts = {
        op.ok().path: op.ok() for op in schema.get_all_operations() if op.ok().method == "post"
    }
    for path in UPLOADS:
        for form, expected in (
            ({"format": "webp", "max_width": 512}, 202),
            ({"format": "JPG", "quality": "70", "max_height": 300}, 202),
            ({"quality": 0}, 422),
            ({"format": "webp", "max_width": MAX_SIDE["webp"] + 1}, 422),
            ({"resize": "200x200"}, 422),
        ):
            case = posts[path].Case(
                body={"file": GOOD_CSV, **form}, media_type="multipart/form-data"
            )
            response = case.call_and_validate(checks=CHECKS)
            assert response.status_code == expected, (path, form, response.text)
            if expected == 422:
                assert response.json()["field"] == next(iter(form.keys() - {"format"})), form
            else:
                options = response.json()["options"]
                assert options["format"] == form["format"].lower().replace("jpg", "jpeg")

    # Cancel and delete, in an order that leaves each step something to act on.
    changes = {
        (op.ok().path, op.ok().method): op.ok()
        for op in schema.get_all_operations()
        if op.ok().method in ("post", "delete")
    }
    cancel = changes["/api/v1/requests/{request_id}/cancel", "post"]
    delete = changes["/api/v1/requests/{request_id}", "delete"]
    steps = [
        (cancel, known["pending"], 202),
        (cancel, known["final"], 409),
        (delete, known["pending"], 409),
        (delete, known["final"], 204),
        (delete, known["final"], 404),
        (cancel, known["final"], 404),
    ]
    for op, rid, expected in steps:
        case = op.Case(path_parameters={"request_id": rid})
        assert case.call_and_validate(checks=CHECKS).status_code == expected, (op.path, rid)


def test_live_app_honours_its_document(live_app):
    """Generated calls to every operation: no 5xx, and every answer fits the document."""
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", live_app[0])
    failures: list[str] = []
    calls = [0]
    for operation in schema.get_all_operations():
        exercise(operation.ok(), failures, calls)
    assert calls[0] > 100
    assert not failures, "\n".join(failures[:5])


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def exercise(op, failures: list[str], calls: list[int]) -> None:
    @hypothesis_settings(
        max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=op.as_strategy())
    def call(case):
        calls[0] += 1
        try:
            case.call_and_validate(checks=CHECKS)
        except Exception as exc:  # collected, so one run reports every broken operation
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
            raise

    with contextlib.suppress(Exception):  # already recorded in `failures`
        call()
