"""Completion events on NATS, against a real nats-server on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import nats
import pytest
from standardwebhooks import Webhook

from pipeline.nats_publisher import NatsPublisher
from tests import imagefactory as images
from tests.integration.service import Service
from tests.servers import free_port

pytestmark = pytest.mark.integration
NATS_SERVER = shutil.which("nats-server")
SUBJECT = "images.request.completed"


class NatsServer:
    def __init__(self, port: int):
        self.port = port
        self.monitor_port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        assert NATS_SERVER, "the stopped_server fixture skips without it"
        self.process = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client_names(self) -> list[str]:
        """The `name` of every client connected now (the monitoring endpoint's /connz)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/connz") as answer:
            return [c.get("name", "") for c in json.load(answer).get("connections") or []]


class Subscriber:
    """A plain nats-py subscriber on its own event loop, as a receiving service would be."""

    def __init__(self, url: str):
        self.messages: list[dict] = []
        self.arrived = threading.Condition()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self._run(self._connect(url))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    async def _connect(self, url: str) -> None:
        self.client = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)

        async def on_message(msg):
            with self.arrived:
                self.messages.append(json.loads(msg.data))
                self.arrived.notify_all()

        await self.client.subscribe(SUBJECT, cb=on_message)
        await self.client.flush()

    def wait_for(self, count: int, timeout: float = 20) -> list[dict]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def connected(self) -> bool:
        return self.client.is_connected

    def close(self) -> None:
        self._run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def stopped_server():
    """A nats-server on a free loopback port, not yet started."""
    if not NATS_SERVER:
        message = (
            "needs nats-server on PATH: `make test` installs Debian's package when run as "
            "root, else `sudo apt-get install nats-server`"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing server is a broken build, not a skip
        pytest.skip(message)
    srv = NatsServer(free_port())
    yield srv
    srv.stop()


@pytest.fixture
def server(stopped_server):
    return stopped_server.start()


def until(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_event_published_and_republished_after_server_restart(server):
    subscriber = Subscriber(server.url)
    publisher = NatsPublisher(server.url, SUBJECT, timeout=2).start()
    try:
        assert publisher.publish({"event": "request.completed", "request_id": "r1"})
        assert subscriber.wait_for(1)[0]["request_id"] == "r1"

        server.stop()  # the server goes away...
        until(lambda: not publisher.connected)
        started = time.monotonic()
        # Not confirmed while the server is away (the client buffers it), and it never
        # raises nor holds the driver for long.
        assert not publisher.publish({"event": "request.completed", "request_id": "outage"})
        assert time.monotonic() - started < 10
        server.start()  # ...and comes back on the same port
        until(lambda: publisher.connected and subscriber.connected())
        # The publisher reconnected by itself; the next event arrives.
        assert publisher.publish({"event": "request.completed", "request_id": "r2"})
        until(lambda: "r2" in [m["request_id"] for m in subscriber.messages])
        assert subscriber.messages[0]["request_id"] == "r1"
    finally:
        publisher.close()
        subscriber.close()


def test_server_started_after_the_publisher_gets_one_connection(stopped_server):
    publisher = NatsPublisher(stopped_server.url, SUBJECT, timeout=0.5).start()
    try:
        # Completions while the server is not up yet: each reports failure quickly...
        for n in range(3):
            assert not publisher.publish({"event": "request.completed", "request_id": f"{n}"})
        stopped_server.start()
        until(lambda: publisher.connected)
        subscriber = Subscriber(stopped_server.url)
        try:
            assert publisher.publish({"event": "request.completed", "request_id": "r1"})
            assert subscriber.wait_for(1)[-1]["request_id"] == "r1"
            # ...and none of them left a connection attempt of its own behind.
            assert stopped_server.client_names().count("imagepipe") == 1
        finally:
            subscriber.close()
    finally:
        publisher.close()


def test_publish_without_a_server_reports_failure_quickly():
    publisher = NatsPublisher(f"nats://127.0.0.1:{free_port()}", SUBJECT, timeout=1).start()
    try:
        started = time.monotonic()
        assert publisher.publish({"event": "request.completed", "request_id": "r1"}) is False
        assert time.monotonic() - started < 10
    finally:
        publisher.close()


def test_service_publishes_and_signs_on_completion(
    server, tmp_path, image_server, webhook_receiver
):
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    subscriber = Subscriber(server.url)
    service = Service(
        tmp_path / "data",
        NATS_URL=server.url,
        WEBHOOK_SECRET=secret,
        WEBHOOK_URL=webhook_receiver.url,
    ).start()
    try:
        url = image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg")
        response = service.upload(f"S. No.,Product Name,Input Image Urls\n1,Lamp,{url}\n".encode())
        request_id = json.loads(response.data)["request_id"]
        event = subscriber.wait_for(1)[0]
        assert (event["request_id"], event["status"]) == (request_id, "completed")
        delivery = webhook_receiver.wait_for(1)[0]
        assert Webhook(secret).verify(delivery["raw"], delivery["headers"]) == event
        until(
            lambda: (
                (service.get_json(f"/api/v1/status/{request_id}")["webhook"] or {}).get("status")
                == "delivered"
            )
        )
        state = service.get_json(f"/api/v1/status/{request_id}")["webhook"]
        assert state["id"] == f"msg_{request_id}" and "payload" not in state
    finally:
        service.stop()
        subscriber.close()
