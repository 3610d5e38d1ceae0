"""A loopback image host that allows `limit` requests at once and answers 429 above that.

Any path is an image (the same bytes). The host counts the requests it is
serving: one over the limit is refused at once with `429` and `Retry-After`,
as a CDN or a shop's rate limiter does. A request stops counting just before
its response is written, so a client that has the whole response has already
left the count: the peak is what the host saw, not a race of the two sides.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.servers import _Base, _Server


class _BurstServer(_Server):
    request_queue_size = 512  # a burst of connections is refused by the host's rule, not the OS


@dataclass
class HostStats:
    served: int = 0
    refused: int = 0
    peak: int = 0  # the most requests at once, counting each arrival refused for it
    active: int = 0
    # (monotonic time, status) of every answer, in order
    answers: list[tuple[float, int]] = field(default_factory=list)


class ThrottlingHost(_Base):
    server_class = _BurstServer

    def __init__(
        self,
        body: bytes,
        *,
        limit: int = 4,
        retry_after: str = "1",
        hold: float = 0.005,
        refuse_first: int = 0,
    ):
        """`hold`: seconds each served request stays counted (the host's own work);
        `refuse_first`: the first requests are refused whatever the count (a host
        that starts out throttling)."""
        self.body = body
        self.limit = limit
        self.retry_after = retry_after
        self.hold = hold
        self.refuse_first = refuse_first
        self.stats = HostStats()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        super().__init__(_Handler)

    def url(self, n: int) -> str:
        return f"{self.base_url}/img/{n}.jpg"

    def __enter__(self) -> ThrottlingHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        """Block until `predicate(stats)` holds (the host's answers are events)."""
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.stats), timeout):
                raise AssertionError(f"the host never got there: {self.stats}")

    def _admit(self) -> bool:
        stats = self.stats
        with self.changed:
            stats.peak = max(stats.peak, stats.active + 1)
            if stats.served + stats.refused < self.refuse_first or stats.active >= self.limit:
                stats.refused += 1
                stats.answers.append((time.monotonic(), 429))
                self.changed.notify_all()
                return False
            stats.active += 1
            return True

    def _leave(self) -> None:
        with self.changed:
            self.stats.active -= 1
            self.stats.served += 1
            self.stats.answers.append((time.monotonic(), 200))
            self.changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts do

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        host: ThrottlingHost = self.server.owner  # type: ignore[attr-defined]
        if not host._admit():
            self.send_response(429)
            self.send_header("Retry-After", host.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            time.sleep(host.hold)  # the host's own work per image, while it counts
        finally:
            host._leave()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(host.body)))
        self.end_headers()
        self.wfile.write(host.body)
