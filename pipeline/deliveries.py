"""At-least-once webhook delivery, off the driver's thread, surviving restarts.

Each finished request gets one delivery: a stable id (`msg_<request id>`), the
event, and a state kept on the request record ("pending", "delivered",
"failed", with the recent attempts). A thread sends due deliveries; a failure
worth retrying (connection error, timeout, 429, 5xx) is tried again after the
next delay of the schedule, jittered, or after the receiver's `Retry-After`
when that is longer. 3xx and other 4xx give up at once. State is written
after every attempt, so a restarted API finds pending deliveries
(`resume()`) and carries on with the same id and body.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.models import iso
from pipeline.notify import Attempt, WebhookSender
from pipeline.records.base import RecordStore

log = logging.getLogger(__name__)
KEEP_ATTEMPTS = 10  # the status response shows the latest ones; the count is kept apart


def body_of(event: dict[str, Any]) -> bytes:
    """The exact bytes signed and sent: the same on every attempt, before and after restarts."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def parse_schedule(text: str) -> tuple[float, ...]:
    delays = tuple(float(part) for part in text.split(",") if part.strip())
    if not delays or any(d < 0 for d in delays):
        raise ValueError("a comma-separated list of non-negative seconds")
    return delays


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


class Deliveries:
    def __init__(
        self,
        store: RecordStore,
        sender: WebhookSender,
        *,
        schedule: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        jitter: Callable[[], float] = random.random,
        owner: str = "deliveries",
        lease_seconds: float = 60.0,
    ):
        self.store = store
        self.sender = sender
        self.schedule = schedule
        self.clock = clock
        self.jitter = jitter
        self.owner = owner
        # Longer than one attempt can take, so a claim never lapses mid-attempt.
        self.lease_seconds = max(lease_seconds, 2 * sender.timeout + 5)
        self._due: list[tuple[datetime, str]] = []
        self._queued: dict[str, datetime] = {}  # request id -> earliest due time in the heap
        self._busy = 0
        self._stopping = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> Deliveries:
        self._thread = threading.Thread(target=self._loop, name="webhook-deliveries", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def resume(self) -> int:
        """Queue every pending delivery (left by a previous process, or another's)."""
        pending = self.store.pending_deliveries()
        for request_id, state in pending:
            due = datetime.fromisoformat(state.get("next_attempt_at") or iso(self.clock()))
            self._push(due, request_id)
        return len(pending)

    def wait_settled(self, timeout: float) -> bool:
        """True when nothing is being sent or due now (later retries stay queued/persisted)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._busy and (not self._due or self._due[0][0] > self.clock()),
                timeout,
            )

    def wait_idle(self, timeout: float) -> bool:
        """True when nothing is queued or being sent (for batch runs and tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._due and not self._busy, timeout)

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

    def queue(self, request_id: str) -> None:
        """Queue a delivery whose pending state is already stored."""
        self._push(self.clock(), request_id)

    def enqueue(self, request_id: str, url: str, event: dict[str, Any]) -> None:
        """Store a new delivery and queue it."""
        self.store.set_webhook_state(request_id, self.pending_state(request_id, url, event))
        self.queue(request_id)

    def _push(self, due: datetime, request_id: str) -> None:
        with self._cond:
            queued = self._queued.get(request_id)
            if queued is not None and queued <= due:
                return  # queued already, as early or earlier (a sweep finds it again)
            self._queued[request_id] = due
            heapq.heappush(self._due, (due, request_id))
            self._cond.notify_all()

    # -- the sending thread ---------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    if self._due and self._due[0][0] <= self.clock():
                        due, request_id = heapq.heappop(self._due)
                        if self._queued.get(request_id) == due:
                            del self._queued[request_id]
                        self._busy += 1
                        break
                    wait = (self._due[0][0] - self.clock()).total_seconds() if self._due else None
                    self._cond.wait(timeout=None if wait is None else max(0.01, min(wait, 60.0)))
            try:
                self._attempt(request_id)
            except Exception:  # a store hiccup must not kill the thread; try again soon
                log.exception("webhook delivery for %s failed unexpectedly", request_id)
                self._push(self.clock() + timedelta(seconds=30), request_id)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _attempt(self, request_id: str) -> None:
        # Claimed first: pending, due, and no other process attempting it now.
        state = self.store.claim_delivery(request_id, self.owner, self.clock(), self.lease_seconds)
        if state is None:
            return  # delivered, given up, not due, or being attempted elsewhere
        attempt = self.sender.send(state["url"], state["id"], body_of(state["payload"]))
        after = next_state(state, attempt, self.schedule, self.clock(), self.jitter())
        if after["status"] == "failed":
            log.warning("webhook %s to %s failed: %s", state["id"], state["url"], attempt.error)
        # Persisted before it is queued again; refused if the claim was lost meanwhile.
        if not self.store.set_webhook_state(request_id, after, owner=self.owner):
            log.warning("webhook %s: claim lost during the attempt; not recorded", state["id"])
            return
        if after["status"] == "pending":
            self._push(datetime.fromisoformat(after["next_attempt_at"]), request_id)
