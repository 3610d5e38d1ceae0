"""Output options through the upload form: kept with the request, shown in its status,
bad ones refused with the field named and nothing recorded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.options import OutputOptions
from tests.api.support import GOOD_CSV, make_client, multipart, upload


def test_options_are_stored_and_shown_in_the_status(client, store):
    response = upload(client, GOOD_CSV, format="webp", quality="70", max_width="512")
    assert response.status_code == 202, response.text
    wanted = {"format": "webp", "quality": 70, "max_width": 512, "max_height": None}
    assert response.json["options"] == wanted
    rid = response.json["request_id"]
    assert store.get_request(rid).options == OutputOptions("webp", 70, 512, None)
    for path in (f"/api/v1/requests/{rid}", f"/api/v1/status/{rid}", f"/api/status/{rid}"):
        assert client.simulate_get(path).json["options"] == wanted, path
    listed = client.simulate_get("/api/v1/requests").json["requests"]
    assert [r["options"] for r in listed] == [wanted]


@pytest.mark.parametrize(
    ("fields", "wanted"),
    [
        ({}, {"format": "jpeg", "quality": 50, "max_width": None, "max_height": None}),
        # A format without a quality takes that format's own default (equal SSIM).
        ({"format": "webp"}, {"format": "webp", "quality": 56}),
        ({"format": "AVIF"}, {"format": "avif", "quality": 50}),
        ({"format": "jpg", "quality": " 90 "}, {"format": "jpeg", "quality": 90}),
        # Empty fields are what a form sends for a control left blank.
        ({"max_width": "", "quality": ""}, {"quality": 50, "max_width": None}),
        ({"max_height": "300"}, {"max_width": None, "max_height": 300}),
    ],
)
def test_defaults_fill_what_the_form_leaves_out(client, fields, wanted):
    response = upload(client, GOOD_CSV, **fields)
    assert response.status_code == 202, response.text
    assert response.json["options"].items() >= wanted.items()


def test_server_defaults_come_from_settings(settings, store, storage, runner):
    settings = replace(settings, output_format="webp", webp_quality=60, max_width=800)
    client = make_client(settings, store, storage, runner)
    response = upload(client, GOOD_CSV)
    assert response.json["options"] == {
        "format": "webp",
        "quality": 60,
        "max_width": 800,
        "max_height": None,
    }
    # A caller's choice wins over the server's.
    response = upload(client, GOOD_CSV, format="jpeg", max_width="100")
    assert response.json["options"]["format"] == "jpeg"
    assert response.json["options"]["quality"] == settings.jpeg_quality
    assert response.json["options"]["max_width"] == 100


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"quality": "0"}, "quality", "must be 1-95, got 0"),
        ({"quality": "96"}, "quality", "must be 1-95, got 96"),
        ({"quality": "high"}, "quality", "must be a whole number 1-95, got 'high'"),
        ({"quality": "50.5"}, "quality", "whole number"),
        ({"quality": "-1"}, "quality", "whole number"),
        ({"quality": "9" * 40}, "quality", "longer than 32 characters"),
        ({"format": "gif"}, "format", "must be one of jpeg, webp, avif, got 'gif'"),
        ({"max_width": "0"}, "max_width", "must be 1-65500, got 0"),
        ({"max_height": "\uff11\uff12"}, "max_height", "whole number"),  # full-width 12
        # WebP can hold at most 16,383 pixels a side: a box past that means nothing.
        ({"format": "webp", "max_width": "20000"}, "max_width", "must be 1-16383"),
        # What the issue's user sent: it used to be accepted and ignored.
        ({"resize": "200x200"}, "resize", "not a field of the upload form"),
        ({"Quality": "90"}, "Quality", "the fields are file, webhook_url, format, quality"),
    ],
)
def test_bad_options_are_refused_naming_the_field(
    client, assert_nothing_recorded, fields, field, says
):
    response = upload(client, GOOD_CSV, **fields)
    assert response.status_code == 422, response.text
    assert response.json["field"] == field
    assert response.json["title"] == "Invalid option"
    assert says in response.json["description"]
    assert response.json["description"].startswith(f"{field}: ")
    assert_nothing_recorded()


def test_an_option_given_twice_is_refused(client, assert_nothing_recorded):
    body, headers = multipart(
        [("file", ("p.csv", GOOD_CSV, "text/csv")), ("quality", "80"), ("quality", "20")]
    )
    response = client.simulate_post("/api/v1/upload", body=body, headers=headers)
    assert response.status_code == 422
    assert response.json["field"] == "quality"
    assert "given twice" in response.json["description"]
    assert_nothing_recorded()
