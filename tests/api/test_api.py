"""The HTTP contract, through falcon.testing, with a real store and storage and a fake runner."""

from __future__ import annotations

from datetime import timedelta

import pytest
from urllib3 import encode_multipart_formdata

from pipeline.keys import output_key
from pipeline.models import ImageItem, ImageResult, RequestStatus
from tests.api.support import GOOD_CSV, T0, upload


@pytest.mark.parametrize("path", ["/api/v1/upload", "/api/images/upload"])
def test_upload_accepts_and_submits(client, store, storage, runner, path):
    response = upload(client, GOOD_CSV, path=path)
    assert response.status_code == 202
    body = response.json
    rid = body["request_id"]
    assert body == {
        "request_id": rid,
        "status": "pending",
        "status_url": f"http://api.test/api/v1/requests/{rid}",
        "output_csv_url": f"http://api.test/api/v1/output/{rid}.csv",
        "total_products": 2,
        "total_images": 3,
        "options": {"format": "jpeg", "quality": 50, "max_width": None, "max_height": None},
    }
    assert response.headers["location"] == f"/api/v1/requests/{rid}"
    assert runner.submitted == [rid]
    record = store.get_request(rid)
    assert record.status is RequestStatus.PENDING
    assert (record.total_rows, record.total_images, record.source_name) == (2, 3, "products.csv")
    assert storage.get(f"requests/{rid}/input.csv") == GOOD_CSV


def test_upload_keeps_webhook_url(client, store):
    rid = upload(client, GOOD_CSV, webhook_url="https://hooks.example.com/x").json["request_id"]
    assert store.get_request(rid).webhook_url == "https://hooks.example.com/x"


@pytest.mark.parametrize(
    ("data", "fields", "status", "needle"),
    [
        (b"S. No.,Product Name\n1,x\n", {}, 422, "Input Image Urls"),
        (b"", {}, 422, "empty"),
        (b"S. No.,Product Name,Input Image Urls\n1,Mug,file:///etc/passwd\n", {}, 422, "file"),
        (GOOD_CSV, {"webhook_url": "ftp://x/y"}, 422, "webhook_url"),
        (b"x" * (65 * 1024), {}, 413, "limit"),
    ],
)
def test_bad_uploads_get_json_errors_and_record_nothing(
    client, store, runner, data, fields, status, needle
):
    response = upload(client, data, **fields)
    assert response.status_code == status
    assert response.json["title"]
    assert needle in response.json["description"]
    assert runner.submitted == []
    assert store.unfinished_requests() == []


def test_csv_error_names_row_and_column(client):
    bad = (
        b"S. No.,Product Name,Input Image Urls\n1,Mug,https://a.example/x.jpg\n2,Cup,gopher://b/\n"
    )
    response = upload(client, bad)
    assert response.status_code == 422
    assert response.json["row"] == 3
    assert response.json["column"] == "Input Image Urls"


