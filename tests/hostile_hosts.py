"""A loopback HTTP host that misbehaves on purpose, one behaviour per path.

`HostileHost().start().url("header-drip")` is a URL whose host drips its
headers a byte at a time, forever; every behaviour in `BEHAVIOURS` is one
way a stranger's host (or webhook receiver) can try to hold a client: never
answer, drip, flood, or speak plain HTTP to a TLS client (`https_url`). The
host reads the request head (GET or POST), answers according to the path's
first segment, and keeps going until the client hangs up or `stop()`.
With `tls=` (a server context) it speaks HTTPS under `hostname`.

It counts connections (`open` now, `served` in all) so a test can check the
client let go of the socket, not only that its call returned.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator

CRLF = b"\r\n"
OK_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"


class HostileHost:
    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        pace: float = 0.05,
        tls: ssl.SSLContext | None = None,
        hostname: str = "127.0.0.1",
    ):
        self.pace = pace  # seconds between drips: far below any per-read timeout
        self.tls = tls
        self.hostname = hostname
        self.listener = socket.create_server((host, 0))
        self.stopping = threading.Event()
        self.changed = threading.Condition()
        self.open = 0  # connections the host holds now
        self.served = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def url(self, behaviour: str, name: str = "image.jpg") -> str:
        assert behaviour in BEHAVIOURS, behaviour
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.hostname}:{self.port}/{behaviour}/{name}"

    def https_url(self, name: str = "image.jpg") -> str:
        """An https URL to this plain-HTTP host: it answers the TLS hello in plain HTTP."""
        return f"https://127.0.0.1:{self.port}/plain/{name}"

    def start(self) -> HostileHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()

    def wait_released(self, timeout: float = 5.0) -> bool:
        """True once the host holds no connection (every client hung up)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.open == 0, timeout)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.changed:
                self.open += 1
                self.served += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):  # the client hung up: what limits do
                if self.tls is not None:
                    conn.settimeout(10)
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    conn.settimeout(None)
                self._answer(conn)
        finally:
            conn.close()
            with self.changed:
                self.open -= 1
                self.changed.notify_all()

    def _answer(self, conn: socket.socket) -> None:
        head = _read_head(conn)
        if head.startswith(b"\x16"):  # a TLS ClientHello: answer as a plain host does
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "/"
        behaviour = BEHAVIOURS.get(path.split("/")[1], _not_found)
        for piece in behaviour(self):
            if self.stopping.is_set() or (not piece and _hung_up(conn)):
                return
            conn.sendall(piece)
        # Answered in full: keep the socket until the client is done with it.
        while conn.recv(65536):
            pass

    def drip(self, data: bytes) -> Iterator[bytes]:
        for byte in data:
            if self.stopping.wait(self.pace):
                # An empty piece, so `_answer` sees the stop: yielding nothing would leave
                # `while True: yield from host.drip(...)` spinning a core for the session.
                yield b""
                return
            yield bytes([byte])


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk or chunk.startswith(b"\x16"):
            return data + chunk
        data += chunk
    return data


def _hung_up(conn: socket.socket) -> bool:
    """Whether the client closed its end (a silent host learns it no other way)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, ValueError):  # nothing to read; TLS sockets cannot peek
        return False


def _forever(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


def silent(host: HostileHost) -> Iterator[bytes]:
    """Takes the request and never answers (an empty piece: nothing sent)."""
    while not host.stopping.wait(host.pace):
        yield b""


def status_drip(host: HostileHost) -> Iterator[bytes]:
    """A status line whose reason phrase never ends, a byte at a time."""
    yield b"HTTP/1.1 200 "
    while True:
        yield from host.drip(b"OK")


def header_drip(host: HostileHost) -> Iterator[bytes]:
    """A status line, then one header that never ends, a byte at a time."""
    yield b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Drip: "
    while True:
        yield from host.drip(b"ab")


def header_flood(host: HostileHost) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\n"
    yield from _forever(b"X-Flood: 1\r\n" * 100)


def endless_continue(host: HostileHost) -> Iterator[bytes]:
    """`100 Continue` after `100 Continue`, never the real answer."""
    while not host.stopping.wait(host.pace):
        yield b"HTTP/1.1 100 Continue\r\n\r\n"


def chunk_size_drip(host: HostileHost) -> Iterator[bytes]:
    """One good chunk, then a chunk-size line dripped a digit at a time."""
    yield OK_CHUNKED + b"4\r\nJFIF\r\n"
    while True:
        yield from host.drip(b"0")


def chunk_extension_drip(host: HostileHost) -> Iterator[bytes]:
    """One good chunk, then a chunk extension that never ends, a byte at a time."""
    yield OK_CHUNKED + b"4\r\nJFIF\r\n4;name="
    while True:
        yield from host.drip(b"ab")


def chunk_extension_flood(host: HostileHost) -> Iterator[bytes]:
    """Chunks of one byte, each under a 60 KB chunk extension (http.client allows 64 KiB)."""
    yield OK_CHUNKED
    yield from _forever(b"1;" + b"e" * 60_000 + b"\r\nx\r\n")


def trailer_flood(host: HostileHost) -> Iterator[bytes]:
    """A short body, then trailer lines without end (http.client counts none of them)."""
    yield OK_CHUNKED + b"4\r\nJFIF\r\n0\r\n"
    yield from _forever(b"X-Trailer: 1\r\n" * 1000)


def trailer_drip(host: HostileHost) -> Iterator[bytes]:
    yield OK_CHUNKED + b"4\r\nJFIF\r\n0\r\nX-Trailer: "
    while True:
        yield from host.drip(b"ab")


def empty_deflate(host: HostileHost) -> Iterator[bytes]:
    """gzip whose deflate stream is empty stored blocks without end: 0 bytes decoded."""
    gzip = zlib.compressobj(wbits=31)
    yield (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Encoding: gzip\r\n\r\n"
        + gzip.compress(b"")
        + gzip.flush(zlib.Z_SYNC_FLUSH)
    )
    yield from _forever(b"\x00\x00\x00\xff\xff" * 20_000)  # an empty block: 5 bytes each


def endless_body(host: HostileHost) -> Iterator[bytes]:
    """A body with no length that never stops, slower than any size limit is reached."""
    yield b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\n"
    while not host.stopping.wait(host.pace / 5):
        yield b"x" * 1024


def _not_found(host: HostileHost) -> Iterator[bytes]:
    yield b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


BEHAVIOURS: dict[str, Callable[[HostileHost], Iterator[bytes]]] = {
    "silent": silent,
    "status-drip": status_drip,
    "header-drip": header_drip,
    "header-flood": header_flood,
    "continue": endless_continue,
    "chunk-size-drip": chunk_size_drip,
    "chunk-extension-drip": chunk_extension_drip,
    "chunk-extension-flood": chunk_extension_flood,
    "trailer-flood": trailer_flood,
    "trailer-drip": trailer_drip,
    "empty-deflate": empty_deflate,
    "endless-body": endless_body,
}
