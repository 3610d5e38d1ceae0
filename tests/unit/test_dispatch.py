"""The driver's decisions, without a cluster: which batches go next, and the layout."""

from __future__ import annotations

from collections import deque

from pipeline import dispatch
from pipeline.dispatch import RequestBatches, plan, window_size
from pipeline.manifest import Layout
from pipeline.models import ImageItem


def request(request_id: str, arrival: int, batches: int) -> RequestBatches:
    return RequestBatches(request_id, arrival, deque(range(batches)))


def chosen(submissions) -> list[tuple[str, int]]:
    return [(s.request_id, s.batch) for s in submissions]


def test_a_request_alone_fills_the_window_and_no_more():
    big = request("big", 1, 30_000)
    first = plan([big], window=8)
    assert chosen(first) == [("big", n) for n in range(8)]
    assert big.in_flight == 8 and len(big.pending) == 30_000 - 8
    assert plan([big], window=8) == []  # nothing more until one finishes


def test_a_request_that_arrives_later_gets_the_next_free_slot():
    big = request("big", 1, 1000)
    plan([big], window=8)
    small = request("small", 2, 1)
    big.in_flight -= 1  # one of big's batches finished
    assert chosen(plan([big, small], window=8)) == [("small", 0)]
    big.in_flight -= 1
    assert chosen(plan([big, small], window=8)) == [("big", 8)]


def test_a_newcomer_gets_its_fair_share_at_once_even_when_the_window_is_full():
    big = request("big", 1, 1000)
    plan([big], window=8)
    medium = request("medium", 2, 12)
    # Half the window is its share with two requests: it need not wait for big's
    # batches to drain (its batches have the higher priority, so they run next).
    assert chosen(plan([big, medium], window=8)) == [("medium", n) for n in range(4)]
    assert plan([big, medium], window=8) == []
    big.in_flight -= 3  # 5 + 4: still over the window, and medium has its share
    assert plan([big, medium], window=8) == []
    big.in_flight -= 2  # 3 + 4: one free slot, to the one with fewer in flight
    assert chosen(plan([big, medium], window=8)) == [("big", 8)]


def test_a_request_that_fits_the_window_gets_all_its_batches_at_once():
    big = request("big", 1, 1000)
    plan([big], window=8)
    small = request("small", 2, 5)
    # Its next batch is then already waiting on a worker whenever one of its own
    # finishes, rather than a big batch taking that thread.
    assert chosen(plan([big, small], window=8)) == [("small", n) for n in range(5)]
    assert big.in_flight + small.in_flight == 13


def test_in_flight_never_exceeds_twice_the_window():
    requests = [request("big", 0, 1000)]
    plan(requests, window=8)
    for n in range(1, 40):  # newcomers keep arriving while nothing finishes
        requests.append(request(f"r{n}", n, 5))
        plan(requests, window=8)
        assert sum(r.in_flight for r in requests) <= 16
    # With more requests than slots, a request waits for its turn.
    assert sum(r.in_flight == 0 for r in requests) > 0


def test_free_slots_are_shared_round_robin():
    a, b, c = request("a", 1, 100), request("b", 2, 100), request("c", 3, 100)
    assert chosen(plan([a, b, c], window=6)) == [
        ("a", 0),
        ("b", 0),
        ("c", 0),
        ("a", 1),
        ("b", 1),
        ("c", 1),
    ]


def test_priorities_put_a_new_requests_first_batches_ahead_of_an_old_ones_later():
    big = request("big", 1, 100)
    old = plan([big], window=4)
    big.in_flight = 0
    later = plan([big], window=4)
    small = request("small", 2, 2)
    new = plan([small], window=4)
    assert [s.priority for s in old] == [0, -1, -2, -3]
    assert [s.priority for s in later] == [-4, -5, -6, -7]
    assert min(s.priority for s in new) > max(s.priority for s in later)
    assert max(s.priority for s in new) < dispatch.STAGE_PRIORITY


def test_a_lost_batch_goes_back_to_the_front_and_is_counted():
    r = request("r", 1, 4)
    plan([r], window=2)
    assert dispatch.requeue_lost(r, 1) == 1
    assert list(r.pending) == [1, 2, 3] and r.in_flight == 1
    assert dispatch.requeue_lost(r, 0) == 1
    r.pending.popleft()
    r.in_flight += 1
    assert dispatch.requeue_lost(r, 1) == 2


def test_idle_means_nothing_to_submit_and_nothing_running():
    r = request("r", 1, 1)
    assert not r.idle
    plan([r], window=1)
    assert not r.idle
    r.in_flight = 0
    assert r.idle


def test_small_requests_are_cut_finer_to_spread_over_the_threads():
    assert dispatch.batch_size_for(100, threads=4, largest=32) == 13  # 8 batches, 2 a thread
    assert dispatch.batch_size_for(1, threads=4, largest=32) == 4
    assert dispatch.batch_size_for(20_000, threads=4, largest=32) == 32
    assert dispatch.batch_size_for(100, threads=0, largest=32) == 32  # cluster size unknown
    assert dispatch.batch_size_for(1, threads=4, largest=2) == 2  # never above BATCH_SIZE


def test_window_is_twice_the_threads_unless_configured():
    assert window_size(8) == 16
    assert window_size(0) == 2  # no workers yet (an autoscaling cluster): still progress
    assert window_size(8, configured=3) == 3


def items(counts: list[int]) -> list[ImageItem]:
    return [
        ImageItem(row, pos, str(row), f"P{row}", f"https://x.test/{row}/{pos}")
        for row, n in enumerate(counts)
        for pos in range(n)
    ]


def test_layout_places_images_in_batches_and_batches_on_rows():
    # Rows of 3, 1, 4, 2 images with batches of 4: [r0 r0 r0 r1] [r2 r2 r2 r2] [r3 r3]
    layout = Layout(batch_size=4)
    everything = items([3, 1, 4, 2])
    layout.add(everything[:5])  # fed in chunks, as the manifest is read
    layout.add(everything[5:])
    assert layout.images == 10
    assert [layout.batch(i.row, i.position) for i in everything] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert [layout.batch_length(b) for b in range(3)] == [4, 4, 2]
    assert [layout.rows_of(b) for b in range(3)] == [range(0, 2), range(2, 3), range(3, 4)]


def test_layout_rows_spanning_batch_boundaries():
    layout = Layout(batch_size=2)
    layout.add(items([3, 3]))  # [r0 r0] [r0 r1] [r1 r1]
    assert [layout.rows_of(b) for b in range(3)] == [range(0, 1), range(0, 2), range(1, 2)]