def test_missing_file_field_and_wrong_content_type(client):
    body, content_type = encode_multipart_formdata({"document": ("p.csv", GOOD_CSV, "text/csv")})
    response = client.simulate_post(
        "/api/v1/upload", body=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert "'file'" in response.json["description"]
    response = client.simulate_post(
        "/api/v1/upload", body=GOOD_CSV, headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 415
    assert "multipart" in response.json["description"]


@pytest.mark.parametrize("path", ["/api/v1/status/", "/api/status/"])
def test_unknown_request_is_404_json(client, path):
    response = client.simulate_get(path + "f" * 32)
    assert response.status_code == 404
    assert response.json["title"] == "Request not found"


def _process(store, rid, *, fail_last: bool):
    items = [
        ImageItem(0, 0, "1", "Trail Shoe", "https://img.example.com/a.jpg"),
        ImageItem(0, 1, "1", "Trail Shoe", "https://img.example.com/b.jpg"),
        ImageItem(1, 0, "2", "Mug", "https://img.example.com/c.png"),
    ]
    store.add_images(rid, items)
    store.mark_processing(rid, T0 + timedelta(seconds=1))
    results = [
        ImageResult(0, 0, ok=True, output_key=output_key(rid, 0, 0), bytes_in=900, bytes_out=300),
        ImageResult(0, 1, ok=True, output_key=output_key(rid, 0, 1), bytes_in=900, bytes_out=300),
    ]
    if fail_last:
        results.append(ImageResult(1, 0, ok=False, error="download failed: HTTP 404"))
    store.apply_results(rid, results, T0 + timedelta(seconds=2))


def test_status_counters_and_pages(client, store):
    rid = upload(client, GOOD_CSV).json["request_id"]
    pending = client.simulate_get(f"/api/v1/status/{rid}").json
    assert (pending["status"], pending["progress"], pending["processed_images"]) == (
        "pending",
        0.0,
        0,
    )
    assert pending["output_csv_url"] is None and "products" not in pending

    _process(store, rid, fail_last=False)
    status = client.simulate_get(f"/api/v1/status/{rid}").json
    assert status["status"] == "processing"
    assert (status["processed_images"], status["failed_images"]) == (2, 0)
    assert status["progress"] == pytest.approx(66.67)
    assert status["started_at"] == "2026-01-02T03:04:06Z"

    page = client.simulate_get(f"/api/v1/status/{rid}", params={"page": 1, "per_page": 1}).json
    assert [p["product_name"] for p in page["products"]] == ["Trail Shoe"]
    shoe = page["products"][0]["images"]
    assert [i["status"] for i in shoe] == ["done", "done"]
    assert shoe[0]["output_url"] == f"http://api.test/media/requests/{rid}/images/0000000-000.jpg"
    assert page["page"]["next"].endswith("page=2&per_page=1")
    last = client.simulate_get(f"/api/v1/status/{rid}", params={"page": 2, "per_page": 1}).json
    assert last["products"][0]["images"][0]["status"] == "pending"
    assert last["page"]["next"] is None
    beyond = client.simulate_get(f"/api/v1/status/{rid}", params={"page": 9}).json
    assert beyond["products"] == []
    bad = client.simulate_get(f"/api/v1/status/{rid}", params={"per_page": 0})
    assert bad.status_code == 400


def test_output_csv_not_ready_then_served(client, store, storage):
    rid = upload(client, GOOD_CSV).json["request_id"]
    response = client.simulate_get(f"/api/v1/output/{rid}.csv")
    assert response.status_code == 409
    assert "pending" in response.json["description"]

    _process(store, rid, fail_last=True)
    storage.put(
        f"requests/{rid}/output.csv", b"S. No.,Product Name,Input Image Urls,Output Image Urls\r\n"
    )
    store.finish(
        rid, RequestStatus.COMPLETED_WITH_ERRORS, T0, output_key=f"requests/{rid}/output.csv"
    )
    response = client.simulate_get(f"/api/v1/output/{rid}.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="{rid}-output.csv"' in response.headers["content-disposition"]
    assert response.content.startswith(b"S. No.,Product Name")
    assert client.simulate_get(f"/api/v1/status/{rid}").json["output_csv_url"].endswith(".csv")


def test_failed_request_has_no_output(client, store):
    rid = upload(client, GOOD_CSV).json["request_id"]
    store.finish(rid, RequestStatus.FAILED, T0, error="StorageError: bucket gone")
    response = client.simulate_get(f"/api/v1/output/{rid}.csv")
    assert response.status_code == 409
    assert "bucket gone" in response.json["description"]
    assert client.simulate_get(f"/api/v1/status/{rid}").json["error"] == "StorageError: bucket gone"


def test_media_serves_outputs_and_nothing_else(client, storage):
    rid = "a" * 32
    storage.put(output_key(rid, 0, 0), b"\xff\xd8jpeg")
    storage.put(f"requests/{rid}/input.csv", b"secret")
    response = client.simulate_get(f"/media/requests/{rid}/images/0000000-000.jpg")
    assert response.status_code == 200 and response.content == b"\xff\xd8jpeg"
    assert response.headers["content-type"] == "image/jpeg"
    for path in (
        f"/media/requests/{rid}/input.csv",
        "/media/../records.db",
        f"/media/requests/{rid}/images/0000001-000.jpg",
    ):
        assert client.simulate_get(path).status_code == 404


def test_health(client):
    response = client.simulate_get("/health")
    assert response.status_code == 200 and response.json["status"] == "ok"


def test_unknown_route_is_json_404(client):
    response = client.simulate_get("/nope")
    assert response.status_code == 404
    assert response.json["title"]
