"""The fetcher against a real HTTP server on loopback."""

import contextlib
import gzip
import random
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable

import pytest

from pipeline.errors import ConfigError, FetchError
from pipeline.fetch import FetchConfig, Fetcher, fetch_config
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def fetcher(**overrides):
    config = FetchConfig(allow_private_networks=True, backoff=0.01, **overrides)
    return Fetcher(config)


def test_fetches_bytes(image_server):
    url = image_server.add("/a.jpg", b"x" * 200_000)
    assert fetcher().fetch(url) == b"x" * 200_000


def test_loopback_refused_without_the_switch(image_server):
    url = image_server.add("/a.jpg", b"x")
    with pytest.raises(FetchError, match="non-public"):
        Fetcher(FetchConfig()).fetch(url)
    assert image_server.hits.get("/a.jpg") is None


def test_follows_redirects_up_to_the_limit(image_server):
    target = image_server.add("/final.jpg", b"img")
    image_server.add("/r1", status=302, headers={"Location": "/final.jpg"})
    assert fetcher().fetch(image_server.url("/r1")) == b"img"
    image_server.add("/loop", status=301, headers={"Location": "/loop"})
    with pytest.raises(FetchError, match="too many redirects"):
        fetcher(max_redirects=3).fetch(image_server.url("/loop"))
    assert image_server.hits["/loop"] == 4
    assert target


def test_permanent_errors_are_not_retried(image_server):
    image_server.add("/gone", status=404)
    with pytest.raises(FetchError, match="HTTP 404") as caught:
        fetcher().fetch(image_server.url("/gone"))
    assert not caught.value.transient
    assert image_server.hits["/gone"] == 1


def test_transient_errors_are_retried_then_reported(image_server):
    image_server.add("/busy", status=503)
    with pytest.raises(FetchError, match="HTTP 503"):
        fetcher(retries=2).fetch(image_server.url("/busy"))
    assert image_server.hits["/busy"] == 3


def test_size_limit_stops_reading(image_server):
    url = image_server.add("/big", b"x" * 300_000)
    with pytest.raises(FetchError, match="over the limit"):
        fetcher(max_bytes=100_000).fetch(url)


def test_read_timeout(image_server):
    url = image_server.add("/slow", b"x", delay=2.0)
    with pytest.raises(FetchError, match="timed out"):
        fetcher(read_timeout=0.3, retries=0).fetch(url)


def test_connection_refused_is_transient():
    from tests.servers import free_port

    with pytest.raises(FetchError, match="connection failed") as caught:
        fetcher(retries=0).fetch(f"http://127.0.0.1:{free_port()}/x.jpg")
    assert caught.value.transient


# Limits against servers that misbehave on purpose: a raw socket server lets a
# test send what http.server never would (no Content-Length, a drip, a bomb).


class RawServer:
    """Answers every connection on loopback with `respond(sock)` after reading the request."""

    def __init__(self, respond: Callable[[socket.socket], None], host: str = "127.0.0.1"):
        self.respond = respond
        self.listener = socket.create_server((host, 0))
        self.connections = 0
        self.closing = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"http://{host}:{port}/image.jpg"

    def _serve(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            with contextlib.suppress(OSError):  # the client hung up: that is what limits do
                self.respond(conn)

    def close(self) -> None:
        self.closing.set()
        self.listener.close()


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def start(respond: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_body_without_content_length_stops_at_the_limit(raw_server):
    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n")
        while True:  # no Content-Length, never ends
            conn.sendall(b"x" * 65536)

    server = raw_server(endless)
    with pytest.raises(FetchError, match="over the limit of 100000 bytes") as caught:
        fetcher(max_bytes=100_000).fetch(server.url)
    assert not caught.value.transient


def test_content_length_that_understates_is_not_trusted(raw_server):
    def liar(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10)
        conn.sendall(b"y" * 300_000)  # ignored: the client stops at the declared length

    assert fetcher(max_bytes=100_000).fetch(raw_server(liar).url) == b"x" * 10


def test_gzip_bomb_stops_at_the_limit_on_decoded_bytes(raw_server):
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)  # ~200 KB on the wire

    def send_bomb(conn: socket.socket) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
        conn.sendall(head.encode() + bomb)

    server = raw_server(send_bomb)
    tracemalloc.start()
    try:
        with pytest.raises(FetchError, match="over the limit of 1000000 bytes"):
            fetcher(max_bytes=1_000_000).fetch(server.url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Decoding stopped near the limit instead of inflating 200 MB in memory.
    assert peak < 20 * 1024 * 1024


def test_incompressible_gzip_just_under_the_limit_still_arrives(raw_server):
    # Random bytes grow a little under gzip: the wire budget leaves room for that.
    image = random.randbytes(1_000_000)
    wire = gzip.compress(image)
    assert len(wire) > len(image)

    def send(conn: socket.socket) -> None:  # no Content-Length: the body ends at the close
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + wire)

    assert fetcher(max_bytes=1_000_000).fetch(raw_server(send).url) == image


def test_a_body_in_tiny_chunks_is_not_taken_for_a_flood(raw_server):
    image = bytes(range(256)) * 400  # 100 KB in 3-byte chunks: framing as big as the data
    pieces = [image[i : i + 3] for i in range(0, len(image), 3)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)

    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(chunked + b"0\r\nX-Checksum: 1\r\n\r\n")

    assert fetcher().fetch(raw_server(send).url) == image


def test_slow_drip_hits_the_total_time_budget(raw_server):
    def drip(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(1000):  # one byte every 50 ms: never a read timeout
            conn.sendall(b"x")
            time.sleep(0.05)

    with pytest.raises(FetchError, match=r"body not complete after 0\.5s \(\d+ bytes received\)"):
        fetcher(total_timeout=0.5, read_timeout=5, retries=0).fetch(raw_server(drip).url)


def test_connect_timeout():
    # A listener whose backlog is full drops new SYNs, so connect() hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    port = listener.getsockname()[1]
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        with pytest.raises(FetchError, match="timed out connecting") as caught:
            fetcher(connect_timeout=0.3, retries=0).fetch(f"http://127.0.0.1:{port}/x.jpg")
        assert caught.value.transient
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_retries_back_off_exponentially_with_jitter(image_server):
    image_server.add("/busy", status=503)
    delays: list[float] = []
    config = FetchConfig(allow_private_networks=True, backoff=0.2, retries=3)
    for rand, expected in ((lambda: 0.0, [0.1, 0.2, 0.4]), (lambda: 1.0, [0.2, 0.4, 0.8])):
        delays.clear()
        with pytest.raises(FetchError, match="HTTP 503"):
            Fetcher(config, sleep=delays.append, rand=rand).fetch(image_server.url("/busy"))
        assert delays == pytest.approx(expected)


def test_fetch_backoff_setting_reaches_the_fetcher():
    settings = Settings.from_env({"FETCH_BACKOFF": "1.5", "FETCH_RETRIES": "4"})
    config = fetch_config(settings)
    assert (config.backoff, config.retries) == (1.5, 4)
    assert fetch_config(Settings()).backoff == 0.5


@pytest.mark.parametrize(
    "bad", [{"backoff": -1}, {"max_bytes": 0}, {"total_timeout": 0}, {"max_redirects": -1}]
)
def test_nonsense_limits_fail_at_start_up(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        FetchConfig(**bad)
