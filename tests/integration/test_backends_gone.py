"""The record store or the storage gone in the middle of a run of the real service.

What a user relies on: an upload is refused at once with a 503 JSON error
naming the backend, never accepted into nothing; /health says which backend
fails; no request is failed or lost for an outage, and work goes on by itself
once the backend is back (no restart); a request whose images were processed
while the storage was gone ends with its status from the images, and its
output CSV is rebuilt from the records.

The storage is made to fail by replacing its directory with a plain file, so
every read and write under it fails (ENOTDIR). `chmod` would not do: the
tests may run as root, whom permissions do not stop, and a small full
filesystem needs root to mount.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import pytest

from tests.integration.dask_cli import DaskCliCluster
from tests.integration.flows import (
    JPEG,
    assert_accounted_for,
    eventually,
    images_by_url,
    products_csv,
    upload,
    wait_until,
)
from tests.integration.service import Service
from tests.servers import ImageServer

pytestmark = pytest.mark.integration


def images(server: ImageServer, prefix: str, count: int, hold: threading.Event | None = None):
    return [
        server.add(f"/{prefix}{i}.jpg", JPEG, content_type="image/jpeg", hold=hold)
        for i in range(count)
    ]


def break_storage(root: Path) -> Path:
    """The storage directory replaced by a plain file; returns where the directory went."""
    away = root.with_name(root.name + ".away")
    root.rename(away)
    root.write_bytes(b"not a directory\n")
    return away


def restore_storage(root: Path, away: Path) -> None:
    if away.exists():
        root.unlink()
        away.rename(root)


def refused_upload(service: Service, component: str) -> None:
    response = service.upload(products_csv(["http://127.0.0.1:9/x.jpg"]))
    assert response.status == 503, response.data
    body = json.loads(response.data)
    assert body["component"] == component and body["title"] and body["description"]
    assert response.headers["Retry-After"] == "5"


def health(service: Service) -> tuple[int, dict]:
    response = service.get("/health")
    return response.status, json.loads(response.data)


def started_with_held_batch(service, image_server, webhook, prefix: str):
    """A request of two batches of four: the first done, the second's downloads held."""
    hold = threading.Event()
    urls = images(image_server, prefix, 4) + images(image_server, f"{prefix}held-", 4, hold)
    request_id = upload(service, urls, webhook)
    wait_until(service, request_id, lambda s: s["processed_images"] >= 4)
    held = [u.removeprefix(image_server.base_url) for u in urls[4:]]
    eventually(lambda: all(image_server.hits.get(p) for p in held), "the second batch started")
    return request_id, urls, hold


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # Batches of four; 2 s leases, so a lease that lapsed during an outage is
    # taken up within a second of the store's return.
    service = Service(
        tmp_path_factory.mktemp("backends") / "data", BATCH_SIZE="4", LEASE_SECONDS="2"
    ).start()
    yield service
    service.stop()


def test_record_store_away_and_back_mid_request_loses_nothing(
    service, image_server, webhook_receiver
):
    request_id, urls, hold = started_with_held_batch(
        service, image_server, webhook_receiver, "away/"
    )
    database = service.data_dir / "records.db"
    away = database.with_name("records.db.away")
    kept_before = service.logs().count("results kept")
    database.rename(away)
    try:
        hold.set()  # the second batch finishes while its results cannot be recorded
        eventually(
            lambda: service.logs().count("results kept") > kept_before,
            "the driver kept the results the store refused",
        )
        refused_upload(service, "records")
        # Within a probe interval (answers are kept 2 s).
        eventually(lambda: health(service)[0] == 503, "/health answers 503")
        code, body = health(service)
        assert (code, body["status"], body["failing"]) == (503, "unavailable", ["records"])
        assert "is gone" in body["records"]["error"]
    finally:
        hold.set()
        if away.exists():
            away.rename(database)

    # Back: the kept results are recorded, the request completes, nothing was redone.
    assert_accounted_for(service, request_id, urls, webhook_receiver)
    assert all(image_server.hits[u.removeprefix(image_server.base_url)] == 1 for u in urls)
    eventually(lambda: health(service)[0] == 200, "healthy again")


