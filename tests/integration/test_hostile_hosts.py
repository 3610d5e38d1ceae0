"""Hosts and receivers that try to hold a client: each is let go at the deadline.

Every behaviour of `tests.hostile_hosts` against the real fetcher and webhook
sender: the call ends within its deadline plus a second, with a reason that
names what the host did, having used little CPU, and the host sees the
connection closed.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TypedDict

import pytest

from pipeline.errors import FetchError
from pipeline.fetch import FetchConfig, Fetcher
from pipeline.netguard import guarded_pool
from pipeline.notify import WebhookSender
from tests.hostile_hosts import HostileHost
from tests.integration.flows import JPEG, images_by_url, products_csv
from tests.integration.service import Service
from tests.servers import free_port
from tests.tls import client_context, server_context

pytestmark = [pytest.mark.integration, pytest.mark.timing]

TOTAL = 2.0


class Timeouts(TypedDict):
    connect_timeout: float
    read_timeout: float


# Per-read timeouts far above the deadline: only the hard deadline can end a drip.
PATIENT: Timeouts = {"connect_timeout": 5.0, "read_timeout": 30.0}

# behaviour -> what the reason must say
CORPUS = {
    "silent": r"^host sent no status line within 2s$",
    "status-drip": r"^status line not complete after 2s \(host dripping\)$",
    "header-drip": r"^headers not complete after 2s \(host dripping\)$",
    "header-flood": r"more than 100 headers \(host flooding headers\)",
    "continue": r"'100 Continue'",
    "chunk-size-drip": r"^chunk-size line not complete after 2s \(host dripping\)$",
    "chunk-extension-drip": r"^chunk-size line not complete after 2s \(host dripping\)$",
    "chunk-extension-flood": r"chunk extension flood",
    "trailer-flood": r"host flooding trailers",
    "trailer-drip": r"^trailers not complete after 2s \(host dripping\)$",
    "empty-deflate": r"^gzip body over \d+ bytes on the wire that decodes to only 0 bytes",
    "endless-body": r"^body not complete after 2s \(\d+ bytes received\)$",
}


@pytest.fixture
def hostile():
    host = HostileHost().start()
    yield host
    host.stop()


def fetcher(**overrides) -> Fetcher:
    config = {"total_timeout": TOTAL, "retries": 2, "backoff": 0.01, **PATIENT, **overrides}
    return Fetcher(FetchConfig(allow_private_networks=True, **config))


def timed_failure(call) -> tuple[FetchError, float, float]:
    """(the error, wall seconds, CPU seconds of this thread)."""
    started, cpu = time.monotonic(), time.thread_time()
    with pytest.raises(FetchError) as caught:
        call()
    return caught.value, time.monotonic() - started, time.thread_time() - cpu


def test_every_hostile_host_is_let_go_at_the_deadline_with_its_reason(hostile):
    """All at once, each download in its own thread, as a batch's downloads run."""
    fetch = fetcher()

    def attempt(behaviour: str) -> tuple[FetchError, float, float]:
        return timed_failure(lambda: fetch.fetch(hostile.url(behaviour)))

    with ThreadPoolExecutor(len(CORPUS)) as pool:
        outcomes = dict(zip(CORPUS, pool.map(attempt, CORPUS), strict=True))
    wrong = {
        behaviour: (error.reason, f"{wall:.2f}s", f"CPU {cpu:.3f}s")
        for behaviour, (error, wall, cpu) in outcomes.items()
        # Let go in time, no core burnt on a flood, and the reason says what the host did.
        if not (wall < TOTAL + 1 and cpu < 0.5 and re.search(CORPUS[behaviour], error.reason))
    }
    assert wrong == {}
    assert hostile.wait_released(), "connections to the hostile host were left open"


def test_https_to_a_plain_http_host_says_so(hostile):
    error, wall, _ = timed_failure(lambda: fetcher().fetch(hostile.https_url()))
    assert error.reason == (
        f"TLS handshake failed: the host does not speak HTTPS (plain HTTP on port {hostile.port})"
    )
    assert not error.transient and wall < TOTAL + 1


@pytest.fixture
def tls_host(tmp_path):
    """A hostile host speaking HTTPS as images.test, and a pool that trusts it."""
    context, ca = server_context("images.test", tmp_path)
    host = HostileHost(tls=context, hostname="images.test").start()

    def resolve(name, port, type=0):
        return socket.getaddrinfo("127.0.0.1", port, type=type)

    pool = guarded_pool(True, resolve, ssl_context=client_context(ca), retries=False)
    yield host, pool
    host.stop()


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("header-drip", "headers not complete after 2s (host dripping)"),
        ("chunk-size-drip", "chunk-size line not complete after 2s (host dripping)"),
    ],
)
def test_a_dripping_host_over_tls_is_let_go_too(tls_host, behaviour, reason):
    host, pool = tls_host
    fetch = Fetcher(FetchConfig(total_timeout=TOTAL, allow_private_networks=True, **PATIENT), pool)
    error, wall, cpu = timed_failure(lambda: fetch.fetch(host.url(behaviour)))
    assert (error.reason, wall < TOTAL + 1, cpu < 0.5) == (reason, True, True)
    assert host.wait_released()


