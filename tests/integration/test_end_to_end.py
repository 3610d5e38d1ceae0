"""The five user steps, against the real service in a subprocess.

waitress serves the API, a real LocalCluster (worker processes) does the
work, images come from a real HTTP server on loopback, the webhook goes to a
real receiver. Nothing is faked.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from tests import imagefactory as images
from tests.integration.service import Service
from tests.servers import WebhookReceiver

pytestmark = pytest.mark.integration

GOOD = {
    "/p/photo.jpg": images.jpeg_rgb,
    "/p/rotated.jpg": images.jpeg_exif_rotated,
    "/p/cmyk.jpg": images.jpeg_cmyk,
    "/p/alpha.png": images.png_rgba,
    "/p/photo.webp": images.webp,
    "/p/grey.jpg": images.jpeg_grey,
}


@pytest.fixture(scope="module")
def receiver():
    """The service's default webhook; tests pick their deliveries by request id."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory, receiver):
    # One process for the module: each test has its own request ids and images.
    svc = Service(tmp_path_factory.mktemp("e2e") / "data", WEBHOOK_URL=receiver.url).start()
    yield svc
    svc.stop()


@pytest.fixture
def catalogue(image_server):
    urls = {
        path: image_server.add(path, make(), content_type="image/jpeg")
        for path, make in GOOD.items()
    }
    urls["/p/truncated.jpg"] = image_server.add(
        "/p/truncated.jpg", images.truncated_jpeg(), content_type="image/jpeg"
    )
    urls["/p/page.jpg"] = image_server.add(
        "/p/page.jpg", images.not_an_image(), content_type="image/jpeg"
    )
    urls["/p/missing.jpg"] = image_server.url("/p/missing.jpg")  # 404
    return urls


def products_csv(u: dict[str, str]) -> bytes:
    rows = [
        ["S. No.", "Product Name", "Input Image Urls"],
        ["1", "Trail Shoe", f"{u['/p/photo.jpg']}, {u['/p/rotated.jpg']}"],
        ["2", "Print Mug", ",".join([u["/p/cmyk.jpg"], u["/p/alpha.png"], u["/p/truncated.jpg"]])],
        ["3", '=HYPERLINK("http://evil.example")', u["/p/photo.webp"]],
        ["4", "Grey Scarf", ",".join([u["/p/missing.jpg"], u["/p/grey.jpg"], u["/p/page.jpg"]])],
    ]
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def test_upload_to_webhook_end_to_end(service, catalogue, image_server, receiver):
    # Step 2: upload; answered at once with an id, nothing about the images done yet.
    response = service.upload(products_csv(catalogue), webhook_url=receiver.url + "?via=form")
    assert response.status == 202, response.data
    accepted = json.loads(response.data)
    request_id = accepted["request_id"]
    assert accepted["status"] == "pending"
    assert accepted["total_images"] == 9
    assert accepted["status_url"].endswith(f"/api/v1/requests/{request_id}")

    # Step 3: poll to the end; progress only moves forward.
    final, seen = service.wait_final(request_id)
    assert final["status"] == "completed_with_errors"
    assert (final["total_images"], final["processed_images"], final["failed_images"]) == (9, 9, 3)
    assert final["progress"] == 100.0
    assert final["succeeded_images"] == 6
    assert (
        final["started_at"] and final["completed_at"] >= final["started_at"] >= final["created_at"]
    )
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress)
    # The statuses seen follow the lifecycle, never back: pending -> queued -> processing -> final.
    lifecycle = ["pending", "queued", "processing", "completed_with_errors"]
    order = [lifecycle.index(s["status"]) for s in seen]
    assert order == sorted(order)

    # Per-product results, paged.
    page1 = service.get_json(f"/api/v1/status/{request_id}?page=1&per_page=3")
    page2 = service.get_json(page1["page"]["next"].replace(service.base_url, ""))
    products = page1["products"] + page2["products"]
    assert [p["row"] for p in products] == [1, 2, 3, 4]
    assert page2["page"]["next"] is None
    by_url = {i["input_url"]: i for p in products for i in p["images"]}
    assert by_url[catalogue["/p/missing.jpg"]]["error"] == "download failed: HTTP 404"
    assert "truncated" in by_url[catalogue["/p/truncated.jpg"]]["error"]
    assert "not a supported image" in by_url[catalogue["/p/page.jpg"]]["error"]

    # Outputs are fetchable, decode as JPEG, are smaller, and keep orientation.
    for path, make in GOOD.items():
        image = by_url[catalogue[path]]
        assert image["status"] == "done", image
        fetched = service.get(image["output_url"])
        assert fetched.status == 200 and fetched.headers["Content-Type"] == "image/jpeg"
        assert len(fetched.data) < len(make()), path
        with Image.open(io.BytesIO(fetched.data)) as out:
            assert out.format == "JPEG"
            assert out.mode in ("RGB", "L")
            assert not out.getexif(), "metadata (EXIF/GPS) must be dropped"
            if path == "/p/rotated.jpg":
                with Image.open(io.BytesIO(make())) as original:
                    assert out.size == (original.height, original.width)
    assert image_server.hits["/p/photo.jpg"] == 1  # one download per image

    # Step 4: the output CSV, in input order, outputs aligned with inputs.
    output = service.get(f"/api/v1/output/{request_id}.csv")
    assert output.status == 200 and output.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(output.data.decode())))
    assert rows[0] == ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert rows[3][1].startswith("'=")  # formula injection neutralised
    for row in rows[1:]:
        inputs, outputs = row[2].split(","), row[3].split(",")
        assert len(inputs) == len(outputs)
        for input_url, output_url in zip(inputs, outputs, strict=True):
            assert (output_url != "") == (by_url[input_url]["status"] == "done")
    assert rows[2][3].split(",")[2] == ""  # the truncated image's slot is empty

    # Step 5: the webhook, to the URL given with the upload.
    delivery = receiver.delivery_for(request_id)
    assert delivery["path"] == "/hook?via=form"
    event = delivery["body"]
    assert event["event"] == "request.completed"
    assert event["status"] == "completed_with_errors"
    assert (event["total_images"], event["failed_images"]) == (9, 3)
    assert event["output_csv_url"].endswith(f"/api/v1/output/{request_id}.csv")
    status = service.get_json(f"/api/v1/status/{request_id}")
    assert status["webhook"]["status"] == "delivered"


def test_seed_routes_and_default_webhook(service, image_server, receiver):
    url = image_server.add("/only.jpg", images.jpeg_rgb(), content_type="image/jpeg")
    body = f'S. No.,Product Name,Input Image Urls\n1,Lamp,"{url}"\n'.encode()
    response = service.upload(body, path="/api/images/upload")
    assert response.status == 202, response.data
    request_id = json.loads(response.data)["request_id"]
    final, _ = service.wait_final(request_id, path="/api/status/")
    assert final["status"] == "completed"
    event = receiver.delivery_for(request_id)
    assert event["path"] == "/hook"  # WEBHOOK_URL from the environment


def test_bad_csv_is_refused_and_records_nothing(service):
    def recorded() -> tuple[int, list]:
        # The module's service: other tests' requests are there, this one adds none.
        listed = service.get_json("/api/v1/requests")["page"]["total"]
        return listed, sorted((service.data_dir / "objects").glob("requests/*"))

    before = recorded()
    response = service.upload(b"S. No.,Product Name\n1,Lamp\n")
    assert response.status == 422
    error = json.loads(response.data)
    assert error["title"] == "Invalid CSV"
    assert "Input Image Urls" in error["description"]
    assert recorded() == before
