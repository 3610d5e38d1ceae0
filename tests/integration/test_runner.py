"""The driver against a real Dask cluster (scheduler + worker processes) on loopback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from distributed import Client, LocalCluster

from pipeline import manifest
from pipeline.csv_input import parse_products
from pipeline.deliveries import Deliveries
from pipeline.models import (
    ImageResult,
    NewRequest,
    RequestStatus,
    image_items,
    iso,
    output_key,
)
from pipeline.notify import WebhookSender
from pipeline.service import build_services
from pipeline.settings import Settings
from pipeline.tasks import input_csv_key
from tests import imagefactory as images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dask_client():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def services(tmp_path, dask_client, webhook_receiver):
    settings = Settings(
        data_dir=tmp_path,
        allow_private_networks=True,
        batch_size=2,
        webhook_url=webhook_receiver.url,
    )
    # The module's Dask client is given, so close() leaves it open for the next test.
    services = build_services(settings, client=dask_client)
    services.driver.start()
    services.deliveries.start()
    yield services
    services.close()


def new_request(services, csv: bytes, rid: str) -> str:
    services.storage.put(input_csv_key(rid), csv)
    rows = csv.decode().strip().splitlines()[1:]
    total = sum(len(r.split('"')[1].split(",")) for r in rows)
    services.store.create_request(
        NewRequest(
            request_id=rid, created_at=datetime.now(UTC), total_rows=len(rows), total_images=total
        )
    )
    return rid


def catalogue_csv(image_server, n: int) -> bytes:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for i in range(n):
        a = image_server.add(f"/{i}/a.jpg", images.jpeg_rgb(), content_type="image/jpeg")
        b = image_server.add(f"/{i}/b.png", images.png_rgba(), content_type="image/png")
        lines.append(f'{i + 1},Product {i + 1},"{a},{b}"')
    return ("\n".join(lines) + "\n").encode()


def test_resume_redoes_only_images_without_a_result(services, image_server, webhook_receiver):
    rid = new_request(services, catalogue_csv(image_server, 3), "r" * 32)
    # A previous process staged the request and finished two images, then died.
    store = services.store
    items = image_items(parse_products(services.storage.get(input_csv_key(rid))))
    store.add_images(rid, items)
    store.mark_processing(rid, datetime.now(UTC))
    store.apply_results(
        rid,
        [
            ImageResult(0, 0, ok=True, output_key=output_key(rid, 0, 0), bytes_in=1, bytes_out=1),
            ImageResult(2, 1, ok=False, error="download failed: HTTP 404"),
        ],
        datetime.now(UTC),
    )

    # What a process's sweep does with a request nobody holds.
    services.sweeper.take_over()
    assert services.driver.driving() == [rid]
    assert services.driver.wait(rid, timeout=120)

    record = store.get_request(rid)
    assert record.status is RequestStatus.COMPLETED_WITH_ERRORS
    assert (record.processed_images, record.failed_images) == (6, 1)
    assert image_server.hits.get("/0/a.jpg") is None and image_server.hits.get("/2/b.png") is None
    assert all(image_server.hits[p] == 1 for p in ("/0/b.png", "/1/a.jpg", "/1/b.png", "/2/a.jpg"))
    assert services.storage.exists(output_key(rid, 1, 1))
    assert services.storage.exists(manifest.manifest_key(rid))
    assert webhook_receiver.wait_for(1)[0]["body"]["request_id"] == rid


def test_whole_request_failure_is_recorded_and_notified(services, webhook_receiver):
    rid = "f" * 32
    services.store.create_request(
        NewRequest(request_id=rid, created_at=datetime.now(UTC), total_rows=1, total_images=1)
    )
    # The input CSV is missing from storage: the stage task cannot run.
    services.driver.submit(rid)
    assert services.driver.wait(rid, timeout=60)
    record = services.store.get_request(rid)
    assert record.status is RequestStatus.FAILED
    assert "FileNotFoundError" in record.error
    event = webhook_receiver.wait_for(1)[0]["body"]
    assert (event["request_id"], event["status"], event["output_csv_url"]) == (rid, "failed", None)


def test_finished_request_is_not_run_again(services, image_server, webhook_receiver):
    rid = new_request(services, catalogue_csv(image_server, 1), "d" * 32)
    services.driver.submit(rid)
    assert services.driver.wait(rid, timeout=120)
    assert services.store.get_request(rid).status is RequestStatus.COMPLETED
    assert services.driver.submit(rid) is False  # final: nothing to claim
    services.sweeper.take_over()
    assert services.driver.wait(rid, timeout=10)
    assert image_server.hits["/0/a.jpg"] == 1
    assert len(webhook_receiver.wait_for(1)) == 1


def test_webhook_owed_by_a_finished_request_survives_the_process(
    services, image_server, webhook_receiver, monkeypatch
):
    # The process dies right after the final status is written: no later record
    # write happens, and the delivery thread's in-memory queue is lost.
    def died(*args, **kwargs):
        raise RuntimeError("the process is gone")

    services.deliveries.stop()
    monkeypatch.setattr(services.store, "set_webhook_state", died)
    rid = new_request(services, catalogue_csv(image_server, 1), "e" * 32)
    services.driver.submit(rid)
    assert services.driver.wait(rid, timeout=120)
    record = services.store.get_request(rid)
    assert record.status is RequestStatus.COMPLETED and not webhook_receiver.deliveries
    monkeypatch.undo()

    # The next start finds the delivery, stored with the final status, and sends it once.
    sender = WebhookSender(timeout=5, allow_private_networks=True)
    next_start = Deliveries(services.store, sender, schedule=(0.1,))
    assert next_start.resume() == 1
    next_start.start()
    try:
        assert next_start.wait_idle(30)
    finally:
        next_start.stop()
    [delivery] = webhook_receiver.deliveries
    event = delivery["body"]
    assert (event["request_id"], event["status"], event["processed_images"]) == (
        rid,
        "completed",
        2,
    )
    assert event["completed_at"] == iso(record.completed_at)