def test_a_tls_handshake_that_never_completes():
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/image.jpg"
        error, wall, _ = timed_failure(lambda: fetcher().fetch(url))
    finally:
        listener.close()
    assert error.reason == "TLS handshake not complete after 2s"
    assert wall < TOTAL + 1


def test_the_deadline_covers_every_attempt_and_redirect(hostile, image_server):
    # Three redirects into a host that drips its headers: one deadline for them all.
    target = hostile.url("header-drip")
    image_server.add("/r3", status=302, headers={"Location": target})
    image_server.add("/r2", status=302, headers={"Location": image_server.url("/r3")})
    image_server.add("/r1", status=302, headers={"Location": image_server.url("/r2")})
    error, wall, _ = timed_failure(lambda: fetcher().fetch(image_server.url("/r1")))
    assert error.reason == "headers not complete after 2s (host dripping)"
    assert wall < TOTAL + 1
    assert hostile.served == 1  # not retried: the time is spent


def test_an_ordinary_image_still_arrives_through_the_same_pool(hostile, image_server):
    url = image_server.add("/a.jpg", b"\xff\xd8" + b"x" * 300_000)
    fetch = fetcher()
    with pytest.raises(FetchError):
        fetch.fetch(hostile.url("header-drip"))
    started = time.monotonic()
    assert fetch.fetch(url) == b"\xff\xd8" + b"x" * 300_000
    assert fetch.fetch(url) == b"\xff\xd8" + b"x" * 300_000  # a kept-alive connection
    assert time.monotonic() - started < 1.0  # no deadline left over from earlier fetches


def test_a_webhook_attempt_against_a_dripping_receiver_ends_at_its_timeout(hostile):
    sender = WebhookSender(timeout=TOTAL, allow_private_networks=True)
    started, cpu = time.monotonic(), time.thread_time()
    attempt = sender.send(hostile.url("header-drip", "hook"), "msg_1", b'{"event":"x"}')
    wall, cpu = time.monotonic() - started, time.thread_time() - cpu
    assert attempt.outcome == "retry" and attempt.status_code is None
    assert attempt.error == "delivery failed: headers not complete after 2s (receiver dripping)"
    assert wall < TOTAL + 1 and cpu < 0.5
    assert hostile.wait_released()


def test_webhook_errors_are_short_and_human():
    sender = WebhookSender(timeout=TOTAL, allow_private_networks=True)
    attempt = sender.send(f"http://127.0.0.1:{free_port()}/hook", "msg_1", b"{}")
    assert attempt.error == "delivery failed: connection failed: connection refused"
    assert attempt.outcome == "retry"


def test_uploads_pointing_at_a_dripping_host_do_not_stall_an_ordinary_one(
    tmp_path, hostile, image_server
):
    """Through the real service: its Dask threads are let go at TOTAL_TIMEOUT."""
    service = Service(tmp_path / "data", TOTAL_TIMEOUT="3", READ_TIMEOUT="60").start()
    try:
        # More uploads than the service has Dask threads (2), each holding one.
        held = [hostile.url("header-drip", f"{n}.jpg") for n in range(4)]
        hostile_ids = [upload(service, [url]) for url in held]
        ordinary = [image_server.add(f"/{n}.jpg", JPEG, content_type="image/jpeg") for n in (1, 2)]
        ordinary_id = upload(service, ordinary)

        final, _ = service.wait_final(ordinary_id, timeout=60)
        assert (final["status"], final["succeeded_images"]) == ("completed", 2)
        for request_id, url in zip(hostile_ids, held, strict=True):
            final, _ = service.wait_final(request_id, timeout=60)
            assert final["status"] == "failed"  # its only image failed
            assert final["error"].endswith(
                "download failed: headers not complete after 3s (host dripping)"
            )
            image = images_by_url(service, request_id)[url]
            assert (
                image["error"] == "download failed: headers not complete after 3s (host dripping)"
            )
        assert hostile.wait_released(), "the workers kept connections to the dripping host"
    finally:
        service.stop()


def upload(service: Service, urls: list[str]) -> str:
    response = service.upload(products_csv(urls))
    assert response.status == 202, response.data
    return json.loads(response.data)["request_id"]
