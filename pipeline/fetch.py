"""Download one URL with limits on time, size and redirects.

Failures come back as `FetchError(reason, transient=...)`; the batch task
records the reason on the image. Transient failures (connection errors,
timeouts, 429, 5xx) are retried with exponential backoff inside the total
time budget; permanent ones (4xx, too large, refused address) are not.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import urllib3

from pipeline.errors import FetchError
from pipeline.netguard import check_url

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchConfig:
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 30.0
    max_redirects: int = 5
    max_bytes: int = 25 * 1024 * 1024
    retries: int = 2
    backoff: float = 0.5
    allow_private_networks: bool = False
    user_agent: str = "imagepipe/0.1 (+https://github.com/imagepipe)"


@functools.lru_cache(maxsize=4)
def shared_pool(maxsize: int = 32) -> urllib3.PoolManager:
    """One connection pool per process, reused across tasks (keep-alive to image hosts)."""
    return urllib3.PoolManager(num_pools=64, maxsize=maxsize, block=False, retries=False)


class Fetcher:
    def __init__(
        self,
        config: FetchConfig,
        pool: urllib3.PoolManager | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.pool = pool or shared_pool()
        self.sleep = sleep
        self.clock = clock

    def fetch(self, url: str) -> bytes:
        deadline = self.clock() + self.config.total_timeout
        attempt = 0
        while True:
            try:
                return self._fetch_once(url, deadline)
            except FetchError as exc:
                attempt += 1
                delay = self.config.backoff * 2 ** (attempt - 1)
                if not exc.transient or attempt > self.config.retries:
                    raise
                if self.clock() + delay >= deadline:
                    raise FetchError(f"{exc.reason} (gave up: time budget spent)") from exc
                self.sleep(delay)

    def _fetch_once(self, url: str, deadline: float) -> bytes:
        cfg = self.config
        for _hop in range(cfg.max_redirects + 1):
            check_url(url, allow_private=cfg.allow_private_networks)
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise FetchError(f"timed out after {cfg.total_timeout:g}s", transient=True)
            timeout = urllib3.Timeout(
                connect=min(cfg.connect_timeout, remaining), read=min(cfg.read_timeout, remaining)
            )
            try:
                response = self.pool.request(
                    "GET",
                    url,
                    headers={"User-Agent": cfg.user_agent, "Accept": "image/*"},
                    preload_content=False,
                    redirect=False,
                    retries=False,
                    timeout=timeout,
                )
            except urllib3.exceptions.NewConnectionError as exc:
                # (a subclass of ConnectTimeoutError in urllib3, so it must come first)
                raise FetchError(f"connection failed: {_short(exc)}", transient=True) from exc
            except urllib3.exceptions.TimeoutError as exc:
                raise FetchError("timed out connecting or reading", transient=True) from exc
            except urllib3.exceptions.HTTPError as exc:
                raise FetchError(f"connection failed: {_short(exc)}", transient=True) from exc
            try:
                if response.status in REDIRECT_CODES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(f"HTTP {response.status} without a Location header")
                    url = urljoin(url, location)
                    continue
                if response.status != 200:
                    transient = response.status == 429 or response.status >= 500
                    raise FetchError(f"HTTP {response.status}", transient=transient)
                return self._read_body(response, deadline)
            finally:
                response.release_conn()
        raise FetchError(f"too many redirects (more than {cfg.max_redirects})")

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        limit = self.config.max_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"image is {int(declared)} bytes, over the limit of {limit}")
        # Content-Length may lie (or be absent): count what actually arrives.
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.stream(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"image is over the limit of {limit} bytes")
                if self.clock() > deadline:
                    raise FetchError(
                        f"timed out after {self.config.total_timeout:g}s", transient=True
                    )
                chunks.append(chunk)
        except urllib3.exceptions.TimeoutError as exc:
            raise FetchError("timed out reading the body", transient=True) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(f"body read failed: {_short(exc)}", transient=True) from exc
        return b"".join(chunks)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
