"""The periodic sweep every process runs: leases, takeovers, deliveries, retention.

Every `lease_seconds / 3` (so a lease is renewed twice before it can lapse):
1. renew the leases of the requests this process drives; a lease that could
   not be renewed was taken by another process, and the driver drops it;
2. claim unfinished requests whose lease is free or expired (left by a
   process that died, or never started) and drive them: resuming is not
   only a start-up step;
3. queue the webhook deliveries still pending (another process's included:
   each attempt is claimed in the store, so none is made twice);
4. with RETENTION_DAYS, delete final requests older than that.
A failing step is logged and tried again at the next sweep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from pipeline.clock import Clock, utc_now
from pipeline.deliveries import Deliveries
from pipeline.driver import Driver
from pipeline.records.base import RecordStore

log = logging.getLogger(__name__)
CLAIMS_PER_SWEEP = 100
DELETIONS_PER_SWEEP = 100


class Sweeper:
    def __init__(
        self,
        store: RecordStore,
        driver: Driver,
        deliveries: Deliveries | None,
        *,
        lease_seconds: float,
        remove: Callable[[str], None],
        retention_days: float = 0.0,
        clock: Clock = utc_now,
        serve_others: bool = True,
    ):
        """`serve_others=False` (a CLI or notebook run): only renew this process's own
        leases; leave other requests, deliveries and retention to the API processes."""
        self.store = store
        self.driver = driver
        self.deliveries = deliveries
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self.remove = remove
        self.retention_days = retention_days
        self.clock = clock
        self.serve_others = serve_others
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Sweeper:
        self._thread = threading.Thread(target=self._loop, name="sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            self.sweep()
            if self._stop.wait(self.interval):
                return

    def sweep(self) -> None:
        steps = [self.renew]
        if self.serve_others:
            steps += [self.take_over, self.queue_deliveries, self.expire]
        for step in steps:
            if self._stop.is_set():
                return
            try:
                step()
            except Exception:
                log.exception("sweep step %s failed; trying again next sweep", step.__name__)

    def renew(self) -> None:
        driving = self.driver.driving()
        if not driving:
            return
        held = self.store.renew_leases(self.driver.owner, driving, self.clock(), self.lease_seconds)
        # Those finished meanwhile are not lost, only done: look again before dropping.
        for request_id in (set(driving) - held) & set(self.driver.driving()):
            self.driver.drop(request_id)

    def take_over(self) -> None:
        for request_id in self.store.claimable_requests(self.clock(), CLAIMS_PER_SWEEP):
            if self.driver.submit(request_id):
                log.info("driving request %s (its lease was free or expired)", request_id)

    def queue_deliveries(self) -> None:
        if self.deliveries is not None:
            self.deliveries.resume()

    def expire(self) -> None:
        if self.retention_days <= 0:
            return
        before = self.clock() - timedelta(days=self.retention_days)
        for request_id in self.store.expired_requests(before, DELETIONS_PER_SWEEP):
            self.remove(request_id)
            log.info("deleted request %s (older than RETENTION_DAYS)", request_id)
