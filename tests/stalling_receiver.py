"""A hostile webhook receiver on loopback: it takes the POST and never finishes answering.

Silent (reads the request, answers nothing) or dripping (sends the status line
and one endless header a byte at a time, so every read gets something and a
per-read timeout never fires). It counts the requests it read and how many
it holds at once; `release()` closes every held connection unanswered, which
ends the sender's attempt as a connection error.
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading


class StallingReceiver:
    def __init__(self, host: str = "127.0.0.1", *, drip: float | None = None):
        self.host = host
        self.drip = drip  # seconds between bytes; None: silent
        self.requests = 0  # requests read, i.e. attempts that reached the receiver
        self.holding = 0  # connections held open right now
        self.most_held = 0
        self.changed = threading.Condition()
        self.released = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class: type[_Server] = type("_Server", (_Server,), {"address_family": family})
        self.server = server_class((host, 0), _Handler)
        self.server.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}/hook"

    def start(self) -> StallingReceiver:
        self.thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` requests have arrived."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.requests >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {self.requests}")

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        owner: StallingReceiver = self.server.owner  # type: ignore[attr-defined]
        if not _read_request(self.rfile):
            return  # closed before a whole request: not an attempt that arrived
        with owner.changed:
            owner.requests += 1
            owner.holding += 1
            owner.most_held = max(owner.most_held, owner.holding)
            owner.changed.notify_all()
        try:
            self._hold(owner)
        finally:
            with owner.changed:
                owner.holding -= 1
                owner.changed.notify_all()

    def _hold(self, owner: StallingReceiver) -> None:
        """Until released or the sender hangs up (its attempt is then over)."""
        head = b"HTTP/1.1 200 OK\r\nX-Slow: "
        sent = 0
        while not owner.released.wait(owner.drip or 0.02):
            if _hung_up(self.connection):
                return
            if owner.drip is not None:
                try:
                    self.connection.sendall(head[sent : sent + 1] or b"a")
                except OSError:
                    return
                sent += 1


def _hung_up(conn: socket.socket) -> bool:
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _read_request(rfile) -> bool:
    """Read one request (headers and a Content-Length body); False at EOF."""
    length = 0
    while True:
        line = rfile.readline(65537)
        if not line:
            return False
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return len(rfile.read(length)) == length
