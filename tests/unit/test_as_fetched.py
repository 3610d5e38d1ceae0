"""A batch's downloads overlap, but never pile up: at most `concurrency` held at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator

import pytest

from pipeline.tasks import as_fetched


class Host:
    """Fetches that count how many results exist and are not yet let go of."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.lock = threading.Lock()
        self.held = 0
        self.most_held = 0
        self.fetched: list[int] = []

    def fetch(self, n: int) -> bytearray:
        time.sleep(self.delay)
        with self.lock:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            self.fetched.append(n)
        return bytearray(1000)

    def converted(self) -> None:
        with self.lock:
            self.held -= 1


def test_every_item_once_and_never_more_than_concurrency_held():
    host = Host()
    seen = []
    # The caller converts slowly (as a thread compressing does); the host is fast.
    for item, data in as_fetched(list(range(40)), host.fetch, 4):
        assert len(data) == 1000
        time.sleep(0.002)
        seen.append(item)
        host.converted()
    assert sorted(seen) == list(range(40))
    assert sorted(host.fetched) == list(range(40))
    assert host.most_held <= 4


@pytest.mark.timing
def test_fetches_still_overlap():
    host = Host(delay=0.05)
    started = time.monotonic()
    assert len(list(as_fetched(list(range(16)), host.fetch, 8))) == 16
    # Two rounds of eight at once, not sixteen one after the other (0.8 s).
    assert time.monotonic() - started < 0.5


def test_a_fetch_that_raises_reaches_the_caller():
    def fetch(n: int) -> int:
        if n == 3:
            raise ValueError("boom")
        return n

    with pytest.raises(ValueError, match="boom"):
        list(as_fetched(list(range(10)), fetch, 2))


def test_a_caller_that_stops_early_leaves_no_thread_behind():
    host = Host()
    before = threading.active_count()
    results = as_fetched(list(range(100)), host.fetch, 4)
    assert isinstance(results, Generator)  # what lets a caller close it (typed an Iterator)
    next(results)
    results.close()  # e.g. the task failed while converting
    assert threading.active_count() == before
    # One taken, at most `concurrency` more held or under way: the rest never fetched.
    assert len(host.fetched) <= 1 + 4


def test_nothing_to_fetch():
    assert list(as_fetched([], lambda n: n, 4)) == []


def test_threads_waiting_for_room_give_up_when_the_caller_fails():
    started: list[int] = []

    def fetch(n: int) -> int:
        started.append(n)
        time.sleep(0.05)
        return n

    def convert_and_fail() -> None:
        for _item, _data in as_fetched(list(range(50)), fetch, 4):
            time.sleep(0.2)  # the threads fill the room and wait meanwhile
            raise MemoryError("converting failed")

    before = threading.active_count()
    with pytest.raises(MemoryError):
        convert_and_fail()
    # The error is still referenced here (pytest keeps it), yet nothing waits on it:
    assert threading.active_count() == before
    assert len(started) <= 1 + 4  # the waiting threads did not go on to fetch
