"""Flows the integration tests share: upload a request, watch it, check its outcome."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from tests import imagefactory as images
from tests.integration.service import Service
from tests.servers import ImageServer, WebhookReceiver

JPEG = images.jpeg_rgb()


def products_csv(urls: list[str], per_row: int = 2) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for n, start in enumerate(range(0, len(urls), per_row)):
        writer.writerow([n + 1, f"Product {n + 1}", ",".join(urls[start : start + per_row])])
    return out.getvalue().encode()


def upload(service: Service, urls: list[str], webhook: WebhookReceiver) -> str:
    response = service.upload(products_csv(urls), webhook_url=webhook.url)
    assert response.status == 202, response.data
    return json.loads(response.data)["request_id"]


def wait_until(
    service: Service, request_id: str, condition: Callable[[dict], bool], timeout: float = 120.0
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = service.get_json(f"/api/v1/status/{request_id}")
        if condition(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout}s: {status}\n{service.logs()}")


def eventually(probe: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def images_by_url(service: Service, request_id: str) -> dict[str, dict]:
    body = service.get_json(f"/api/v1/status/{request_id}?page=1&per_page=500")
    return {i["input_url"]: i for p in body["products"] for i in p["images"]}


def upload_and_wait_in_flight(
    service: Service, urls: list[str], webhook: WebhookReceiver
) -> tuple[str, list[str]]:
    """Upload, wait until some images are done and some not; those done so far."""
    request_id = upload(service, urls, webhook)
    wait_until(service, request_id, in_flight)
    by_url = images_by_url(service, request_id)
    return request_id, [u for u, i in by_url.items() if i["status"] == "done"]


def in_flight(status: dict) -> bool:
    return 2 <= status["processed_images"] < status["total_images"] - 2


def assert_accounted_for(
    service: Service, request_id: str, urls: list[str], webhook: WebhookReceiver, failed: int = 0
) -> dict[str, dict]:
    """Final, exact counts, every output fetchable, output CSV complete, one webhook."""
    final, _ = service.wait_final(request_id)
    expected = "completed" if failed == 0 else "completed_with_errors"
    assert final["status"] == expected, (final, service.logs())
    counts = (final["total_images"], final["processed_images"], final["failed_images"])
    assert counts == (len(urls), len(urls), failed), (final, service.logs())
    assert final["succeeded_images"] == len(urls) - failed

    by_url = images_by_url(service, request_id)
    assert sorted(by_url) == sorted(urls)
    assert sum(i["status"] == "failed" for i in by_url.values()) == failed
    for image in by_url.values():
        if image["status"] == "done":
            # By path: behind a load balancer, API_BASE_URL names it, not this process.
            fetched = service.get(urlsplit(image["output_url"]).path)
            assert fetched.status == 200 and fetched.data[:2] == b"\xff\xd8", image

    output = service.get(f"/api/v1/output/{request_id}.csv")
    assert output.status == 200
    rows = list(csv.reader(io.StringIO(output.data.decode())))[1:]
    assert [u for r in rows for u in r[2].split(",")] == urls
    for row in rows:
        for input_url, output_url in zip(row[2].split(","), row[3].split(","), strict=True):
            assert output_url == (by_url[input_url]["output_url"] or "")

    with webhook.arrived:
        delivered = webhook.arrived.wait_for(
            lambda: any(d["body"]["request_id"] == request_id for d in webhook.deliveries), 60
        )
    assert delivered, f"no webhook for {request_id}: {webhook.deliveries}"
    service.get_json(f"/api/v1/status/{request_id}")  # one more round trip for late duplicates
    events = [d["body"] for d in webhook.deliveries if d["body"]["request_id"] == request_id]
    assert len(events) == 1, events
    assert (events[0]["status"], events[0]["processed_images"]) == (expected, len(urls))
    return by_url


def slow_images(server: ImageServer, count: int, delay: float, prefix: str = "") -> list[str]:
    return [
        server.add(f"/{prefix}{i}.jpg", JPEG, content_type="image/jpeg", delay=delay)
        for i in range(count)
    ]
