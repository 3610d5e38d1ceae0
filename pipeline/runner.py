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
again (a bounded number of times) rather than recorded as failed. A client
gives up reconnecting after its connect timeout and closes for good; the
runner then connects a new client to the same scheduler address, so a
scheduler that is away for longer does not leave the process unable to run
anything again. When the process shuts down (`stop()`), requests in flight are
left unfinished for the next start to resume, never failed for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from distributed import Client, as_completed
from distributed.client import FutureCancelledError

from pipeline import cluster, manifest, tasks
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
# driver waits for the scheduler each time (the client's own reconnecting, then
# new clients once it has given up and closed).
SCHEDULER_ROUNDS = 3
RECONNECT_TIMEOUT = 120.0


class SchedulerLost(PipelineError):
    """The Dask scheduler went away and the client could not get it back."""


class ShuttingDown(PipelineError):
    """The process is stopping; the request is left for the next start to resume."""


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
        # Where to connect a new client when this one gives up on its scheduler.
        # (Not for a LocalCluster: its scheduler lives and dies with this process.)
        self._scheduler_address = (
            client.scheduler.address if client.cluster is None and client.scheduler else None
        )
        self._reconnect_lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._own_client: Client | None = None  # a replacement this runner must close
        self._stopping = threading.Event()
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

    def stop(self) -> None:
        """The process is shutting down: stop driving requests and leave them unfinished.

        Call before the Dask client and the record store are closed: closing the
        client cancels every future, which must not read as a lost scheduler
        (a request failed, or a new client connected on the way out).
        """
        self._stopping.set()
        with self._client_lock:
            own = self._own_client
        if own is not None:
            own.close()

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
            if self._stopping.is_set():
                log.info("request %s left for the next start to resume (%s)", request_id, exc)
                return
            log.exception("request %s failed", request_id)
            try:
                self._finish(request_id, RequestStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("recording the failure of request %s failed", request_id)

    # -- steps --------------------------------------------------------------
    def _process(self, request_id: str) -> bool:
        """Returns False when there was nothing to do (unknown or already final)."""
        record = self.store.get_request(request_id)
        if record is None or record.status.is_final:
            return False
        if self.client.status in ("closing", "closed"):
            self._await_scheduler(request_id)
        self.store.mark_processing(request_id, self.clock())
        spec = self.job_spec(request_id)
        info = self._stage(request_id, spec)
        row_starts = self._add_images(request_id, info)
        for _ in range(SCHEDULER_ROUNDS):
            futures = self._submit_pending(request_id, spec, info, row_starts)
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
            except (FutureCancelledError, OSError):
                if stage.status == "error":
                    raise  # the task's own failure (e.g. the input CSV is missing)
                # Cancelled, or the scheduler went away while sending the result.
                self._await_scheduler(request_id)
            finally:
                stage.release()
        raise SchedulerLost(f"lost the connection to the Dask scheduler {SCHEDULER_ROUNDS} times")

    def _add_images(self, request_id: str, info: manifest.ManifestInfo) -> dict[int, int]:
        """Record the manifest's images a chunk at a time (idempotent on a resume).

        Returns where each product row starts in manifest order, which places any
        image in its batch; the images themselves are not kept (100k of them
        would be ~50 MB of driver memory for the whole request).
        """
        row_starts: dict[int, int] = {}
        index = 0
        for chunk in manifest.iter_items(self.storage, info.key):
            self.store.add_images(request_id, chunk)
            for item in chunk:
                if item.position == 0:
                    row_starts[item.row] = index
                index += 1
        return row_starts

    def _await_scheduler(self, request_id: str) -> None:
        """Block until connected to the scheduler again; raise after RECONNECT_TIMEOUT."""
        log.warning("request %s: lost the Dask scheduler, waiting to reconnect", request_id)
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while self.client.status != "running":
            if self._stopping.is_set():
                raise ShuttingDown("the API is stopping")
            if self.client.status in ("closing", "closed"):
                if self._scheduler_address is None:
                    raise SchedulerLost("the Dask cluster of this process has closed")
                self._replace_closed_client()
            if time.monotonic() > deadline:
                raise SchedulerLost(
                    f"lost the connection to the Dask scheduler and could not reconnect "
                    f"in {RECONNECT_TIMEOUT:g}s (client {self.client.status})"
                )
            time.sleep(0.2)

    def _replace_closed_client(self) -> None:
        """Connect a new client when the current one closed; keep it when that fails."""
        if self._scheduler_address is None:
            return
        with self._reconnect_lock:  # one driver thread reconnects, the others see the result
            if self.client.status not in ("closing", "closed") or self._stopping.is_set():
                return
            # Takes up to Dask's connect timeout while the scheduler is away.
            client = cluster.reconnect(self._scheduler_address)
            if client is None:
                return
            with self._client_lock:
                if not self._stopping.is_set():
                    log.info("new client of the Dask scheduler %s", self._scheduler_address)
                    self.client = self._own_client = client
                    return
            client.close()

    def _submit_pending(
        self,
        request_id: str,
        spec: tasks.JobSpec,
        info: manifest.ManifestInfo,
        row_starts: dict[int, int],
    ) -> dict:
        pending_by_batch: dict[int, set[tuple[int, int]]] = defaultdict(set)
        for row, position in self.store.pending_images(request_id):
            batch = manifest.batch_of(row_starts[row] + position, info.batch_size)
            pending_by_batch[batch].add((row, position))
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
        """Record every settled batch; False when some were not (scheduler lost)."""
        settled = True
        # Results are gathered here, not by `as_completed(with_results=True)`: when the
        # scheduler goes away while it gathers one, its tracking task dies and the
        # iteration waits forever for that future (dask/distributed#7331).
        for group in as_completed(futures).batches():
            finished = [f for f in group if f.status == "finished"]
            values = self._gather(finished)
            results: list[ImageResult] = []
            for future in group:
                if future.status == "error":
                    # The whole batch failed after its retries (e.g. workers kept dying):
                    # each of its images gets the reason, and the request still finishes.
                    reason = f"batch task failed: {_describe(future.exception())}"
                    results.extend(
                        ImageResult(row, position, ok=False, error=reason)
                        for row, position in futures[future]
                    )
                elif future in values:
                    results.extend(values[future])
                else:
                    # Cancelled or not gathered: not the images' fault. They stay
                    # pending and are submitted again.
                    settled = False
                future.release()
            self.store.apply_results(request_id, results, self.clock())
        return settled

    @staticmethod
    def _gather(finished: list) -> dict:
        """The finished futures' results; none when the scheduler went away meanwhile."""
        if not finished:
            return {}
        try:
            return dict(zip(finished, finished[0].client.gather(finished), strict=True))
        except (FutureCancelledError, OSError) as exc:
            log.warning("could not gather %d batch results: %s", len(finished), exc)
            return {}

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
        self._finish(request_id, status, output_key=key)
        log.info(
            "request %s %s: %d images, %d failed",
            request_id,
            status,
            counters.processed_images,
            counters.failed_images,
        )

    def _finish(
        self,
        request_id: str,
        status: RequestStatus,
        *,
        output_key: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record the final status, then notify: webhook (queued) and NATS.

        The webhook delivery the request owes is written in the same store
        update as its final status (an outbox): a process that dies right
        after cannot leave a finished request whose webhook nobody will send;
        the next start resumes it with the pending deliveries.
        """
        record = self.store.get_request(request_id)
        if record is None:
            return
        # Milliseconds: what both stores keep, so the event matches the status API.
        at = self.clock()
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        final = replace(record, status=status, completed_at=at, output_key=output_key, error=error)
        event = completion_event(
            final,
            status_url=self.status_url(request_id),
            output_csv_url=self.output_csv_url(request_id) if output_key else None,
        )
        url = record.webhook_url or self.default_webhook_url
        delivery = self.deliveries.pending_state(request_id, url, event) if url else None
        self.store.finish(
            request_id, status, at, output_key=output_key, error=error, webhook=delivery
        )
        # The status is final now; nothing below may change it. (A delivery not
        # queued here is still stored as pending: the next start sends it.)
        try:
            if delivery is not None:
                self.deliveries.queue(request_id)
            if self.publish is not None:
                self.publish(event)  # NATS: at most once by design
        except Exception:
            log.exception("notifying the completion of %s failed", request_id)


def _describe(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"
