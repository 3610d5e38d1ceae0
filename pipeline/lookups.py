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
safety net above that; past it a caller waits for a thread, within its time
(and a caller that joined a lookup whose starter ran out of time first starts
one itself).
"""

from __future__ import annotations

import copy
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# socket.getaddrinfo's shape: resolve(host, port, type=...) -> [(family, type, proto, _, sockaddr)]
Resolver = Callable[..., Sequence[tuple[Any, ...]]]
# Lookups running at once per Lookups (one per address guard: the process's shared
# download pool has one), abandoned ones included.
MAX_THREADS = 256


@dataclass
class _Lookup:
    done: threading.Event = field(default_factory=threading.Event)
    answer: list[tuple[Any, ...]] | None = None
    error: BaseException | None = None
    unstarted: bool = False  # no thread came free in its starter's time: nobody asked


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
        it raised them; no thread to ask on is a socket.gaierror (EAI_AGAIN).
        `timeout` None, or an address rather than a name: asked directly.
        """
        if timeout is None or _is_address(host):
            return list(self._resolve(host, port, type=socket.SOCK_STREAM))
        deadline = self._clock() + timeout
        key = (host, port)
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TimeoutError(f"no answer within {timeout:g}s")
            with self._lock:
                lookup = self._in_flight.get(key)
                first = lookup is None
                if lookup is None:
                    lookup = self._in_flight[key] = _Lookup()
            if first:
                self._start(key, lookup, remaining)
            if not lookup.done.wait(max(0.0, deadline - self._clock())):
                raise TimeoutError(f"no answer within {timeout:g}s")
            if lookup.unstarted:
                if first:
                    raise TimeoutError(f"no lookup thread free within {timeout:g}s")
                continue  # whoever started it ran out of time first: start one ourselves
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
            self._end(key, lookup, unstarted=True)
            return
        try:
            threading.Thread(
                target=self._run, args=(key, lookup), name=f"lookup {key[0]}", daemon=True
            ).start()
        except RuntimeError as exc:  # the process cannot have another thread now
            self._threads.release()
            error = socket.gaierror(socket.EAI_AGAIN, f"no thread to look the name up: {exc}")
            self._end(key, lookup, error=error)

    def _run(self, key: tuple[str, int], lookup: _Lookup) -> None:
        answer: list[tuple[Any, ...]] | None = None
        error: BaseException | None = None
        try:
            answer = list(self._resolve(key[0], key[1], type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the callers, raised in their threads
            error = exc.with_traceback(None)  # (its frames would keep `lookup` alive)
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
        unstarted: bool = False,
    ) -> None:
        with self._lock:
            if self._in_flight.get(key) is lookup:
                del self._in_flight[key]
        lookup.answer, lookup.error, lookup.unstarted = answer, error, unstarted
        lookup.done.set()


def _is_address(host: str) -> bool:
    """An IP address needs no name server: the resolver answers at once."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
