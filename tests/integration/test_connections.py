"""Idle and dripping connections do not lock anyone out of the real service (waitress).

Hundreds of clients that open a connection and send nothing, or one byte a
second, must not cost anyone else their answer; the idle ones are closed after
API_CHANNEL_TIMEOUT. With waitress's defaults (100 connections) the same test
times out: `API_CONNECTION_LIMIT=100 pytest tests/integration/test_connections.py`.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time

import pytest
import urllib3

from tests.integration.flows import JPEG, products_csv
from tests.integration.service import Service

pytestmark = [pytest.mark.integration, pytest.mark.timing]

IDLE = 500
DRIPPING = 20
# Short, so the test sees the idle connections go; the default is in Settings.
CHANNEL_TIMEOUT = 4
# waitress looks for idle connections every second (api/connections.py), and the
# machine may be busy: how late a close may come.
CLOSE_MARGIN = 3.0
# A behaviour threshold with a wide margin: answers take milliseconds when nothing
# stands in the way; at waitress's old limit they never come at all.
ANSWER_WITHIN = 1.0


@pytest.fixture(autouse=True)
def enough_descriptors():
    """This process opens 520 sockets; some systems start with a soft limit of 256."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2048 if hard == resource.RLIM_INFINITY else min(hard, 2048)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def service(tmp_path):
    svc = Service(tmp_path / "data", API_CHANNEL_TIMEOUT=str(CHANNEL_TIMEOUT)).start()
    yield svc
    svc.stop()


class Drippers:
    """Connections that send a request line and then one header byte a second, forever."""

    def __init__(self, port: int, count: int):
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        for sock in self.sockets:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        self.dripped = threading.Event()  # set after the first byte on every connection
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)

    def __enter__(self) -> Drippers:
        self.thread.start()
        assert self.dripped.wait(10), "the drippers never dripped"
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()

    def _drip(self) -> None:
        dripping = list(self.sockets)
        while not self.stopped.wait(1.0):
            for sock in list(dripping):
                try:
                    sock.sendall(b"x")
                except OSError:
                    dripping.remove(sock)  # closed by the server: nothing more to hold
            self.dripped.set()


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def closed_by_server(sockets: list[socket.socket], deadline: float) -> dict[socket.socket, float]:
    """When each socket saw the server close it (EOF or reset), until the deadline."""
    closed: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ, data=sock)
        while len(closed) < len(sockets) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.data  # registered as its data: fileobj is typed as any file object
                try:
                    data = sock.recv(1024)
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"the server sent {data!r} to a connection that sent nothing"
                closed[sock] = time.monotonic()
                selector.unregister(sock)
    return closed


def test_health_and_upload_answer_with_hundreds_of_idle_and_dripping_connections(
    service, image_server
):
    image_url = image_server.add("/one.jpg", JPEG, content_type="image/jpeg")
    # Its own pool: a fresh connection for each call, as a new client would make.
    client = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=10))

    with Drippers(service.port, DRIPPING):
        opened_at = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(IDLE)]
        try:
            health, health_seconds = timed(
                lambda: client.request("GET", service.base_url + "/health")
            )
            upload, upload_seconds = timed(
                lambda: client.request(
                    "POST",
                    service.base_url + "/api/v1/upload",
                    fields={"file": ("products.csv", products_csv([image_url]), "text/csv")},
                )
            )
            assert health.status == 200, health.data
            assert upload.status == 202, upload.data
            assert health_seconds < ANSWER_WITHIN, f"/health took {health_seconds:.2f}s"
            assert upload_seconds < ANSWER_WITHIN, f"the upload took {upload_seconds:.2f}s"

            # The idle connections were held, not left in the kernel's queue: the
            # server itself closes them once they have been silent for the timeout.
            closed = closed_by_server(idle, opened_at + CHANNEL_TIMEOUT + CLOSE_MARGIN + 2.0)
            assert len(closed) == IDLE, f"{IDLE - len(closed)} idle connections still open"
            first_close = min(closed.values()) - opened_at
            assert first_close >= CHANNEL_TIMEOUT - 0.5, f"closed after {first_close:.2f}s"
            last_close = max(closed.values()) - opened_at
            assert last_close <= CHANNEL_TIMEOUT + CLOSE_MARGIN, f"closed after {last_close:.2f}s"

            # Dripping all along, and the work goes on: the upload completes.
            request_id = json.loads(upload.data)["request_id"]
            final, _ = service.wait_final(request_id, timeout=60)
            assert final["status"] == "completed", final
        finally:
            for sock in idle:
                sock.close()
