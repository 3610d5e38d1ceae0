"""The driver: runs the requests this process owns on the Dask cluster.

One dispatcher thread owns the state of every request being driven and
reacts to events: a request staged and ready, a batch finished, a cancel, a
lease lost, a tick. What to submit next is `dispatch.plan`'s decision (a
bounded window shared round-robin); the thread carries it out and applies
each finished batch's results to the record store in one write. Slow steps
that would stall it run on a small pool: preparing a request (claim, stage
the CSV into a Parquet manifest on a worker, record its images) and
completing it (output CSV, final status, webhook outbox).

A request is driven only under its lease (records/base.py): `submit` claims
it, the sweeper renews it, and a lost lease (`drop`) stops the driving at
once. A cancel stops new batches, lets those in flight finish (their tasks
start no new download once the cancel marker is stored), then the request
ends `cancelled`. When the scheduler is lost, Dask cancels every future;
those batches go back to the front of their request's queue and are
submitted again once the client has reconnected (a few times at most).
On `stop()` the requests are left unfinished and their leases freed, for
another process or the next start.

A backend out of service fails no request (`errors.backend_unavailable`):
results the record store refuses are kept and written again every round,
and no batch is submitted meanwhile; a request whose preparation or
completion meets a store or storage that is gone, full or read-only is left
unfinished and taken up again by a later sweep.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from distributed import Future
from distributed.client import FutureCancelledError

from pipeline import dispatch, manifest, tasks
from pipeline.clock import Clock, utc_now
from pipeline.completion import Completion
from pipeline.connection import RECONNECT_TIMEOUT, DaskConnection
from pipeline.csv_input import CsvLimits
from pipeline.errors import (
    Incomplete,
    RecordStoreError,
    SchedulerLost,
    ShuttingDown,
    StorageError,
    backend_unavailable,
)
from pipeline.models import ImageResult, ImageStatus, RequestRecord
from pipeline.records.base import RecordStore
from pipeline.storage import Storage

log = logging.getLogger(__name__)

# How often one batch may be lost with the scheduler before its request fails.
SCHEDULER_ROUNDS = 3
TICK = 0.5  # seconds between the dispatcher's housekeeping rounds
CANCEL_POLL = 1.0  # how often the store is asked for cancels made through other processes
WINDOW_REFRESH = 5.0  # how often the cluster's size is read again


@dataclass
class Plan:
    """What the dispatcher needs to submit a request's batches."""

    spec: tasks.JobSpec
    info: manifest.ManifestInfo
    layout: manifest.Layout
    partial: set[int]  # batches with some images done already: submitted with `only`
    # Pending repeats of a URL sitting in another batch than its first slot's, when
    # the request was resumed: a partial batch's `only` must name them too.
    pending_copies: frozenset[tuple[int, int]] = frozenset()


@dataclass(frozen=True)
class InFlight:
    request_id: str
    batch: int
    only: frozenset[tuple[int, int]] | None


