"""The driver against a real Dask cluster (scheduler + worker processes) on loopback."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from distributed import Client, LocalCluster
from PIL import Image

from pipeline.batch import run_csv
from pipeline.csv_input import parse_products
from pipeline.deliveries import Deliveries
from pipeline.errors import OptionError
from pipeline.keys import input_csv_key, manifest_key, output_key
from pipeline.models import (
    ImageResult,
    ImageStatus,
    NewRequest,
    RequestStatus,
    image_items,
    iso,
)
from pipeline.notify import WebhookSender
from pipeline.options import OutputOptions
from pipeline.outputs import csv_chunks as stored_csv_chunks
from pipeline.service import build_services
from pipeline.settings import Settings
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
    assert services.storage.exists(manifest_key(rid))
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
    assert "ObjectNotFound" in record.error and "input.csv" in record.error
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


# --- output options and repeated URLs ---------------------------------------------------


def repeated_csv(image_server, prefix: str) -> tuple[bytes, str]:
    """Five slots of one URL: twice in row 1, then in rows 3, 5 and 6 (other batches at
    batch_size=2), among other images."""
    same = image_server.add(f"/{prefix}/same.jpg", images.jpeg_rgb(), content_type="image/jpeg")
    other = [
        image_server.add(f"/{prefix}/o{i}.png", images.png_rgba(), content_type="image/png")
        for i in range(4)
    ]
    rows = [
        f'1,Shirt S,"{same},{other[0]},{same}"',
        f"2,Shirt M,{other[1]}",
        f'3,Shirt L,"{other[2]},{same}"',
        f"4,Cap,{other[3]}",
        f"5,Shirt XL,{same}",
        f"6,Shirt XXL,{same}",
    ]
    return ("S. No.,Product Name,Input Image Urls\n" + "\n".join(rows) + "\n").encode(), same


def test_a_repeated_url_is_fetched_once_and_every_slot_gets_its_output(services, image_server):
    csv_bytes, same = repeated_csv(image_server, "rep")
    record = run_csv(
        services, csv_bytes, format="webp", max_width=64, max_height=64, progress=False
    )
    assert record.status is RequestStatus.COMPLETED
    assert (record.total_images, record.processed_images) == (9, 9)
    assert image_server.hits["/rep/same.jpg"] == 1
    slots = [i for i in services.store.iter_images(record.request_id) if i.input_url == same]
    assert [(i.row, i.position) for i in slots] == [(0, 0), (0, 2), (2, 1), (4, 0), (5, 0)]
    assert {i.status for i in slots} == {ImageStatus.DONE}
    assert {i.output_key for i in slots} == {output_key(record.request_id, 0, 0, "webp")}
    data = services.storage.get(slots[0].output_key)
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "WEBP" and out.size == (64, 48)
    # The output CSV gives each slot its URL.
    lines = list(csv.reader(io.StringIO(b"".join(csv_chunks(services, record)).decode())))
    url = services.storage.url(slots[0].output_key)
    assert [line[3].split(",").count(url) for line in lines[1:]] == [2, 0, 1, 0, 1, 1]


def test_a_resumed_request_keeps_its_options_and_finishes_pending_repeats(services, image_server):
    csv_bytes, _ = repeated_csv(image_server, "res")
    rid = "a" * 32
    services.storage.put(input_csv_key(rid), csv_bytes)
    options = OutputOptions("avif", 40, 100, None)
    services.store.create_request(
        NewRequest(
            request_id=rid,
            created_at=datetime.now(UTC),
            total_rows=6,
            total_images=9,
            options=options,
        )
    )
    # A previous process recorded the images and the first slot of the repeated URL,
    # but died before its repeats were written (MongoDB writes them one by one).
    store = services.store
    store.add_images(rid, image_items(parse_products(csv_bytes)))
    store.mark_processing(rid, datetime.now(UTC))
    first = output_key(rid, 0, 0, "avif")
    services.storage.put(first, b"made before")
    store.apply_results(
        rid,
        [ImageResult(0, 0, ok=True, output_key=first, bytes_in=1, bytes_out=1)],
        datetime.now(UTC),
    )

    services.sweeper.take_over()
    assert services.driver.wait(rid, timeout=120)
    record = store.get_request(rid)
    assert record.status is RequestStatus.COMPLETED, record.error
    assert record.options == options
    images_ = {(i.row, i.position): i for i in store.iter_images(rid)}
    assert all(i.status is ImageStatus.DONE for i in images_.values())
    # The repeats got the URL's result again, fetched once more (not once per slot).
    assert image_server.hits["/res/same.jpg"] == 1
    assert images_[(4, 0)].output_key == first and images_[(0, 2)].output_key == first
    other = images_[(0, 1)]
    assert other.output_key.endswith(".avif") and other.width == 100
    with Image.open(io.BytesIO(services.storage.get(other.output_key))) as out:
        assert out.format == "AVIF"


def csv_chunks(services, record):
    return stored_csv_chunks(services.store, services.storage, record.request_id)


def test_run_csv_refuses_a_bad_option_before_anything_is_stored(services, image_server):
    csv_bytes, _ = repeated_csv(image_server, "bad")
    with pytest.raises(OptionError) as caught:
        run_csv(services, csv_bytes, format="webp", max_width=20_000, progress=False)
    assert caught.value.field == "max_width"
    assert services.store.list_requests() == ([], 0)


def test_a_request_where_every_image_failed_ends_failed_with_the_common_reason(
    services, image_server, webhook_receiver
):
    gone = [image_server.url(f"/gone/{i}.jpg") for i in range(3)]
    text = image_server.add("/text.jpg", b"Not Found", content_type="text/plain")
    csv_bytes = (
        "\ufeffS. No.,Product Name,Input Image Urls\n"  # saved by Excel: with a BOM
        f'1,Café,"{gone[0]},{gone[1]}"\n2,Mug,"{gone[2]},{text}"\n'
    ).encode()
    record = run_csv(services, csv_bytes, progress=False)
    assert record.status is RequestStatus.FAILED
    assert record.error is not None
    assert record.error.startswith("all 4 images failed; the most common reason (3 of 4): ")
    assert "HTTP 404" in record.error
    # Still an output CSV (every slot empty), with the input's BOM mirrored.
    output = b"".join(csv_chunks(services, record))
    assert services.storage.get(record.output_key) == output
    assert output.startswith(b"\xef\xbb\xbfS. No.,") and "Café".encode() in output
    event = webhook_receiver.wait_for(1)[0]["body"]
    assert (event["status"], event["error"]) == ("failed", record.error)
