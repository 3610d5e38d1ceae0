"""The driver: submits a request's Dask graph and writes its results back.

For each request one driver thread in the API process:
1. marks it processing and submits the stage task (CSV -> Parquet manifest);
2. records the manifest's images (idempotent) and submits one task per row
   group that still has pending images, with explicit keys and retries;
3. consumes results with `as_completed(...).batches()` and applies each
   group of results to the record store in one write;
4. writes the output CSV, sets the final status and notifies.

Re-running a request (after a restart) redoes only images without a result.
When the connection to the scheduler drops, Dask cancels every future; those
images stay pending, and once the client has reconnected they are submitted
again (a bounded number of times) rather than recorded as failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

from distributed import Client, as_completed
from distributed.client import FutureCancelledError

from pipeline import manifest, tasks
from pipeline.csv_input import CsvLimits
from pipeline.csv_output import output_csv_rows, render_csv
from pipeline.deliveries import Deliveries
from pipeline.errors import PipelineError
from pipeline.models import ImageResult, RequestStatus
from pipeline.notify import completion_event
from pipeline.records.base import RecordStore
from pipeline.storage import Storage

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]

# How often a request is resubmitted after losing the scheduler, and how long the
# driver waits for the client to reconnect each time (the client itself gives up
# after its own connect timeout and closes).
SCHEDULER_ROUNDS = 3
RECONNECT_TIMEOUT = 120.0


class SchedulerLost(PipelineError):
    """The Dask scheduler went away and the client could not get it back."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class Runner:
    def __init__(
        self,
        client: Client,
        store: RecordStore,
        storage: Storage,
        job_spec: Callable[[str], tasks.JobSpec],
        *,
        batch_size: int,
        limits: CsvLimits,
        deliveries: Deliveries,
        api_base_url: str,
        publish: Callable[[dict], object] | None = None,
        default_webhook_url: str = "",
        clock: Clock = utc_now,
    ):
        self.client = client
        self.store = store
        self.storage = storage
        self.job_spec = job_spec
        self.batch_size = batch_size
        self.limits = limits
        self.deliveries = deliveries
        self.publish = publish
        self.api_base_url = api_base_url.rstrip("/")
        self.default_webhook_url = default_webhook_url
        self.clock = clock
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    # -- public -------------------------------------------------------------
    def submit(self, request_id: str) -> None:
        """Start processing in the background; returns at once."""
        with self._lock:
            running = self._threads.get(request_id)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(
                target=self.run, args=(request_id,), name=f"driver-{request_id}", daemon=True
            )
            self._threads[request_id] = thread
        thread.start()

    def wait(self, request_id: str, timeout: float | None = None) -> bool:
        thread = self._threads.get(request_id)
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def resume_unfinished(self) -> list[str]:
        """Pick up requests a previous process left pending or processing."""
        ids = self.store.unfinished_requests()
        for request_id in ids:
            log.info("resuming unfinished request %s", request_id)
            self.submit(request_id)
        return ids

    def status_url(self, request_id: str) -> str:
        return f"{self.api_base_url}/api/v1/status/{request_id}"

    def output_csv_url(self, request_id: str) -> str:
        return f"{self.api_base_url}/api/v1/output/{request_id}.csv"

    def run(self, request_id: str) -> None:
        """Process one request to a final status, then notify. Never raises."""
        try:
            if not self._process(request_id):
                return
        except Exception as exc:
            log.exception("request %s failed", request_id)
            self.store.finish(
                request_id, RequestStatus.FAILED, self.clock(), error=f"{type(exc).__name__}: {exc}"
            )
        try:
            self._notify(request_id)
        except Exception:
            log.exception("notifying for request %s failed", request_id)

    # -- steps --------------------------------------------------------------
    def _process(self, request_id: str) -> bool:
        """Returns False when there was nothing to do (unknown or already final)."""
        record = self.store.get_request(request_id)
        if record is None or record.status.is_final:
            return False
        self.store.mark_processing(request_id, self.clock())
        spec = self.job_spec(request_id)
        info = self._stage(request_id, spec)
        items = manifest.read_all(self.storage, info.key)
        self.store.add_images(request_id, items)

        position_in_manifest = {(i.row, i.position): n for n, i in enumerate(items)}
        for _ in range(SCHEDULER_ROUNDS):
            futures = self._submit_pending(request_id, spec, info, position_in_manifest)
            if self._collect(request_id, futures):
                break
            self._await_scheduler(request_id)
        else:
            raise SchedulerLost(
                f"lost the connection to the Dask scheduler {SCHEDULER_ROUNDS} times"
            )
        self._complete(request_id)
        return True

    def _stage(self, request_id: str, spec: tasks.JobSpec) -> manifest.ManifestInfo:
        for _ in range(SCHEDULER_ROUNDS):
            stage = self.client.submit(
                tasks.stage_manifest,
                spec,
                self.batch_size,
                self.limits,
                key=f"stage-manifest-{request_id}",
                retries=2,
            )
            try:
                return stage.result()
            except FutureCancelledError:
                self._await_scheduler(request_id)
            finally:
                stage.release()
        raise SchedulerLost(f"lost the connection to the Dask scheduler {SCHEDULER_ROUNDS} times")

    def _await_scheduler(self, request_id: str) -> None:
        """Block until the client has reconnected; raise when it gave up."""
        log.warning("request %s: lost the Dask scheduler, waiting to reconnect", request_id)
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while self.client.status != "running":
            if self.client.status in ("closing", "closed") or time.monotonic() > deadline:
                raise SchedulerLost(
                    f"lost the connection to the Dask scheduler and could not reconnect "
                    f"(client {self.client.status})"
                )
            time.sleep(0.2)

    def _submit_pending(
        self,
        request_id: str,
        spec: tasks.JobSpec,
        info: manifest.ManifestInfo,
        position_in_manifest: dict[tuple[int, int], int],
    ) -> dict:
        pending_by_batch: dict[int, set[tuple[int, int]]] = defaultdict(set)
        for image in self.store.pending_images(request_id):
            batch = manifest.batch_of(position_in_manifest[image], info.batch_size)
            pending_by_batch[batch].add(image)
        futures = {}
        for batch, pending in sorted(pending_by_batch.items()):
            whole = len(pending) == min(info.batch_size, info.images - batch * info.batch_size)
            future = self.client.submit(
                tasks.process_batch,
                spec,
                info.key,
                batch,
                None if whole else frozenset(pending),
                key=f"process-batch-{request_id}-{batch}",
                retries=2,
            )
            futures[future] = pending
        return futures

    def _collect(self, request_id: str, futures: dict) -> bool:
        """Record every settled batch; False when some were cancelled (scheduler lost)."""
        settled = True
        for group in as_completed(futures, with_results=True, raise_errors=False).batches():
            results: list[ImageResult] = []
            for future, value in group:
                if future.status == "finished":
                    results.extend(value)
                elif future.status == "cancelled":
                    # Not the images' fault: they stay pending and are submitted again.
                    settled = False
                else:
                    # The whole batch failed after its retries (e.g. workers kept dying):
                    # each of its images gets the reason, and the request still finishes.
                    reason = f"batch task failed: {_describe(value)}"
                    results.extend(
                        ImageResult(row, position, ok=False, error=reason)
                        for row, position in futures[future]
                    )
                future.release()
            self.store.apply_results(request_id, results, self.clock())
        return settled

    def _complete(self, request_id: str) -> None:
        counters = self.store.recount(request_id)
        key = tasks.output_csv_key(request_id)
        rows = output_csv_rows(self.store.iter_images(request_id), self.storage.url)
        self.storage.put_chunks(key, render_csv(rows))
        status = (
            RequestStatus.COMPLETED
            if counters.failed_images == 0
            else RequestStatus.COMPLETED_WITH_ERRORS
        )
        self.store.finish(request_id, status, self.clock(), output_key=key)
        log.info(
            "request %s %s: %d images, %d failed",
            request_id,
            status,
            counters.processed_images,
            counters.failed_images,
        )

    def _notify(self, request_id: str) -> None:
        """Queue the webhook (delivered and retried off this thread) and publish to NATS."""
        record = self.store.get_request(request_id)
        if record is None or not record.status.is_final:
            return
        output = self.output_csv_url(request_id) if record.output_key else None
        event = completion_event(
            record, status_url=self.status_url(request_id), output_csv_url=output
        )
        url = record.webhook_url or self.default_webhook_url
        if url:
            self.deliveries.enqueue(request_id, url, event)
        if self.publish is not None:
            self.publish(event)


def _describe(value: object) -> str:
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        exc = value[1]
        return f"{type(exc).__name__}: {exc}"
    return repr(value)
