"""The OpenAPI document: valid, complete, its examples true to it, and the document
true of the live app (schemathesis); /docs renders all of it readably."""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace
from typing import Any

import falcon.inspect
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis import APIOperation, BaseSchema
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

from api import openapi
from api.app import create_app
from pipeline.csv_output import FAILURE_COLUMNS
from pipeline.keys import output_key
from pipeline.models import (
    ImageItem,
    ImageResult,
    RequestRecord,
    RequestStatus,
)
from pipeline.notify import completion_event, signed_headers
from pipeline.options import FIELDS, FORMATS, MAX_SIDE, OptionDefaults
from tests.api.support import GOOD_CSV, T0, upload

ALIASES = {
    ("/api/images/upload", "post"): ("/api/v1/upload", "post"),
    ("/api/images/upload", "get"): ("/api/v1/upload", "get"),  # says how to upload (405)
    ("/api/v1/status/{request_id}", "get"): ("/api/v1/requests/{request_id}", "get"),
    ("/api/status/{request_id}", "get"): ("/api/v1/requests/{request_id}", "get"),
}


def test_document_is_valid_openapi():
    doc = openapi.document("http://api.test")
    validate(doc)
    assert doc["openapi"].startswith("3.1.")  # for `webhooks`


def operations(doc):
    """(where, operation) of every path and webhook operation."""
    for section in ("paths", "webhooks"):
        for path, item in doc[section].items():
            for method, op in item.items():
                yield f"{method.upper()} {path}", op


def media_examples(media):
    if "example" in media:
        yield "example", media["example"]
    for name, example in media.get("examples", {}).items():
        yield name, example["value"]


@pytest.mark.parametrize("defaults", [None, OptionDefaults(format="webp", webp_quality=61)])
def test_every_example_fits_its_schema(defaults):
    doc = openapi.document("http://api.test", defaults)
    checked = 0
    for where, op in operations(doc):
        bodies = [("request", op["requestBody"])] if "requestBody" in op else []
        bodies += list(op["responses"].items())
        for code, body in bodies:
            for ctype, media in body.get("content", {}).items():
                # The schema resolves its $refs in the document's components.
                schema = {**media["schema"], "components": doc["components"]}
                for name, value in media_examples(media):
                    errors = [e.message for e in Draft202012Validator(schema).iter_errors(value)]
                    assert not errors, (where, code, ctype, name, errors)
                    checked += 1
    assert checked > 60


def test_every_operation_has_examples_and_aliases_do_not_repeat_them():
    # Answers that are a page, this document or an image need no example.
    no_example = {"text/html", "image/jpeg", "image/webp", "image/avif"}
    doc = openapi.document()
    for where, op in operations(doc):
        bodies = [("request", op.get("requestBody", {})), *op["responses"].items()]
        examples = {
            (code, ctype): [name for name, _ in media_examples(media)]
            for code, body in bodies
            for ctype, media in body.get("content", {}).items()
            if ctype not in no_example and (where, code) != ("GET /api/v1/openapi.json", "200")
        }
        if "x-alias-of" in op:
            assert not any(examples.values()), where
        else:
            assert all(examples.values()), (where, examples)


def test_aliases_are_the_main_operation_deprecated():
    doc = openapi.document()
    paths = doc["paths"]
    for (path, method), (main_path, main_method) in ALIASES.items():
        alias, main = paths[path][method], paths[main_path][main_method]
        assert alias["deprecated"] is True and not main.get("deprecated")
        assert alias["x-alias-of"] == main["operationId"]
        assert f"{main_method.upper()} {main_path}" in alias["summary"]
        assert alias.get("parameters") == main.get("parameters")
        for ctype, media in main.get("requestBody", {}).get("content", {}).items():
            assert alias["requestBody"]["content"][ctype]["schema"] == media["schema"]
        assert alias["responses"].keys() == main["responses"].keys()
        for code, answer in alias["responses"].items():
            for ctype, media in answer.get("content", {}).items():
                assert media["schema"] == main["responses"][code]["content"][ctype]["schema"]
    aliased = {(p, m) for p, item in paths.items() for m, op in item.items() if "x-alias-of" in op}
    assert aliased == set(ALIASES)
    # The operationIds older generated clients call stay as they were.
    assert paths["/api/v1/status/{request_id}"]["get"]["operationId"] == "status"
    assert paths["/api/images/upload"]["post"]["operationId"] == "uploadLegacy"


