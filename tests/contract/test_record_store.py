"""The record store contract: what the API and the Dask driver rely on.

Every test here runs against each backend of the `backend` fixture (SQLite,
mongomock, and a real MongoDB when MONGODB_URI is set); see conftest.py.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import mongomock
import pytest
from pymongo import UpdateOne

from pipeline.errors import RecordStoreError, RequestNotFound
from pipeline.models import (
    Counters,
    ImageItem,
    ImageRecord,
    ImageResult,
    ImageStatus,
    NewRequest,
    RequestStatus,
)
from pipeline.records import MongoRecordStore, RecordStore, SqliteRecordStore

if TYPE_CHECKING:  # conftest is pytest's to import; only its type is borrowed here
    from tests.contract.conftest import Backend

# Microseconds on purpose: both backends keep milliseconds (BSON's precision).
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


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

    store.finish("done", RequestStatus.COMPLETED_WITH_ERRORS, at, output_key="out/done.csv")
    store.finish("broken", RequestStatus.FAILED, at, error="OSError: disk full")

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
    for name, minutes in [("c", 3), ("a", 1), ("final", 0), ("b", 2), ("failed", 4)]:
        store.create_request(new_request(name, created_at=T0 + timedelta(minutes=minutes)))
    store.mark_processing("b", T0)
    store.finish("final", RequestStatus.COMPLETED, T0, output_key="k")
    store.finish("failed", RequestStatus.FAILED, T0, error="e")

    assert store.unfinished_requests() == ["a", "b", "c"]
    # What a restarted process sees, and resumes.
    assert backend.reopen().unfinished_requests() == ["a", "b", "c"]


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
    ],
    ids=["mark_processing", "add_images", "apply_results", "finish", "webhook", "recount"],
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


def test_pending_images_are_those_without_a_result_in_order(store: RecordStore):
    started(store)
    assert store.pending_images("req-1") == [(r, p) for r in range(3) for p in range(2)]

    store.apply_results("req-1", [ok(0, 1), bad(1, 0), ok(2, 0), ok(2, 1)], T0)

    assert store.pending_images("req-1") == [(0, 0), (1, 1)]
    assert store.pending_images("no-such-id") == []


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


# `requests` as the first release created it, before the owner column.
_REQUESTS_BEFORE_OWNER = """
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
INSERT INTO requests (request_id, status, total_rows, total_images, created_at, updated_at)
VALUES ('old', 'processing', 3, 6, '2024-05-01T12:00:00.123+00:00',
        '2024-05-01T12:00:00.123+00:00');
"""


def test_sqlite_opens_a_records_db_from_before_owners(tmp_path):
    path = tmp_path / "records.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_REQUESTS_BEFORE_OWNER)
    conn.close()

    store = SqliteRecordStore(path)
    reopened = SqliteRecordStore(path)  # the column exists now; opening again is harmless
    try:
        old = store.get_request("old")
        assert old is not None
        assert (old.owner, old.status, old.total_images) == (None, RequestStatus.PROCESSING, 6)
        assert store.unfinished_requests() == ["old"]  # still resumed after the upgrade
        store.create_request(new_request("new", owner="3f0c9a1b2c3d4e5f"))
        new = reopened.get_request("new")
        assert new is not None and new.owner == "3f0c9a1b2c3d4e5f"
    finally:
        store.close()
        reopened.close()


def test_mongo_reads_a_request_stored_before_owners():
    database = mongomock.MongoClient()["imagepipe"]
    store = MongoRecordStore(database)
    store.create_request(new_request("old"))
    database["requests"].update_one({"_id": "old"}, {"$unset": {"owner": ""}})

    old = store.get_request("old")

    assert old is not None and old.owner is None


def test_mongo_from_uri_wraps_connection_errors():
    # Port 1 on loopback refuses at once; nothing leaves the machine.
    with pytest.raises(RecordStoreError) as info:
        MongoRecordStore.from_uri("mongodb://127.0.0.1:1/", serverSelectionTimeoutMS=200)
    assert info.value.__cause__ is not None


def test_mongo_from_uri_wraps_a_malformed_uri():
    with pytest.raises(RecordStoreError):
        MongoRecordStore.from_uri("http://not-mongo")


def test_mongomock_shim_passes_the_default_sort_and_refuses_a_real_one(mongomock_bulk_shim):
    collection = mongomock.MongoClient()["shim"]["images"]
    collection.insert_one({"row": 1})

    builder = mongomock_bulk_shim(collection, ordered=False)
    UpdateOne({"row": 1}, {"$set": {"x": 1}})._add_to_bulk(builder)
    assert builder.execute()["nModified"] == 1

    with pytest.raises(NotImplementedError, match="sort"):
        UpdateOne({}, {"$set": {"x": 2}}, sort={"row": 1})._add_to_bulk(builder)
