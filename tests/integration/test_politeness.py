"""Per-host politeness against real loopback hosts: the cap, the pause, Retry-After.

The throttling host serves 4 requests at once and answers 429 above that,
as a shop's CDN does; `tests/bench/politeness.py` runs the same host with
500 images for the README's figure.
"""

from __future__ import annotations

import csv
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest

from pipeline.errors import FetchError
from pipeline.fetch import FetchConfig, Fetcher
from pipeline.hosts import HostLimiter, HostPolicy
from tests import imagefactory as images
from tests.integration.flows import products_csv
from tests.integration.test_cli import run_cli
from tests.throttlehost import ThrottlingHost

pytestmark = pytest.mark.integration


def fetcher(limiter: HostLimiter, **config: object) -> Fetcher:
    cfg = FetchConfig(allow_private_networks=True, backoff=0.01, **config)  # type: ignore[arg-type]
    return Fetcher(cfg, host_gate=limiter.slot)


def test_a_request_of_60_images_on_a_host_that_allows_4_all_succeed_never_5_at_once(tmp_path):
    # One worker process with 2 threads, each batch fetching 16 at once: 32
    # downloads could start together; the limiter lets 4 reach the host.
    with ThrottlingHost(images.jpeg_rgb(), limit=4, retry_after="1", hold=0.02) as host:
        source = tmp_path / "products.csv"
        source.write_bytes(products_csv([host.url(i) for i in range(60)], per_row=1))
        result = run_cli(
            tmp_path,
            str(source),
            "--no-progress",
            DASK_THREADS_PER_WORKER="2",
            BATCH_SIZE="30",
            MAX_CONNECTIONS_PER_HOST="4",
        )
        stats = host.stats
    assert result.returncode == 0, result.stderr
    assert "completed: 60/60 images done, 0 failed" in result.stdout
    output = list(csv.reader(source.with_suffix(".output.csv").open()))
    assert all(row[-1] for row in output[1:])
    assert stats.peak <= 4 and stats.refused == 0, stats
    assert stats.served == 60


def test_a_throttled_host_pauses_its_own_downloads_only_and_its_retry_waits_for_retry_after():
    limiter = HostLimiter(HostPolicy(max_connections=4))
    body = images.jpeg_rgb()
    with (
        ThrottlingHost(body, refuse_first=1, retry_after="2", hold=0) as throttled,
        ThrottlingHost(body, limit=100, hold=0) as other,
        ThreadPoolExecutor(max_workers=9) as pool,
    ):
        slowed = pool.submit(fetcher(limiter).fetch, throttled.url(0))
        throttled.wait_for(lambda s: s.refused == 1)
        # While the throttled host's pause runs, another host's downloads go ahead.
        others = list(pool.map(fetcher(limiter).fetch, [other.url(i) for i in range(40)]))
        assert others == [body] * 40
        assert not slowed.done()
        assert throttled.stats.served == 0  # nothing sent to it during its pause
        # The fetch's own retry of the 429 went through the same pause.
        assert slowed.result(timeout=30) == body
        (refused_at, _), (served_at, status) = throttled.stats.answers
    assert status == 200
    assert served_at - refused_at >= 2.0 - 0.05  # Retry-After: 2 honoured (minus clock grain)
    assert limiter.state(throttled.url(0)).limit == 2  # and it is asked less at once


def test_an_image_whose_host_pauses_past_its_deadline_fails_at_once_saying_so():
    limiter = HostLimiter(HostPolicy(max_connections=4, max_pause=60))
    with ThrottlingHost(images.jpeg_rgb(), refuse_first=1, retry_after="120") as host:
        started = time.monotonic()
        with pytest.raises(FetchError) as failure:
            fetcher(limiter, total_timeout=10).fetch(host.url(0))
        elapsed = time.monotonic() - started
        # Another image of the same host does not reach it either.
        with pytest.raises(FetchError) as second:
            fetcher(limiter, total_timeout=10).fetch(host.url(1))
        assert host.stats.refused == 1 and host.stats.served == 0
    reason = failure.value.reason
    assert "asked to slow down (HTTP 429, Retry-After 120s)" in reason, reason
    assert "could not start within its time limit" in reason
    assert second.value.reason == reason
    assert elapsed < 10  # did not sit out the image's whole time limit


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_reaches_the_fetch_error_in_seconds_or_as_a_date(image_server, status):
    config = FetchConfig(allow_private_networks=True, retries=0)
    seconds = image_server.add("/s.jpg", status=status, headers={"Retry-After": "7"})
    with pytest.raises(FetchError) as failure:
        Fetcher(config).fetch(seconds)
    assert (failure.value.status, failure.value.retry_after) == (status, 7.0)

    date = formatdate(time.time() + 30, usegmt=True)
    dated = image_server.add("/d.jpg", status=status, headers={"Retry-After": date})
    with pytest.raises(FetchError) as failure:
        Fetcher(config).fetch(dated)
    assert failure.value.retry_after == pytest.approx(30, abs=2)

    other = image_server.add("/e.jpg", status=500, headers={"Retry-After": "7"})
    with pytest.raises(FetchError) as failure:
        Fetcher(config).fetch(other)
    # a 500 is the host failing, not asking to slow down: no pause for it
    assert (failure.value.status, failure.value.retry_after) == (500, None)


def test_downloads_of_one_host_from_many_threads_never_exceed_the_cap():
    limiter = HostLimiter(HostPolicy(max_connections=3))
    with ThrottlingHost(images.jpeg_rgb(), limit=3, hold=0.01) as host:
        barrier = threading.Barrier(24)

        def fetch(n: int) -> bytes:
            barrier.wait(10)  # all 24 ask at once
            return fetcher(limiter).fetch(host.url(n))

        with ThreadPoolExecutor(max_workers=24) as pool:
            assert len(list(pool.map(fetch, range(24)))) == 24
        assert host.stats.peak <= 3 and host.stats.refused == 0, host.stats
