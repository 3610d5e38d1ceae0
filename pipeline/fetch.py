"""Download one URL with limits on time, size and redirects.

Failures come back as `FetchError(reason, transient=...)`; the batch task
records the reason on the image. Transient failures (connection errors,
timeouts, 429, 5xx) are retried with jittered exponential backoff inside the
total time budget; permanent ones (4xx, too large, refused address) are not.
Every connection, including each redirect hop, goes through the address
guard of `pipeline.netguard`. The whole fetch (every attempt and redirect) is
one `pipeline.exchange.Exchange`: a hard deadline of `total_timeout` from the
first connect to the last byte, and byte budgets on the head, the body on the
wire and the chunk framing, whatever the host sends or withholds.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import urllib3

from pipeline.errors import ConfigError, FetchError
from pipeline.exchange import Exchange
from pipeline.hosts import SLOW_DOWN, parse_retry_after
from pipeline.lookups import Resolver
from pipeline.netguard import guarded_pool, validate_url
from pipeline.reasons import Budget
from pipeline.settings import DEFAULTS, Settings

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
# Bytes on the wire beyond MAX_IMAGE_BYTES a body may take (compressed or chunked
# framing): a body that inflates to nothing (empty deflate blocks) stops there.
WIRE_SLACK = 64 * 1024


@dataclass(frozen=True)
class FetchConfig:
    connect_timeout: float = DEFAULTS.connect_timeout
    read_timeout: float = DEFAULTS.read_timeout
    total_timeout: float = DEFAULTS.total_timeout
    max_redirects: int = DEFAULTS.max_redirects
    max_bytes: int = DEFAULTS.max_image_bytes
    retries: int = DEFAULTS.fetch_retries
    backoff: float = DEFAULTS.fetch_backoff  # seconds before the first retry; doubles
    allow_private_networks: bool = DEFAULTS.allow_private_networks
    user_agent: str = "imagepipe/0.1 (+https://github.com/imagepipe)"

    def __post_init__(self) -> None:
        # Built once at start-up from Settings: a bad limit fails there, not per image.
        for name in ("connect_timeout", "read_timeout", "total_timeout", "max_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fetch {name} must be positive, got {getattr(self, name)}")
        for name in ("max_redirects", "retries", "backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fetch {name} must be 0 or more, got {getattr(self, name)}")


def fetch_config(settings: Settings) -> FetchConfig:
    """How images are fetched, as the settings say (timeouts, sizes, retries, networks)."""
    return FetchConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        total_timeout=settings.total_timeout,
        max_redirects=settings.max_redirects,
        max_bytes=settings.max_image_bytes,
        retries=settings.fetch_retries,
        backoff=settings.fetch_backoff,
        allow_private_networks=settings.allow_private_networks,
    )


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
        host_gate: Callable[[str, float], contextlib.AbstractContextManager[None]] | None = None,
    ):
        """`pool` must come from `netguard.guarded_pool`: it enforces the address rules.

        `host_gate(url, deadline)` is entered around each attempt, retries included
        (`pipeline.hosts.HostLimiter.slot`: the per-host cap and pause)."""
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
        self.host_gate = host_gate or (lambda _url, _deadline: contextlib.nullcontext())

    def fetch(self, url: str) -> bytes:
        cfg = self.config
        budget = Budget(body_bytes=cfg.max_bytes + cfg.max_bytes // 8 + WIRE_SLACK)
        with Exchange(cfg.total_timeout, idle=cfg.read_timeout, budget=budget) as exchange:
            return self._fetch(url, exchange)

    def _fetch(self, url: str, exchange: Exchange) -> bytes:
        deadline = self.clock() + self.config.total_timeout
        attempt = 0
        while True:
            try:
                with self.host_gate(url, deadline):
                    return self._fetch_once(url, exchange)
            except FetchError as exc:
                attempt += 1
                if not exc.transient or attempt > self.config.retries:
                    raise
                delay = self._backoff(attempt)
                if self.clock() + delay >= deadline:
                    raise FetchError(
                        f"{exc.reason} (gave up: time budget spent)",
                        status=exc.status,
                        retry_after=exc.retry_after,
                    ) from exc
                self.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Jitter between half and all of the exponential step, so the workers
        # that hit the same failing host do not all come back at once.
        step = self.config.backoff * 2 ** (attempt - 1)
        return step * (0.5 + 0.5 * self.rand())

    def _fetch_once(self, url: str, exchange: Exchange) -> bytes:
        cfg = self.config
        for _hop in range(cfg.max_redirects + 1):
            validate_url(url)  # the address itself is checked by the pool's connections
            remaining = exchange.remaining()
            if remaining <= 0:  # the earlier attempts and redirects took the time
                raise FetchError(f"timed out after {cfg.total_timeout:g}s (attempts and redirects)")
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
            except urllib3.exceptions.HTTPError as exc:
                # Worded from what the host did, in the phase it did it (pipeline.reasons).
                raise exchange.failure(exc) from exc
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
                    retry_after = (
                        parse_retry_after(response.headers.get("Retry-After"), time.time())
                        if response.status in SLOW_DOWN
                        else None
                    )
                    raise FetchError(
                        f"HTTP {response.status}",
                        transient=transient,
                        status=response.status,
                        retry_after=retry_after,
                    )
                body = self._read_body(response, exchange)
                return body
            finally:
                if body is None:
                    # An unread or half-read body must not go back to the pool.
                    response.close()
                response.release_conn()
        raise FetchError(f"too many redirects (more than {cfg.max_redirects})")

    def _read_body(self, response: urllib3.BaseHTTPResponse, exchange: Exchange) -> bytes:
        limit = self.config.max_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"image is {int(declared)} bytes, over the limit of {limit}")
        # Content-Length may lie (or be absent) and Content-Encoding may inflate
        # a small download into gigabytes: count the decoded bytes that arrive
        # (the exchange counts the ones on the wire, and ends it all at the deadline).
        chunks: list[bytes] = []
        size = 0
        try:
            while not exchange.expired:
                chunk = response.read1(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                exchange.progress.decoded = size
                if size > limit:
                    raise FetchError(f"image is over the limit of {limit} bytes")
                chunks.append(chunk)
        except urllib3.exceptions.HTTPError as exc:
            raise exchange.failure(exc) from exc
        # A body without a length ends when the connection does, as it does when the
        # deadline shuts it down: only the exchange knows which.
        exchange.check()
        return b"".join(chunks)
