"""How fast a request goes and when it should end: pure, from its record and now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.models import RequestRecord, RequestStatus

# Below this many results, or this long, a rate says more about start-up than speed.
MIN_IMAGES = 5
MIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Pace:
    images_per_second: float | None
    eta_seconds: float | None  # None: not processing, or too early to say


def pace(record: RequestRecord, now: datetime) -> Pace:
    """Images with a result per second since processing started (until it ended),
    and the seconds the rest should take at that rate while it processes."""
    if record.started_at is None:
        return Pace(None, None)
    end = record.completed_at or now
    elapsed = (end - record.started_at).total_seconds()
    done = record.processed_images
    if done < MIN_IMAGES or elapsed < MIN_SECONDS:
        return Pace(None, None)
    rate = done / elapsed
    if record.status is not RequestStatus.PROCESSING:
        return Pace(round(rate, 2), None)
    left = record.total_images - done - record.cancelled_images
    return Pace(round(rate, 2), round(max(left, 0) / rate, 1))
