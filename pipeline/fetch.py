"""Download one URL with limits on time, size and redirects.

Failures come back as `FetchError(reason, transient=...)`; the batch task
records the reason on the image. Transient failures (connection errors,
timeouts, 429, 5xx) are retried with jittered exponential backoff inside the
total time budget; permanent ones (4xx, too large, refused address) are not.
Every connection, including each redirect hop, goes through the address
guard of `pipeline.netguard`.
"""

from __future__ import annotations

import functools
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import urllib3

from pipeline.errors import ConfigError, FetchError
from pipeline.netguard import Resolver, guarded_pool, validate_url

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
    backoff: float = 0.5  # seconds before the first retry; doubles, with jitter
    allow_private_networks: bool = False
    user_agent: str = "imagepipe/0.1 (+https://github.com/imagepipe)"

    def __post_init__(self) -> None:
        # Built once at start-up from Settings: a bad limit fails there, not per image.
        for name in ("connect_timeout", "read_timeout", "total_timeout", "max_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fetch {name} must be positive, got {getattr(self, name)}")
        for name in ("max_redirects", "retries", "backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fetch {name} must be 0 or more, got {getattr(self, name)}")


@functools.lru_cache(maxsize=4)
def shared_pool(allow_private: bool, maxsize: int = 32) -> urllib3.PoolManager:
    """One guarded connection pool per process and policy (keep-alive to image hosts)."""
    return guarded_pool(allow_private, num_pools=64, maxsize=maxsize, block=False, retries=False)


class Fetcher:
    def __init__(
        self,
        config: FetchConfig,
        pool: urllib3.PoolManager | None = None,
        *,
        resolve: Resolver | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ):
        """`pool` must come from `netguard.guarded_pool`: it enforces the address rules."""
        self.config = config
        if pool is None:
            allow = config.allow_private_networks
            pool = (
                shared_pool(allow)
                if resolve is None or resolve is socket.getaddrinfo
                else guarded_pool(allow, resolve, num_pools=8, block=False, retries=False)
            )
        self.pool = pool
        self.sleep = sleep
        self.clock = clock
        self.rand = rand

    def fetch(self, url: str) -> bytes:
        deadline = self.clock() + self.config.total_timeout
        attempt = 0
        while True:
            try:
                return self._fetch_once(url, deadline)
            except FetchError as exc:
                attempt += 1
                if not exc.transient or attempt > self.config.retries:
                    raise
                delay = self._backoff(attempt)
                if self.clock() + delay >= deadline:
                    raise FetchError(f"{exc.reason} (gave up: time budget spent)") from exc
                self.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Jitter between half and all of the exponential step, so the workers
        # that hit the same failing host do not all come back at once.
        step = self.config.backoff * 2 ** (attempt - 1)
        return step * (0.5 + 0.5 * self.rand())

    def _fetch_once(self, url: str, deadline: float) -> bytes:
        cfg = self.config
        for _hop in range(cfg.max_redirects + 1):
            validate_url(url)  # the address itself is checked by the pool's connections
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
            except urllib3.exceptions.ConnectTimeoutError as exc:
                raise FetchError(
                    f"timed out connecting (after {timeout.connect_timeout:g}s)", transient=True
                ) from exc
            except urllib3.exceptions.TimeoutError as exc:
                raise FetchError(
                    f"timed out waiting for a response (after {timeout.read_timeout:g}s)",
                    transient=True,
                ) from exc
            except urllib3.exceptions.HTTPError as exc:
                raise FetchError(f"connection failed: {_short(exc)}", transient=True) from exc
            body = None
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
                body = self._read_body(response, deadline)
                return body
            finally:
                if body is None:
                    # An unread or half-read body must not go back to the pool.
                    response.close()
                response.release_conn()
        raise FetchError(f"too many redirects (more than {cfg.max_redirects})")

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        limit = self.config.max_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"image is {int(declared)} bytes, over the limit of {limit}")
        # Content-Length may lie (or be absent) and Content-Encoding may inflate
        # a small download into gigabytes: count the decoded bytes that arrive.
        # read1 returns after one network read, so the time budget is checked
        # even when a server drips a byte at a time.
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise FetchError(
                        f"timed out after {self.config.total_timeout:g}s", transient=True
                    )
                _limit_wait(response, min(self.config.read_timeout, remaining))
                chunk = response.read1(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"image is over the limit of {limit} bytes")
                chunks.append(chunk)
        except urllib3.exceptions.TimeoutError as exc:
            if self.clock() >= deadline:
                raise FetchError(
                    f"timed out after {self.config.total_timeout:g}s", transient=True
                ) from exc
            raise FetchError(
                f"timed out reading the body (nothing for {self.config.read_timeout:g}s)",
                transient=True,
            ) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(f"body read failed: {_short(exc)}", transient=True) from exc
        return b"".join(chunks)


def _limit_wait(response: urllib3.BaseHTTPResponse, seconds: float) -> None:
    """Make the next socket read wait at most `seconds` (the rest of the time budget)."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