class Driver:
    def __init__(
        self,
        connection: DaskConnection,
        store: RecordStore,
        storage: Storage,
        completion: Completion,
        job_spec: Callable[[RequestRecord], tasks.JobSpec],
        *,
        batch_size: int,
        limits: CsvLimits,
        owner: str,
        lease_seconds: float,
        window: int = 0,
        clock: Clock = utc_now,
        step_threads: int = 4,
    ):
        self.connection = connection
        self.store = store
        self.storage = storage
        self.completion = completion
        self.job_spec = job_spec
        self.batch_size = batch_size
        self.limits = limits
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.configured_window = window
        self.clock = clock
        self._stopping = connection.stopping
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._steps = ThreadPoolExecutor(step_threads, thread_name_prefix="driver-step")
        self._thread: threading.Thread | None = None
        # Requests this process has claimed and not let go, with "done" events.
        self._lock = threading.Lock()
        self._driving: dict[str, threading.Event] = {}
        # The dispatcher thread's own state (no lock: only it touches these).
        self._batches: dict[str, dispatch.RequestBatches] = {}
        self._plans: dict[str, Plan] = {}
        self._futures: dict[Future, InFlight] = {}
        self._cancelling: set[str] = set()
        self._started: set[str] = set()  # marked processing
        self._redone: dict[str, int] = {}  # requests whose batches ran again (Incomplete)
        # Results the record store did not take yet (it failed): written again each
        # round; meanwhile no batch is submitted and the request is not completed.
        self._unwritten: dict[str, list[ImageResult]] = {}
        self._store_failing = False
        self._arrivals = 0
        self._window = dispatch.window_size(0, window)
        self._window_at = 0.0  # when to read the cluster's size again (monotonic)
        self._cancel_poll_at = 0.0
        self._lost_since: float | None = None

    # -- public ---------------------------------------------------------------
    def start(self) -> Driver:
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()
        return self

    def submit(self, request_id: str) -> bool:
        """Claim the request and drive it in the background; returns at once.

        False when another live process holds it (or it is final or unknown).
        """
        if self._stopping.is_set():
            return False
        with self._lock:
            if request_id in self._driving:
                return True
            try:
                claimed = self.store.claim_request(
                    request_id, self.owner, self.clock(), self.lease_seconds
                )
            except Exception:
                log.exception("claiming request %s failed", request_id)
                return False
            if not claimed:
                return False
            self._driving[request_id] = threading.Event()
        self._steps.submit(self._prepare, request_id)
        return True

    def cancel(self, request_id: str) -> None:
        """A cancel was recorded: act now if this process drives the request, or take
        it up when nobody does (another live owner sees the cancel within a second)."""
        with self._lock:
            driving = request_id in self._driving
        if driving:
            self._events.put(("cancel", request_id))
        else:
            self.submit(request_id)

    def drop(self, request_id: str) -> None:
        """The lease was lost: stop driving the request, write nothing more for it."""
        self._events.put(("lost", request_id))

    def driving(self) -> list[str]:
        with self._lock:
            return list(self._driving)

    def wait(self, request_id: str, timeout: float | None = None) -> bool:
        """True once this process no longer drives the request (or never did)."""
        with self._lock:
            done = self._driving.get(request_id)
        return True if done is None else done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop driving; leave the requests unfinished and free their leases.

        Call before the Dask client and the record store are closed: closing the
        client cancels every future, which must not read as a lost scheduler.
        """
        self._stopping.set()
        self._events.put(("stop",))
        if self._thread is not None:
            self._thread.join(timeout)
        self._steps.shutdown(wait=False, cancel_futures=True)
        for request_id in self.driving():
            try:
                self.store.release_request(request_id, self.owner)
            except Exception:
                log.exception("releasing request %s failed", request_id)
            self._forget(request_id)
        self.connection.close()

    # -- steps on the pool ------------------------------------------------------
    def _prepare(self, request_id: str) -> None:
        """Claimed -> staged and recorded -> handed to the dispatcher."""
        try:
            record = self.store.get_request(request_id)
            if record is None or record.status.is_final:
                self._forget(request_id)
                return
            if record.cancel_requested_at is not None:
                self._complete(request_id, cancelled=True)
                return
            self.store.mark_queued(request_id, self.clock())
            spec = self.job_spec(record)
            batch_size = dispatch.batch_size_for(
                record.total_images, self.connection.total_threads(), self.batch_size
            )
            info = self._stage(request_id, spec, batch_size)
            layout = manifest.Layout(info.batch_size)
            for chunk in manifest.iter_items(self.storage, info.key):
                self.store.add_images(request_id, chunk)
                layout.add(chunk)
            pending, partial, copies = self._pending_batches(request_id, layout)
            plan = Plan(spec, info, layout, partial, copies)
            self._events.put(("ready", request_id, plan, pending))
        except ShuttingDown:
            return
        except Exception as exc:
            self._failed(request_id, exc)

    def _stage(
        self, request_id: str, spec: tasks.JobSpec, batch_size: int
    ) -> manifest.ManifestInfo:
        """The manifest, staged on a worker (or as staged before, with its batch size)."""
        for _ in range(SCHEDULER_ROUNDS):
            self.connection.await_running(f"request {request_id}")
            stage = self.connection.client.submit(
                tasks.stage_manifest,
                spec,
                batch_size,
                self.limits,
                key=f"stage-manifest-{request_id}",
                retries=2,
                priority=dispatch.STAGE_PRIORITY,
            )
            try:
                return stage.result()
            except (FutureCancelledError, OSError):
                if stage.status == "error":
                    raise  # the task's own failure (e.g. the input CSV is missing)
                # Cancelled, or the scheduler went away while sending the result.
                if self._stopping.is_set():
                    raise ShuttingDown("the process is stopping") from None
            finally:
                stage.release()
        raise SchedulerLost(f"lost the connection to the Dask scheduler {SCHEDULER_ROUNDS} times")

    def _pending_batches(
        self, request_id: str, layout: manifest.Layout
    ) -> tuple[list[int], set[int], frozenset[tuple[int, int]]]:
        """Batches with images still pending, which of them are only partly pending,
        and the pending repeats that sit in another batch than their first slot's."""
        counters = self.store.recount(request_id)
        if counters.processed_images == 0 and counters.cancelled_images == 0:
            # A new request: every batch, whole, without listing a million images.
            return list(range(-(-layout.images // layout.batch_size))), set(), frozenset()
        counts: dict[int, int] = {}
        copies = set()
        for row, position in self.store.pending_images(request_id):
            batch = layout.batch(row, position)
            counts[batch] = counts.get(batch, 0) + 1
            if layout.is_copy_elsewhere(row, position):
                copies.add((row, position))
        partial = {b for b, n in counts.items() if n < layout.batch_results(b)}
        return sorted(counts), partial, frozenset(copies)

    def _complete(self, request_id: str, *, cancelled: bool) -> None:
        try:
            if cancelled:
                try:
                    self.completion.stop_tasks(request_id)
                except StorageError as exc:
                    # Only tasks still running read the marker, and they cannot store
                    # anything either: the cancel goes on without it.
                    log.warning("request %s: cancel marker not stored: %s", request_id, exc)
            self.completion.complete(request_id, cancelled=cancelled)
        except Incomplete as exc:
            # Not expected: every batch came back, yet images have no result. Run the
            # request's pending images again rather than finish it with holes.
            rounds = self._redone[request_id] = self._redone.get(request_id, 0) + 1
            if rounds <= SCHEDULER_ROUNDS:
                log.warning("%s; running them again (round %d)", exc, rounds)
                self._prepare(request_id)
                return
            self._failed(request_id, exc)
            return
        except Exception as exc:
            self._failed(request_id, exc)
            return
        self._forget(request_id)

    def _failed(self, request_id: str, exc: BaseException) -> None:
        """The request cannot go on: record it failed (unless the process is stopping,
        or a backend it needs is out of service: then it waits to be taken up again)."""
        if self._stopping.is_set():
            log.info("request %s left for another process or the next start (%s)", request_id, exc)
            return
        if backend_unavailable(exc):
            self._leave(request_id, exc)
            return
        log.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc)
        try:
            self.completion.fail(request_id, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("recording the failure of request %s failed", request_id)
        self._forget(request_id)

    def _leave(self, request_id: str, exc: BaseException) -> None:
        """Leave the request unfinished for the sweeper to take up again (its next
        sweep once the lease is freed here, or once it expires when the record
        store is what failed): its images are still to be processed, and failing
        it would lose them for a backend that may be back in seconds."""
        log.warning(
            "request %s left unfinished, taken up again by the next sweep: %s: %s",
            request_id,
            type(exc).__name__,
            exc,
        )
        # Said on the request where the store still takes it (storage is what failed).
        with contextlib.suppress(Exception):
            self.store.note_waiting(
                request_id, f"waiting for a backend: {type(exc).__name__}: {exc}", self.clock()
            )
        try:
            self.store.release_request(request_id, self.owner)
        except Exception as error:
            log.warning("request %s: lease not freed, it expires instead: %s", request_id, error)
        self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        self._redone.pop(request_id, None)
        with self._lock:
            done = self._driving.pop(request_id, None)
        if done is not None:
            done.set()

    # -- the dispatcher thread ----------------------------------------------------
    def _loop(self) -> None:
        next_tick = 0.0
        while not self._stopping.is_set():
            try:
                events = [self._events.get(timeout=TICK)]
            except queue.Empty:
                events = []
            while True:  # take everything waiting: results are gathered and written together
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle(events)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK
                    self._housekeeping()
                self._settle_idle()
                self._submit()
            except Exception:  # the thread must outlive a store or scheduler hiccup
                log.exception("dispatcher round failed")
                time.sleep(TICK)

    def _handle(self, events: list[tuple[Any, ...]]) -> None:
        # A future can be reported twice (its callback and the housekeeping check).
        finished: dict[Future, None] = {}
        for event in events:
            kind = event[0]
            if kind == "ready":
                self._ready(*event[1:])
            elif kind == "done":
                if event[1] in self._futures:
                    finished[event[1]] = None
            elif kind == "cancel":
                self._cancel(event[1])
            elif kind == "lost":
                self._lose(event[1])
        if finished:
            self._collect(list(finished))

    def _ready(self, request_id: str, plan: Plan, pending: list[int]) -> None:
        with self._lock:
            if request_id not in self._driving:
                return  # lost or stopped while it was being prepared
        self._arrivals += 1
        batches = dispatch.RequestBatches(request_id, self._arrivals, deque(pending))
        self._batches[request_id] = batches
        self._plans[request_id] = plan
        if request_id in self._cancelling:
            batches.pending.clear()

    def _cancel(self, request_id: str) -> None:
        if request_id in self._cancelling:
            return
        with self._lock:
            if request_id not in self._driving:
                return
        log.info("request %s: cancelling", request_id)
        self._cancelling.add(request_id)
        batches = self._batches.get(request_id)
        if batches is not None:
            batches.pending.clear()
            if batches.in_flight:
                # Tasks already running start no new download once they see this.
                self._steps.submit(self.completion.stop_tasks, request_id)

    def _lose(self, request_id: str) -> None:
        log.warning("request %s: lease lost, another process drives it now", request_id)
        self._discard(request_id)
        self._forget(request_id)

    def _discard(self, request_id: str) -> None:
        """Forget a request's dispatch state and let go of its futures."""
        self._batches.pop(request_id, None)
        self._plans.pop(request_id, None)
        self._cancelling.discard(request_id)
        self._started.discard(request_id)
        self._unwritten.pop(request_id, None)
        mine = [f for f, each in self._futures.items() if each.request_id == request_id]
        for future in mine:
            del self._futures[future]
            future.release()

    def _collect(self, futures: list[Future]) -> None:
        """Apply finished batches' results, one store write per request."""
        done = [f for f in futures if f.status == "finished"]
        values = self._gather(done)
        results: dict[str, list[ImageResult]] = {}
        for future in futures:
            each = self._futures.pop(future, None)
            if each is None:
                continue
            batches = self._batches.get(each.request_id)
            if batches is None:
                future.release()
                continue
            if future.status == "error":
                # The whole batch failed after its retries (e.g. workers kept dying):
                # each of its pending images gets the reason; the request still finishes.
                reason = f"batch task failed: {_describe(future.exception())}"
                try:
                    failed = self._batch_images(each)
                except RecordStoreError:
                    self._futures[future] = each  # looked at again once the store answers
                    continue
                results.setdefault(each.request_id, []).extend(
                    ImageResult(row, position, ok=False, error=reason) for row, position in failed
                )
                batches.in_flight -= 1
            elif future in values:
                results.setdefault(each.request_id, []).extend(values[future])
                batches.in_flight -= 1
            elif each.request_id in self._cancelling:
                batches.in_flight -= 1  # its images end cancelled
            else:
                # Cancelled with the scheduler, or not gathered: not the images' fault.
                self._lost_since = self._lost_since or time.monotonic()
                if dispatch.requeue_lost(batches, each.batch) > SCHEDULER_ROUNDS:
                    self._give_up(
                        each.request_id,
                        SchedulerLost(
                            f"lost the connection to the Dask scheduler {SCHEDULER_ROUNDS} times"
                        ),
                    )
            future.release()
        for request_id, each_results in results.items():
            if request_id in self._batches:
                self._unwritten.setdefault(request_id, []).extend(each_results)
        self._write_results()

    def _write_results(self) -> None:
        """Record the results gathered; those the store refuses are kept for the next
        round (the images were processed: doing them again would cost downloads)."""
        for request_id in list(self._unwritten):
            try:
                self.store.apply_results(request_id, self._unwritten[request_id], self.clock())
            except RecordStoreError as exc:
                if not self._store_failing:
                    log.error(
                        "the record store fails; results kept, no batch started until it "
                        "takes them: %s",
                        exc,
                    )
                self._store_failing = True
                return
            except Exception:
                # Not the store's outage (e.g. the request is gone): holding these back
                # would stop every request, so they are dropped.
                log.exception("results of request %s not recorded", request_id)
            del self._unwritten[request_id]
        if self._store_failing:
            log.info("the record store takes results again")
            self._store_failing = False

    def _gather(self, finished: list[Future]) -> dict[Future, list[ImageResult]]:
        """The finished futures' results; none when the scheduler went away meanwhile."""
        if not finished:
            return {}
        try:
            gathered = self.connection.client.gather(finished)
        except (FutureCancelledError, OSError) as exc:
            log.warning("could not gather %d batch results: %s", len(finished), exc)
            return {}
        return dict(zip(finished, gathered, strict=True))

    def _batch_images(self, each: InFlight) -> Iterable[tuple[int, int]]:
        """The images a batch was sent to process that are still pending (repeats of
        its URLs elsewhere included: failing one already done changes nothing)."""
        if each.only is not None:
            return each.only
        plan = self._plans[each.request_id]
        return self._pending_in(each.request_id, plan, each.batch, plan.layout.copies_elsewhere)

    def _pending_in(
        self,
        request_id: str,
        plan: Plan,
        batch: int,
        copies: Callable[[int], Iterable[tuple[int, int]]],
    ) -> frozenset[tuple[int, int]]:
        """The pending images among the batch's rows that it gives results to, and
        `copies(batch)`: the repeats of its URLs stored in other batches."""
        layout = plan.layout
        rows = layout.rows_of(batch)
        stored = (
            (i.row, i.position)
            for i in self.store.list_images(request_id, rows.start, rows.stop)
            if i.status == ImageStatus.PENDING and layout.batch(i.row, i.position) == batch
        )
        return frozenset((*stored, *copies(batch)))

    def _give_up(self, request_id: str, exc: BaseException) -> None:
        self._discard(request_id)
        self._steps.submit(self._failed, request_id, exc)

    def _housekeeping(self) -> None:
        """Window size, reconnecting, missed callbacks, cancels made elsewhere."""
        connection = self.connection
        if connection.running:
            self._lost_since = None
        else:
            self._lost_since = self._lost_since or time.monotonic()
            connection.recover()
            if time.monotonic() - self._lost_since > RECONNECT_TIMEOUT:
                lost = SchedulerLost(
                    f"lost the connection to the Dask scheduler and could not reconnect "
                    f"in {RECONNECT_TIMEOUT:g}s"
                )
                for request_id in list(self._batches):
                    self._give_up(request_id, lost)
        now = time.monotonic()
        if now >= self._window_at:
            self._window_at = now + WINDOW_REFRESH
            self._window = dispatch.window_size(connection.total_threads(), self.configured_window)
        # A done-callback can be missed when the client closes under it.
        for future in [f for f in self._futures if f.done()]:
            self._events.put(("done", future))
        if self._unwritten:
            self._write_results()
        if now >= self._cancel_poll_at and self._batches:
            self._cancel_poll_at = now + CANCEL_POLL
            asked = [r for r in self._batches if r not in self._cancelling]
            try:
                cancels = self.store.cancel_requested(asked) if asked else set()
            except RecordStoreError:
                cancels = set()  # asked again in a second; the write path logs the outage
            for request_id in cancels:
                self._cancel(request_id)

    def _settle_idle(self) -> None:
        for request_id, batches in list(self._batches.items()):
            if batches.idle and request_id not in self._unwritten:
                cancelled = request_id in self._cancelling
                self._discard(request_id)
                self._steps.submit(self._complete, request_id, cancelled=cancelled)

    def _submit(self) -> None:
        if not self.connection.running or not self._batches or self._unwritten:
            return
        client = self.connection.client
        for chosen in dispatch.plan(list(self._batches.values()), self._window):
            plan = self._plans[chosen.request_id]
            only = self._only(chosen.request_id, plan, chosen.batch)
            future = client.submit(
                tasks.process_batch,
                plan.spec,
                plan.info.key,
                chosen.batch,
                only,
                key=f"process-batch-{chosen.request_id}-{chosen.batch}",
                retries=2,
                priority=chosen.priority,
            )
            self._futures[future] = InFlight(chosen.request_id, chosen.batch, only)
            future.add_done_callback(lambda f: self._events.put(("done", f)))
            if chosen.request_id not in self._started:
                try:
                    self.store.mark_processing(chosen.request_id, self.clock())
                except RecordStoreError as exc:  # its status says so with the next batch
                    log.warning("request %s: not marked processing: %s", chosen.request_id, exc)
                else:
                    self._started.add(chosen.request_id)

    def _only(self, request_id: str, plan: Plan, batch: int) -> frozenset[tuple[int, int]] | None:
        """The pending images of a partly done batch (None: the whole batch)."""
        if batch not in plan.partial:
            return None
        return self._pending_in(
            request_id,
            plan,
            batch,
            lambda b: (c for c in plan.layout.copies_elsewhere(b) if c in plan.pending_copies),
        )


def _describe(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"


def lease_owner_id() -> str:
    """Who this process is in the leases: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
