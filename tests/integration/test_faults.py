"""Faults injected for real while a request is in flight; it still completes.

Each test breaks one real part (a Dask worker process, the API process, the
scheduler, the image host, the storage) in the middle of a request and checks
what a user relies on: the request reaches a final status with every image accounted
for exactly once, every output exists, the output CSV is complete and the
webhook is delivered once.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client
from PIL import Image

from pipeline.keys import output_key
from tests.integration.dask_cli import DaskCliCluster
from tests.integration.flows import (
    JPEG,
    assert_accounted_for,
    eventually,
    in_flight,
    slow_images,
    upload,
    upload_and_wait_in_flight,
    wait_until,
)
from tests.integration.service import Service

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def on_cluster(tmp_path: Path, cluster: DaskCliCluster, **env: str) -> Iterator[Service]:
    """The service, started against the test's CLI cluster, two images per batch;
    stopped on the way out, whatever the test did to it.

    Leases of 2 s: a killed process's requests are taken up 2 s after its last
    renewal (30 s by default).
    """
    env = {"LEASE_SECONDS": "2", **env}
    service = Service(
        tmp_path / "data", DASK_SCHEDULER_ADDRESS=cluster.address, BATCH_SIZE="2", **env
    ).start()
    try:
        yield service
    finally:
        service.stop()


# -- a Dask worker process dies ------------------------------------------------
def test_worker_killed_mid_request(tmp_path, cluster, image_server, webhook_receiver):
    with on_cluster(tmp_path, cluster) as service:
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


# -- the API process dies and is restarted --------------------------------------
def test_api_killed_and_restarted_resumes_the_request(
    tmp_path, cluster, image_server, webhook_receiver
):
    with on_cluster(tmp_path, cluster) as service:
        urls = slow_images(image_server, 16, delay=0.8)
        request_id, done_before = upload_and_wait_in_flight(service, urls, webhook_receiver)
        service.kill()
        assert done_before

        service.restart()
        by_url = assert_accounted_for(service, request_id, urls, webhook_receiver)
        # Images recorded before the kill were not downloaded again...
        path = image_server.base_url
        assert all(image_server.hits[u.removeprefix(path)] == 1 for u in done_before)
        # ...and every image was downloaded at least once, by one process or the other.
        assert all(image_server.hits[u.removeprefix(path)] >= 1 for u in by_url)


# -- the scheduler goes away and comes back ---------------------------------------
def test_scheduler_restarted_mid_request(tmp_path, cluster, image_server, webhook_receiver):
    with on_cluster(tmp_path, cluster) as service:
        urls = slow_images(image_server, 16, delay=0.8)
        request_id, done_before = upload_and_wait_in_flight(service, urls, webhook_receiver)
        # The whole cluster restarts (scheduler and workers) on the same address; the
        # API's client reconnects to it. The batches in flight were lost with it.
        for name in ["scheduler", "w1", "w2"]:
            cluster.kill(name)
        cluster.start()

        assert_accounted_for(service, request_id, urls, webhook_receiver)
        path = image_server.base_url
        assert all(image_server.hits[u.removeprefix(path)] == 1 for u in done_before)


def test_scheduler_away_longer_than_the_client_reconnects(
    tmp_path, cluster, image_server, webhook_receiver
):
    # A Dask client gives up reconnecting after its connect timeout and closes for
    # good; 2 s here (30 s by default) so the outage below outlasts it quickly.
    with on_cluster(tmp_path, cluster, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s") as service:
        urls = slow_images(image_server, 12, delay=0.8)
        request_id, done_before = upload_and_wait_in_flight(service, urls, webhook_receiver)
        for name in ["scheduler", "w1", "w2"]:
            cluster.kill(name)
        # The health check keeps answering while the client has given up: 503, naming dask.
        eventually(
            lambda: json.loads(service.get("/health").data)["dask"]["status"] == "closed",
            "the API's Dask client gave up reconnecting",
        )
        unhealthy = service.get("/health")
        assert (unhealthy.status, json.loads(unhealthy.data)["failing"]) == (503, ["dask"])
        cluster.start()

        # The runner connected a new client: the request finished, nothing redone...
        assert_accounted_for(service, request_id, urls, webhook_receiver)
        path = image_server.base_url
        assert all(image_server.hits[u.removeprefix(path)] == 1 for u in done_before)
        health = service.get_json("/health")["dask"]
        assert (health["status"], health["workers"]) == ("running", 2)
        # ...and the process takes new work.
        later = slow_images(image_server, 2, delay=0, prefix="later/")
        assert_accounted_for(
            service, upload(service, later, webhook_receiver), later, webhook_receiver
        )


def test_api_stopped_mid_request_leaves_it_for_the_next_start(
    tmp_path, cluster, image_server, webhook_receiver
):
    # SIGTERM (a deploy, `docker stop`): closing the Dask client on the way out
    # cancels the request's futures, which must not fail the request.
    with on_cluster(tmp_path, cluster) as service:
        urls = slow_images(image_server, 12, delay=0.8)
        request_id = upload(service, urls, webhook_receiver)
        wait_until(service, request_id, in_flight)
        service.stop()

        service.restart()
        assert_accounted_for(service, request_id, urls, webhook_receiver)


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


def noisy_jpeg(size: tuple[int, int] = (700, 700)) -> bytes:
    """Noise hardly compresses: re-encoded, it is still ~200 KB, far more than a pipe holds."""
    pixels = random.Random(7).randbytes(size[0] * size[1] * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


class BrokenWrite(threading.Thread):
    """A FIFO at an object's path: its first write breaks halfway (EPIPE), once.

    The task's `open(path, "wb")` waits for this reader; the reader then unlinks
    the path (the next attempt writes a regular file) and closes without reading,
    so the writer, stuck on the full pipe, gets a broken pipe: like a storage
    connection reset in the middle of an upload.
    """

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self.path = path
        self.pipe_size = 0
        self.broke = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        self.pipe_size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        self.path.unlink()
        os.close(fd)
        self.broke.set()

    def release(self) -> None:
        """Unblock the reader if no write ever came (a failing test)."""
        if not self.broke.is_set() and self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))


def test_storage_write_failing(flaky_service, image_server, webhook_receiver):
    # Downloads hang until the faults are in place: output keys are deterministic,
    # but the request id is known only once the upload is answered.
    hold = threading.Event()
    urls = [
        image_server.add(f"/store/{i}.jpg", body, content_type="image/jpeg", hold=hold)
        for i, body in enumerate([JPEG, JPEG, noisy_jpeg(), JPEG])
    ]
    request_id = upload(flaky_service, urls, webhook_receiver)
    objects = flaky_service.data_dir / "objects"
    # A directory where image (row 0, position 1) goes: every write of it fails.
    blocked = objects / output_key(request_id, 0, 1)
    blocked.mkdir(parents=True)
    # Image (row 1, position 0): the first write breaks, the retry stores it.
    broken = BrokenWrite(objects / output_key(request_id, 1, 0))
    broken.start()
    hold.set()
    try:
        by_url = assert_accounted_for(flaky_service, request_id, urls, webhook_receiver, failed=1)
    finally:
        broken.release()

    assert by_url[urls[1]]["status"] == "failed"
    assert by_url[urls[1]]["error"].startswith("storage write failed: "), by_url[urls[1]]
    assert blocked.is_dir() and not os.listdir(blocked)

    assert broken.broke.is_set(), "the first write of the noisy image never came"
    assert by_url[urls[2]]["bytes_out"] > broken.pipe_size  # so that write could not finish
    assert by_url[urls[2]]["status"] == "done", by_url[urls[2]]
    assert (objects / output_key(request_id, 1, 0)).is_file()
    assert all(image_server.hits[f"/store/{i}.jpg"] == 1 for i in range(4))