def test_storage_gone_mid_request_then_back(service, image_server, webhook_receiver):
    request_id, urls, hold = started_with_held_batch(
        service, image_server, webhook_receiver, "stored/"
    )
    root = service.data_dir / "objects"
    away = break_storage(root)
    try:
        hold.set()  # the held images are downloaded, and cannot be stored
        final, _ = service.wait_final(request_id)
        # Final with every image accounted for, not failed for its output CSV.
        assert (final["status"], final["error"]) == ("completed_with_errors", None)
        assert (final["processed_images"], final["failed_images"]) == (8, 4)
        assert final["output_csv_url"]
        by_url = images_by_url(service, request_id)
        for url in urls[4:]:
            assert by_url[url]["error"].startswith("storage write failed: "), by_url[url]

        refused_upload(service, "storage")
        eventually(lambda: health(service)[0] == 503, "/health answers 503")
        assert health(service)[1]["failing"] == ["storage"]
        output = service.get(f"/api/v1/output/{request_id}.csv")
        assert output.status == 503 and json.loads(output.data)["component"] == "storage"
    finally:
        hold.set()
        restore_storage(root, away)

    eventually(lambda: health(service)[0] == 200, "healthy again")
    # The output CSV, never written, is rebuilt from the records (checked against the
    # images' output URLs), and stored again on the way.
    assert_accounted_for(service, request_id, urls, webhook_receiver, failed=4)
    stored = (root / "requests" / request_id / "output.csv").read_bytes()
    assert len(list(csv.reader(io.StringIO(stored.decode())))) == 1 + 4
    # New work goes through.
    later = images(image_server, "stored/later-", 2)
    assert_accounted_for(service, upload(service, later, webhook_receiver), later, webhook_receiver)


def test_record_store_deleted_mid_run(tmp_path, image_server, webhook_receiver):
    service = Service(tmp_path / "data").start()
    hold = threading.Event()
    try:
        urls = images(image_server, "deleted/", 2, hold)
        request_id = upload(service, urls, webhook_receiver)
        wait_until(service, request_id, lambda s: s["status"] == "processing")
        (service.data_dir / "records.db").unlink()

        # Refused at once, not accepted into a file nobody reads.
        refused_upload(service, "records")
        eventually(lambda: health(service)[0] == 503, "/health answers 503")
        code, body = health(service)
        assert (code, body["failing"]) == (503, ["records"])
        assert "restart the service" in body["records"]["error"]
        assert not (service.data_dir / "records.db").exists()

        # What the error says to do: a restart starts a new, empty record store.
        hold.set()
        service.stop()
        service.restart()
        assert health(service)[0] == 200
        later = images(image_server, "deleted/later-", 2)
        assert_accounted_for(
            service, upload(service, later, webhook_receiver), later, webhook_receiver
        )
    finally:
        hold.set()
        service.stop()


def test_request_staged_while_storage_is_gone_waits_then_completes(
    tmp_path, image_server, webhook_receiver
):
    # A scheduler without workers: the request's staging waits for one, so the
    # storage can be taken away between the upload and the staging.
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    cluster = DaskCliCluster(logs, workers=0).start()
    service = Service(tmp_path / "data", DASK_SCHEDULER_ADDRESS=cluster.address, LEASE_SECONDS="2")
    root = service.data_dir / "objects"
    away = None
    try:
        service.start()  # in the try: a service that fails to start must not leak the cluster
        urls = images(image_server, "staged/", 2)
        request_id = upload(service, urls, webhook_receiver)
        wait_until(service, request_id, lambda s: s["status"] == "queued")
        away = break_storage(root)
        cluster._spawn(
            "w1",
            *("worker", cluster.address, "--name", "w1", "--nthreads", "2"),
            *("--no-nanny", "--no-dashboard", "--preload", "pipeline.worker_preload"),
        )
        # Staging fails on the missing storage; the request is left unfinished and
        # taken up again by the next sweeps, not failed.
        left = f"request {request_id} left unfinished"
        eventually(lambda: service.logs().count(left) >= 2, "the request was taken up again")
        status = service.get_json(f"/api/v1/status/{request_id}")
        assert (status["status"], status["error"]) == ("queued", None)
        # ...and the request says why it is not moving.
        assert status["waiting_reason"].startswith("waiting for a backend: "), status

        restore_storage(root, away)
        assert_accounted_for(service, request_id, urls, webhook_receiver)
        assert service.get_json(f"/api/v1/requests/{request_id}")["waiting_reason"] is None
    finally:
        if away is not None:
            restore_storage(root, away)
        service.stop()
        cluster.stop()
