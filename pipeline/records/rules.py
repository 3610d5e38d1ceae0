"""Rules both record stores apply the same way, written once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.failures import reason_group
from pipeline.models import ImageResult, ImageStatus

log = logging.getLogger(__name__)


def first_per_image(results: Sequence[ImageResult]) -> list[ImageResult]:
    """Keep the first result of each image, so a batch with duplicates counts once."""
    return list({(r.row, r.position): r for r in reversed(results)}.values())


def result_fields(result: ImageResult) -> dict[str, Any]:
    """The image fields a result sets, as both stores write them."""
    return {
        "status": (ImageStatus.DONE if result.ok else ImageStatus.FAILED).value,
        "output_key": result.output_key,
        "error": result.error,
        # Stored beside the reason so a summary counts groups through an index.
        "reason_group": reason_group(result.error) if result.error else None,
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "width": result.width,
        "height": result.height,
    }


def aware_utc(at: datetime) -> datetime:
    """`at` in UTC; a naive datetime is refused (pymongo would silently read it as
    UTC, and SQLite's text could not be compared with the others)."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: pass a timezone-aware UTC datetime")
    return at.astimezone(UTC)


def to_ms(at: datetime) -> datetime:
    """UTC at millisecond precision: what both stores keep (BSON's precision)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def delivery_due(next_attempt_at: Any, now: datetime) -> bool:
    """Whether a delivery's `next_attempt_at` (ISO text from `models.iso`) is not after now.

    Compared at the stores' precision (milliseconds). Missing means due now, as
    `Deliveries.resume` reads it; so does text that is not a timestamp, so a
    damaged state is retried rather than stuck.
    """
    if not next_attempt_at:
        return True
    try:
        due = datetime.fromisoformat(str(next_attempt_at))
    except ValueError:
        log.warning("webhook next_attempt_at %r is not a timestamp; due now", next_attempt_at)
        return True
    return to_ms(due) <= to_ms(now)
