"""Several API processes sharing one MongoDB and one storage folder, for real.

Real `python -m api` processes (waitress + their own LocalCluster; a pair
that the module shares, and those a test kills, restarts or configures its
own way) run against one MongoDB wire-protocol server (SecantusDB, or a real
mongod with MONGODB_URI) and one storage folder, as behind a load balancer;
the tests check what users of a shared service rely on: one owner per request,
takeover when an owner dies, nothing fetched or notified twice, fair sharing,
cancel, delete, retention and listing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.integration.flows import (
    JPEG,
    assert_accounted_for,
    eventually,
    images_by_url,
    in_flight,
    products_csv,
    slow_images,
    upload,
    wait_until,
)
from tests.integration.service import Service
from tests.mongo_server import fresh_database_name

pytestmark = pytest.mark.integration

LEASE = 2  # seconds: a dead owner's requests are taken up quickly
BASE_URL = "http://localhost:8080"  # the load balancer's address, the same for all processes


@dataclass
class Deployment:
    """API processes behind one address, on one record store and one storage folder."""

    root: Path  # the storage folder is root / "objects"
    mongodb_uri: str
    database: str
    started: list[Service] = dataclass_field(default_factory=list)

    def start(self, **env: str) -> Service:
        service = Service(
            self.root / f"api-{len(self.started)}",
            MONGODB_URI=self.mongodb_uri,
            MONGODB_DB=self.database,
            STORAGE_URL=(self.root / "objects").as_uri(),
            API_BASE_URL=BASE_URL,
            PUBLIC_BASE_URL=f"{BASE_URL}/media",
            LEASE_SECONDS=str(LEASE),
            BATCH_SIZE="2",
            **env,
        )
        self.started.append(service)
        return service.start()

    def stop(self, first: int = 0) -> None:
        for service in self.started[first:]:
            if service.process is not None and service.process.poll() is None:
                service.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, mongodb_uri):
    """Two processes with the default settings, for the module: the tests that neither
    kill, restart nor reconfigure them use these (each with its own requests and
    images), and start beside them only the processes they kill or restart."""
    database = fresh_database_name()
    deployment = Deployment(tmp_path_factory.mktemp("sharing"), mongodb_uri, database)
    try:
        deployment.start()
        deployment.start()
        yield deployment
    finally:
        deployment.stop()
        client: MongoClient
        with MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(database)


@pytest.fixture
def pair(deployment) -> tuple[Service, Service]:
    a, b = deployment.started[:2]
    return a, b


@pytest.fixture
def beside(deployment):
    """Start processes beside the pair, on their records and storage; stop them after."""
    first_new = len(deployment.started)
    yield deployment.start
    deployment.stop(first_new)


@pytest.fixture
def shared(tmp_path, mongodb_uri, mongodb_database):
    """Start processes with settings of the test's own, on a record store and a storage
    folder of its own (the pair would sweep the same records with theirs)."""
    deployment = Deployment(tmp_path, mongodb_uri, mongodb_database)
    yield deployment.start
    deployment.stop()


def lease_owner(mongodb_uri: str, database: str, request_id: str) -> str | None:
    client: MongoClient
    with MongoClient(mongodb_uri) as client:
        record = client[database]["requests"].find_one({"_id": request_id})
    assert record is not None, f"no record of {request_id}"
    return record["lease_owner"]


def driven_by(service: Service, owner: str | None) -> bool:
    return owner is not None and f":{service.pid}:" in owner


def test_killed_owner_is_taken_over_once_its_lease_expires(
    deployment, pair, beside, image_server, webhook_receiver
):
    a, b = beside(), pair[1]
    mongodb_uri, mongodb_database = deployment.mongodb_uri, deployment.database
    urls = slow_images(image_server, 24, delay=0.5)
    request_id = upload(a, urls, webhook_receiver)
    wait_until(a, request_id, in_flight)
    assert driven_by(a, lease_owner(mongodb_uri, mongodb_database, request_id))
    done_before = [u for u, i in images_by_url(b, request_id).items() if i["status"] == "done"]

    a.kill_group()  # the API process and its Dask workers, mid-request

    # No restart: the other process's sweep takes the request once the lease lapses.
    by_url = assert_accounted_for(b, request_id, urls, webhook_receiver)
    hits = {u: image_server.hits[u.removeprefix(image_server.base_url)] for u in urls}
    assert all(hits[u] == 1 for u in done_before), hits  # recorded before the kill: not redone
    assert all(1 <= n <= 2 for n in hits.values()), hits  # redone only if in flight at the kill
    assert all(i["status"] == "done" for i in by_url.values())

    # Exactly one webhook, its body what the status API says, whichever process sent it.
    time.sleep(3 * LEASE)  # time for a wrong second delivery to arrive
    [delivery] = [d for d in webhook_receiver.deliveries if d["body"]["request_id"] == request_id]
    status = b.get_json(f"/api/v1/requests/{request_id}")
    event = delivery["body"]
    for field in ("status", "total_images", "processed_images", "failed_images", "completed_at"):
        assert event[field] == status[field], field
    assert event["status_url"] == status["status_url"] == f"{BASE_URL}/api/v1/requests/{request_id}"
    assert status["webhook"]["status"] == "delivered" and status["webhook"]["attempt_count"] == 1
    assert lease_owner(mongodb_uri, mongodb_database, request_id) is None  # freed when finished


def test_a_process_restarted_beside_the_owner_leaves_its_request_alone(
    pair, beside, image_server, webhook_receiver
):
    a, b = pair[0], beside()
    urls = slow_images(image_server, 16, delay=0.5)
    request_id = upload(a, urls, webhook_receiver)
    wait_until(a, request_id, in_flight)
    b.kill()
    b.restart()  # its first sweep sees a live lease held by a

    assert_accounted_for(a, request_id, urls, webhook_receiver)
    assert all(image_server.hits[u.removeprefix(image_server.base_url)] == 1 for u in urls)
    assert "driving request" not in b.logs()


def test_a_pending_webhook_is_attempted_by_one_process_at_a_time(
    shared, image_server, webhook_receiver
):
    # The receiver fails four times; both processes sweep pending deliveries.
    webhook_receiver.script = [(503, {})] * 4
    env = {"WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2,0.2,0.2"}
    a, b = shared(**env), shared(**env)
    urls = [image_server.add("/one.jpg", JPEG, content_type="image/jpeg")]
    request_id = upload(a, urls, webhook_receiver)

    eventually(
        lambda: (
            (b.get_json(f"/api/v1/requests/{request_id}")["webhook"] or {}).get("status")
            == "delivered"
        ),
        "the webhook was delivered",
    )
    time.sleep(3 * LEASE)  # any duplicate attempt would arrive meanwhile
    state = b.get_json(f"/api/v1/requests/{request_id}")["webhook"]
    arrived = [d for d in webhook_receiver.deliveries if d["body"]["request_id"] == request_id]
    # Every attempt made once and recorded once: 4 refused + 1 accepted.
    assert len(arrived) == 5 and state["attempt_count"] == 5
    assert [a["status_code"] for a in state["attempts"]] == [503, 503, 503, 503, 200]
    assert len({a["at"] for a in state["attempts"]}) == 5
    assert len({d["headers"]["webhook-id"] for d in arrived}) == 1


def test_a_small_request_is_not_stuck_behind_a_big_one(pair, image_server, webhook_receiver):
    a = pair[0]
    big = slow_images(image_server, 80, delay=0.3, prefix="big/")
    big_id = upload(a, big, webhook_receiver)
    wait_until(a, big_id, lambda s: s["processed_images"] >= 4)

    small = slow_images(image_server, 2, delay=0.0, prefix="small/")
    small_id = upload(a, small, webhook_receiver)
    final, _seen = a.wait_final(small_id, path="/api/v1/requests/")
    assert final["status"] == "completed"
    big_status = a.get_json(f"/api/v1/requests/{big_id}")
    assert big_status["status"] == "processing", "the big request ended before the small one"
    assert big_status["processed_images"] < len(big)
    assert_accounted_for(a, big_id, big, webhook_receiver)


def test_cancel_stops_the_request_and_no_download_starts_after(
    pair, beside, image_server, webhook_receiver
):
    a, b = beside(), pair[1]  # a is stopped and restarted below
    urls = slow_images(image_server, 80, delay=0.5)  # ~10 s of work: far from done
    request_id = upload(a, urls, webhook_receiver)
    wait_until(a, request_id, in_flight)

    # Cancelled through the other process: the owner hears of it through the records.
    response = b.http.request("POST", f"{b.base_url}/api/v1/requests/{request_id}/cancel")
    assert response.status == 202, response.data
    final, _ = b.wait_final(request_id, timeout=30, path="/api/v1/requests/")
    hits_at_settle = sum(image_server.hits.values())

    assert final["status"] == "cancelled"
    assert final["cancelled_images"] > 0
    assert final["processed_images"] + final["cancelled_images"] == len(urls)
    images = images_by_url(b, request_id)
    assert sum(i["status"] == "cancelled" for i in images.values()) == final["cancelled_images"]
    assert all(i["output_url"] is None for i in images.values() if i["status"] == "cancelled")
    [event] = webhook_receiver.wait_for(1)
    assert (event["body"]["status"], event["body"]["cancelled_images"]) == (
        "cancelled",
        final["cancelled_images"],
    )

    time.sleep(2.0)
    assert sum(image_server.hits.values()) == hits_at_settle  # nothing started after it settled
    again = a.http.request("POST", f"{a.base_url}/api/v1/requests/{request_id}/cancel")
    assert again.status == 409
    a.stop()
    a.restart()  # a restart does not resume it
    time.sleep(2 * LEASE)
    assert a.get_json(f"/api/v1/requests/{request_id}")["status"] == "cancelled"
    assert sum(image_server.hits.values()) == hits_at_settle


def stored_under(root: Path, request_id: str) -> list[Path]:
    folder = root / "objects" / "requests" / request_id
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_delete_removes_records_and_objects(deployment, pair, image_server, webhook_receiver):
    a, b = pair
    root = deployment.root
    keep, gone = (
        upload(a, [image_server.add(path, JPEG, content_type="image/jpeg")], webhook_receiver)
        for path in ("/k.jpg", "/g.jpg")
    )
    for request_id in (keep, gone):
        a.wait_final(request_id)
    assert stored_under(root, gone)  # input, manifest, image, output CSV

    response = b.http.request("DELETE", f"{b.base_url}/api/v1/requests/{gone}")
    assert response.status == 204, response.data
    assert stored_under(root, gone) == []
    for service in (a, b):
        assert service.get(f"/api/v1/requests/{gone}").status == 404
        assert service.get(f"/api/v1/output/{gone}.csv").status == 404
    assert len(stored_under(root, keep)) == 4
    assert a.get_json(f"/api/v1/requests/{keep}")["status"] == "completed"


def test_delete_of_a_running_request_is_refused(deployment, pair, image_server, webhook_receiver):
    a = pair[0]
    urls = slow_images(image_server, 12, delay=0.5)
    request_id = upload(a, urls, webhook_receiver)
    wait_until(a, request_id, in_flight)
    response = a.http.request("DELETE", f"{a.base_url}/api/v1/requests/{request_id}")
    assert response.status == 409
    error = json.loads(response.data)  # what is in the way, and its status
    assert (error["title"], error["status"]) == ("Request not finished", "processing"), error
    # Nothing was deleted: the request runs to its end, every output there.
    assert_accounted_for(a, request_id, urls, webhook_receiver)
    assert len(stored_under(deployment.root, request_id)) == 3 + len(urls)


def test_retention_deletes_old_final_requests(shared, tmp_path, image_server, webhook_receiver):
    # 0.00003 days is 2.6 s: final requests older than that go at the next sweep.
    a = shared(RETENTION_DAYS="0.00003")
    urls = [image_server.add("/r.jpg", JPEG, content_type="image/jpeg")]
    request_id = upload(a, urls, webhook_receiver)
    final, _ = a.wait_final(request_id)
    assert final["status"] == "completed" and stored_under(tmp_path, request_id)
    eventually(
        lambda: a.get(f"/api/v1/requests/{request_id}").status == 404,
        "the request was deleted by the retention sweep",
        timeout=30,
    )
    assert stored_under(tmp_path, request_id) == []


def test_list_shows_each_key_its_own_requests_across_processes(
    shared, image_server, webhook_receiver
):
    keys = ["k" * 20, "q" * 20]
    a, b = shared(API_KEYS=",".join(keys)), shared(API_KEYS=",".join(keys))
    url = image_server.add("/l.jpg", JPEG, content_type="image/jpeg")

    def call(service: Service, method: str, path: str, key: str, **kw):
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        return service.http.request(method, service.base_url + path, headers=headers, **kw)

    def upload_as(service: Service, key: str) -> str:
        response = call(
            service,
            "POST",
            "/api/v1/upload",
            key,
            fields={"file": ("p.csv", products_csv([url]), "text/csv")},
        )
        assert response.status == 202, response.data
        return json.loads(response.data)["request_id"]

    mine = [upload_as(a, keys[0]), upload_as(b, keys[0])]
    theirs = upload_as(a, keys[1])
    listed = json.loads(call(b, "GET", "/api/v1/requests", keys[0]).data)
    assert [r["request_id"] for r in listed["requests"]] == mine[::-1]  # newest first
    assert listed["page"]["total"] == 2
    other = json.loads(call(a, "GET", "/api/v1/requests", keys[1]).data)
    assert [r["request_id"] for r in other["requests"]] == [theirs]
    assert call(b, "GET", f"/api/v1/requests/{theirs}", keys[0]).status == 404
    assert call(b, "POST", f"/api/v1/requests/{theirs}/cancel", keys[0]).status == 404
    assert call(b, "DELETE", f"/api/v1/requests/{theirs}", keys[0]).status == 404
    assert call(a, "GET", "/api/v1/requests", "x" * 20).status == 401
