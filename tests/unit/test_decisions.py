"""Pure decisions of the driver and the deliveries, without a cluster or a receiver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.completion import final_status
from pipeline.deliveries import KEEP_ATTEMPTS, next_start, next_state, receiver_host
from pipeline.models import Counters, RequestStatus, iso
from pipeline.notify import Attempt

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SCHEDULE = (5.0, 30.0, 120.0)


@pytest.mark.parametrize(
    ("counters", "cancelled", "expected"),
    [
        (Counters(10, 0), False, RequestStatus.COMPLETED),
        (Counters(10, 1), False, RequestStatus.COMPLETED_WITH_ERRORS),
        (Counters(10, 9), False, RequestStatus.COMPLETED_WITH_ERRORS),
        # Not one image came out: failed, not "completed with errors".
        (Counters(10, 10), False, RequestStatus.FAILED),
        (Counters(3, 3, cancelled_images=7), True, RequestStatus.CANCELLED),
        (Counters(3, 0, cancelled_images=7), True, RequestStatus.CANCELLED),
        (Counters(10, 0), True, RequestStatus.CANCELLED),  # cancelled as the last batch ended
    ],
)
def test_final_status(counters, cancelled, expected):
    assert final_status(counters, cancelled=cancelled) is expected


def pending(count: int = 0) -> dict:
    return {
        "id": "msg_r1",
        "status": "pending",
        "attempt_count": count,
        "attempts": [],
        "next_attempt_at": iso(NOW),
        "url": "https://hooks.test/x",
        "payload": {"event": "request.completed"},
    }


def attempt(outcome: str, code: int | None = None, retry_after: float | None = None) -> Attempt:
    return Attempt(iso(NOW), code, None if outcome == "delivered" else "no", outcome, retry_after)


def test_delivered_ends_the_delivery():
    after = next_state(pending(), attempt("delivered", 200), SCHEDULE, NOW, 0.5)
    assert (after["status"], after["attempt_count"], after["next_attempt_at"]) == (
        "delivered",
        1,
        None,
    )
    assert after["attempts"] == [
        {"at": iso(NOW), "status_code": 200, "error": None, "retry_after": None}
    ]


def test_a_retry_is_due_after_the_schedules_delay_with_jitter():
    state = pending()
    low = next_state(state, attempt("retry", 503), SCHEDULE, NOW, 0.0)
    high = next_state(state, attempt("retry", 503), SCHEDULE, NOW, 0.999)
    assert low["status"] == "pending"
    assert low["next_attempt_at"] == iso(NOW + timedelta(seconds=2.5))  # 5 s x 0.5
    assert datetime.fromisoformat(high["next_attempt_at"]) < NOW + timedelta(seconds=7.5)
    assert state["attempt_count"] == 0 and state["attempts"] == []  # the input is not changed


def test_retry_after_wins_when_longer():
    after = next_state(pending(1), attempt("retry", 429, retry_after=600), SCHEDULE, NOW, 0.5)
    assert after["next_attempt_at"] == iso(NOW + timedelta(seconds=600))


def test_giving_up_and_a_spent_schedule_fail_the_delivery():
    gone = next_state(pending(), attempt("give_up", 410), SCHEDULE, NOW, 0.5)
    spent = next_state(pending(len(SCHEDULE)), attempt("retry", 503), SCHEDULE, NOW, 0.5)
    assert gone["status"] == spent["status"] == "failed"
    assert spent["attempt_count"] == len(SCHEDULE) + 1


def test_only_the_latest_attempts_are_kept():
    state = pending(20) | {"attempts": [{"n": n} for n in range(KEEP_ATTEMPTS)]}
    after = next_state(state, attempt("retry", 500), (1.0,) * 30, NOW, 0.5)
    assert len(after["attempts"]) == KEEP_ATTEMPTS and after["attempts"][0] == {"n": 1}
    assert after["attempt_count"] == 21


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://Hooks.Example.COM/x?y=1", "hooks.example.com"),
        ("https://hooks.example.com:8443/a", "hooks.example.com"),  # a port is the same host
        ("http://hooks.example.com./b", "hooks.example.com"),
        ("http://[::1]:9000/hook", "::1"),
        ("http://127.0.0.1:9000/hook", "127.0.0.1"),
    ],
)
def test_receiver_host_is_the_name_whatever_the_port_or_case(url, host):
    assert receiver_host(url) == host


SECOND = timedelta(seconds=1)


def test_the_earliest_due_delivery_starts_first():
    heads = {"a.test": NOW - SECOND, "b.test": NOW - 2 * SECOND, "c.test": NOW + SECOND}
    assert next_start(heads, set(), 8, NOW) == ("b.test", None)


def test_a_busy_host_waits_and_the_others_go_in_due_order():
    heads = {"slow.test": NOW - 2 * SECOND, "b.test": NOW - SECOND}
    assert next_start(heads, {"slow.test"}, 8, NOW) == ("b.test", None)
    # Only the busy host has due work: nothing starts until its attempt ends.
    assert next_start({"slow.test": NOW - SECOND}, {"slow.test"}, 8, NOW) == (None, None)


def test_nothing_starts_without_a_free_slot():
    assert next_start({"a.test": NOW - SECOND}, {"b.test"}, 0, NOW) == (None, None)


def test_a_delivery_not_yet_due_says_when_to_look_again():
    heads = {"a.test": NOW + 3 * SECOND, "b.test": NOW + SECOND, "busy.test": NOW}
    assert next_start(heads, {"busy.test"}, 8, NOW) == (None, NOW + SECOND)
    assert next_start({}, set(), 8, NOW) == (None, None)
