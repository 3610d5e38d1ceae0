"""Which batches go to the cluster next: pure decisions, no Dask, no I/O.

The driver keeps at most `window` batches in flight for all the requests it
owns, so a 1M-image request never puts 30,000 tasks on the scheduler, and a
request that arrives later is not stuck behind the whole of an earlier one.
Free slots go round-robin: each to the request with the fewest batches in
flight, ties to the one that has had the fewest so far, then to the oldest.
A request alone gets the whole window; two requests share it evenly; a new
1-image request gets the very next free slot.

Dask priorities carry the same fairness to the scheduler's queue (and to a
cluster shared by several API processes): a request's n-th batch runs at
priority -n, so a new request's first batch runs before an old request's
hundredth, while each request's own batches keep their order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

# Staging is one small task per request that every later step waits on: it
# goes ahead of any batch.
STAGE_PRIORITY = 1_000_000


@dataclass
class RequestBatches:
    """One request's batches as the dispatcher sees them."""

    request_id: str
    arrival: int  # order in which the driver took the request
    pending: deque[int] = field(default_factory=deque)  # batch numbers not yet submitted
    in_flight: int = 0
    submitted: int = 0  # batches submitted so far (sets the next one's priority)
    lost: dict[int, int] = field(default_factory=dict)  # batch -> times the scheduler lost it

    @property
    def idle(self) -> bool:
        """Nothing left to submit and nothing running: the request can be completed."""
        return not self.pending and self.in_flight == 0


@dataclass(frozen=True, slots=True)
class Submission:
    request_id: str
    batch: int
    priority: int


def batch_priority(submitted_before: int) -> int:
    return -submitted_before


def plan(requests: Sequence[RequestBatches], window: int) -> list[Submission]:
    """The batches to submit now, given the window.

    Each free slot goes to the request with the fewest batches in flight. A
    request below its allowance (its fair share of the window, or all its
    batches for a small one) may submit even when the window is full: a
    newcomer does not wait for an earlier request's batches to drain, and its
    batches, with their higher priority, run next. The window is exceeded
    only by such newcomers, at most twice over, and closes again as the
    earlier request's batches finish.

    Pure apart from moving the chosen batches from `pending` to `in_flight`
    on the objects passed in (the dispatcher's own state).
    """
    active = [r for r in requests if r.pending or r.in_flight]
    share = window // max(1, len(active))  # 0 with more requests than slots: take turns
    total = sum(r.in_flight for r in requests)
    candidates = [r for r in active if r.pending]
    chosen: list[Submission] = []
    while candidates and total < 2 * window:
        best = min(candidates, key=lambda r: (r.in_flight, r.submitted, r.arrival))
        if total >= window and best.in_flight >= allowance(best, share, window):
            break
        batch = best.pending.popleft()
        chosen.append(Submission(best.request_id, batch, batch_priority(best.submitted)))
        best.in_flight += 1
        best.submitted += 1
        total += 1
        if not best.pending:
            candidates.remove(best)
    return chosen


def allowance(request: RequestBatches, share: int, window: int) -> int:
    """How many batches a request may have in flight beyond a full window.

    Its fair share; or, for a request small enough to fit the window whole,
    all its batches: with their higher priority they are then already waiting
    on the workers whenever a thread frees, so the request runs ahead of a big
    one's next batches instead of taking turns with them.
    """
    remaining = len(request.pending) + request.in_flight
    return max(share, remaining if remaining <= window else 0)


def batch_size_for(images: int, threads: int, largest: int) -> int:
    """Images per task for a request: BATCH_SIZE, or less for a small request.

    A request of fewer images than it takes to give every thread two batches
    is cut finer, so it spreads over the whole cluster and, next to a big
    request, over each thread as it frees up; it finishes in about the time
    of one small batch instead of one full one. Each task costs ~14 ms more
    than the images it holds, hence the floor of 4.
    """
    if threads <= 0:
        return largest
    return min(largest, max(4, -(-images // (2 * threads))))


def window_size(total_threads: int, configured: int = 0) -> int:
    """Batches in flight for the whole driver.

    Twice the cluster's threads by default: every thread has a batch running
    and one waiting, so none idles between batches, yet a newcomer waits for
    at most about one batch to finish before its own starts.
    """
    if configured > 0:
        return configured
    return max(2, 2 * total_threads)


def requeue_lost(request: RequestBatches, batch: int) -> int:
    """A batch the scheduler lost goes back to the front; returns how often it was lost."""
    request.in_flight -= 1
    request.lost[batch] = request.lost.get(batch, 0) + 1
    request.pending.appendleft(batch)
    return request.lost[batch]
