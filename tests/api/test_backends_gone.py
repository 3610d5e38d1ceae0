"""The record store or the storage gone, full or read-only, through falcon.testing with
the real SQLite store and real local storage (the driver is the recording fake).

A storage "gone" here is its directory replaced by a plain file: every read and
write under it fails (ENOTDIR), also for root, whom `chmod` does not stop.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError
from falcon import testing
from fsspec.implementations.local import LocalFileSystem

from pipeline.completion import Completion
from pipeline.deliveries import Deliveries
from pipeline.errors import RecordStoreError
from pipeline.health import Backends
from pipeline.intake import WITHDRAWN
from pipeline.keys import output_csv_key, output_key
from pipeline.links import Links
from pipeline.models import ImageItem, ImageResult, NewRequest, RequestStatus
from pipeline.notify import WebhookSender
from pipeline.records.sqlite import SqliteRecordStore
from pipeline.storage import Storage
from tests.api.support import GOOD_CSV, T0, make_client, stored_files, upload

IMAGES = [
    ImageItem(0, 0, "1", "Trail Shoe", "https://img.example.com/a.jpg"),
    ImageItem(0, 1, "1", "Trail Shoe", "https://img.example.com/b.jpg"),
    ImageItem(1, 0, "2", "Mug", "https://img.example.com/c.png"),
]


def break_storage(root: Path) -> Path:
    """Replace the storage directory by a file; returns where the directory went."""
    root.mkdir(parents=True, exist_ok=True)
    away = root.with_name(root.name + ".away")
    root.rename(away)
    root.write_bytes(b"not a directory\n")
    return away


def restore_storage(root: Path, away: Path) -> None:
    root.unlink()
    away.rename(root)


def processed(client, store, storage) -> str:
    """An uploaded request whose images all have a result: two done, one failed."""
    rid = upload(client, GOOD_CSV).json["request_id"]
    store.add_images(rid, IMAGES)
    results = []
    for row, position in [(0, 0), (1, 0)]:
        key = output_key(rid, row, position)
        storage.put(key, b"\xff\xd8jpeg")
        results.append(ImageResult(row, position, ok=True, output_key=key, bytes_out=6))
    results.append(ImageResult(0, 1, ok=False, error="download failed: HTTP 404"))
    store.apply_results(rid, results, T0)
    return rid


def finished_without_csv(client, store, storage) -> str:
    """A final request whose output CSV object is missing."""
    rid = processed(client, store, storage)
    store.finish(rid, RequestStatus.COMPLETED_WITH_ERRORS, T0, output_key=output_csv_key(rid))
    return rid


def expected_rows(rid: str) -> list[list[str]]:
    media = "http://api.test/media/"
    return [
        ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"],
        [
            "1",
            "Trail Shoe",
            "https://img.example.com/a.jpg,https://img.example.com/b.jpg",
            f"{media}{output_key(rid, 0, 0)},",
        ],
        ["2", "Mug", "https://img.example.com/c.png", f"{media}{output_key(rid, 1, 0)}"],
    ]


def rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode())))


TITLES = {"records": "Record store unavailable", "storage": "Storage unavailable"}


def assert_unavailable(response, component: str) -> None:
    assert response.status_code == 503, response.text
    assert response.json["component"] == component
    assert response.json["title"] == TITLES[component]
    assert "/health" in response.json["description"]
    assert response.headers["retry-after"] == "5"


# -- the record store ----------------------------------------------------------------


def test_sqlite_file_deleted_uploads_and_reads_answer_503(client, settings):
    settings.sqlite_path.unlink()

    assert_unavailable(upload(client, GOOD_CSV), "records")
    assert stored_files(settings) == []  # its CSV was stored, then removed: no orphan
    # A poller is told the store is down, not that its request does not exist.
    assert_unavailable(client.simulate_get(f"/api/v1/requests/{'a' * 32}"), "records")
    # No new, empty database was started in its place.
    assert not settings.sqlite_path.exists()


def test_sqlite_file_moved_away_and_back_works_again_and_kept_nothing_refused(client, settings):
    before = upload(client, GOOD_CSV).json["request_id"]
    away = settings.sqlite_path.with_name("records.db.away")
    settings.sqlite_path.rename(away)

    assert_unavailable(upload(client, GOOD_CSV), "records")

    away.rename(settings.sqlite_path)
    after = upload(client, GOOD_CSV)
    assert after.status_code == 202
    listed = client.simulate_get("/api/v1/requests").json
    assert {r["request_id"] for r in listed["requests"]} == {before, after.json["request_id"]}


def test_sqlite_file_replaced_is_refused_until_a_restart_opens_it(client, store, settings):
    rid = upload(client, GOOD_CSV).json["request_id"]
    other = settings.data_dir / "other.db"
    SqliteRecordStore(other).close()
    os.replace(other, settings.sqlite_path)

    assert_unavailable(upload(client, GOOD_CSV), "records")
    with pytest.raises(RecordStoreError, match="replaced") as refused:
        store.get_request(rid)
    # What the message says to do: stop, remove the old file's log, start again.
    assert "stop the service, remove records.db-wal and records.db-shm" in str(refused.value)
    store.close()
    for name in ("records.db-wal", "records.db-shm"):
        (settings.data_dir / name).unlink()
    restarted = SqliteRecordStore(settings.sqlite_path)
    try:
        assert restarted.get_request(rid) is None  # the new file, as it is
    finally:
        restarted.close()


# -- the storage ---------------------------------------------------------------------


def test_upload_with_storage_gone_answers_503_and_records_nothing(client, store, settings):
    root = settings.data_dir / "objects"
    away = break_storage(root)

    assert_unavailable(upload(client, GOOD_CSV), "storage")
    assert store.list_requests() == ([], 0)

    restore_storage(root, away)
    assert upload(client, GOOD_CSV).status_code == 202


def test_output_csv_with_storage_gone_is_503(client, store, storage, settings):
    rid = finished_without_csv(client, store, storage)
    break_storage(settings.data_dir / "objects")
    assert_unavailable(client.simulate_get(f"/api/v1/output/{rid}.csv"), "storage")


class UnreachableS3(LocalFileSystem):
    """S3 whose endpoint refuses connections, as s3fs reports it: botocore's own
    error, passed on untranslated (no OSError), once the request is recorded."""

    protocol = ("s3", "s3a")

    def _open(self, path, mode="rb", **kwargs):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")


def test_output_csv_and_upload_with_s3_unreachable_are_503_not_500(
    client, store, storage, settings, runner
):
    rid = processed(client, store, storage)
    store.finish(rid, RequestStatus.COMPLETED, T0, output_key=output_csv_key(rid))
    unreachable = Storage(storage.config, fs=UnreachableS3(skip_instance_cache=True))
    s3_client = make_client(settings, store, unreachable, runner)

    assert_unavailable(s3_client.simulate_get(f"/api/v1/output/{rid}.csv"), "storage")
    assert_unavailable(upload(s3_client, GOOD_CSV), "storage")
    assert store.list_requests()[1] == 1  # the first upload only


def test_output_csv_is_404_for_an_unknown_request_and_409_before_it_finishes(client):
    assert client.simulate_get(f"/api/v1/output/{'e' * 32}.csv").json == {
        "title": "Request not found",
        "description": f"There is no request with id {'e' * 32!r}.",
    }
    rid = upload(client, GOOD_CSV).json["request_id"]
    unfinished = client.simulate_get(f"/api/v1/output/{rid}.csv")
    assert (unfinished.status_code, unfinished.json["title"]) == (409, "Not ready")


# -- /health -------------------------------------------------------------------------


def test_health_names_the_failing_backend_and_recovers(settings, store, storage, runner):
    client = make_client(
        settings, store, storage, runner, health=Backends(store, storage, interval=0).report
    )

    def health() -> tuple[int, dict]:
        response = client.simulate_get("/health")
        return response.status_code, response.json

    assert health() == (
        200,
        {
            "status": "ok",
            "failing": [],
            "records": {"healthy": True, "error": None},
            "storage": {"healthy": True, "error": None},
        },
    )

    root = settings.data_dir / "objects"
    away = break_storage(root)
    code, body = health()
    assert (code, body["status"], body["failing"]) == (503, "unavailable", ["storage"])
    assert "Not a directory" in body["storage"]["error"]
    restore_storage(root, away)
    assert health()[0] == 200

    moved = settings.sqlite_path.with_name("records.db.away")
    settings.sqlite_path.rename(moved)
    code, body = health()
    assert (code, body["failing"]) == (503, ["records"])
    assert "is gone" in body["records"]["error"]
    moved.rename(settings.sqlite_path)
    assert health()[0] == 200

    assert stored_files(settings) == []  # the storage probes left nothing behind


# -- a request finished while the storage was down; its output CSV ---------------------


def test_request_finished_with_storage_down_keeps_its_status_and_csv_is_rebuilt(
    client, store, storage, settings
):
    rid = processed(client, store, storage)
    store.claim_request(rid, "this-process", T0, 30)
    sender = WebhookSender()
    completion = Completion(
        store,
        storage,
        Deliveries(store, sender),
        Links("http://api.test"),
        owner="this-process",
        clock=lambda: T0,
        default_webhook_url="https://hooks.example.com/images",
    )
    root = settings.data_dir / "objects"
    away = break_storage(root)

    assert completion.complete(rid, cancelled=False)

    record = store.get_request(rid)
    # The images decide the status; the CSV that could not be written does not.
    assert (record.status, record.error) == (RequestStatus.COMPLETED_WITH_ERRORS, None)
    assert record.output_key == output_csv_key(rid)
    assert record.webhook["status"] == "pending"  # the webhook it owes is on its way
    restore_storage(root, away)
    assert not storage.exists(output_csv_key(rid))

    response = client.simulate_get(f"/api/v1/output/{rid}.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert rows(response.content) == expected_rows(rid)
    # Stored again on the way, whole, and served from there next time.
    assert storage.get(output_csv_key(rid)) == response.content
    assert [p.name for p in stored_files(settings) if p.suffix != ".jpg"] == [
        "input.csv",
        "output.csv",
    ]
    assert client.simulate_get(f"/api/v1/output/{rid}.csv").content == response.content


class FullDisk(LocalFileSystem):
    """Local files on a disk that has filled up: reads work, every write fails."""

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode or "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return super()._open(path, mode, **kwargs)


def test_output_csv_served_from_the_records_while_the_storage_is_full(
    settings, store, storage, runner
):
    client = make_client(settings, store, storage, runner)
    rid = finished_without_csv(client, store, storage)
    full = Storage(storage.config, fs=FullDisk(skip_instance_cache=True))
    full_client = make_client(settings, store, full, runner)

    response = full_client.simulate_get(f"/api/v1/output/{rid}.csv")

    assert response.status_code == 200
    assert rows(response.content) == expected_rows(rid)
    assert not [p for p in stored_files(settings) if "output.csv" in p.name]


def ignore_start(
    status: str, headers: list[tuple[str, str]], exc_info: object = None
) -> Callable[[bytes], object]:
    """A WSGI server's start_response, for tests that read only the body."""
    return lambda data: None


