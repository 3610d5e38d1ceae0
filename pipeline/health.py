"""Whether the backends work: the record store and the storage, asked for real.

`/health` reports each component and answers 503 naming the failing ones, so
a load balancer stops sending uploads that would fail and an operator sees
which part to fix. The record store is asked for a request (a read); the
storage is given a small object to write and remove, since only a write
tells a full or read-only storage from a working one.

`/health` is asked often and by anyone (never rate limited, no key), and the
storage probe writes, so each probe runs at most once per `interval` and its
answer is kept meanwhile. While one caller waits on a probe that hangs (an
S3 endpoint that does not answer), the others get the previous answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.records.base import RecordStore
from pipeline.storage import Storage

PROBE_INTERVAL = 2.0  # seconds an answer is kept
PROBE_REQUEST_ID = "0" * 32  # asked of the record store; no upload gets this id


class Probe:
    """One backend's check, run at most once per `interval`."""

    def __init__(
        self,
        check: Callable[[], object],
        *,
        interval: float = PROBE_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.check = check
        self.interval = interval
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._answer: tuple[str | None] | None = None  # (error or None,) once asked
        self._due = 0.0

    def __call__(self) -> str | None:
        """None when the backend works, else what went wrong."""
        if self._answer is not None and self.monotonic() < self._due:
            return self._answer[0]
        # Someone is probing already: the previous answer will do, if there is one.
        if not self._lock.acquire(blocking=self._answer is None):
            return self._answer[0] if self._answer is not None else None
        try:
            if self._answer is None or self.monotonic() >= self._due:
                try:
                    self.check()
                    error = None
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                self._answer = (error,)
                self._due = self.monotonic() + self.interval
            return self._answer[0]
        finally:
            self._lock.release()


class Backends:
    """The record store's and the storage's probes."""

    def __init__(
        self,
        store: RecordStore,
        storage: Storage,
        *,
        interval: float = PROBE_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.records = Probe(
            lambda: store.get_request(PROBE_REQUEST_ID), interval=interval, monotonic=monotonic
        )
        self.storage = Probe(storage.probe, interval=interval, monotonic=monotonic)

    def report(self) -> dict[str, dict[str, Any]]:
        return {"records": component(self.records()), "storage": component(self.storage())}


def component(error: str | None, **details: Any) -> dict[str, Any]:
    """A component's part of the health answer."""
    return {"healthy": error is None, "error": error, **details}


def failing(components: Mapping[str, Any]) -> list[str]:
    """The components that said they are not healthy, in the order given."""
    return [
        name
        for name, part in components.items()
        if isinstance(part, Mapping) and part.get("healthy") is False
    ]