def test_the_webhook_is_documented_as_sent(store):
    doc = openapi.document("http://api.test")
    hook = doc["webhooks"]["requestCompleted"]["post"]
    event_schema = doc["components"]["schemas"]["WebhookEvent"]
    record = RequestRecord(
        "ab" * 16, RequestStatus.COMPLETED_WITH_ERRORS, 2, 3, 3, 1, T0, T0, completed_at=T0
    )
    event = completion_event(record, status_url="http://api.test/s", output_csv_url=None)
    assert set(event_schema["properties"]) == set(event) == set(event_schema["required"])
    schema = {**event_schema, "components": doc["components"]}
    assert not list(Draft202012Validator(schema).iter_errors(event))
    assert hook["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WebhookEvent"
    }
    # Every header the sender sets but Content-Type (the body's media type says it).
    sent = set(signed_headers(b"k" * 16, "msg_x", 1, b"{}")) - {"Content-Type"}
    headers = {p["name"]: p for p in hook["parameters"] if p["in"] == "header"}
    assert set(headers) == sent
    assert headers["webhook-signature"]["required"] is False  # unsigned without a secret
    assert "NATS" in hook["description"] and "same JSON" in hook["description"]


def test_failures_and_images_are_documented():
    doc = openapi.document()
    schemas, paths = doc["components"]["schemas"], doc["paths"]
    status = schemas["Status"]["properties"]
    assert status["failures"]["anyOf"] == [
        {"$ref": "#/components/schemas/Failures"},
        {"type": "null"},
    ]
    for rate in ("images_per_second", "eta_seconds"):
        assert status[rate]["type"] == ["number", "null"]
    assert {"line", "row"} <= set(schemas["Product"]["required"])
    assert {"line", "row"} <= set(schemas["Error"]["properties"])
    images = paths["/api/v1/requests/{request_id}/images"]["get"]
    query = {p["name"]: p["schema"] for p in images["parameters"] if p["in"] == "query"}
    assert query["status"]["enum"] == ["pending", "done", "failed", "cancelled"]
    assert query["per_page"]["maximum"] == 500
    failures = paths["/api/v1/requests/{request_id}/failures.csv"]["get"]["responses"]["200"]
    assert failures["content"]["text/csv"]["example"].startswith(",".join(FAILURE_COLUMNS))


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
    assert status_options["anyOf"] == [ref, {"type": "null"}]
    for name in ("Accepted", "Status"):
        assert "options" in schemas[name]["required"]
    options = schemas["Options"]
    assert options["required"] == list(FIELDS)
    assert options["properties"]["format"]["enum"] == list(FORMATS)
    assert options["properties"]["max_height"]["type"] == ["integer", "null"]
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
    text = page.text
    assert "Output Image Urls" in text
    for route in (
        "/api/v1/requests",
        "/api/v1/requests/{request_id}/cancel",
        "/api/v1/requests/{request_id}/images",
        "/api/v1/requests/{request_id}/failures.csv",
    ):
        assert f"<code class=''>{route}</code>" in text
    # The older routes: named beside their operation, not repeated in full.
    for (path, method), _ in ALIASES.items():
        assert f"<code class=''>{path}</code>" not in text
        assert f"<code>{method.upper()} {path}</code>" in text
    assert "<span class='method delete'>delete</span>" in text
    assert "ends <code>cancelled</code> shortly" in text  # what a cancel promises, in words
    for field in FIELDS:  # each option with its type and meaning: the form, and Options
        assert text.count(f"<td><code>{field}</code></td>") == 2, field
    assert "never enlarged" in text
    # Schemas as tables of fields, not JSON; nested fields by their dotted names.
    assert '"properties"' not in text and "<h3 id='schema-Status'>" in text
    assert "<td><code>failures</code></td>" in text and "<code>page.next</code>" in text
    # Examples: the upload as curl, answers as JSON.
    assert "curl -F file=@products.csv -F webhook_url=" in text
    assert "&quot;images_per_second&quot;: 25.0" in text
    # The webhook with its headers, and NATS.
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert f"<td><code>{header}</code></td>" in text
    assert "NATS_SUBJECT" in text
    # Try it: a form with every upload field, a status form, the script inlined.
    assert "<form id=try-upload method=post action='/api/v1/upload'" in text
    for field in ("file", "webhook_url", *FIELDS):
        assert f"name='{field}'" in text
    assert "id=try-status" in text and "images?status=failed" in text
    assert "<script>" in text and "src=" not in text and "imagepipe-key" in text
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


