"""A hard deadline and byte budgets for one outbound HTTP exchange.

http.client and urllib3 time out one socket read at a time, so a host that
drips the status line, headers, chunk-size lines or trailers, or sends
endless `100 Continue`, renews the timeout with every byte and holds the
thread for as long as it likes. So each download (all its attempts and
redirects) and each webhook attempt runs inside an `Exchange`:

- one alarm thread for the whole process keeps every exchange's deadline and,
  when one passes, shuts its sockets down (`shutdown(SHUT_RDWR)`): any read or
  write blocked on them, in http.client, urllib3 or OpenSSL, returns at once;
- what http.client reads goes through a counting file, so the head (status
  lines and headers), the body on the wire (before decoding), the chunk
  framing and the trailers each have a budget, checked as the bytes arrive;
- the exchange's `Progress` records how far the answer got, so a failure
  names what the peer did (`pipeline.reasons`).

The guarded connections of `pipeline.netguard` find the current exchange in
a context variable, so the code that opens one never reaches into urllib3.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import http.client
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.errors import FetchError
from pipeline.reasons import (
    BODY,
    BODY_TOO_LARGE,
    CONNECT,
    FRAMING_FLOOD,
    HEAD_TOO_LARGE,
    HEADERS,
    SEND,
    STATUS,
    TLS,
    TOO_MANY_INTERIM,
    TRAILER_FLOOD,
    TRAILERS,
    Budget,
    Progress,
    explain,
)

log = logging.getLogger(__name__)
_current: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar(
    "imagepipe_exchange", default=None
)


def current() -> Exchange | None:
    """The exchange this thread is running, if any."""
    return _current.get()


class OverBudget(OSError):
    """Raised inside http.client when the peer spends a byte budget (urllib3 wraps it)."""


class Alarm:
    """One thread for every deadline in the process (not a timer thread per request)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._heap: list[tuple[float, int, Exchange]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._sweep_at = 1024  # heap size at which finished exchanges are dropped

    def add(self, exchange: Exchange) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-deadlines")
                self._thread.daemon = True
                self._thread.start()
            if len(self._heap) >= self._sweep_at:
                # Finished exchanges wait here until their deadline; drop them in bulk
                # (amortised: the next sweep waits until the heap has doubled).
                self._heap = [entry for entry in self._heap if not entry[2].closed]
                heapq.heapify(self._heap)
                self._sweep_at = max(1024, 2 * len(self._heap))
            heapq.heappush(self._heap, (exchange.deadline, next(self._order), exchange))
            if self._heap[0][2] is exchange:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > self.clock():
                    wait = self._heap[0][0] - self.clock() if self._heap else None
                    self._cond.wait(wait)
                _, _, exchange = heapq.heappop(self._heap)
            try:
                exchange.expire()
            except Exception:  # the one alarm of the process must outlive any surprise
                log.exception("shutting down a late exchange failed")


_alarm = Alarm()


def _new_alarm_after_fork() -> None:
    # The parent's alarm thread does not survive a fork (and may hold its lock).
    global _alarm
    _alarm = Alarm()


os.register_at_fork(after_in_child=_new_alarm_after_fork)


class Exchange:
    """One download or webhook attempt, from the first connect to the last byte.

    Use as a context manager in the thread that does the exchange: sockets the
    guarded connections open or reuse inside it are shut down at the deadline.
    """

    def __init__(
        self,
        timeout: float,
        *,
        peer: str = "host",
        idle: float | None = None,
        budget: Budget | None = None,
        alarm: Alarm | None = None,
    ):
        self.alarm = alarm or _alarm
        self.deadline = self.alarm.clock() + timeout
        self.budget = budget or Budget()
        self.progress = Progress(timeout=timeout, peer=peer, idle=idle)
        self.closed = False
        self._sockets: list[socket.socket] = []  # duplicates: ours to shut down and close
        self._lock = threading.Lock()
        self._token: contextvars.Token[Exchange | None] | None = None

    def __enter__(self) -> Exchange:
        self._token = _current.set(self)
        self.alarm.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
        with self._lock:
            self.closed = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    # -- time -------------------------------------------------------------------
    def remaining(self) -> float:
        return self.deadline - self.alarm.clock()

    @property
    def expired(self) -> bool:
        return self.progress.expired

    def expire(self) -> None:
        """The deadline passed: wake whatever is blocked on this exchange's sockets."""
        with self._lock:
            if self.closed:
                return
            self.progress.expired = True
            for sock in self._sockets:
                _shut(sock)

    def watch(self, sock: socket.socket | None) -> None:
        """Shut `sock` down at the deadline; past it, refuse to use a socket at all."""
        if self.progress.expired:
            # (a socket not connected yet would ignore a shutdown and connect anyway)
            raise TimeoutError("the exchange's deadline has passed")
        if sock is None:
            return
        try:
            # A duplicate of the descriptor: it stays valid whatever the
            # connection does with its own (TLS wrapping detaches it, closing
            # closes it), and shutting it down shuts the connection down.
            dup = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return  # closed already: nothing left to wake
        with self._lock:
            if self.closed:
                dup.close()
                return
            self._sockets.append(dup)
            if self.progress.expired:  # it passed while the descriptor was duplicated
                _shut(dup)

    # -- failures -----------------------------------------------------------------
    def failure(self, exc: BaseException | None = None) -> FetchError:
        """The FetchError for `exc` (None: an answer the deadline or a budget cut short)."""
        if self.progress.phase == TLS and exc is not None:
            self.progress.peeked = self._peek()
        reason, transient = explain(self.progress, self.budget, exc)
        return FetchError(reason, transient=transient)

    def check(self) -> None:
        """Raise the FetchError if the deadline or a budget cut the answer short."""
        if self.progress.expired or self.progress.stopped:
            raise self.failure()

    def _peek(self) -> bytes:
        """What the peer sent that TLS could not read (plain HTTP says so in its first bytes)."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in reversed(sockets):
            with contextlib.suppress(OSError):
                return sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return b""

    # -- progress, reported by the guarded connection and its response ------------
    def connecting(self, port: int, connect_timeout: float | None) -> None:
        self.progress.phase = CONNECT
        self.progress.port = port
        self.progress.connect_timeout = connect_timeout

    def connected(self, tls: bool) -> None:
        self.progress.phase = TLS if tls else SEND

    def sending(self, sock: socket.socket | None) -> None:
        """A request starts on a connection (a kept-alive one has its socket already)."""
        self.watch(sock)
        self.progress.phase = SEND

    def answer_started(self) -> None:
        p = self.progress
        p.phase, p.head_bytes, p.interim = STATUS, 0, 0
        p.body_bytes = p.framing_bytes = p.trailer_lines = p.trailer_bytes = p.decoded = 0
        p.encoding, p.partial_line = None, False

    def status_line(self) -> None:
        self.progress.phase = STATUS
        self.progress.status_bytes = 0

    def status_read(self, status: int) -> None:
        self._stop_if_late()
        p = self.progress
        p.phase, p.header_bytes = HEADERS, 0
        if status == http.client.CONTINUE:
            p.interim += 1
            if p.interim > self.budget.interim:
                self._stop(TOO_MANY_INTERIM)

    def head_read(self, encoding: str | None) -> None:
        self._stop_if_late()  # headers cut off at the deadline look complete to http.client
        self.progress.phase = BODY
        self.progress.encoding = encoding

    def line_read(self, line: bytes) -> None:
        p, budget = self.progress, self.budget
        size = len(line)
        if line:  # (the empty read at the end of the stream changes nothing)
            p.partial_line = not line.endswith(b"\n")
        if p.phase in (STATUS, HEADERS):
            if p.phase == STATUS:
                p.status_bytes += size
            else:
                p.header_bytes += size
            p.head_bytes += size
            if p.head_bytes > budget.head_bytes:
                self._stop(HEAD_TOO_LARGE)
        elif p.phase == BODY:  # a chunk-size line
            p.framing_bytes += size
            if p.framing_bytes > p.body_bytes + budget.framing_slack:
                self._stop(FRAMING_FLOOD)
            if not p.partial_line and _chunk_size(line) == 0:
                p.phase = TRAILERS
        elif p.phase == TRAILERS:
            p.trailer_lines += 1
            p.trailer_bytes += size
            if p.trailer_lines > budget.trailer_lines or p.trailer_bytes > budget.trailer_bytes:
                self._stop(TRAILER_FLOOD)

    def data_read(self, size: int) -> None:
        p = self.progress
        if size:
            p.partial_line = False
        p.body_bytes += size
        limit = self.budget.body_bytes
        if limit is not None and p.body_bytes > limit:
            self._stop(BODY_TOO_LARGE)

    def _stop(self, kind: str) -> None:
        self.progress.stopped = kind
        raise OverBudget(kind)

    def _stop_if_late(self) -> None:
        if self.progress.expired:
            raise OverBudget("deadline")


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected yet, or the peer is gone: fine
        sock.shutdown(socket.SHUT_RDWR)


def _chunk_size(line: bytes) -> int | None:
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        return None


class MeteredResponse(http.client.HTTPResponse):
    """http.client's response, reading through the current exchange's counters."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        self._exchange = current()
        if self._exchange is not None:
            self._exchange.answer_started()
            # typeshed types `fp` as io.BufferedReader; http.client only reads from it.
            self.fp = _MeteredFile(self.fp, self._exchange)  # type: ignore[assignment]

    # Overrides http.client's private status reader, which typeshed does not declare
    # (hence the two ignores: "undefined in superclass").
    def _read_status(self) -> tuple[str, int, str]:
        if self._exchange is None:
            return super()._read_status()  # type: ignore[misc]
        self._exchange.status_line()
        version, status, reason = super()._read_status()  # type: ignore[misc]
        self._exchange.status_read(status)
        return version, status, reason

    def begin(self) -> None:
        super().begin()
        if self._exchange is not None:
            self._exchange.head_read(self.getheader("Content-Encoding"))


class _MeteredFile:
    """The response's buffered socket file, reporting what is read from it."""

    def __init__(self, raw: Any, exchange: Exchange):
        self._raw = raw
        self._exchange = exchange

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._raw.readline(limit)
        self._exchange.line_read(line)
        return line

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._raw.read(size)
        self._exchange.data_read(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data: bytes = self._raw.read1(size)
        self._exchange.data_read(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        size: int = self._raw.readinto(buffer)
        self._exchange.data_read(size or 0)
        return size

    def __getattr__(self, name: str) -> Any:  # peek, close, closed, fileno, flush
        return getattr(self._raw, name)
