"""Name lookups that give up at the caller's deadline.

`socket.getaddrinfo` cannot be interrupted: a name server that never answers
holds the calling thread for as long as the system resolver's own timeouts
allow (glibc: 5 s x 2 attempts per name server, per address family, per
search domain: tens of seconds). A download's deadline has to hold whatever
the host's DNS does, so each lookup runs on a thread of its own and the
caller waits only as long as it may; past that it fails, and the abandoned
lookup's thread ends when the resolver gives up.

Lookups of one (host, port) that overlap are shared: every caller asking while
one is in flight gets its answer, so a silent name server holds one thread
however many of its URLs a CSV lists. Nothing is cached once a lookup ends
(the guard validates each answer; the next connection asks again).

Threads are bounded by the callers: a lookup starts only for a caller that is
waiting, and callers are the fetch and webhook threads. MAX_THREADS is a
safety net above that; past it a caller waits for a thread, within its time.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# socket.getaddrinfo's shape: resolve(host, port, type=...) -> [(family, type, proto, _, sockaddr)]
Resolver = Callable[..., Sequence[tuple[Any, ...]]]
# Lookups running at once per process, abandoned ones included.
MAX_THREADS = 256


@dataclass
class _Lookup:
    done: threading.Event = field(default_factory=threading.Event)
    answer: list[tuple[Any, ...]] | None = None
    error: BaseException | None = None


class Lookups:
    """`socket.getaddrinfo(host, port, type=SOCK_STREAM)` with a time limit."""

    def __init__(
        self,
        resolve: Resolver = socket.getaddrinfo,
        *,
        max_threads: int = MAX_THREADS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._resolve = resolve
        self._clock = clock
        self._threads = threading.BoundedSemaphore(max_threads)
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, int], _Lookup] = {}

    def lookup(self, host: str, port: int, timeout: float | None) -> list[tuple[Any, ...]]:
        """The resolver's answer; TimeoutError if it has none within `timeout` seconds.

        The resolver's own errors (socket.gaierror, UnicodeError) are raised as
        it raised them. `timeout` None: wait as long as the resolver takes.
        """
        if timeout is None:
            return list(self._resolve(host, port, type=socket.SOCK_STREAM))
        if timeout <= 0:
            raise TimeoutError("no time left to look the name up")
        deadline = self._clock() + timeout
        key = (host, port)
        with self._lock:
            lookup = self._in_flight.get(key)
            first = lookup is None
            if lookup is None:
                lookup = self._in_flight[key] = _Lookup()
        if first:
            self._start(key, lookup, timeout)
        if not lookup.done.wait(max(0.0, deadline - self._clock())):
            raise TimeoutError(f"no answer within {timeout:g}s")
        if lookup.error is not None:
            # A copy per caller: one exception object raised in several threads
            # would collect all their tracebacks.
            raise copy.copy(lookup.error)
        assert lookup.answer is not None
        return list(lookup.answer)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _start(self, key: tuple[str, int], lookup: _Lookup, timeout: float) -> None:
        if not self._threads.acquire(timeout=timeout):
            self._end(key, lookup, error=TimeoutError("no lookup thread free"))
            return
        try:
            threading.Thread(
                target=self._run, args=(key, lookup), name=f"lookup {key[0]}", daemon=True
            ).start()
        except BaseException as exc:  # no thread to be had (RuntimeError): say so to all
            self._threads.release()
            self._end(key, lookup, error=exc)
            raise

    def _run(self, key: tuple[str, int], lookup: _Lookup) -> None:
        answer: list[tuple[Any, ...]] | None = None
        error: BaseException | None = None
        try:
            answer = list(self._resolve(key[0], key[1], type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the callers, raised in their threads
            error = exc
        finally:
            self._threads.release()
            self._end(key, lookup, answer=answer, error=error)

    def _end(
        self,
        key: tuple[str, int],
        lookup: _Lookup,
        *,
        answer: list[tuple[Any, ...]] | None = None,
        error: BaseException | None = None,
    ) -> None:
        with self._lock:
            if self._in_flight.get(key) is lookup:
                del self._in_flight[key]
        lookup.answer, lookup.error = answer, error
        lookup.done.set()
