"""The record store contract: what the API and the Dask driver rely on.

Every test here runs against each backend of the `backend` fixture (SQLite,
and MongoDB over the wire protocol: SecantusDB, or a real mongod when
MONGODB_URI is set); see conftest.py.

"Another process" is `backend.reopen()`: a second store on the same data, as a
second API process sharing the records.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, cast

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from pipeline.errors import RecordStoreError, RequestNotFound
from pipeline.models import (
    Counters,
    ImageItem,
    ImageRecord,
    ImageResult,
    ImageStatus,
    NewRequest,
    RequestStatus,
    iso,
)
from pipeline.options import OutputOptions
from pipeline.records.base import RecordStore
from pipeline.records.mongo import MongoRecordStore
from pipeline.records.sqlite import _PENDING_DELIVERY, _UNFINISHED, SqliteRecordStore

if TYPE_CHECKING:  # conftest is pytest's to import; only its type is borrowed here
    from tests.contract.conftest import Backend

# Microseconds on purpose: both backends keep milliseconds (BSON's precision).
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
LEASE = 30.0  # seconds
MS = timedelta(milliseconds=1)


def ms(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def new_request(request_id: str = "req-1", *, created_at: datetime = T0, **kw) -> NewRequest:
    fields = {"total_rows": 3, "total_images": 6} | kw
    return NewRequest(request_id=request_id, created_at=created_at, **fields)


def images(rows: int, per_row: int = 2) -> list[ImageItem]:
    return [
        ImageItem(row, pos, f"SKU{row}", f"Product {row}", f"https://img.test/{row}/{pos}.jpg")
        for row in range(rows)
        for pos in range(per_row)
    ]


def ok(row: int, pos: int) -> ImageResult:
    out = f"out/{row}-{pos}.jpg"
    return ImageResult(row, pos, True, out, bytes_in=900, bytes_out=300, width=64, height=48)


def bad(row: int, pos: int, reason: str = "HTTP 404") -> ImageResult:
    return ImageResult(row, pos, ok=False, error=reason)


def started(store: RecordStore, request_id: str = "req-1", rows: int = 3) -> None:
    store.create_request(new_request(request_id, total_rows=rows, total_images=rows * 2))
    store.add_images(request_id, images(rows))


def after(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def get(store: RecordStore, request_id: str = "req-1"):
    record = store.get_request(request_id)
    assert record is not None, request_id
    return record


def delivery(due: datetime | None = T0, **kw) -> dict:
    """A pending webhook state as `Deliveries` writes it (next_attempt_at from `iso`)."""
    state = {"id": "msg_req-1", "status": "pending", "attempt_count": 0, "attempts": []}
    return state | {"next_attempt_at": iso(due)} | kw


# -- requests ------------------------------------------------------------------
def test_create_then_get_round_trips_every_field(store: RecordStore):
    created = datetime(2024, 5, 1, 14, 30, 0, 987654, tzinfo=timezone(timedelta(hours=2)))
    store.create_request(
        new_request(created_at=created, source_name="products.csv", webhook_url="https://hook.test")
    )

    record = store.get_request("req-1")

    assert record is not None
    assert (record.request_id, record.status) == ("req-1", RequestStatus.PENDING)
    assert (record.total_rows, record.total_images) == (3, 6)
    assert (record.processed_images, record.failed_images) == (0, 0)
    assert (record.source_name, record.webhook_url) == ("products.csv", "https://hook.test")
    assert (record.output_key, record.error, record.webhook) == (None, None, {})
    assert (record.started_at, record.completed_at) == (None, None)
    # Same instant, reported in UTC, aware: the API formats these without guessing a zone.
    assert record.created_at == ms(created)
    assert record.created_at.utcoffset() == timedelta(0)
    assert record.updated_at == record.created_at


def test_options_round_trip_and_are_none_for_older_records(backend: Backend):
    # A request resumed by another process, or after a restart, must come out as asked.
    store = backend.store
    store.create_request(new_request("chosen", options=OutputOptions("avif", 42, None, 640)))
    store.create_request(new_request("plain"))
    for each in (store, backend.reopen()):
        chosen, plain = each.get_request("chosen"), each.get_request("plain")
        assert chosen is not None and chosen.options == OutputOptions("avif", 42, None, 640)
        assert plain is not None and plain.options == OutputOptions()
    [listed], _ = store.list_requests(statuses=[RequestStatus.PENDING], limit=1)
    assert listed.options is not None


def test_unknown_request_is_none(store: RecordStore):
    assert store.get_request("no-such-id") is None


def test_owner_round_trips_and_defaults_to_none(backend: Backend):
    # The API shows a request only to its owner, so a lost owner would hide it from
    # the key that made it, and a wrong one would show it to another.
    store = backend.store
    store.create_request(new_request("keyed", owner="3f0c9a1b2c3d4e5f"))
    store.create_request(new_request("open"))

    for each in (store, backend.reopen()):
        keyed, anonymous = each.get_request("keyed"), each.get_request("open")
        assert keyed is not None and keyed.owner == "3f0c9a1b2c3d4e5f"
        assert anonymous is not None and anonymous.owner is None


def test_creating_an_existing_id_fails(store: RecordStore):
    store.create_request(new_request())
    with pytest.raises(RecordStoreError):
        store.create_request(new_request())


def test_naive_datetimes_are_refused(store: RecordStore):
    with pytest.raises(ValueError, match="naive"):
        store.create_request(new_request(created_at=datetime(2024, 5, 1, 12, 0)))


def test_mark_processing_sets_started_at_the_first_time_only(store: RecordStore):
    store.create_request(new_request())

    store.mark_processing("req-1", T0 + timedelta(seconds=1))
    store.mark_processing("req-1", T0 + timedelta(seconds=9))  # resumed after a restart

    record = store.get_request("req-1")
    assert record is not None
    assert record.status is RequestStatus.PROCESSING
    assert record.started_at == ms(T0 + timedelta(seconds=1))
    assert record.updated_at == ms(T0 + timedelta(seconds=9))


def test_mark_processing_does_not_reopen_a_final_request(store: RecordStore):
    store.create_request(new_request())
    store.finish("req-1", RequestStatus.FAILED, T0, error="boom")

    store.mark_processing("req-1", T0 + timedelta(seconds=1))

    record = store.get_request("req-1")
    assert record is not None
    assert (record.status, record.started_at) == (RequestStatus.FAILED, None)


def test_finish_stores_status_output_error_and_time(store: RecordStore):
    started(store, "done")
    started(store, "broken")
    at = T0 + timedelta(minutes=5)

    assert store.finish("done", RequestStatus.COMPLETED_WITH_ERRORS, at, output_key="out/done.csv")
    assert store.finish("broken", RequestStatus.FAILED, at, error="OSError: disk full")

    done, broken = store.get_request("done"), store.get_request("broken")
    assert done is not None and broken is not None
    assert (done.status, done.output_key, done.error) == (
        RequestStatus.COMPLETED_WITH_ERRORS,
        "out/done.csv",
        None,
    )
    assert (broken.status, broken.output_key, broken.error) == (
        RequestStatus.FAILED,
        None,
        "OSError: disk full",
    )
    assert done.completed_at == broken.completed_at == ms(at)
    assert done.completed_at is not None
    assert done.completed_at.utcoffset() == timedelta(0)


def test_webhook_state_round_trips_and_is_replaced(store: RecordStore):
    store.create_request(new_request())
    first = {
        "status": "failed",
        "attempts": 2,
        "last": {"code": 503, "retry": True, "body": None, "history": [1.5, "x", {"n": 1}]},
    }

    store.set_webhook_state("req-1", first)
    record = store.get_request("req-1")
    assert record is not None and record.webhook == first

    store.set_webhook_state("req-1", {"status": "delivered"})
    record = store.get_request("req-1")
    assert record is not None and record.webhook == {"status": "delivered"}


def test_unfinished_requests_are_oldest_first_and_exclude_final(backend: Backend):
    store = backend.store
    for name, minutes in [("c", 3), ("a", 1), ("final", 0), ("b", 2), ("failed", 4), ("q", 5)]:
        store.create_request(new_request(name, created_at=T0 + timedelta(minutes=minutes)))
    store.mark_processing("b", T0)
    store.mark_queued("q", T0)
    store.finish("final", RequestStatus.COMPLETED, T0, output_key="k")
    store.finish("failed", RequestStatus.FAILED, T0, error="e")
    store.create_request(new_request("gone", created_at=T0 + timedelta(minutes=6)))
    store.finish("gone", RequestStatus.CANCELLED, T0)

    assert store.unfinished_requests() == ["a", "b", "c", "q"]
    # What a restarted process sees, and resumes.
    assert backend.reopen().unfinished_requests() == ["a", "b", "c", "q"]


def test_pending_deliveries_are_listed_oldest_first_and_survive_reopen(backend: Backend):
    store = backend.store
    for name, minutes in [("late", 2), ("early", 1), ("done", 0), ("none", 3)]:
        store.create_request(new_request(name, created_at=T0 + timedelta(minutes=minutes)))
    pending = {"id": "msg_1", "status": "pending", "attempts": [{"status_code": 503}]}
    store.set_webhook_state("late", pending)
    store.set_webhook_state("early", {**pending, "id": "msg_0"})
    store.set_webhook_state("done", {"id": "msg_2", "status": "delivered"})

    assert store.pending_deliveries() == [("early", {**pending, "id": "msg_0"}), ("late", pending)]
    assert [rid for rid, _ in backend.reopen().pending_deliveries()] == ["early", "late"]
    store.set_webhook_state("early", {"id": "msg_0", "status": "failed"})
    assert [rid for rid, _ in store.pending_deliveries()] == ["late"]


def test_finish_can_set_the_owed_delivery_in_the_same_write(backend: Backend):
    store = backend.store
    for name in ("notified", "quiet"):
        store.create_request(new_request(name))
    owed = {"id": "msg_notified", "status": "pending", "payload": {"status": "completed"}}
    store.finish("notified", RequestStatus.COMPLETED, T0, output_key="k", webhook=owed)
    store.set_webhook_state("quiet", {"id": "msg_quiet", "status": "delivered"})
    store.finish("quiet", RequestStatus.FAILED, T0, error="e")  # keeps the state it had

    reopened = backend.reopen()  # what the next process finds
    notified, quiet = reopened.get_request("notified"), reopened.get_request("quiet")
    assert notified is not None and quiet is not None
    assert (notified.status, notified.webhook) == (RequestStatus.COMPLETED, owed)
    assert quiet.webhook == {"id": "msg_quiet", "status": "delivered"}
    assert reopened.pending_deliveries() == [("notified", owed)]


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.mark_processing("ghost", T0),
        lambda s: s.add_images("ghost", images(1)),
        lambda s: s.apply_results("ghost", [ok(0, 0)], T0),
        lambda s: s.finish("ghost", RequestStatus.COMPLETED, T0),
        lambda s: s.set_webhook_state("ghost", {}),
        lambda s: s.recount("ghost"),
        lambda s: s.mark_queued("ghost", T0),
        lambda s: s.finish("ghost", RequestStatus.COMPLETED, T0, owner="api-a"),
        lambda s: s.set_webhook_state("ghost", {}, owner="api-a"),
        lambda s: s.claim_request("ghost", "api-a", T0, LEASE),
        lambda s: s.request_cancel("ghost", T0),
        lambda s: s.cancel_pending_images("ghost"),
        lambda s: s.delete_request("ghost"),
    ],
    ids=[
        "mark_processing",
        "add_images",
        "apply_results",
        "finish",
        "webhook",
        "recount",
        "mark_queued",
        "finish_owned",
        "webhook_owned",
        "claim_request",
        "request_cancel",
        "cancel_pending_images",
        "delete_request",
    ],
)
def test_writes_to_an_unknown_request_raise(store: RecordStore, write):
    with pytest.raises(RequestNotFound):
        write(store)
    assert store.get_request("ghost") is None


# -- images --------------------------------------------------------------------
def test_add_images_is_idempotent_and_counts_new_ones(store: RecordStore):
    store.create_request(new_request())

    assert store.add_images("req-1", images(2)) == 4
    assert store.add_images("req-1", images(3)) == 2  # rows 0-1 exist already
    assert store.add_images("req-1", images(3)) == 0
    assert store.add_images("req-1", []) == 0

    listed = store.list_images("req-1", 0, 10)
    assert [(i.row, i.position) for i in listed] == [(r, p) for r in range(3) for p in range(2)]
    assert {i.status for i in listed} == {ImageStatus.PENDING}


def test_apply_results_records_outcomes_and_moves_counters(store: RecordStore):
    started(store)

    counters = store.apply_results("req-1", [ok(0, 0), bad(0, 1), ok(1, 0)], T0)

    assert counters == Counters(processed_images=3, failed_images=1)
    record = store.get_request("req-1")
    assert record is not None
    assert (record.processed_images, record.failed_images) == (3, 1)
    assert record.succeeded_images == 2 and record.progress == 50.0
    done, failed = store.list_images("req-1", 0, 1)
    assert (done.status, done.output_key, done.error) == (ImageStatus.DONE, "out/0-0.jpg", None)
    assert (done.bytes_in, done.bytes_out, done.width, done.height) == (900, 300, 64, 48)
    assert (failed.status, failed.output_key, failed.error) == (
        ImageStatus.FAILED,
        None,
        "HTTP 404",
    )


def test_a_retried_batch_counts_once_and_keeps_the_first_outcome(store: RecordStore):
    started(store)
    batch = [ok(0, 0), bad(0, 1), ok(1, 0)]
    store.apply_results("req-1", batch, T0)

    again = store.apply_results("req-1", batch, T0)
    # A retry whose outcomes differ (e.g. the URL recovered) changes nothing either.
    flipped = store.apply_results("req-1", [bad(0, 0, "late"), ok(0, 1), ok(2, 1)], T0)

    assert again == Counters(3, 1)
    assert flipped == Counters(4, 1)  # only (2, 1) was still pending
    first_row = store.list_images("req-1", 0, 1)
    assert [(i.status, i.error) for i in first_row] == [
        (ImageStatus.DONE, None),
        (ImageStatus.FAILED, "HTTP 404"),
    ]


def test_an_image_twice_in_one_batch_counts_once(store: RecordStore):
    started(store)

    counters = store.apply_results("req-1", [bad(1, 1), ok(1, 1), bad(1, 1, "other")], T0)

    assert counters == Counters(1, 1)
    (image,) = [i for i in store.list_images("req-1", 1, 2) if i.position == 1]
    assert (image.status, image.error) == (ImageStatus.FAILED, "HTTP 404")


def test_results_for_unknown_images_are_ignored(store: RecordStore):
    started(store)
    store.create_request(new_request("other"))
    store.add_images("other", images(1))

    counters = store.apply_results("req-1", [ok(0, 0), ok(7, 0), bad(0, 5)], T0)

    assert counters == Counters(1, 0)
    assert store.pending_images("other") == [(0, 0), (0, 1)]


def test_counters_are_read_from_the_request_and_recount_repairs_them(backend: Backend):
    store = backend.store
    started(store)
    store.apply_results("req-1", [ok(0, 0), bad(0, 1), ok(2, 1)], T0)

    # Counters edited behind the store's back show through: reads do not scan images.
    backend.set_counters("req-1", 40, 30)
    record = store.get_request("req-1")
    assert record is not None and (record.processed_images, record.failed_images) == (40, 30)

    assert store.recount("req-1") == Counters(3, 1)
    record = store.get_request("req-1")
    assert record is not None and (record.processed_images, record.failed_images) == (3, 1)


def test_list_images_returns_rows_in_range_in_order(store: RecordStore):
    store.create_request(new_request(total_rows=5, total_images=15))
    shuffled = images(5, per_row=3)
    random.Random(7).shuffle(shuffled)
    store.add_images("req-1", shuffled)
    store.apply_results("req-1", [bad(2, 1, "timeout")], T0)

    listed = store.list_images("req-1", 1, 3)

    assert [(i.row, i.position) for i in listed] == [(r, p) for r in (1, 2) for p in range(3)]
    assert listed[4] == ImageRecord(
        row=2,
        position=1,
        serial="SKU2",
        product_name="Product 2",
        input_url="https://img.test/2/1.jpg",
        status=ImageStatus.FAILED,
        error="timeout",
    )
    assert store.list_images("req-1", 5, 9) == []


@pytest.mark.parametrize("rows", [5, 6], ids=["partial-last-chunk", "exact-chunks"])
def test_iter_images_streams_everything_in_order_across_chunks(store: RecordStore, rows: int):
    store.create_request(new_request(total_rows=rows, total_images=rows * 2))
    store.create_request(new_request("neighbour"))
    shuffled = images(rows)
    random.Random(3).shuffle(shuffled)
    store.add_images("req-1", shuffled)
    store.add_images("neighbour", images(2))
    store.apply_results("req-1", [ok(1, 1), bad(3, 0)], T0)

    streamed = store.iter_images("req-1", batch_size=4)

    assert not isinstance(streamed, list | tuple)  # a stream, not a materialised list
    assert list(streamed) == store.list_images("req-1", 0, rows)
    assert [(i.row, i.position) for i in store.iter_images("req-1", batch_size=4)] == [
        (r, p) for r in range(rows) for p in range(2)
    ]


def test_images_by_status_in_pages_and_streams(store: RecordStore):
    started(store, rows=6)
    store.create_request(new_request("neighbour"))
    store.add_images("neighbour", images(2))
    store.apply_results("neighbour", [bad(0, 0)], T0)
    store.apply_results("req-1", [bad(4, 1), ok(0, 0), bad(1, 0), bad(5, 0), ok(2, 1)], T0)

    failed = store.images_with_status("req-1", ImageStatus.FAILED, 0, 2)
    assert [(i.row, i.position) for i in failed] == [(1, 0), (4, 1)]
    assert [
        (i.row, i.position) for i in store.images_with_status("req-1", ImageStatus.FAILED, 2, 2)
    ] == [(5, 0)]
    assert store.images_with_status("req-1", ImageStatus.FAILED, 3, 2) == []
    assert len(store.images_with_status("req-1", ImageStatus.PENDING, 0, 100)) == 7
    assert len(store.images_with_status("req-1", None, 0, 100)) == 12
    streamed = store.iter_images("req-1", batch_size=2, status=ImageStatus.FAILED)
    assert [(i.row, i.position, i.error) for i in streamed] == [
        (1, 0, "HTTP 404"),
        (4, 1, "HTTP 404"),
        (5, 0, "HTTP 404"),
    ]


def test_failure_summary_counts_reason_groups_most_first(store: RecordStore):
    started(store, rows=6)
    store.apply_results(
        "req-1",
        [
            bad(0, 0, "download failed: HTTP 404 after 2 retries"),
            bad(0, 1, "download failed: HTTP 404 after 1 retries"),
            bad(1, 0, "download failed: HTTP 503"),
            bad(2, 0, "image is 9000x9000 = 81000000 pixels, over the limit of 50000000"),
            bad(3, 0, "download failed: HTTP 404 after 2 retries"),
            ok(4, 0),
        ],
        T0,
    )
    summary = store.failure_summary("req-1")
    assert [(r.reason, r.count) for r in summary] == [
        ("download failed: HTTP 404 after N retries", 3),
        ("download failed: HTTP 503", 1),
        ("image is NxN = N pixels, over the limit of N", 1),
    ]
    assert summary[0].example == "download failed: HTTP 404 after 1 retries"
    assert [r.reason for r in store.failure_summary("req-1", limit=1)] == [summary[0].reason]
    assert store.failure_summary("no-such-id") == []


def test_an_images_line_round_trips(backend: Backend):
    store = backend.store
    store.create_request(new_request(total_rows=2, total_images=2))
    store.add_images(
        "req-1",
        [
            ImageItem(0, 0, "1", "A", "https://img.test/a.jpg", line=3),
            ImageItem(1, 0, "2", "B", "https://img.test/b.jpg"),  # line not known
        ],
    )
    for each in (store, backend.reopen()):
        a, b = each.list_images("req-1", 0, 2)
        assert (a.line, a.file_line) == (3, 3)
        assert (b.line, b.file_line) == (None, 3)  # row 1 on a file without blank lines


def test_pending_images_are_those_without_a_result_in_order(store: RecordStore):
    started(store)
    assert store.pending_images("req-1") == [(r, p) for r in range(3) for p in range(2)]

    store.apply_results("req-1", [ok(0, 1), bad(1, 0), ok(2, 0), ok(2, 1)], T0)

    assert store.pending_images("req-1") == [(0, 0), (1, 1)]
    assert store.pending_images("no-such-id") == []


# -- queued / processing ---------------------------------------------------------
def test_mark_queued_moves_a_pending_request_only(store: RecordStore):
    for name in ("pending", "processing", "final"):
        store.create_request(new_request(name))
    store.mark_processing("processing", T0)
    store.finish("final", RequestStatus.FAILED, T0, error="e")

    for name in ("pending", "processing", "final"):
        store.mark_queued(name, after(5))

    queued = get(store, "pending")
    assert (queued.status, queued.updated_at, queued.started_at) == (
        RequestStatus.QUEUED,
        ms(after(5)),
        None,
    )
    assert get(store, "processing").status is RequestStatus.PROCESSING  # never back
    assert get(store, "final").status is RequestStatus.FAILED


def test_mark_processing_takes_a_queued_request(store: RecordStore):
    store.create_request(new_request())
    store.mark_queued("req-1", T0)

    store.mark_processing("req-1", after(2))
    store.mark_queued("req-1", after(3))  # a late queued changes nothing

    record = get(store)
    assert (record.status, record.started_at) == (RequestStatus.PROCESSING, ms(after(2)))


# -- request leases -------------------------------------------------------------
def test_claim_of_a_free_request_sets_the_lease(backend: Backend):
    store = backend.store
    store.create_request(new_request())

    assert store.claim_request("req-1", "api-a", T0, LEASE)

    for each in (store, backend.reopen()):
        record = get(each)
        assert (record.lease_owner, record.lease_expires_at, record.heartbeat_at) == (
            "api-a",
            ms(after(LEASE)),
            ms(T0),
        )
        assert record.lease_expires_at.utcoffset() == timedelta(0)
        assert record.status is RequestStatus.PENDING  # a claim is not a status change


def test_a_live_lease_of_another_owner_is_refused_until_it_expires(backend: Backend):
    store, other = backend.store, backend.reopen()
    store.create_request(new_request())
    assert store.claim_request("req-1", "api-a", T0, LEASE)

    assert not other.claim_request("req-1", "api-b", after(1), LEASE)
    assert not other.claim_request("req-1", "api-b", after(LEASE) - MS, LEASE)
    assert get(store).lease_owner == "api-a"

    assert other.claim_request("req-1", "api-b", after(LEASE), LEASE)  # expires_at <= now
    record = get(store)
    assert (record.lease_owner, record.lease_expires_at) == ("api-b", ms(after(2 * LEASE)))
    # The old owner does not get it back while the new lease lives.
    assert not store.claim_request("req-1", "api-a", after(LEASE + 1), LEASE)


def test_claim_after_expiry_and_by_the_owner_itself(backend: Backend):
    store = backend.store
    store.create_request(new_request())
    store.claim_request("req-1", "api-a", T0, LEASE)

    assert store.claim_request("req-1", "api-a", after(10), LEASE)  # own live lease: renewed
    assert get(store).lease_expires_at == ms(after(10 + LEASE))
    assert store.claim_request("req-1", "api-a", after(100), LEASE)  # own expired lease
    assert (get(store).lease_owner, get(store).heartbeat_at) == ("api-a", ms(after(100)))


def test_claim_of_a_final_request_is_refused(store: RecordStore):
    store.create_request(new_request())
    store.finish("req-1", RequestStatus.COMPLETED, T0, output_key="k")

    assert not store.claim_request("req-1", "api-a", T0, LEASE)
    assert get(store).lease_owner is None


def test_renew_leases_renews_only_the_owners_and_reports_lost_ones(backend: Backend):
    store, other = backend.store, backend.reopen()
    for name in ("live", "expired", "taken", "finished", "theirs"):
        store.create_request(new_request(name))
        store.claim_request(name, "api-b" if name == "theirs" else "api-a", T0, LEASE)
    other.claim_request("taken", "api-b", after(LEASE + 1), LEASE)  # api-a's had run out
    store.finish("finished", RequestStatus.FAILED, T0, error="e")

    asked = ["live", "expired", "taken", "finished", "theirs", "ghost"]
    held = store.renew_leases("api-a", asked, after(LEASE + 2), LEASE)

    # "expired" ran out, but nobody took it: still api-a's.
    assert held == {"live", "expired"}
    for name in ("live", "expired"):
        record = get(store, name)
        assert (record.lease_owner, record.lease_expires_at, record.heartbeat_at) == (
            "api-a",
            ms(after(2 * LEASE + 2)),
            ms(after(LEASE + 2)),
        )
    # Never stolen: the other owner's leases are as they were.
    assert (get(store, "taken").lease_owner, get(store, "taken").lease_expires_at) == (
        "api-b",
        ms(after(2 * LEASE + 1)),
    )
    assert (get(store, "theirs").lease_owner, get(store, "theirs").lease_expires_at) == (
        "api-b",
        ms(after(LEASE)),
    )
    assert store.renew_leases("api-a", [], T0, LEASE) == set()


def test_release_lets_another_owner_claim_at_once(backend: Backend):
    store, other = backend.store, backend.reopen()
    store.create_request(new_request())
    store.claim_request("req-1", "api-a", T0, LEASE)

    other.release_request("req-1", "api-b")  # not its lease: nothing happens
    assert not other.claim_request("req-1", "api-b", after(1), LEASE)

    store.release_request("req-1", "api-a")
    assert get(store).lease_owner is None
    assert other.claim_request("req-1", "api-b", after(1), LEASE)
    assert get(store).lease_owner == "api-b"


def test_claimable_requests_are_free_or_expired_unfinished_oldest_first(backend: Backend):
    store = backend.store
    names = ["held", "free", "expired", "done", "queued", "released", "own-expired-later"]
    for minutes, name in enumerate(names):
        store.create_request(new_request(name, created_at=T0 + timedelta(minutes=minutes)))
    store.claim_request("held", "api-b", after(5), LEASE)  # live until after(35)
    store.claim_request("expired", "api-b", T0, LEASE)  # expired at after(30)
    store.claim_request("released", "api-b", T0, LEASE)
    store.release_request("released", "api-b")
    store.claim_request("own-expired-later", "api-a", after(10), LEASE)  # until after(40)
    store.mark_queued("queued", T0)
    store.finish("done", RequestStatus.COMPLETED, T0, output_key="k")

    now = after(LEASE)
    assert store.claimable_requests(now) == ["free", "expired", "queued", "released"]
    assert backend.reopen().claimable_requests(now, limit=2) == ["free", "expired"]
    assert store.claimable_requests(after(100)) == [n for n in names if n != "done"]


def test_finish_with_owner_records_the_status_and_frees_the_lease(store: RecordStore):
    store.create_request(new_request())
    store.claim_request("req-1", "api-a", T0, LEASE)
    owed = delivery(after(60))

    done = store.finish(
        "req-1",
        RequestStatus.COMPLETED,
        after(60),
        output_key="out.csv",
        webhook=owed,
        owner="api-a",
    )

    record = get(store)
    assert done is True
    assert (record.status, record.output_key, record.completed_at, record.webhook) == (
        RequestStatus.COMPLETED,
        "out.csv",
        ms(after(60)),
        owed,
    )
    assert (record.lease_owner, record.lease_expires_at) == (None, None)


def test_finish_with_owner_after_its_own_lease_ran_out_still_wins(store: RecordStore):
    # Nobody took the request over, so the owner's result is the only one there is.
    store.create_request(new_request())
    store.claim_request("req-1", "api-a", T0, LEASE)

    assert store.finish("req-1", RequestStatus.FAILED, after(LEASE * 3), error="e", owner="api-a")
    assert get(store).status is RequestStatus.FAILED


def test_finish_with_owner_is_refused_once_another_owner_took_over(backend: Backend):
    store, other = backend.store, backend.reopen()
    store.create_request(new_request())
    store.claim_request("req-1", "api-a", T0, LEASE)
    store.set_webhook_state("req-1", {"status": "none"})
    other.claim_request("req-1", "api-b", after(LEASE), LEASE)
    before = get(store)

    refused = store.finish(
        "req-1",
        RequestStatus.COMPLETED,
        after(LEASE + 1),
        output_key="stale.csv",
        webhook=delivery(),
        owner="api-a",
    )

    assert refused is False
    assert get(store) == before  # nothing written: status, output, webhook, lease
    assert other.finish("req-1", RequestStatus.COMPLETED, after(LEASE + 2), owner="api-b")
    assert get(store).status is RequestStatus.COMPLETED


def test_finish_with_owner_is_refused_without_the_lease_or_on_a_final_request(
    store: RecordStore,
):
    store.create_request(new_request("unclaimed"))
    store.create_request(new_request("final"))
    store.claim_request("final", "api-a", T0, LEASE)
    store.finish("final", RequestStatus.FAILED, T0, error="first")  # no owner: unconditional
    unclaimed, final = get(store, "unclaimed"), get(store, "final")

    assert not store.finish("unclaimed", RequestStatus.FAILED, after(1), owner="api-a")
    assert not store.finish("final", RequestStatus.COMPLETED, after(1), owner="api-a")

    assert (get(store, "unclaimed"), get(store, "final")) == (unclaimed, final)


# -- delivery leases -------------------------------------------------------------
def test_claim_delivery_needs_a_pending_due_state(store: RecordStore):
    names = ["due", "due-no-fraction", "no-time", "later", "delivered", "none"]
    for name in names:
        store.create_request(new_request(name))
    store.set_webhook_state("due", delivery(T0))
    store.set_webhook_state("due-no-fraction", delivery(datetime(2024, 5, 1, 12, tzinfo=UTC)))
    store.set_webhook_state("no-time", delivery(None))
    store.set_webhook_state("later", delivery(after(1)))
    store.set_webhook_state("delivered", delivery(T0, status="delivered"))

    claimed = {name: store.claim_delivery(name, "api-a", T0, LEASE) for name in names}

    assert claimed == {
        "due": delivery(T0),  # due at exactly now, compared at millisecond precision
        "due-no-fraction": delivery(datetime(2024, 5, 1, 12, tzinfo=UTC)),
        "no-time": delivery(None),  # no time: due now, as Deliveries.resume reads it
        "later": None,
        "delivered": None,
        "none": None,
    }
    assert store.claim_delivery("later", "api-a", after(1), LEASE) == delivery(after(1))
    assert store.claim_delivery("ghost", "api-a", T0, LEASE) is None


def test_claim_delivery_compares_next_attempt_at_as_an_instant(store: RecordStore):
    store.create_request(new_request())
    # The same instant as after(1), written with another offset.
    store.set_webhook_state("req-1", delivery(after(1).astimezone(timezone(timedelta(hours=2)))))

    assert store.claim_delivery("req-1", "api-a", after(1) - MS, LEASE) is None
    assert store.claim_delivery("req-1", "api-a", after(1), LEASE) is not None


def test_claim_delivery_compares_at_millisecond_precision(store: RecordStore):
    # Due 0.5 ms after now, within the same millisecond: due, like every lease time.
    store.create_request(new_request())
    store.set_webhook_state("req-1", delivery(T0 + timedelta(microseconds=500)))

    assert store.claim_delivery("req-1", "api-a", T0, LEASE) is not None


def test_one_of_two_processes_gets_a_delivery_until_its_lease_expires(backend: Backend):
    store, other = backend.store, backend.reopen()
    store.create_request(new_request())
    store.set_webhook_state("req-1", delivery(T0))

    assert store.claim_delivery("req-1", "api-a", T0, LEASE) == delivery(T0)
    assert other.claim_delivery("req-1", "api-b", after(1), LEASE) is None
    assert other.claim_delivery("req-1", "api-b", after(LEASE) - MS, LEASE) is None
    # The holder may claim again (a retry of its own); the other after expiry.
    assert store.claim_delivery("req-1", "api-a", after(2), LEASE) == delivery(T0)
    assert other.claim_delivery("req-1", "api-b", after(2 + LEASE), LEASE) == delivery(T0)
    assert store.claim_delivery("req-1", "api-a", after(2 + LEASE), LEASE) is None


def test_set_webhook_state_by_the_holder_records_the_attempt_and_frees_the_lease(
    backend: Backend,
):
    store, other = backend.store, backend.reopen()
    store.create_request(new_request())
    store.set_webhook_state("req-1", delivery(T0))
    store.claim_delivery("req-1", "api-a", T0, LEASE)
    retry = delivery(after(5), attempt_count=1, attempts=[{"status_code": 503}])

    assert store.set_webhook_state("req-1", retry, owner="api-a")

    assert get(store).webhook == retry
    # Freed: the next attempt is anybody's once due, long before the old lease expired.
    assert other.claim_delivery("req-1", "api-b", after(5), LEASE) == retry
    assert not store.set_webhook_state("req-1", delivery(), owner="api-a")  # no longer held


def test_set_webhook_state_is_refused_for_a_process_without_the_lease(backend: Backend):
    store, other = backend.store, backend.reopen()
    store.create_request(new_request("claimed"))
    store.create_request(new_request("unclaimed"))
    for name in ("claimed", "unclaimed"):
        store.set_webhook_state(name, delivery(T0))
    store.claim_delivery("claimed", "api-a", T0, LEASE)

    assert not other.set_webhook_state("claimed", {"status": "delivered"}, owner="api-b")
    assert not other.set_webhook_state("unclaimed", {"status": "delivered"}, owner="api-b")

    assert get(store, "claimed").webhook == get(store, "unclaimed").webhook == delivery(T0)
    # The holder's lease is untouched by the refused write.
    assert other.claim_delivery("claimed", "api-b", after(1), LEASE) is None


def test_a_delivery_owed_by_finish_can_be_claimed(store: RecordStore):
    store.create_request(new_request())
    store.claim_request("req-1", "api-a", T0, LEASE)
    store.finish("req-1", RequestStatus.COMPLETED, T0, webhook=delivery(after(1)), owner="api-a")

    assert store.claim_delivery("req-1", "api-b", T0, LEASE) is None  # not due yet
    assert store.claim_delivery("req-1", "api-b", after(1), LEASE) == delivery(after(1))


# -- cancel --------------------------------------------------------------------
def test_request_cancel_marks_an_unfinished_request_the_first_time(store: RecordStore):
    store.create_request(new_request())
    store.create_request(new_request("final"))
    store.finish("final", RequestStatus.COMPLETED, T0, output_key="k")

    assert store.request_cancel("req-1", after(1))
    assert store.request_cancel("req-1", after(9))  # asked twice: still cancelling

    record = get(store)
    assert (record.cancel_requested_at, record.updated_at) == (ms(after(1)), ms(after(1)))
    assert record.status is RequestStatus.PENDING  # the driver decides when it stops
    assert not store.request_cancel("final", after(1))
    assert get(store, "final").cancel_requested_at is None


def test_cancel_requested_says_which_requests_have_one(backend: Backend):
    store = backend.store
    for name in ("asked", "running", "queued"):
        store.create_request(new_request(name))
    store.mark_queued("queued", T0)
    store.request_cancel("asked", T0)
    store.request_cancel("queued", T0)

    asked = ["asked", "running", "queued", "ghost"]
    assert backend.reopen().cancel_requested(asked) == {"asked", "queued"}
    assert store.cancel_requested([]) == set()


def test_cancel_pending_images_keeps_results_and_late_results_change_nothing(
    store: RecordStore,
):
    started(store)
    store.apply_results("req-1", [ok(0, 0), bad(0, 1)], T0)

    assert store.cancel_pending_images("req-1") == 4
    assert store.cancel_pending_images("req-1") == 0

    record = get(store)
    assert (record.processed_images, record.failed_images, record.cancelled_images) == (2, 1, 4)
    statuses = [i.status for i in store.list_images("req-1", 0, 3)]
    assert statuses == [ImageStatus.DONE, ImageStatus.FAILED] + [ImageStatus.CANCELLED] * 4
    assert store.pending_images("req-1") == []
    # A batch still running when the cancel came: its results are dropped.
    assert store.apply_results("req-1", [ok(1, 0), bad(2, 1)], after(1)) == Counters(2, 1, 4)
    cancelled = store.list_images("req-1", 1, 2)[0]
    assert (cancelled.status, cancelled.output_key) == (ImageStatus.CANCELLED, None)


def test_recount_counts_cancelled_images_apart(backend: Backend):
    store = backend.store
    started(store)
    store.apply_results("req-1", [ok(0, 0), bad(0, 1), ok(1, 0)], T0)
    store.cancel_pending_images("req-1")
    backend.set_counters("req-1", 40, 30)

    assert store.recount("req-1") == Counters(3, 1, 3)
    record = get(store)
    assert (record.processed_images, record.failed_images, record.cancelled_images) == (3, 1, 3)


# -- delete ----------------------------------------------------------------------
def test_delete_request_removes_a_final_request_and_its_images(backend: Backend):
    store = backend.store
    started(store, "gone")
    started(store, "kept")
    store.finish("gone", RequestStatus.COMPLETED, T0, output_key="k")

    assert store.delete_request("gone") is True

    for each in (store, backend.reopen()):
        assert each.get_request("gone") is None
        assert each.list_images("gone", 0, 10) == []
        assert list(each.iter_images("gone")) == []
        assert len(each.list_images("kept", 0, 10)) == 6
    with pytest.raises(RequestNotFound):
        store.delete_request("gone")
    started(store, "gone")  # the id is free again, with no image left behind
    assert store.pending_images("gone") == [(r, p) for r in range(3) for p in range(2)]


def test_delete_request_is_refused_while_unfinished(store: RecordStore):
    for name in ("pending", "queued", "processing"):
        started(store, name)
    store.mark_queued("queued", T0)
    store.mark_processing("processing", T0)

    for name in ("pending", "queued", "processing"):
        assert store.delete_request(name) is False
        assert get(store, name).status.value == name
        assert len(store.list_images(name, 0, 10)) == 6


# -- retention and listing -------------------------------------------------------
def test_expired_requests_are_final_ones_completed_before_oldest_first(store: RecordStore):
    finished = {"b": 3, "a": 1, "c": 2, "recent": 10}
    for name, minutes in finished.items():
        store.create_request(new_request(name))
        store.finish(name, RequestStatus.COMPLETED, T0 + timedelta(minutes=minutes))
    store.create_request(new_request("running"))
    store.mark_processing("running", T0)
    cutoff = T0 + timedelta(minutes=5)

    assert store.expired_requests(cutoff) == ["a", "c", "b"]
    assert store.expired_requests(cutoff, limit=2) == ["a", "c"]
    assert store.expired_requests(T0 + timedelta(minutes=1)) == []  # strictly before


def _listed(page) -> list[str]:
    return [r.request_id for r in page]


def test_list_requests_newest_first_in_pages_with_the_total(backend: Backend):
    store = backend.store
    # "b" and "c" share a created_at: the id breaks the tie, descending too.
    for name, minutes in [("a", 0), ("c", 1), ("b", 1), ("d", 2), ("e", 3)]:
        store.create_request(new_request(name, created_at=T0 + timedelta(minutes=minutes)))

    page, total = store.list_requests()
    assert (_listed(page), total) == (["e", "d", "c", "b", "a"], 5)
    page, total = backend.reopen().list_requests(offset=1, limit=2)
    assert (_listed(page), total) == (["d", "c"], 5)
    page, total = store.list_requests(offset=4, limit=2)
    assert (_listed(page), total) == (["a"], 5)
    assert store.list_requests(offset=9) == ([], 5)
    assert page[0] == get(store, "a")  # whole records, as get_request reads them


def test_list_requests_filters_by_owner_and_status(store: RecordStore):
    for minutes, (name, owner) in enumerate(
        [("k1", "key-1"), ("k2", "key-1"), ("other", "key-2"), ("open", None), ("k3", "key-1")]
    ):
        created = T0 + timedelta(minutes=minutes)
        store.create_request(new_request(name, created_at=created, owner=owner))
    store.finish("k2", RequestStatus.FAILED, T0, error="e")
    store.finish("other", RequestStatus.FAILED, T0, error="e")
    store.mark_queued("k3", T0)

    page, total = store.list_requests(owner="key-1")
    assert (_listed(page), total) == (["k3", "k2", "k1"], 3)
    page, total = store.list_requests(owner="key-1", limit=1)
    assert (_listed(page), total) == (["k3"], 3)
    page, total = store.list_requests(statuses=[RequestStatus.FAILED])
    assert (_listed(page), total) == (["other", "k2"], 2)
    unfinished = [RequestStatus.PENDING, RequestStatus.QUEUED]
    page, total = store.list_requests(owner="key-1", statuses=unfinished)
    assert (_listed(page), total) == (["k3", "k1"], 2)
    assert store.list_requests(owner="key-9") == ([], 0)
    page, total = store.list_requests(statuses=[RequestStatus.CANCELLED])
    assert (page, total) == ([], 0)


# -- concurrency -----------------------------------------------------------------
def test_concurrent_writers_add_and_count_each_image_once(concurrent_backend: Backend):
    """Driver threads add and apply overlapping batches while API threads read."""
    store = concurrent_backend.store
    rows = 60
    store.create_request(new_request(total_rows=rows, total_images=rows * 2))
    item_by_key = {(i.row, i.position): i for i in images(rows)}
    outcome = {k: ok(*k) if k[0] % 7 else bad(*k) for k in item_by_key}
    keys = list(outcome)
    # Each writer covers its own slice plus a random third of everything.
    rng = random.Random(11)
    writers = 6
    batches = [keys[n::writers] + rng.sample(keys, len(keys) // 3) for n in range(writers)]
    start, all_added = threading.Barrier(writers + 2), threading.Barrier(writers)
    added: list[int] = []
    seen_by_reader: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def write(batch: list[tuple[int, int]]) -> None:
        try:
            start.wait()
            added.append(store.add_images("req-1", [item_by_key[k] for k in batch]))
            all_added.wait()
            for n in range(0, len(batch), 7):
                store.apply_results("req-1", [outcome[k] for k in batch[n : n + 7]], T0)
        except BaseException as exc:
            errors.append(exc)
            all_added.abort()

    def read(seen: list[int]) -> None:
        try:
            start.wait()
            for _ in range(50):
                record = store.get_request("req-1")
                assert record is not None
                seen.append(record.processed_images)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    threads += [threading.Thread(target=read, args=(seen,)) for seen in seen_by_reader]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sum(added) == len(keys)  # every image was new to exactly one writer
    expected_failed = sum(1 for r in outcome.values() if not r.ok)
    record = store.get_request("req-1")
    assert record is not None
    assert (record.processed_images, record.failed_images) == (len(keys), expected_failed)
    assert store.recount("req-1") == Counters(len(keys), expected_failed)
    # A reader never sees counters go backwards or past the total.
    for seen in seen_by_reader:
        assert seen == sorted(seen) and seen[-1] <= len(keys)


def race(
    stores: list[RecordStore], contenders: int, names: list[str], claim
) -> dict[str, list[str]]:
    """`contenders` threads (spread over `stores`, as processes) claim each name at the
    same instant; returns who won each."""
    wins: dict[str, list[str]] = {name: [] for name in names}
    errors: list[BaseException] = []
    start = threading.Barrier(contenders)

    def contend(n: int) -> None:
        owner, mine = f"api-{n}", stores[n % len(stores)]
        try:
            for name in names:
                start.wait()
                if claim(mine, name, owner):
                    wins[name].append(owner)
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return wins


def test_processes_racing_for_one_request_have_one_winner(concurrent_backend: Backend):
    """Every API process polls claimable_requests; they see a new request at once."""
    store = concurrent_backend.store
    # Contenders spread over separate stores (processes) and threads of one store.
    stores = [store, concurrent_backend.reopen(), concurrent_backend.reopen()]
    names = [f"req-{n}" for n in range(5)]
    for name in names:
        store.create_request(new_request(name))

    wins = race(stores, 8, names, lambda s, name, owner: s.claim_request(name, owner, T0, LEASE))

    for name in names:
        assert len(wins[name]) == 1, (name, wins[name])
        assert get(store, name).lease_owner == wins[name][0]


def test_processes_racing_for_one_delivery_have_one_winner(concurrent_backend: Backend):
    store = concurrent_backend.store
    stores = [store, concurrent_backend.reopen()]
    names = [f"req-{n}" for n in range(4)]
    for name in names:
        store.create_request(new_request(name))
        store.set_webhook_state(name, delivery(T0))

    wins = race(
        stores,
        6,
        names,
        lambda s, name, owner: s.claim_delivery(name, owner, T0, LEASE) is not None,
    )

    assert all(len(winners) == 1 for winners in wins.values()), wins


# -- backend specifics -------------------------------------------------------------
def test_sqlite_refuses_an_in_memory_database():
    # Each thread has its own connection, so each would see its own empty database.
    with pytest.raises(ValueError, match="file"):
        SqliteRecordStore(":memory:")


def test_sqlite_store_is_unusable_after_close(tmp_path):
    store = SqliteRecordStore(tmp_path / "records.db")
    store.close()
    with pytest.raises(RecordStoreError):
        store.get_request("req-1")


def test_sqlite_store_closed_while_other_threads_write(tmp_path):
    # Shutdown with a webhook delivery or a driver thread still writing: their
    # writes end in RecordStoreError, never in a crash of the process.
    store = SqliteRecordStore(tmp_path / "records.db")
    store.create_request(new_request())
    errors: list[BaseException] = []
    writes = [0]

    def write_until_closed() -> None:
        while True:
            try:
                store.set_webhook_state("req-1", {"status": "pending", "n": writes[0]})
                writes[0] += 1
            except BaseException as exc:  # what a thread sees once the store is closed
                errors.append(exc)
                return

    threads = [threading.Thread(target=write_until_closed) for _ in range(4)]
    for t in threads:
        t.start()
    while writes[0] < 200:
        pass
    store.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 4 and all(isinstance(e, RecordStoreError) for e in errors), errors


# The first release's schema: no owner column, and a partial index for the
# unfinished requests whose predicate predates `queued`.
_FIRST_RELEASE = """
CREATE TABLE requests (
    request_id       TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    total_rows       INTEGER NOT NULL,
    total_images     INTEGER NOT NULL,
    processed_images INTEGER NOT NULL DEFAULT 0,
    failed_images    INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    started_at       TEXT,
    completed_at     TEXT,
    source_name      TEXT NOT NULL DEFAULT '',
    webhook_url      TEXT,
    output_key       TEXT,
    error            TEXT,
    webhook          TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX requests_unfinished ON requests (created_at, request_id)
    WHERE status IN ('pending', 'processing');
CREATE TABLE images (
    request_id   TEXT NOT NULL,
    row          INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    serial       TEXT NOT NULL,
    product_name TEXT NOT NULL,
    input_url    TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending',
    output_key   TEXT,
    error        TEXT,
    bytes_in     INTEGER,
    bytes_out    INTEGER,
    width        INTEGER,
    height       INTEGER,
    UNIQUE (request_id, row, position)
);
CREATE INDEX images_pending ON images (request_id, row, position) WHERE status = 'pending';
INSERT INTO requests (request_id, status, total_rows, total_images, processed_images,
                      created_at, updated_at, webhook)
VALUES ('old', 'processing', 1, 2, 1, '2024-05-01T12:00:00.123+00:00',
        '2024-05-01T12:00:00.123+00:00',
        '{"status": "pending", "next_attempt_at": "2024-05-01T12:00:00.123456Z"}');
INSERT INTO images (request_id, row, position, serial, product_name, input_url, status)
VALUES ('old', 0, 0, 'S', 'P', 'https://img.test/0/0.jpg', 'done'),
       ('old', 0, 1, 'S', 'P', 'https://img.test/0/1.jpg', 'pending');
"""
# The release with owners, before leases and cancels.
_WITH_OWNERS = _FIRST_RELEASE + "ALTER TABLE requests ADD COLUMN owner TEXT;"


@pytest.mark.parametrize("schema", [_FIRST_RELEASE, _WITH_OWNERS], ids=["first", "owners"])
def test_sqlite_opens_a_records_db_of_an_older_release(tmp_path, schema: str):
    path = tmp_path / "records.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(schema)
    conn.close()

    store = SqliteRecordStore(path)
    reopened = SqliteRecordStore(path)  # migrated now; opening again is harmless
    try:
        old = get(store, "old")
        assert (old.owner, old.status, old.total_images) == (None, RequestStatus.PROCESSING, 2)
        assert (old.cancelled_images, old.cancel_requested_at) == (0, None)
        assert (old.lease_owner, old.lease_expires_at, old.heartbeat_at) == (None, None, None)
        assert store.unfinished_requests() == ["old"]  # still resumed after the upgrade
        # Its lease is free: another process takes it, then its delivery.
        assert store.claimable_requests(T0) == ["old"]
        assert reopened.claim_request("old", "api-a", T0, LEASE)
        assert reopened.claim_delivery("old", "api-a", T0, LEASE) is not None
        assert store.request_cancel("old", T0)
        assert store.cancel_pending_images("old") == 1
        assert store.recount("old") == Counters(1, 0, 1)
        store.create_request(new_request("new", created_at=after(60), owner="3f0c9a1b2c3d4e5f"))
        store.mark_queued("new", T0)
        new = get(reopened, "new")
        assert (new.owner, new.status) == ("3f0c9a1b2c3d4e5f", RequestStatus.QUEUED)
        assert reopened.unfinished_requests() == ["old", "new"]
        assert _listed(store.list_requests(owner="3f0c9a1b2c3d4e5f")[0]) == ["new"]
    finally:
        store.close()
        reopened.close()
    with sqlite3.connect(path) as conn:
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "requests_unfinished" not in indexes  # its predicate would miss `queued`


def test_sqlite_finds_unfinished_requests_through_the_partial_index(tmp_path):
    # SQLite uses a partial index only when the query's predicate matches its text.
    path = tmp_path / "records.db"
    SqliteRecordStore(path).close()
    with sqlite3.connect(path) as conn:
        plans = [
            " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            for sql, params in [
                (f"SELECT request_id FROM requests WHERE {_UNFINISHED} ORDER BY created_at", ()),
                (
                    f"SELECT request_id FROM requests WHERE {_UNFINISHED}"
                    " AND (lease_owner IS NULL OR lease_expires_at <= ?) ORDER BY created_at",
                    ("2024",),
                ),
            ]
        ]
    conn.close()
    assert all("requests_unfinished_by_age" in plan for plan in plans), plans
    assert "'queued'" in _UNFINISHED


def test_sqlite_finds_pending_deliveries_through_the_partial_index(tmp_path):
    # Every process's sweep asks for them: no scan of every request each time.
    path = tmp_path / "records.db"
    SqliteRecordStore(path).close()
    with sqlite3.connect(path) as conn:
        query = f"SELECT request_id FROM requests WHERE {_PENDING_DELIVERY} ORDER BY created_at"
        plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
    conn.close()
    assert "requests_pending_delivery" in plan, plan


def test_mongodb_reads_a_request_stored_before_leases(mongodb_uri: str, mongodb_database: str):
    """A document as the first releases wrote it: none of the fields added since."""
    store = MongoRecordStore.from_uri(mongodb_uri, mongodb_database)
    client: MongoClient = MongoClient(mongodb_uri, tz_aware=True)
    try:
        client[mongodb_database]["requests"].insert_one(
            {
                "_id": "old",
                "status": "processing",
                "total_rows": 1,
                "total_images": 2,
                "processed_images": 1,
                "failed_images": 0,
                "created_at": T0,
                "updated_at": T0,
                "started_at": T0,
                "completed_at": None,
                "source_name": "",
                "webhook_url": None,
                "output_key": None,
                "error": None,
                "webhook": delivery(T0),
            }
        )
        store.add_images("old", images(1))

        old = get(store, "old")
        assert (old.owner, old.cancelled_images, old.cancel_requested_at) == (None, 0, None)
        assert (old.lease_owner, old.lease_expires_at, old.heartbeat_at) == (None, None, None)
        assert store.unfinished_requests() == store.claimable_requests(T0) == ["old"]
        assert store.claim_request("old", "api-a", T0, LEASE)
        assert store.claim_delivery("old", "api-a", T0, LEASE) == delivery(T0)
        assert store.cancel_requested(["old"]) == set()
        assert store.apply_results("old", [ok(0, 0)], T0) == Counters(2, 0, 0)
        assert store.list_requests() == ([get(store, "old")], 1)
    finally:
        store.close()
        client.close()


class _WriteAfterRead:
    """A collection that lets another process write right after each `find_one` (a
    stand-in for a Collection: everything else is passed on to the real one)."""

    def __init__(self, collection, write):
        self._collection, self._write = collection, write

    def find_one(self, *args, **kwargs):
        found = self._collection.find_one(*args, **kwargs)
        self._write()
        return found

    def __getattr__(self, name):
        return getattr(self._collection, name)


def test_mongodb_claim_delivery_misses_a_state_replaced_after_it_was_read(
    mongodb_uri: str, mongodb_database: str
):
    # The claim judges "due" on a read, then takes the lease with a conditional update;
    # a state another process wrote in between (a later retry) must not be claimed.
    store = MongoRecordStore.from_uri(mongodb_uri, mongodb_database)
    other = MongoRecordStore.from_uri(mongodb_uri, mongodb_database)
    try:
        store.create_request(new_request())
        store.set_webhook_state("req-1", delivery(T0))
        later = delivery(after(60), attempt_count=1)
        store.requests = cast(
            Collection,
            _WriteAfterRead(store.requests, lambda: other.set_webhook_state("req-1", later)),
        )

        assert store.claim_delivery("req-1", "api-a", T0, LEASE) is None

        assert get(other).webhook == later
        assert other.claim_delivery("req-1", "api-b", after(60), LEASE) == later  # still free
    finally:
        store.close()
        other.close()


def test_mongo_from_uri_wraps_connection_errors():
    # Port 1 on loopback refuses at once; nothing leaves the machine.
    with pytest.raises(RecordStoreError) as info:
        MongoRecordStore.from_uri("mongodb://127.0.0.1:1/", serverSelectionTimeoutMS=200)
    assert info.value.__cause__ is not None


def test_mongo_from_uri_wraps_a_malformed_uri():
    with pytest.raises(RecordStoreError):
        MongoRecordStore.from_uri("http://not-mongo")


def test_a_waiting_reason_is_kept_until_the_request_moves_or_finishes(store: RecordStore):
    started(store)
    store.note_waiting("req-1", "waiting for a backend: StorageError: disk full", T0)
    assert get(store, "req-1").waiting_reason == "waiting for a backend: StorageError: disk full"
    store.mark_processing("req-1", T0)
    assert get(store, "req-1").waiting_reason is None

    store.note_waiting("req-1", "waiting again", T0)
    store.finish("req-1", RequestStatus.COMPLETED, T0)
    assert get(store, "req-1").waiting_reason is None
    store.note_waiting("req-1", "too late", T0)  # a final request is left alone
    assert get(store, "req-1").waiting_reason is None
    with pytest.raises(RequestNotFound):
        store.note_waiting("nope", "x", T0)