def test_output_csv_client_gone_midway_stores_no_partial_csv(settings, store, storage, runner):
    client = make_client(settings, store, storage, runner)
    rid = upload(client, GOOD_CSV).json["request_id"]
    # Enough products for several chunks of the response.
    store.add_images(
        rid, [ImageItem(row, 0, str(row), "P", f"https://x.example/{row}") for row in range(3000)]
    )
    store.apply_results(
        rid, [ImageResult(row, 0, ok=False, error="gone") for row in range(3000)], T0
    )
    store.finish(rid, RequestStatus.COMPLETED_WITH_ERRORS, T0, output_key=output_csv_key(rid))
    app = client.app
    body = app(testing.create_environ(path=f"/api/v1/output/{rid}.csv"), ignore_start)
    chunks = iter(body)
    assert next(chunks).startswith(b"S. No.,Product Name")
    assert hasattr(body, "close")  # WSGI: a body may have one, which the server then calls
    body.close()  # what the server does when the client hangs up

    assert [p.name for p in stored_files(settings)] == ["input.csv"]


def test_output_csv_of_100k_images_rebuilt_without_holding_its_rows(
    settings, store, storage, runner
):
    rid, images = "f" * 32, 100_000
    store.create_request(NewRequest(rid, T0, total_rows=images, total_images=images))
    store.add_images(
        rid, [ImageItem(r, 0, str(r), f"P{r}", f"https://x.example/{r}.jpg") for r in range(images)]
    )
    store.apply_results(
        rid,
        [ImageResult(r, 0, ok=True, output_key=output_key(rid, r, 0)) for r in range(images)],
        T0,
    )
    store.finish(rid, RequestStatus.COMPLETED, T0, output_key=output_csv_key(rid))
    app = make_client(settings, store, storage, runner).app

    tracemalloc.start()
    try:
        body = app(testing.create_environ(path=f"/api/v1/output/{rid}.csv"), ignore_start)
        sent, lines = 0, 0
        for chunk in body:
            sent += len(chunk)
            lines += chunk.count(b"\r\n")
        assert hasattr(body, "close")
        body.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert lines == images + 1
    assert len(storage.get(output_csv_key(rid))) == sent
    # A page of records and a chunk of CSV at a time: the whole file would not fit.
    assert peak < sent / 2, (sent, peak)


class AnswerLost(SqliteRecordStore):
    """A store that writes the request, then fails to say so (a MongoDB insert whose
    answer the network lost)."""

    def create_request(self, new: NewRequest) -> None:
        super().create_request(new)
        raise RecordStoreError("the connection closed before the answer")


def test_an_upload_refused_after_its_record_was_written_is_not_run(settings, storage, runner):
    store = AnswerLost(settings.sqlite_path)
    try:
        client = make_client(settings, store, storage, runner)
        assert_unavailable(upload(client, GOOD_CSV), "records")
        request_id = f"{1:032x}"  # make_client's first id
        record = store.get_request(request_id)
        assert record is not None
        # Its client was told 503: ended, so no sweep runs it, and its CSV is gone.
        assert (record.status, record.error) == (RequestStatus.FAILED, WITHDRAWN)
        assert runner.submitted == []
        assert stored_files(settings) == []
    finally:
        store.close()
