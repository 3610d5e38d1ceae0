"""A name server that never answers: the download or webhook ends at its deadline.

The real fetcher and webhook sender, with a resolver that answers loopback for
`images.test` and holds `silent-dns.test` until the test lets it go (as a
hostile domain's name server can, for as long as the system resolver waits).
No lookup leaves the process: the resolver is the test's.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.errors import FetchError
from pipeline.fetch import FetchConfig, Fetcher
from pipeline.netguard import guarded_pool
from pipeline.notify import WebhookSender

pytestmark = [pytest.mark.integration, pytest.mark.timing]

TOTAL = 1.0


class Dns:
    def __init__(self):
        self.released = threading.Event()
        self.asked: list[str] = []

    def __call__(self, host, port, type=0):
        self.asked.append(host)
        if host == "silent-dns.test":
            self.released.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


@pytest.fixture
def dns():
    resolver = Dns()
    yield resolver
    resolver.released.set()


def test_a_download_ends_at_its_deadline_and_others_go_on(dns, image_server):
    fetch = Fetcher(
        FetchConfig(total_timeout=TOTAL, retries=2, backoff=0.01, allow_private_networks=True),
        resolve=dns,
    )
    image_server.add("/a.jpg", b"\xff\xd8 an image")
    port = image_server.url("/a.jpg").rsplit(":", 1)[1].split("/")[0]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        silent = [pool.submit(fetch.fetch, f"http://silent-dns.test/{i}.jpg") for i in range(6)]
        # Meanwhile a host whose name answers is fetched as usual.
        assert fetch.fetch(f"http://images.test:{port}/a.jpg") == b"\xff\xd8 an image"
        reasons = set()
        for future in silent:
            with pytest.raises(FetchError) as caught:
                future.result()
            reasons.add(caught.value.reason)
    assert time.monotonic() - started < TOTAL + 1
    assert reasons == {
        "cannot resolve host 'silent-dns.test': no answer within 1s (gave up: time budget spent)"
    }
    # Six URLs of one silent domain asked its name server once.
    assert dns.asked.count("silent-dns.test") == 1


def test_a_webhook_attempt_ends_at_its_timeout(dns):
    pool = guarded_pool(True, dns, retries=False)
    sender = WebhookSender(timeout=TOTAL, allow_private_networks=True, pool=pool)
    started = time.monotonic()
    attempt = sender.send("http://silent-dns.test/hook", "msg_1", b'{"event":"x"}')
    assert time.monotonic() - started < TOTAL + 1
    assert attempt.outcome == "retry" and attempt.status_code is None
    assert attempt.error == (
        "delivery failed: cannot resolve host 'silent-dns.test': no answer within 1s"
    )
