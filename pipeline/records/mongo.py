"""The MongoDB record store, used when MONGODB_URI is set.

Collections: `requests` (one document per request, `_id` = request_id, with
its counters) and `images` (one document per image, unique on
request_id/row/position). pymongo is thread-safe, so one store serves every
API and driver thread.

MongoDB has no multi-document transaction on a standalone server, so
`apply_results` is "update pending images, then one `$inc` by what changed".
Each image update is atomic with its `status: pending` filter, so a retried or
concurrent batch still counts every image once; only a process dying between
the two steps can leave the counters low, and `recount` (which the runner calls
before finishing a request) repairs that.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from pipeline.errors import RecordStoreError, RequestNotFound
from pipeline.models import (
    Counters,
    ImageItem,
    ImageRecord,
    ImageResult,
    ImageStatus,
    NewRequest,
    RequestRecord,
    RequestStatus,
)

_DUPLICATE_KEY = 11000
_UNFINISHED = {"$in": [RequestStatus.PENDING.value, RequestStatus.PROCESSING.value]}
_COUNTERS = {"_id": 0, "processed_images": 1, "failed_images": 1}
_IMAGE_FIELDS = {"_id": 0, "request_id": 0}
_BY_POSITION = [("row", ASCENDING), ("position", ASCENDING)]


@contextmanager
def _wrap_errors() -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise RecordStoreError(f"MongoDB record store failed: {exc}") from exc


class MongoRecordStore:
    """`RecordStore` on a pymongo `Database` (tests pass a mongomock one)."""

    def __init__(self, database: Database, *, close_client: bool = False):
        self.database = database
        self.requests = database["requests"]
        self.images = database["images"]
        self._close_client = close_client
        self.ensure_indexes()

    @classmethod
    def from_uri(
        cls, uri: str, db_name: str = "imagepipe", **client_options: Any
    ) -> MongoRecordStore:
        """Connect to a real server; the store owns the client and closes it."""
        with _wrap_errors():
            client: MongoClient = MongoClient(uri, tz_aware=True, **client_options)
        try:
            return cls(client[db_name], close_client=True)
        except BaseException:
            client.close()
            raise

    @_wrap_errors()
    def ensure_indexes(self) -> None:
        """Idempotent; called on construction."""
        self.images.create_index(
            [("request_id", ASCENDING), *_BY_POSITION], unique=True, name="request_row_position"
        )
        # (row, position) after status lets pending_images read in order without a sort.
        self.images.create_index(
            [("request_id", ASCENDING), ("status", ASCENDING), *_BY_POSITION],
            name="request_status",
        )
        self.requests.create_index(
            [("status", ASCENDING), ("created_at", ASCENDING)], name="status_created_at"
        )

    # -- requests -------------------------------------------------------------
    @_wrap_errors()
    def create_request(self, request: NewRequest) -> None:
        created = _aware(request.created_at)
        self.requests.insert_one(
            {
                "_id": request.request_id,
                "status": RequestStatus.PENDING.value,
                "total_rows": request.total_rows,
                "total_images": request.total_images,
                "processed_images": 0,
                "failed_images": 0,
                "created_at": created,
                "updated_at": created,
                "started_at": None,
                "completed_at": None,
                "source_name": request.source_name,
                "webhook_url": request.webhook_url,
                "output_key": None,
                "error": None,
                "webhook": {},
                "owner": request.owner,
            }
        )

    @_wrap_errors()
    def get_request(self, request_id: str) -> RequestRecord | None:
        doc = self.requests.find_one({"_id": request_id})
        return None if doc is None else _request_record(doc)

    @_wrap_errors()
    def mark_processing(self, request_id: str, at: datetime) -> None:
        # Two single-document updates instead of one pipeline update: each is atomic and
        # idempotent, the first one to run sets started_at, and a final request is left alone.
        at = _aware(at)
        processing = {"status": RequestStatus.PROCESSING.value, "updated_at": at}
        first = self.requests.update_one(
            {"_id": request_id, "status": _UNFINISHED, "started_at": None},
            {"$set": {**processing, "started_at": at}},
        )
        if first.matched_count:
            return
        again = self.requests.update_one(
            {"_id": request_id, "status": _UNFINISHED}, {"$set": processing}
        )
        if not again.matched_count:
            self._require(request_id)

    @_wrap_errors()
    def finish(
        self,
        request_id: str,
        status: RequestStatus,
        at: datetime,
        *,
        output_key: str | None = None,
        error: str | None = None,
        webhook: dict[str, Any] | None = None,
    ) -> None:
        at = _aware(at)
        fields = {"status": RequestStatus(status).value, "completed_at": at, "updated_at": at}
        fields |= {"output_key": output_key, "error": error}
        if webhook is not None:
            fields["webhook"] = webhook  # one document update: both or neither
        if not self.requests.update_one({"_id": request_id}, {"$set": fields}).matched_count:
            raise RequestNotFound(request_id)

    @_wrap_errors()
    def set_webhook_state(self, request_id: str, state: dict[str, Any]) -> None:
        update = {"$set": {"webhook": state}}
        if not self.requests.update_one({"_id": request_id}, update).matched_count:
            raise RequestNotFound(request_id)

    @_wrap_errors()
    def pending_deliveries(self) -> list[tuple[str, dict[str, Any]]]:
        cursor = self.requests.find({"webhook.status": "pending"}, {"_id": 1, "webhook": 1})
        ordered = cursor.sort([("created_at", ASCENDING), ("_id", ASCENDING)])
        return [(doc["_id"], doc["webhook"]) for doc in ordered]

    @_wrap_errors()
    def unfinished_requests(self) -> list[str]:
        cursor = self.requests.find({"status": _UNFINISHED}, {"_id": 1})
        return [doc["_id"] for doc in cursor.sort([("created_at", ASCENDING), ("_id", ASCENDING)])]

    # -- images ---------------------------------------------------------------
    @_wrap_errors()
    def add_images(self, request_id: str, items: Sequence[ImageItem]) -> int:
        self._require(request_id)
        if not items:
            return 0
        docs = [
            {
                "request_id": request_id,
                "row": i.row,
                "position": i.position,
                "serial": i.serial,
                "product_name": i.product_name,
                "input_url": i.input_url,
                "status": ImageStatus.PENDING.value,
            }
            for i in items
        ]
        try:
            return len(self.images.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            # Duplicates are images recorded already (a resumed request): that is the point.
            details = exc.details
            others = [e for e in details.get("writeErrors", []) if e.get("code") != _DUPLICATE_KEY]
            if others or details.get("writeConcernErrors"):
                raise RecordStoreError(f"MongoDB record store failed: {exc}") from exc
            return int(details.get("nInserted", 0))

    @_wrap_errors()
    def apply_results(
        self, request_id: str, results: Sequence[ImageResult], at: datetime
    ) -> Counters:
        at = _aware(at)
        unique = _first_per_image(results)
        # Successes and failures go in separate bulks so each modified count says how
        # many of that kind actually left `pending`.
        succeeded, ok_error = self._update_pending(request_id, [r for r in unique if r.ok])
        failed, failed_error = self._update_pending(request_id, [r for r in unique if not r.ok])
        if succeeded or failed:
            doc = self.requests.find_one_and_update(
                {"_id": request_id},
                {
                    "$inc": {"processed_images": succeeded + failed, "failed_images": failed},
                    "$set": {"updated_at": at},
                },
                projection=_COUNTERS,
                return_document=ReturnDocument.AFTER,
            )
        else:
            doc = self.requests.find_one({"_id": request_id}, _COUNTERS)
        # Raised only now, so the images a partly failed bulk did change are still counted.
        if ok_error or failed_error:
            error = ok_error or failed_error
            raise RecordStoreError(f"MongoDB record store failed: {error}") from error
        if doc is None:
            raise RequestNotFound(request_id)
        return Counters(doc["processed_images"], doc["failed_images"])

    @_wrap_errors()
    def list_images(self, request_id: str, row_start: int, row_end: int) -> list[ImageRecord]:
        query = {"request_id": request_id, "row": {"$gte": row_start, "$lt": row_end}}
        return [_image_record(d) for d in self.images.find(query, _IMAGE_FIELDS).sort(_BY_POSITION)]

    def iter_images(self, request_id: str, batch_size: int = 5000) -> Iterator[ImageRecord]:
        # One cursor, read in server batches of batch_size along the unique index.
        with _wrap_errors():
            cursor = self.images.find({"request_id": request_id}, _IMAGE_FIELDS)
            try:
                for doc in cursor.sort(_BY_POSITION).batch_size(batch_size):
                    yield _image_record(doc)
            finally:
                cursor.close()

    @_wrap_errors()
    def pending_images(self, request_id: str) -> list[tuple[int, int]]:
        query = {"request_id": request_id, "status": ImageStatus.PENDING.value}
        cursor = self.images.find(query, {"_id": 0, "row": 1, "position": 1}).sort(_BY_POSITION)
        return [(doc["row"], doc["position"]) for doc in cursor]

    @_wrap_errors()
    def recount(self, request_id: str) -> Counters:
        by_status = {
            doc["_id"]: doc["n"]
            for doc in self.images.aggregate(
                [
                    {"$match": {"request_id": request_id}},
                    {"$group": {"_id": "$status", "n": {"$sum": 1}}},
                ]
            )
        }
        failed = by_status.get(ImageStatus.FAILED.value, 0)
        processed = by_status.get(ImageStatus.DONE.value, 0) + failed
        doc = self.requests.find_one_and_update(
            {"_id": request_id},
            {"$set": {"processed_images": processed, "failed_images": failed}},
            projection=_COUNTERS,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise RequestNotFound(request_id)
        return Counters(doc["processed_images"], doc["failed_images"])

    def close(self) -> None:
        if self._close_client:
            self.database.client.close()

    # -- plumbing -------------------------------------------------------------
    def _require(self, request_id: str) -> None:
        if self.requests.find_one({"_id": request_id}, {"_id": 1}) is None:
            raise RequestNotFound(request_id)

    def _update_pending(
        self, request_id: str, results: list[ImageResult]
    ) -> tuple[int, BulkWriteError | None]:
        """Record results on images still pending; returns how many changed."""
        if not results:
            return 0, None
        ops = [
            UpdateOne(
                {
                    "request_id": request_id,
                    "row": r.row,
                    "position": r.position,
                    "status": ImageStatus.PENDING.value,
                },
                {"$set": _result_fields(r)},
            )
            for r in results
        ]
        try:
            return self.images.bulk_write(ops, ordered=False).modified_count, None
        except BulkWriteError as exc:
            return int(exc.details.get("nModified", 0)), exc


def _result_fields(result: ImageResult) -> dict[str, Any]:
    return {
        "status": (ImageStatus.DONE if result.ok else ImageStatus.FAILED).value,
        "output_key": result.output_key,
        "error": result.error,
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "width": result.width,
        "height": result.height,
    }


def _first_per_image(results: Sequence[ImageResult]) -> list[ImageResult]:
    """Keep the first result of each image, so a batch with duplicates counts once."""
    return list({(r.row, r.position): r for r in reversed(results)}.values())


def _aware(at: datetime) -> datetime:
    # pymongo would silently read a naive datetime as UTC; refuse it like the SQLite store.
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: pass a timezone-aware UTC datetime")
    return at.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    """Aware UTC whatever the client returns (naive unless built with tz_aware=True)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _request_record(doc: Mapping[str, Any]) -> RequestRecord:
    return RequestRecord(
        request_id=doc["_id"],
        status=RequestStatus(doc["status"]),
        total_rows=doc["total_rows"],
        total_images=doc["total_images"],
        processed_images=doc["processed_images"],
        failed_images=doc["failed_images"],
        created_at=_utc(doc["created_at"]),
        updated_at=_utc(doc["updated_at"]),
        started_at=_utc_or_none(doc.get("started_at")),
        completed_at=_utc_or_none(doc.get("completed_at")),
        source_name=doc.get("source_name", ""),
        webhook_url=doc.get("webhook_url"),
        output_key=doc.get("output_key"),
        error=doc.get("error"),
        webhook=dict(doc.get("webhook") or {}),
        # .get: documents written before owners existed have no such field.
        owner=doc.get("owner"),
    )


def _image_record(doc: Mapping[str, Any]) -> ImageRecord:
    return ImageRecord(
        row=doc["row"],
        position=doc["position"],
        serial=doc["serial"],
        product_name=doc["product_name"],
        input_url=doc["input_url"],
        status=ImageStatus(doc["status"]),
        output_key=doc.get("output_key"),
        error=doc.get("error"),
        bytes_in=doc.get("bytes_in"),
        bytes_out=doc.get("bytes_out"),
        width=doc.get("width"),
        height=doc.get("height"),
    )
