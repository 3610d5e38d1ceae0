"""Per-client rate limiting: a token bucket per client, in memory.

Each client's bucket holds up to `burst` tokens and refills continuously at
`per_minute / 60` tokens a second; a request takes one token or is refused
with 429 and how long until one is there. A client that comes back after a
pause gets its burst again; one that polls steadily gets the per-minute rate.

A bucket that has had time to refill completely is the same as no bucket, so
idle clients are dropped (memory follows the clients of the last
`burst / rate` seconds), and `max_clients` caps it outright. The limit is per
process: with several API processes each enforces its own.

Images (output images under /media/ and thumbnails) have their own, larger
bucket per client (MEDIA_RATE_LIMIT_*): a page showing a thousand thumbnails
must not spend the tokens its status polls need, nor be refused itself, while
the JSON API keeps its limit. `rate_limits` builds both from the settings.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import falcon

from api.errors import RateLimited
from pipeline.errors import ConfigError
from pipeline.settings import Settings

# Output images served by the API (local storage) and their thumbnails (api/thumbnails.py).
_IMAGE_PATH = re.compile(r"/media/.+|/api/v1/requests/[^/]+/thumbnails/[^/]+")


def is_image_path(path: str) -> bool:
    """Whether `path` is an image: counted in the images' bucket, not the API's."""
    return _IMAGE_PATH.fullmatch(path) is not None


def is_api_path(path: str) -> bool:
    return not is_image_path(path)


class Decision(NamedTuple):
    allowed: bool
    remaining: int  # whole tokens left after this request
    retry_after: int  # seconds until one token is there (0 when allowed)
    reset: int  # seconds until the bucket is full again


class TokenBuckets:
    """Thread-safe; each `take` is O(1) amortized under one short lock."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ):
        if per_minute < 1 or burst < 1 or max_clients < 1:
            raise ValueError("per_minute, burst and max_clients must be at least 1")
        self.per_minute = per_minute
        self.burst = burst
        self.rate = per_minute / 60.0  # tokens per second
        self.refill_seconds = burst / self.rate  # from empty to full
        self.clock = clock
        self.max_clients = max_clients
        # client -> (tokens, when last seen); least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def policy(self) -> str:
        return f"{self.per_minute} per minute, bursts of {self.burst}"

    def take(self, client: str) -> Decision:
        with self._lock:
            now = self.clock()
            buckets = self._buckets
            tokens, seen = buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - seen) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            buckets[client] = (tokens, now)  # re-inserted: now the most recently seen
            self._evict(now)
        retry_after = 0 if allowed else max(1, math.ceil((1.0 - tokens) / self.rate))
        reset = math.ceil((self.burst - tokens) / self.rate)
        return Decision(allowed, int(tokens), retry_after, reset)

    def _evict(self, now: float) -> None:
        # Oldest first, so the loop stops at the first client still refilling.
        buckets = self._buckets
        while buckets:
            client, (_, seen) = next(iter(buckets.items()))
            if now - seen < self.refill_seconds and len(buckets) <= self.max_clients:
                return
            del buckets[client]


class RateLimit:
    """Middleware: one token per request to the paths it covers, except the open paths."""

    def __init__(
        self,
        buckets: TokenBuckets,
        client_of: Callable[[falcon.Request], str],
        *,
        open_paths: frozenset[str],
        covers: Callable[[str], bool] = lambda path: True,
    ):
        self.buckets = buckets
        self.client_of = client_of
        self.open_paths = open_paths
        self.covers = covers  # the paths this bucket counts (another limit may count the rest)
        self._limit = str(buckets.burst)
        self._policy = f"{buckets.burst};w={math.ceil(buckets.refill_seconds)}"

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in self.open_paths or not self.covers(req.path):
            return
        decision = self.buckets.take(self.client_of(req))
        # The IETF draft's RateLimit fields, so clients can pace themselves.
        resp.set_header("RateLimit-Limit", self._limit)
        resp.set_header("RateLimit-Remaining", str(decision.remaining))
        resp.set_header("RateLimit-Reset", str(decision.reset))
        resp.set_header("RateLimit-Policy", self._policy)
        if not decision.allowed:
            raise RateLimited(decision.retry_after, self.buckets.policy)


def rate_limits(
    settings: Settings,
    client_of: Callable[[falcon.Request], str],
    *,
    clock: Callable[[], float] = time.monotonic,
    open_paths: frozenset[str],
) -> list[RateLimit]:
    """The middleware limiting each client: one bucket for the API, one for images.

    Each is off when its per-minute setting is 0 (RATE_LIMIT_PER_MINUTE,
    MEDIA_RATE_LIMIT_PER_MINUTE), independently of the other.
    """
    if settings.media_rate_limit_per_minute < 0:
        raise ConfigError("MEDIA_RATE_LIMIT_PER_MINUTE must be 0 (no limit) or more")
    if settings.media_rate_limit_per_minute and settings.media_rate_limit_burst < 1:
        raise ConfigError(
            "MEDIA_RATE_LIMIT_BURST must be at least 1 (set MEDIA_RATE_LIMIT_PER_MINUTE=0 "
            "to turn the images' limit off)"
        )
    limits = []
    for per_minute, burst, covers in (
        (settings.rate_limit_per_minute, settings.rate_limit_burst, is_api_path),
        (settings.media_rate_limit_per_minute, settings.media_rate_limit_burst, is_image_path),
    ):
        if per_minute:
            buckets = TokenBuckets(per_minute, burst, clock=clock)
            limits.append(RateLimit(buckets, client_of, open_paths=open_paths, covers=covers))
    return limits
