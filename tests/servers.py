"""Real HTTP servers on loopback for tests: an image host and a webhook receiver."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # The first `fail_first` requests get `fail_status` (a host that is briefly unwell).
    fail_first: int = 0
    fail_status: int = 503
    # When set, responses wait until it is (tests arrange a fault while downloads hang).
    hold: threading.Event | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        # A client dying mid-response (a killed worker or API process) is what some
        # tests do on purpose; anything else is still printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Base:
    server_class: type[ThreadingHTTPServer] = _Server

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.handler = handler
        self._listen(0)

    def _listen(self, port: int) -> None:
        self.server = self.server_class(("127.0.0.1", port), self.handler)
        self.server.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET address: its host is text
        return f"http://{host}:{port}"

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def restart(self):
        """Listen again on the same port after `stop()` (a host coming back)."""
        self._listen(self.server.server_address[1])
        return self.start()


class ImageServer(_Base):
    """Serves registered paths; counts hits so tests can check what was fetched."""

    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(_ImageHandler)

    def add(self, path: str, body: bytes = b"", **kwargs) -> str:
        self.routes[path] = Route(body=body, **kwargs)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


class _ImageHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        owner: ImageServer = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            hit = owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
        route = owner.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if hit <= route.fail_first:
            self.send_error(route.fail_status)
            return
        if route.hold is not None:
            route.hold.wait(60)
        if route.delay:
            time.sleep(route.delay)
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(route.body)))
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(route.body)


class WebhookReceiver(_Base):
    """Records every POST; answers with `status` (200 unless told otherwise)."""

    def __init__(self, status: int = 200):
        self.status = status
        # (status, headers) answered to the next POSTs in turn; then `status`
        self.script: list[tuple[int, dict[str, str]]] = []
        self.deliveries: list[dict] = []
        self.arrived = threading.Condition()
        super().__init__(_WebhookHandler)

    @property
    def url(self) -> str:
        return f"{self.base_url}/hook"

    def wait_for(self, count: int = 1, timeout: float = 60.0) -> list[dict]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(
                    f"expected {count} webhook deliveries, got {len(self.deliveries)}"
                )
            return list(self.deliveries)

    def delivery_for(self, request_id: str, timeout: float = 60.0) -> dict:
        """The first delivery about `request_id` (a receiver several tests share)."""

        def first() -> dict | None:
            return next(
                (d for d in self.deliveries if d["body"].get("request_id") == request_id), None
            )

        with self.arrived:
            if not self.arrived.wait_for(lambda: first() is not None, timeout):
                raise AssertionError(f"no webhook for {request_id}: {self.deliveries}")
            found = first()
            assert found is not None  # deliveries are only ever added to
            return found


class _WebhookHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        owner: WebhookReceiver = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with owner.arrived:
            status, extra = owner.script.pop(0) if owner.script else (owner.status, {})
            owner.deliveries.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(body),
                    "raw": body,
                    "status": status,
                    "at": time.monotonic(),
                }
            )
            owner.arrived.notify_all()
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
