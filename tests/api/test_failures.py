"""Failures at scale: the summary in the status, the images filtered by status, the
failures CSV; and a request's pace (images/s, ETA)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from pipeline.keys import output_key
from pipeline.models import ImageItem, ImageResult, NewRequest
from tests.api.support import T0, RecordingRunner, make_client

ROWS = 60  # products, two images each


@pytest.fixture
def now():
    return [T0 + timedelta(seconds=60)]


@pytest.fixture
def client(settings, store, storage, now):
    return make_client(settings, store, storage, RecordingRunner(), clock=lambda: now[0])


def reason_for(row: int) -> str | None:
    """Every 3rd product's second image 404s, every 10th's first is refused; the rest ok."""
    if row % 10 == 0:
        return f"download failed: address 10.0.0.{row} is not public (private)"
    return None


def processing(store, rid: str = "f" * 32, *, done_rows: int = ROWS) -> str:
    store.create_request(NewRequest(rid, created_at=T0, total_rows=ROWS, total_images=2 * ROWS))
    store.add_images(
        rid,
        [
            # Line numbers as a file with a blank line after the header would have.
            ImageItem(r, p, f"SKU{r}", f"Product {r}", f"https://img.test/{r}/{p}.jpg", line=r + 3)
            for r in range(ROWS)
            for p in range(2)
        ],
    )
    store.mark_processing(rid, T0)
    results = []
    for r in range(done_rows):
        first = reason_for(r)
        results.append(
            ImageResult(r, 0, ok=True, output_key=output_key(rid, r, 0), bytes_in=9, bytes_out=3)
            if first is None
            else ImageResult(r, 0, ok=False, error=first)
        )
        results.append(
            ImageResult(r, 1, ok=False, error=f"download failed: HTTP 404 after {r % 3} retries")
            if r % 3 == 0
            else ImageResult(r, 1, ok=True, output_key=output_key(rid, r, 1))
        )
    store.apply_results(rid, results, T0 + timedelta(seconds=30))
    return rid


def test_status_summarises_failures_by_reason(client, store):
    rid = processing(store)
    status = client.simulate_get(f"/api/v1/requests/{rid}").json
    assert status["failed_images"] == 20 + 6
    failures = status["failures"]
    assert failures["total"] == 26
    # Every "HTTP 404" groups, whatever the numbers around it; addresses group too.
    assert [(g["reason"], g["count"]) for g in failures["by_reason"]] == [
        ("download failed: HTTP 404 after N retries", 20),
        ("download failed: address <address> is not public (private)", 6),
    ]
    assert failures["by_reason"][0]["example"].startswith("download failed: HTTP 404 after ")
    assert failures["images_url"].endswith(f"/api/v1/requests/{rid}/images?status=failed")
    assert failures["csv_url"].endswith(f"/api/v1/requests/{rid}/failures.csv")
    # The older route says the same.
    assert client.simulate_get(f"/api/status/{rid}").json["failures"] == failures


def test_no_failures_no_summary(client, store):
    rid = processing(store, done_rows=1)  # row 0: its first image refused, second 404
    store.create_request(NewRequest("c" * 32, created_at=T0, total_rows=1, total_images=1))
    assert client.simulate_get(f"/api/v1/requests/{'c' * 32}").json["failures"] is None
    assert client.simulate_get(f"/api/v1/requests/{rid}").json["failures"]["total"] == 2


def test_images_filtered_by_status_in_pages(client, store):
    rid = processing(store)
    first = client.simulate_get(
        f"/api/v1/requests/{rid}/images", params={"status": "failed", "per_page": 10}
    ).json
    assert (first["total"], first["status"], len(first["images"])) == (26, "failed", 10)
    seen = list(first["images"])
    url = first["next_url"]
    while url:
        page = client.simulate_get(url.removeprefix("http://api.test")).json
        seen += page["images"]
        url = page["next_url"]
    assert len(seen) == 26
    assert all(i["status"] == "failed" and i["error"] for i in seen)
    # In input order, each named by its line in the file (row + 3 here).
    assert [(i["line"], i["position"]) for i in seen[:3]] == [(3, 1), (3, 2), (6, 2)]
    assert seen[0]["s_no"] == "SKU0" and seen[0]["input_url"] == "https://img.test/0/0.jpg"
    done = client.simulate_get(f"/api/v1/requests/{rid}/images?status=done&per_page=500").json
    assert done["total"] == len(done["images"]) == 2 * ROWS - 26
    assert all(i["output_url"] for i in done["images"])
    everything = client.simulate_get(f"/api/v1/requests/{rid}/images?per_page=500").json
    assert everything["total"] == 2 * ROWS and everything["status"] is None


@pytest.mark.parametrize("query", ["status=broken", "page=0", "per_page=501", "per_page=x"])
def test_images_refuses_bad_parameters(client, store, query):
    rid = processing(store, done_rows=2)
    response = client.simulate_get(f"/api/v1/requests/{rid}/images?{query}")
    assert response.status_code == 400, response.text
    assert response.json["title"]


def test_failures_csv_lists_line_product_url_and_reason(client, store):
    rid = processing(store)
    response = client.simulate_get(f"/api/v1/requests/{rid}/failures.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["Line", "S. No.", "Product Name", "Input Image Url", "Reason"]
    assert len(rows) == 1 + 26
    assert rows[1] == [
        "3",
        "SKU0",
        "Product 0",
        "https://img.test/0/0.jpg",
        "download failed: address 10.0.0.0 is not public (private)",
    ]
    # Unknown or another's request: 404, as for its status.
    assert client.simulate_get(f"/api/v1/requests/{'0' * 32}/failures.csv").status_code == 404


def test_pace_gives_images_per_second_and_an_eta(client, store, now):
    rid = processing(store, done_rows=30)  # 60 of 120 images in 60 s
    status = client.simulate_get(f"/api/v1/requests/{rid}").json
    assert status["images_per_second"] == 1.0
    assert status["eta_seconds"] == 60.0
    now[0] = T0 + timedelta(seconds=120)
    status = client.simulate_get(f"/api/v1/requests/{rid}").json
    assert (status["images_per_second"], status["eta_seconds"]) == (0.5, 120.0)
    # Listed requests carry the pace too.
    [listed] = client.simulate_get("/api/v1/requests").json["requests"]
    assert listed["images_per_second"] == 0.5 and listed["failures"] is None


def test_no_pace_before_processing(client, store):
    store.create_request(NewRequest("d" * 32, created_at=T0, total_rows=1, total_images=1))
    status = client.simulate_get(f"/api/v1/requests/{'d' * 32}").json
    assert (status["images_per_second"], status["eta_seconds"]) == (None, None)
