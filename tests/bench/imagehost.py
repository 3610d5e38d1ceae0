"""An image host with per-request latency, in its own process (its CPU is not the harness's)."""

from __future__ import annotations

import multiprocessing
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _serve(folder: str, latency: float, ready, port_value) -> None:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".jpg", ".png"))
    blobs = [(p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg") for p in files]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a CDN
        # Headers and body go out in two writes: with Nagle's algorithm on, the body
        # waited for the client's delayed ACK of the headers, ~40 ms on every fetch.
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            # /img/<n>.<ext>: the n-th URL of the CSV, content cycles through the corpus
            try:
                n = int(self.path.rsplit("/", 1)[1].split(".")[0])
            except ValueError:
                self.send_error(404)
                return
            body, ctype = blobs[n % len(blobs)]
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512

    server = Server(("127.0.0.1", 0), Handler)
    port_value.value = server.server_address[1]
    ready.set()
    server.serve_forever()


class ImageHost:
    def __init__(self, folder: Path, latency: float):
        ctx = multiprocessing.get_context("spawn")
        self.ready = ctx.Event()
        self.port = ctx.Value("i", 0)
        self.process = ctx.Process(
            target=_serve, args=(str(folder), latency, self.ready, self.port), daemon=True
        )

    def __enter__(self) -> ImageHost:
        self.process.start()
        if not self.ready.wait(30):
            raise RuntimeError("image host did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.join(10)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None, "not started: use the host in a `with`"
        return self.process.pid

    def url(self, n: int, name: str) -> str:
        return f"http://127.0.0.1:{self.port.value}/img/{n}{Path(name).suffix}"
