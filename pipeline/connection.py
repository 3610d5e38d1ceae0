"""The driver's connection to the Dask scheduler, and getting it back.

When the scheduler goes away, the client reconnects by itself for a while
(Dask's connect timeout), and every future it held is cancelled: the driver
puts those batches back and submits them again once `running` is true. A
client that gives up reconnecting closes for good; for a scheduler of our
own address (not a LocalCluster, which lives and dies with this process) a
new client is connected in its place, so a scheduler away for longer does
not leave the process unable to run anything again.
"""

from __future__ import annotations

import logging
import threading
import time

from distributed import Client

from pipeline import cluster
from pipeline.errors import SchedulerLost, ShuttingDown

log = logging.getLogger(__name__)

# How long the driver waits for the scheduler to come back before the
# requests that need it fail.
RECONNECT_TIMEOUT = 120.0


class DaskConnection:
    def __init__(self, client: Client, stopping: threading.Event):
        self.client = client
        self.stopping = stopping
        # Where to connect a new client when this one gives up on its scheduler.
        self._address = (
            client.scheduler.address if client.cluster is None and client.scheduler else None
        )
        self._lock = threading.Lock()
        self._own: Client | None = None  # a replacement this object must close

    @property
    def running(self) -> bool:
        return self.client.status == "running"

    @property
    def closed(self) -> bool:
        return self.client.status in ("closing", "closed")

    def total_threads(self) -> int:
        """Worker threads in the cluster now (0 while it has no workers or no scheduler)."""
        if not self.running:
            return 0
        try:
            return sum(self.client.nthreads().values())
        except (OSError, TimeoutError):
            return 0

    def recover(self) -> None:
        """Connect a new client if the current one has closed; keep it when that fails."""
        if self._address is None or not self.closed:
            return
        with self._lock:  # one thread reconnects, the others see the result
            if not self.closed or self.stopping.is_set():
                return
            # Takes up to Dask's connect timeout while the scheduler is away.
            client = cluster.reconnect(self._address)
            if client is None:
                return
            if self.stopping.is_set():
                client.close()
                return
            log.info("new client of the Dask scheduler %s", self._address)
            self.client = self._own = client

    def await_running(self, what: str, timeout: float = RECONNECT_TIMEOUT) -> None:
        """Block until connected again; raise SchedulerLost after `timeout` seconds."""
        if self.running:
            return
        log.warning("%s: lost the Dask scheduler, waiting to reconnect", what)
        deadline = time.monotonic() + timeout
        while not self.running:
            if self.stopping.is_set():
                raise ShuttingDown("the process is stopping")
            if self.closed:
                if self._address is None:
                    raise SchedulerLost("the Dask cluster of this process has closed")
                self.recover()
            if time.monotonic() > deadline:
                raise SchedulerLost(
                    f"lost the connection to the Dask scheduler and could not reconnect "
                    f"in {timeout:g}s (client {self.client.status})"
                )
            time.sleep(0.2)

    def close(self) -> None:
        """Close a replacement client this object connected (never the one it was given)."""
        with self._lock:
            own, self._own = self._own, None
        if own is not None:
            own.close()