def live_operations(schema: BaseSchema) -> list[APIOperation]:
    """Every operation of the document as schemathesis read it (one it could not read
    fails the test here)."""
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    return found


def test_known_requests_fit_the_document(live_app):
    app, known = live_app
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    ops = {op.path: op for op in live_operations(schema) if op.method == "get"}
    # (operation, path parameters, query)
    cases: list[tuple[APIOperation, dict[str, str], dict[str, Any]]] = [
        (ops[path], {"request_id": rid}, query)
        for path in ("/api/v1/status/{request_id}", "/api/status/{request_id}")
        for rid in (known["pending"], known["final"])
        for query in ({}, {"page": 1}, {"page": 1, "per_page": 1}, {"page": 3, "per_page": 1})
    ]
    cases += [
        (ops["/api/v1/output/{request_id}.csv"], {"request_id": r}, {}) for r in known.values()
    ]
    cases += [
        (ops["/api/v1/requests/{request_id}/images"], {"request_id": rid}, query)
        for rid in (known["pending"], known["final"])
        for query in ({}, {"status": "failed"}, {"status": "done", "per_page": 1}, {"page": 2})
    ]
    cases += [
        (ops["/api/v1/requests/{request_id}/failures.csv"], {"request_id": rid}, {})
        for rid in (known["pending"], known["final"])
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
    assert statuses.count(200) >= 31 and 409 in statuses and 404 in statuses

    # Uploads with options: accepted with the options resolved, or refused naming the field.
    posts = {op.path: op for op in live_operations(schema) if op.method == "post"}
    # (form fields beside the file, the status expected)
    forms: list[tuple[dict[str, Any], int]] = [
        ({"format": "webp", "max_width": 512}, 202),
        ({"format": "JPG", "quality": "70", "max_height": 300}, 202),
        ({"quality": 0}, 422),
        ({"format": "webp", "max_width": MAX_SIDE["webp"] + 1}, 422),
        ({"resize": "200x200"}, 422),
    ]
    for path in UPLOADS:
        for form, expected in forms:
            # Multipart fields: the file is bytes, which schemathesis's Body type (JSON) omits.
            body: dict[str, Any] = {"file": GOOD_CSV, **form}
            case = posts[path].Case(body=body, media_type="multipart/form-data")
            response = case.call_and_validate(checks=CHECKS)
            assert response.status_code == expected, (path, form, response.text)
            if expected == 422:
                assert response.json()["field"] == next(iter(form.keys() - {"format"})), form
            else:
                options = response.json()["options"]
                assert options["format"] == form["format"].lower().replace("jpg", "jpeg")

    # Cancel and delete, in an order that leaves each step something to act on.
    changes = {
        (op.path, op.method): op
        for op in live_operations(schema)
        if op.method in ("post", "delete")
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
    for operation in live_operations(schema):
        exercise(operation, failures, calls)
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
