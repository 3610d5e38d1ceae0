"""Faults injected for real while a request is in flight; it still completes.

Each test breaks one real part (a Dask worker process, the API process, the
image host, the storage) in the middle of a request and checks what a user
relies on: the request reaches a final status with every image accounted
for exactly once, every output exists, the output CSV is complete and the
webhook is delivered once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from distributed import Client

from pipeline.models import output_key
from tests import imagefactory as images
from tests.integration.dask_cli import DaskCliCluster
from tests.integration.service import Service
from tests.servers import ImageServer, WebhookReceiver

pytestmark = pytest.mark.integration

JPEG = images.jpeg_rgb()


@pytest.fixture
def cluster(tmp_path):
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    cluster = DaskCliCluster(logs).start()
    yield cluster
    cluster.stop()


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


def images_by_url(service: Service, request_id: str) -> dict[str, dict]:
    body = service.get_json(f"/api/v1/status/{request_id}?page=1&per_page=500")
    return {i["input_url"]: i for p in body["products"] for i in p["images"]}


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
    assert counts == (len(urls), len(urls), failed)
    assert final["succeeded_images"] == len(urls) - failed

    by_url = images_by_url(service, request_id)
    assert sorted(by_url) == sorted(urls)
    assert sum(i["status"] == "failed" for i in by_url.values()) == failed
    for image in by_url.values():
        if image["status"] == "done":
            fetched = service.get(image["output_url"])
            assert fetched.status == 200 and fetched.data[:2] == b"\xff\xd8", image

    output = service.get(f"/api/v1/output/{request_id}.csv")
    assert output.status == 200
    rows = list(csv.reader(io.StringIO(output.data.decode())))[1:]
    assert [u for r in rows for u in r[2].split(",")] == urls
    for row in rows:
        for input_url, output_url in zip(row[2].split(","), row[3].split(","), strict=True):
            assert output_url == (by_url[input_url]["output_url"] or "")

    webhook.wait_for(1)
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


# -- a Dask worker process dies ------------------------------------------------
def test_worker_killed_mid_request(tmp_path, cluster, image_server, webhook_receiver):
    service = Service(
        tmp_path / "data", DASK_SCHEDULER_ADDRESS=cluster.address, BATCH_SIZE="2"
    ).start()
    try:
        urls = slow_images(image_server, 16, delay=0.8)
        request_id = upload(service, urls, webhook_receiver)
        wait_until(service, request_id, in_flight)
        with Client(cluster.address, timeout="30s") as client:
            busy = {
                address
                for address, keys in client.processing().items()
                if any(str(k).startswith(f"process-batch-{request_id}") for k in keys)
            }
            names = {a: str(w["name"]) for a, w in client.scheduler_info()["workers"].items()}
        assert busy, "no batch was running when the worker was to be killed"
        victim = names[sorted(busy)[0]]
        cluster.kill(victim)

        assert_accounted_for(service, request_id, urls, webhook_receiver)
        # The killed worker's batches ran again elsewhere: at most one extra download each.
        assert all(1 <= image_server.hits[u.removeprefix(image_server.base_url)] <= 2 for u in urls)
    finally:
        service.stop()


# -- the API process dies and is restarted --------------------------------------
def test_api_killed_and_restarted_resumes_the_request(
    tmp_path, cluster, image_server, webhook_receiver
):
    service = Service(
        tmp_path / "data", DASK_SCHEDULER_ADDRESS=cluster.address, BATCH_SIZE="2"
    ).start()
    try:
        urls = slow_images(image_server, 16, delay=0.8)
        request_id = upload(service, urls, webhook_receiver)
        wait_until(service, request_id, in_flight)
        done_before = [
            u for u, i in images_by_url(service, request_id).items() if i["status"] == "done"
        ]
        service.kill()
        assert done_before

        service.restart()
        by_url = assert_accounted_for(service, request_id, urls, webhook_receiver)
        # Images recorded before the kill were not downloaded again...
        path = image_server.base_url
        assert all(image_server.hits[u.removeprefix(path)] == 1 for u in done_before)
        # ...and every image was downloaded at least once, by one process or the other.
        assert all(image_server.hits[u.removeprefix(path)] >= 1 for u in by_url)
    finally:
        service.stop()


# -- the scheduler goes away and comes back ---------------------------------------
def test_scheduler_restarted_mid_request(tmp_path, cluster, image_server, webhook_receiver):
    service = Service(
        tmp_path / "data", DASK_SCHEDULER_ADDRESS=cluster.address, BATCH_SIZE="2"
    ).start()
    try:
        urls = slow_images(image_server, 16, delay=0.8)
        request_id = upload(service, urls, webhook_receiver)
        wait_until(service, request_id, in_flight)
        done_before = [
            u for u, i in images_by_url(service, request_id).items() if i["status"] == "done"
        ]
        # The whole cluster restarts (scheduler and workers) on the same address; the
        # API's client reconnects to it. The batches in flight were lost with it.
        for name in ["scheduler", "w1", "w2"]:
            cluster.kill(name)
        cluster.start()

        assert_accounted_for(service, request_id, urls, webhook_receiver)
        path = image_server.base_url
        assert all(image_server.hits[u.removeprefix(path)] == 1 for u in done_before)
    finally:
        service.stop()


def descendants(pid: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, set()).add(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_api_killed_leaves_no_local_cluster_workers_behind(tmp_path):
    service = Service(tmp_path / "data").start()
    workers = descendants(service.pid)
    assert workers, "the LocalCluster runs its workers as child processes"
    service.kill()
    deadline = time.monotonic() + 60
    while (left := {p for p in workers if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"orphaned LocalCluster processes: {left}"


# -- the image host misbehaves, the storage refuses a write -----------------------
@pytest.fixture(scope="module")
def flaky_service(tmp_path_factory):
    # Six retries from 0.2 s doubling: a host that is gone for a few seconds is waited out.
    service = Service(
        tmp_path_factory.mktemp("faults") / "data",
        BATCH_SIZE="2",
        FETCH_CONCURRENCY="1",
        FETCH_RETRIES="6",
        FETCH_BACKOFF="0.2",
        CONNECT_TIMEOUT="2",
    ).start()
    yield service
    service.stop()


def test_image_host_going_away_and_coming_back(flaky_service, image_server, webhook_receiver):
    urls = slow_images(image_server, 6, delay=0.4, prefix="steady/")
    unwell = image_server.add("/unwell.jpg", JPEG, content_type="image/jpeg", fail_first=2)
    missing = image_server.url("/missing.jpg")  # 404: permanent, never retried
    urls += [unwell, missing]
    request_id = upload(flaky_service, urls, webhook_receiver)

    # Once downloads are under way the host disappears (connections refused) for a
    # while, then comes back on the same port.
    deadline = time.monotonic() + 120
    while not image_server.hits and time.monotonic() < deadline:
        time.sleep(0.05)
    image_server.stop()
    hit_before_outage = set(image_server.hits)
    time.sleep(1.5)  # the outage; fetches retry meanwhile
    image_server.restart()

    by_url = assert_accounted_for(flaky_service, request_id, urls, webhook_receiver, failed=1)
    assert by_url[missing]["error"] == "download failed: HTTP 404"
    assert image_server.hits["/missing.jpg"] == 1
    assert image_server.hits["/unwell.jpg"] == 3  # two 503s, then the image
    assert by_url[unwell]["status"] == "done"
    # Some downloads were due during the outage and succeeded once the host came back.
    assert len(hit_before_outage) < len(urls)


def test_storage_write_failing_for_one_image(flaky_service, image_server, webhook_receiver):
    urls = slow_images(image_server, 4, delay=1.5, prefix="store/")
    request_id = upload(flaky_service, urls, webhook_receiver)
    # Output keys are deterministic: a directory where image (row 0, position 1) goes
    # makes every write of that one object fail while the downloads are still slow.
    blocked = flaky_service.data_dir / "objects" / output_key(request_id, 0, 1)
    blocked.mkdir(parents=True)

    by_url = assert_accounted_for(flaky_service, request_id, urls, webhook_receiver, failed=1)
    assert by_url[urls[1]]["status"] == "failed"
    assert by_url[urls[1]]["error"].startswith("storage write failed: "), by_url[urls[1]]
    assert blocked.is_dir() and not os.listdir(blocked)
