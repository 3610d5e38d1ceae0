"""Requests as shared jobs: list, cancel and delete, through falcon.testing with the real
SQLite store and local storage (the driver is the recording fake)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.keys import output_key
from pipeline.models import ImageItem, ImageResult, NewRequest, RequestStatus
from pipeline.storage import Storage
from tests.api.support import GOOD_CSV, T0, make_client, upload


def started(client, store, storage) -> str:
    """An uploaded request with its three images recorded, one of them done."""
    rid = upload(client, GOOD_CSV).json["request_id"]
    store.add_images(
        rid,
        [
            ImageItem(0, 0, "1", "Trail Shoe", "https://img.example.com/a.jpg"),
            ImageItem(0, 1, "1", "Trail Shoe", "https://img.example.com/b.jpg"),
            ImageItem(1, 0, "2", "Mug", "https://img.example.com/c.png"),
        ],
    )
    store.mark_processing(rid, T0 + timedelta(seconds=1))
    key = output_key(rid, 0, 0)
    storage.put(key, b"\xff\xd8jpeg")
    store.apply_results(
        rid, [ImageResult(0, 0, ok=True, output_key=key, bytes_in=9, bytes_out=3)], T0
    )
    return rid


def finished(client, store, storage) -> str:
    rid = started(client, store, storage)
    store.apply_results(
        rid,
        [
            ImageResult(0, 1, ok=False, error="download failed: HTTP 404"),
            ImageResult(1, 0, ok=False, error="download failed: HTTP 404"),
        ],
        T0,
    )
    storage.put(f"requests/{rid}/output.csv", b"S. No.,Product Name\r\n")
    store.finish(
        rid,
        RequestStatus.COMPLETED_WITH_ERRORS,
        T0 + timedelta(seconds=3),
        output_key=f"requests/{rid}/output.csv",
    )
    return rid


def files_of(settings, rid: str) -> list[str]:
    folder = settings.data_dir / "objects" / "requests" / rid
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# -- cancel ---------------------------------------------------------------------------


def test_cancel_an_unfinished_request(client, store, storage, runner):
    rid = started(client, store, storage)
    response = client.simulate_post(f"/api/v1/requests/{rid}/cancel")
    assert response.status_code == 202
    assert response.headers["location"] == f"/api/v1/requests/{rid}"
    body = response.json
    # The driver finishes the cancel: the answer is the status as it is now.
    assert body["status"] == "processing"
    assert body["cancel_requested_at"] == "2026-01-02T03:04:05Z"
    assert body["cancel_url"] == f"http://api.test/api/v1/requests/{rid}/cancel"
    assert body["status_url"] == f"http://api.test/api/v1/requests/{rid}"
    assert runner.cancelled == [rid]
    assert store.get_request(rid).cancel_requested_at == T0
    assert store.cancel_requested([rid]) == {rid}
    # What a poller sees afterwards says the cancel is under way.
    status = client.simulate_get(f"/api/v1/requests/{rid}").json
    assert status["cancel_requested_at"] == "2026-01-02T03:04:05Z"


def test_cancelling_twice_is_harmless(client, store, storage, runner):
    rid = upload(client, GOOD_CSV).json["request_id"]
    first = client.simulate_post(f"/api/v1/requests/{rid}/cancel")
    again = client.simulate_post(f"/api/v1/requests/{rid}/cancel")
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json["status"] == "pending"
    assert again.json["cancel_requested_at"] == first.json["cancel_requested_at"]
    assert runner.cancelled == [rid, rid]


def test_cancel_a_finished_request_is_409_naming_its_status(client, store, storage, runner):
    rid = finished(client, store, storage)
    response = client.simulate_post(f"/api/v1/requests/{rid}/cancel")
    assert response.status_code == 409
    assert response.json["status"] == "completed_with_errors"
    assert response.json["description"] == (
        f"Request {rid} is completed_with_errors; only an unfinished request can be cancelled."
    )
    assert runner.cancelled == []
    assert store.get_request(rid).cancel_requested_at is None


def test_cancel_an_unknown_request_is_404(client, runner):
    response = client.simulate_post(f"/api/v1/requests/{'f' * 32}/cancel")
    assert response.status_code == 404
    assert response.json["title"] == "Request not found"
    assert runner.cancelled == []


def test_a_cancelled_request_reads_as_final(client, store, storage):
    rid = started(client, store, storage)
    client.simulate_post(f"/api/v1/requests/{rid}/cancel")
    # What the driver does when it acts on the cancel.
    assert store.cancel_pending_images(rid) == 2
    store.finish(rid, RequestStatus.CANCELLED, T0 + timedelta(seconds=5))
    status = client.simulate_get(f"/api/v1/requests/{rid}", params={"page": 1}).json
    assert status["status"] == "cancelled"
    assert (status["processed_images"], status["cancelled_images"]) == (1, 2)
    assert status["cancel_url"] is None
    images = [i["status"] for p in status["products"] for i in p["images"]]
    assert images == ["done", "cancelled", "cancelled"]
    again = client.simulate_post(f"/api/v1/requests/{rid}/cancel")
    assert again.status_code == 409 and again.json["status"] == "cancelled"
    csv = client.simulate_get(f"/api/v1/output/{rid}.csv")
    assert csv.status_code == 409 and "cancelled" in csv.json["description"]


# -- delete ---------------------------------------------------------------------------


def test_delete_a_finished_request_removes_its_objects_and_records(
    client, settings, store, storage
):
    rid = finished(client, store, storage)
    other = finished(client, store, storage)
    others_files = files_of(settings, other)
    assert files_of(settings, rid) == ["images/0000000-000.jpg", "input.csv", "output.csv"]

    response = client.simulate_delete(f"/api/v1/requests/{rid}")
    assert response.status_code == 204 and response.content == b""
    assert not (settings.data_dir / "objects" / "requests" / rid).exists()
    assert store.get_request(rid) is None
    assert store.list_images(rid, 0, 10) == []
    for path in (f"/api/v1/requests/{rid}", f"/api/v1/status/{rid}", f"/api/v1/output/{rid}.csv"):
        assert client.simulate_get(path).status_code == 404, path
    assert client.simulate_get(f"/media/{output_key(rid, 0, 0)}").status_code == 404
    assert client.simulate_delete(f"/api/v1/requests/{rid}").status_code == 404
    # Nothing of another request is touched.
    assert files_of(settings, other) == others_files
    assert client.simulate_get(f"/api/v1/requests/{other}").json["status"] == (
        "completed_with_errors"
    )
    assert client.simulate_get(f"/media/{output_key(other, 0, 0)}").content == b"\xff\xd8jpeg"


def test_a_cancelled_request_can_be_deleted(client, settings, store, storage):
    rid = upload(client, GOOD_CSV).json["request_id"]
    client.simulate_post(f"/api/v1/requests/{rid}/cancel")
    store.finish(rid, RequestStatus.CANCELLED, T0)
    assert client.simulate_delete(f"/api/v1/requests/{rid}").status_code == 204
    assert store.get_request(rid) is None and files_of(settings, rid) == []


def test_a_request_with_nothing_stored_can_be_deleted(client, store):
    rid = "c" * 32
    store.create_request(NewRequest(request_id=rid, created_at=T0, total_rows=1, total_images=1))
    store.finish(rid, RequestStatus.FAILED, T0, error="StorageError: bucket gone")
    assert client.simulate_delete(f"/api/v1/requests/{rid}").status_code == 204
    assert store.get_request(rid) is None


def test_delete_an_unfinished_request_is_409_and_removes_nothing(client, settings, store, storage):
    rid = started(client, store, storage)
    before = files_of(settings, rid)
    response = client.simulate_delete(f"/api/v1/requests/{rid}")
    assert response.status_code == 409
    assert response.json["status"] == "processing"
    assert "cancel it first" in response.json["description"].lower()
    assert files_of(settings, rid) == before
    assert store.get_request(rid).status is RequestStatus.PROCESSING
    assert len(store.list_images(rid, 0, 10)) == 3


def test_delete_an_unknown_request_is_404(client):
    response = client.simulate_delete(f"/api/v1/requests/{'f' * 32}")
    assert response.status_code == 404
    assert response.json["title"] == "Request not found"


class RefusingFileSystem(LocalFileSystem):
    """Local files whose removal fails, as a bucket policy or a full disk might."""

    def rm(self, path, recursive=False, maxdepth=None):
        raise PermissionError(13, "Permission denied", path)


def test_a_failed_removal_keeps_the_record_to_retry_with(settings, store, storage, runner):
    refusing = Storage(storage.config, fs=RefusingFileSystem())
    client = make_client(settings, store, refusing, runner)
    rid = finished(client, store, storage)
    response = client.simulate_delete(f"/api/v1/requests/{rid}")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert store.get_request(rid).status is RequestStatus.COMPLETED_WITH_ERRORS
    assert "input.csv" in files_of(settings, rid)
    # Retried once storage works again, it finishes the job.
    retry = make_client(settings, store, storage, runner)
    assert retry.simulate_delete(f"/api/v1/requests/{rid}").status_code == 204
    assert files_of(settings, rid) == [] and store.get_request(rid) is None


# -- list -------------------------------------------------------------------------------


def recorded(store, n: int, *, owner: str | None = None, status=RequestStatus.PENDING) -> str:
    """A request made `n` minutes after T0, in the given status."""
    rid = f"{n:04x}".rjust(32, "d")
    created = T0 + timedelta(minutes=n)
    store.create_request(
        NewRequest(rid, created_at=created, total_rows=1, total_images=1, owner=owner)
    )
    if status is RequestStatus.PROCESSING:
        store.mark_processing(rid, created)
    elif status is RequestStatus.QUEUED:
        store.mark_queued(rid, created)
    elif status.is_final:
        store.finish(rid, status, created)
    return rid


@pytest.fixture
def five(store) -> list[str]:
    """Five requests, oldest first, in various statuses."""
    statuses = [
        RequestStatus.COMPLETED,
        RequestStatus.FAILED,
        RequestStatus.PROCESSING,
        RequestStatus.CANCELLED,
        RequestStatus.QUEUED,
    ]
    return [recorded(store, n, status=s) for n, s in enumerate(statuses)]


def test_list_is_newest_first_in_pages_with_a_next_link(client, five):
    first = client.simulate_get("/api/v1/requests", params={"per_page": 2})
    assert first.status_code == 200
    assert [r["request_id"] for r in first.json["requests"]] == [five[4], five[3]]
    assert first.json["page"] == {
        "page": 1,
        "per_page": 2,
        "total": 5,
        "next": "http://api.test/api/v1/requests?page=2&per_page=2",
    }
    seen = [r["request_id"] for r in first.json["requests"]]
    url = first.json["page"]["next"]
    while url:
        page = client.simulate_get(url.removeprefix("http://api.test")).json
        seen += [r["request_id"] for r in page["requests"]]
        url = page["page"]["next"]
    assert seen == five[::-1]
    assert page["page"] == {"page": 3, "per_page": 2, "total": 5, "next": None}


def test_list_entries_are_status_bodies_without_products(client, five):
    body = client.simulate_get("/api/v1/requests").json
    assert body["page"] == {"page": 1, "per_page": 20, "total": 5, "next": None}
    newest = body["requests"][0]
    assert newest == client.simulate_get(f"/api/v1/requests/{five[4]}").json
    assert newest["status"] == "queued" and "products" not in newest
    assert newest["cancel_url"] == f"http://api.test/api/v1/requests/{five[4]}/cancel"
    assert [r["status"] for r in body["requests"]] == [
        "queued",
        "cancelled",
        "processing",
        "failed",
        "completed",
    ]


@pytest.mark.parametrize(
    "params",
    [
        "status=completed&status=cancelled&status=failed",
        "status=completed,cancelled,failed",
        "status=completed,cancelled&status=failed&status=failed",
    ],
)
def test_list_filters_by_status(client, five, params):
    body = client.simulate_get("/api/v1/requests", query_string=params + "&per_page=2").json
    assert [r["request_id"] for r in body["requests"]] == [five[3], five[1]]
    assert body["page"]["total"] == 3
    assert body["page"]["next"] == (
        "http://api.test/api/v1/requests?status=completed,cancelled,failed&page=2&per_page=2"
    )
    rest = client.simulate_get(body["page"]["next"].removeprefix("http://api.test")).json
    assert [r["request_id"] for r in rest["requests"]] == [five[0]]


def test_list_of_nothing(client, five):
    body = client.simulate_get("/api/v1/requests", params={"status": "completed_with_errors"}).json
    assert body == {"requests": [], "page": {"page": 1, "per_page": 20, "total": 0, "next": None}}
    beyond = client.simulate_get("/api/v1/requests", params={"page": 9}).json
    assert beyond["requests"] == [] and beyond["page"]["total"] == 5


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("status=finished", "'finished' is not a request status"),
        ("status=completed,Done", "'Done' is not a request status"),
        ("page=0", "page"),
        ("per_page=101", "per_page"),
        ("per_page=0", "per_page"),
        ("page=two", "page"),
    ],
)
def test_list_refuses_bad_parameters(client, query, needle):
    response = client.simulate_get("/api/v1/requests", query_string=query)
    assert response.status_code == 400
    assert needle in response.json["description"]
    if "status" in query:
        assert "pending, queued, processing" in response.json["description"]


def test_request_route_is_the_status_resource(client, store, storage):
    rid = started(client, store, storage)
    for params in ({}, {"page": 1, "per_page": 1}, {"page": 2, "per_page": 1}):
        new = client.simulate_get(f"/api/v1/requests/{rid}", params=params).json
        assert new == client.simulate_get(f"/api/v1/status/{rid}", params=params).json
        assert new == client.simulate_get(f"/api/status/{rid}", params=params).json
    page = client.simulate_get(f"/api/v1/requests/{rid}", params={"page": 1, "per_page": 1}).json
    assert page["page"]["next"] == f"http://api.test/api/v1/requests/{rid}?page=2&per_page=1"
    assert page["products_url"] == f"http://api.test/api/v1/requests/{rid}?page=1"
