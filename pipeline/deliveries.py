"""At-least-once webhook delivery, off the driver's thread, surviving restarts.

Each finished request gets one delivery: a stable id (`msg_<request id>`), the
event, and a state kept on the request record ("pending", "delivered",
"failed", with the recent attempts). Due deliveries are sent concurrently, at
most `concurrency` attempts at once and at most one per receiver host, so a
slow or hostile receiver holds one slot for one attempt and never delays
another receiver's webhook. A failure worth retrying (connection error,
timeout, 429, 5xx) is tried again after the next delay of the schedule,
jittered, or after the receiver's `Retry-After` when that is longer. 3xx and
other 4xx give up at once. Each attempt is claimed in the record store before
it starts and its state written after it, so several processes share the
deliveries and a restarted API finds pending ones (`resume()`) and carries on
with the same id and body.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from pipeline.models import iso
from pipeline.notify import Attempt, WebhookSender, event_body
from pipeline.records.base import RecordStore
from pipeline.settings import parse_schedule  # noqa: F401 (importable from here too)

log = logging.getLogger(__name__)
KEEP_ATTEMPTS = 10  # the status response shows the latest ones; the count is kept apart


def next_state(
    state: dict[str, Any],
    attempt: Attempt,
    schedule: tuple[float, ...],
    now: datetime,
    jitter: float,
) -> dict[str, Any]:
    """The delivery's state after one attempt (`jitter` in [0, 1)).

    Delivered; given up (3xx/4xx, or the schedule is spent); or pending again,
    due after the schedule's next delay (+-50%) or the receiver's Retry-After
    when that is longer.
    """
    count = state["attempt_count"] + 1
    after = {
        **state,
        "attempt_count": count,
        "attempts": [*state["attempts"], attempt.record()][-KEEP_ATTEMPTS:],
    }
    if attempt.outcome == "delivered":
        return after | {"status": "delivered", "next_attempt_at": None}
    if attempt.outcome == "give_up" or count > len(schedule):
        return after | {"status": "failed", "next_attempt_at": None}
    delay = schedule[count - 1] * (0.5 + jitter)  # +-50%: no thundering herd
    delay = max(delay, attempt.retry_after or 0.0)
    return after | {"next_attempt_at": iso(now + timedelta(seconds=delay))}


def receiver_host(url: str) -> str:
    """The host a delivery goes to, as the one-attempt-per-host rule counts it.

    The name without port, scheme or case: ports of one machine are one
    receiver, or a hostile one could take a slot per port.
    """
    try:
        host = urlsplit(url).hostname
    except ValueError:  # malformed: its attempt gives up at once; keep it apart
        host = None
    return (host or url).rstrip(".").lower()


def next_start(
    heads: Mapping[str, datetime],
    busy_hosts: Collection[str],
    free_slots: int,
    now: datetime,
) -> tuple[str | None, datetime | None]:
    """Which host's earliest delivery to start now, else when to look again.

    `heads` maps each host with queued deliveries to its earliest due time.
    Returns (host, None) to start one now: the earliest due among hosts with
    no attempt in flight. Otherwise (None, when): the time the next one falls
    due, or None when only a finishing attempt can change anything (no free
    slot, or every queued host busy).
    """
    if free_slots <= 0:
        return None, None
    ready = [(due, host) for host, due in heads.items() if host not in busy_hosts]
    if not ready:
        return None, None
    due, host = min(ready)
    return (host, None) if due <= now else (None, due)


class Deliveries:
    def __init__(
        self,
        store: RecordStore,
        sender: WebhookSender,
        *,
        schedule: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600),
        concurrency: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        jitter: Callable[[], float] = random.random,
        owner: str = "deliveries",
        lease_seconds: float = 60.0,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = store
        self.sender = sender
        self.schedule = schedule
        self.concurrency = concurrency
        self.clock = clock
        self.jitter = jitter
        self.owner = owner
        # Longer than one attempt can take, so a claim never lapses mid-attempt.
        self.lease_seconds = max(lease_seconds, 2 * sender.timeout + 5)
        # host -> heap of (due, request id): a busy host's deliveries wait in
        # their own heap without holding up the others'.
        self._due: dict[str, list[tuple[datetime, str]]] = {}
        self._queued: dict[str, datetime] = {}  # request id -> earliest due time queued
        # request id -> host of the attempts started. One per host means one per
        # delivery too: a stale duplicate in the heap waits until the attempt has
        # written its state, then its claim finds the delivery not due.
        self._in_flight: dict[str, str] = {}
        self._stopping = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> Deliveries:
        self._thread = threading.Thread(target=self._loop, name="webhook-deliveries", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Start nothing more; wait up to `timeout` for attempts in progress.

        What is queued stays pending in the records (for `resume()`). An attempt
        still going at the timeout is left to end on its own daemon thread and
        record its outcome then; stop does not wait for it.
        """
        with self._cond:
            self._stopping = True
            self._due.clear()
            self._queued.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            self._cond.wait_for(lambda: not self._in_flight, max(0.0, deadline - time.monotonic()))

    def resume(self) -> int:
        """Queue every pending delivery (left by a previous process, or another's)."""
        pending = self.store.pending_deliveries()
        for request_id, state in pending:
            due = datetime.fromisoformat(state.get("next_attempt_at") or iso(self.clock()))
            self._push(due, request_id, receiver_host(state["url"]))
        return len(pending)

    def wait_settled(self, timeout: float) -> bool:
        """True when nothing is being sent or due now (later retries stay queued/persisted)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (
                    not self._in_flight
                    and all(heap[0][0] > self.clock() for heap in self._due.values())
                ),
                timeout,
            )

    def wait_idle(self, timeout: float) -> bool:
        """True when nothing is queued or being sent (for batch runs and tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._due and not self._in_flight, timeout)

    # -- queueing -------------------------------------------------------------
    def pending_state(self, request_id: str, url: str, event: dict[str, Any]) -> dict[str, Any]:
        """A new delivery's state, due now: for the caller to store (then `queue` it)."""
        return {
            "id": f"msg_{request_id}",
            "event": event["event"],
            "url": url,
            "status": "pending",
            "attempt_count": 0,
            "attempts": [],
            "next_attempt_at": iso(self.clock()),
            "payload": event,
        }

    def queue(self, request_id: str, url: str | None = None) -> None:
        """Queue a delivery whose pending state is already stored (its URL read
        from the record when not given)."""
        if url is None:
            record = self.store.get_request(request_id)
            if record is None or not record.webhook:
                return
            url = record.webhook["url"]
        self._push(self.clock(), request_id, receiver_host(url))

    def enqueue(self, request_id: str, url: str, event: dict[str, Any]) -> None:
        """Store a new delivery and queue it."""
        self.store.set_webhook_state(request_id, self.pending_state(request_id, url, event))
        self.queue(request_id, url)

    def _push(self, due: datetime, request_id: str, host: str) -> None:
        with self._cond:
            if self._stopping:
                return  # pending in the records: the next start or another process sends it
            queued = self._queued.get(request_id)
            if queued is not None and queued <= due:
                return  # queued already, as early or earlier (a sweep finds it again)
            self._queued[request_id] = due
            heapq.heappush(self._due.setdefault(host, []), (due, request_id))
            self._cond.notify_all()

    # -- sending: one dispatcher, one daemon thread per attempt ----------------
    def _loop(self) -> None:
        with self._cond:
            while not self._stopping:
                host, wake = next_start(
                    {host: heap[0][0] for host, heap in self._due.items()},
                    set(self._in_flight.values()),
                    self.concurrency - len(self._in_flight),
                    self.clock(),
                )
                if host is None:
                    wait = None if wake is None else (wake - self.clock()).total_seconds()
                    self._cond.wait(timeout=None if wait is None else max(0.01, min(wait, 60.0)))
                    continue
                request_id = self._pop(host)
                self._in_flight[request_id] = host
                # Daemon threads: an attempt stuck past stop() never holds up the exit.
                threading.Thread(
                    target=self._run,
                    args=(request_id, host),
                    name=f"webhook-attempt-{request_id}",
                    daemon=True,
                ).start()

    def _pop(self, host: str) -> str:
        heap = self._due[host]
        due, request_id = heapq.heappop(heap)
        if not heap:
            del self._due[host]
        if self._queued.get(request_id) == due:
            del self._queued[request_id]
        return request_id

    def _run(self, request_id: str, host: str) -> None:
        try:
            self._attempt(request_id, host)
        except Exception:
            if self._stopping:  # the store may be closed under an attempt that outlived stop()
                log.warning("webhook delivery for %s not recorded: stopped meanwhile", request_id)
            else:  # a store hiccup: try again soon
                log.exception("webhook delivery for %s failed unexpectedly", request_id)
                self._push(self.clock() + timedelta(seconds=30), request_id, host)
        finally:
            with self._cond:
                del self._in_flight[request_id]
                self._cond.notify_all()

    def _attempt(self, request_id: str, host: str) -> None:
        # Claimed first: pending, due, and no other process attempting it now.
        state = self.store.claim_delivery(request_id, self.owner, self.clock(), self.lease_seconds)
        if state is None:
            return  # delivered, given up, not due, or being attempted elsewhere
        attempt = self.sender.send(state["url"], state["id"], event_body(state["payload"]))
        after = next_state(state, attempt, self.schedule, self.clock(), self.jitter())
        if after["status"] == "failed":
            log.warning("webhook %s to %s failed: %s", state["id"], state["url"], attempt.error)
        # Persisted before it is queued again; refused if the claim was lost meanwhile.
        if not self.store.set_webhook_state(request_id, after, owner=self.owner):
            log.warning("webhook %s: claim lost during the attempt; not recorded", state["id"])
            return
        if after["status"] == "pending":
            self._push(datetime.fromisoformat(after["next_attempt_at"]), request_id, host)
