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

Leases are single-document conditional updates: the filter states the
condition (unfinished, lease free, expired or the caller's), so of several
processes racing for one request exactly one update matches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from pipeline.errors import RecordStoreError, RequestNotFound
from pipeline.models import (
    FINAL_STATUSES,
    UNFINISHED_STATUSES,
    Counters,
    ImageItem,
    ImageRecord,
    ImageResult,
    ImageStatus,
    NewRequest,
    ReasonCount,
    RequestRecord,
    RequestStatus,
)
from pipeline.options import OutputOptions
from pipeline.records.rules import aware_utc as _aware
from pipeline.records.rules import delivery_due, first_per_image, result_fields
from pipeline.records.rules import to_ms as _ms

log = logging.getLogger(__name__)
_DUPLICATE_KEY = 11000
_UNFINISHED = {"$in": [s.value for s in RequestStatus if s in UNFINISHED_STATUSES]}
_FINAL = {"$in": [s.value for s in RequestStatus if s in FINAL_STATUSES]}
_COUNTERS = {"_id": 0, "processed_images": 1, "failed_images": 1, "cancelled_images": 1}
_IMAGE_FIELDS = {"_id": 0, "request_id": 0}
_BY_POSITION = [("row", ASCENDING), ("position", ASCENDING)]
_OLDEST_FIRST = [("created_at", ASCENDING), ("_id", ASCENDING)]
_NEWEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]


@contextmanager
def _wrap_errors() -> Iterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise RecordStoreError(f"MongoDB record store failed: {exc}") from exc


class MongoRecordStore:
    """`RecordStore` on a pymongo `Database`."""

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
        # A request's failures counted by reason group from the index alone.
        self.images.create_index(
            [("request_id", ASCENDING), ("status", ASCENDING), ("reason_group", ASCENDING)],
            name="request_status_reason",
        )
        self.requests.create_index(
            [("status", ASCENDING), ("created_at", ASCENDING)], name="status_created_at"
        )
        # list_requests, newest first (read backwards): all requests, or one owner's.
        self.requests.create_index(_OLDEST_FIRST, name="created_at_id")
        self.requests.create_index(
            [("owner", ASCENDING), *_OLDEST_FIRST], name="owner_created_at_id"
        )
        self.requests.create_index(
            [("completed_at", ASCENDING), ("_id", ASCENDING)], name="completed_at_id"
        )
        # pending_deliveries: every process's sweep asks, every LEASE_SECONDS / 3.
        self.requests.create_index(
            [("webhook.status", ASCENDING), *_OLDEST_FIRST], name="webhook_status_created_at"
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
                "options": request.options.as_dict(),
                "cancelled_images": 0,
                "cancel_requested_at": None,
                "lease_owner": None,
                "lease_expires_at": None,
                "heartbeat_at": None,
                "delivery_owner": None,
                "delivery_expires_at": None,
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
        processing = {
            "status": RequestStatus.PROCESSING.value,
            "updated_at": at,
            "waiting_reason": None,
        }
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
    def note_waiting(self, request_id: str, reason: str, at: datetime) -> None:
        update = {"$set": {"waiting_reason": reason, "updated_at": _aware(at)}}
        query = {"_id": request_id, "status": _UNFINISHED}
        if not self.requests.update_one(query, update).matched_count:
            self._require(request_id)

    @_wrap_errors()
    def mark_queued(self, request_id: str, at: datetime) -> None:
        queued = {"status": RequestStatus.QUEUED.value, "updated_at": _aware(at)}
        pending = {"_id": request_id, "status": RequestStatus.PENDING.value}
        if not self.requests.update_one(pending, {"$set": queued}).matched_count:
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
        owner: str | None = None,
    ) -> bool:
        at = _aware(at)
        fields: dict[str, Any] = {
            "status": RequestStatus(status).value,
            "completed_at": at,
            "updated_at": at,
        }
        fields |= {"output_key": output_key, "error": error, "waiting_reason": None}
        if webhook is not None:
            fields["webhook"] = webhook  # one document update: both or neither
        query: dict[str, Any] = {"_id": request_id}
        if owner is not None:
            # The owner's own write wins even past expiry, as long as nobody took over.
            query |= {"status": _UNFINISHED, "lease_owner": owner}
            fields |= {"lease_owner": None, "lease_expires_at": None}
        if self.requests.update_one(query, {"$set": fields}).matched_count:
            return True
        self._require(request_id)
        return False

    @_wrap_errors()
    def set_webhook_state(
        self, request_id: str, state: dict[str, Any], *, owner: str | None = None
    ) -> bool:
        query: dict[str, Any] = {"_id": request_id}
        fields: dict[str, Any] = {"webhook": state}
        if owner is not None:
            query["delivery_owner"] = owner
            fields |= {"delivery_owner": None, "delivery_expires_at": None}
        if self.requests.update_one(query, {"$set": fields}).matched_count:
            return True
        self._require(request_id)
        return False

    @_wrap_errors()
    def claim_delivery(
        self, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> dict[str, Any] | None:
        now = _aware(now)
        doc = self.requests.find_one({"_id": request_id}, {"webhook": 1})
        state = dict(doc.get("webhook") or {}) if doc else {}
        due_text = state.get("next_attempt_at")
        if state.get("status") != "pending" or not delivery_due(due_text, now):
            return None
        # Compare-and-set on the state just judged due: if another process replaced it
        # meanwhile, nothing matches. The due time stays a fact of the state alone,
        # so states written before delivery leases existed are claimed the same way.
        claimed = self.requests.find_one_and_update(
            {
                "_id": request_id,
                "webhook.status": "pending",
                "webhook.next_attempt_at": due_text,
                "$or": _lease_free("delivery", now, owner),
            },
            {
                "$set": {
                    "delivery_owner": owner,
                    "delivery_expires_at": _ms(now + timedelta(seconds=lease_seconds)),
                }
            },
            projection={"webhook": 1},
            return_document=ReturnDocument.AFTER,
        )
        return None if claimed is None else dict(claimed["webhook"])

    @_wrap_errors()
    def pending_deliveries(self) -> list[tuple[str, dict[str, Any]]]:
        cursor = self.requests.find({"webhook.status": "pending"}, {"_id": 1, "webhook": 1})
        return [(doc["_id"], doc["webhook"]) for doc in cursor.sort(_OLDEST_FIRST)]

    @_wrap_errors()
    def unfinished_requests(self) -> list[str]:
        cursor = self.requests.find({"status": _UNFINISHED}, {"_id": 1})
        return [doc["_id"] for doc in cursor.sort(_OLDEST_FIRST)]

    # -- leases -----------------------------------------------------------------
    @_wrap_errors()
    def claim_request(
        self, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        now = _aware(now)
        claimed = self.requests.update_one(
            {"_id": request_id, "status": _UNFINISHED, "$or": _lease_free("lease", now, owner)},
            {"$set": _lease(owner, now, lease_seconds)},
        )
        if claimed.matched_count:
            return True
        self._require(request_id)
        return False

    @_wrap_errors()
    def renew_leases(
        self, owner: str, request_ids: Sequence[str], now: datetime, lease_seconds: float
    ) -> set[str]:
        if not request_ids:
            return set()
        now = _aware(now)
        # lease_owner = owner, expired or not: renewing never takes another's lease.
        mine = {"_id": {"$in": list(request_ids)}, "lease_owner": owner, "status": _UNFINISHED}
        self.requests.update_many(mine, {"$set": _lease(owner, now, lease_seconds)})
        return {doc["_id"] for doc in self.requests.find(mine, {"_id": 1})}

    @_wrap_errors()
    def release_request(self, request_id: str, owner: str) -> None:
        self.requests.update_one(
            {"_id": request_id, "lease_owner": owner},
            {"$set": {"lease_owner": None, "lease_expires_at": None}},
        )

    @_wrap_errors()
    def claimable_requests(self, now: datetime, limit: int = 100) -> list[str]:
        if limit <= 0:  # a MongoDB limit of 0 means no limit
            return []
        query = {"status": _UNFINISHED, "$or": _lease_free("lease", _aware(now))}
        cursor = self.requests.find(query, {"_id": 1}).sort(_OLDEST_FIRST).limit(limit)
        return [doc["_id"] for doc in cursor]

    # -- cancel, delete, list ---------------------------------------------------
    @_wrap_errors()
    def request_cancel(self, request_id: str, at: datetime) -> bool:
        at = _aware(at)
        first = self.requests.update_one(
            {"_id": request_id, "status": _UNFINISHED, "cancel_requested_at": None},
            {"$set": {"cancel_requested_at": at, "updated_at": at}},
        )
        if first.matched_count:
            return True
        if self.requests.find_one({"_id": request_id, "status": _UNFINISHED}, {"_id": 1}):
            return True  # asked before: the first time stands
        self._require(request_id)
        return False

    @_wrap_errors()
    def cancel_requested(self, request_ids: Sequence[str]) -> set[str]:
        if not request_ids:
            return set()
        query = {"_id": {"$in": list(request_ids)}, "cancel_requested_at": {"$ne": None}}
        return {doc["_id"] for doc in self.requests.find(query, {"_id": 1})}

    @_wrap_errors()
    def cancel_pending_images(self, request_id: str) -> int:
        self._require(request_id)
        # Same two steps as apply_results: only pending images change, then one $inc.
        cancelled = self.images.update_many(
            {"request_id": request_id, "status": ImageStatus.PENDING.value},
            {"$set": {"status": ImageStatus.CANCELLED.value}},
        ).modified_count
        if cancelled:
            self.requests.update_one({"_id": request_id}, {"$inc": {"cancelled_images": cancelled}})
        return cancelled

    @_wrap_errors()
    def delete_request(self, request_id: str) -> bool:
        doc = self.requests.find_one({"_id": request_id}, {"status": 1})
        if doc is None:
            raise RequestNotFound(request_id)
        if not RequestStatus(doc["status"]).is_final:
            return False
        # A final request never becomes unfinished again, so the check holds. Images go
        # first: a process dying in between leaves a request a retry deletes, never
        # images nothing points to.
        self.images.delete_many({"request_id": request_id})
        if not self.requests.delete_one({"_id": request_id, "status": _FINAL}).deleted_count:
            raise RequestNotFound(request_id)  # another process deleted it meanwhile
        return True

    @_wrap_errors()
    def expired_requests(self, completed_before: datetime, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        query = {"status": _FINAL, "completed_at": {"$lt": _aware(completed_before)}}
        cursor = self.requests.find(query, {"_id": 1})
        ordered = cursor.sort([("completed_at", ASCENDING), ("_id", ASCENDING)]).limit(limit)
        return [doc["_id"] for doc in ordered]

    @_wrap_errors()
    def list_requests(
        self,
        *,
        owner: str | None = None,
        statuses: Sequence[RequestStatus] = (),
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[RequestRecord], int]:
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner"] = owner
        if statuses:
            query["status"] = {"$in": list(dict.fromkeys(RequestStatus(s).value for s in statuses))}
        total = self.requests.count_documents(query)
        if limit <= 0:
            return [], total
        cursor = self.requests.find(query).sort(_NEWEST_FIRST).skip(max(offset, 0)).limit(limit)
        return [_request_record(doc) for doc in cursor], total

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
                "line": i.line or None,
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
        unique = first_per_image(results)
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
        return _counters(doc)

    @_wrap_errors()
    def list_images(self, request_id: str, row_start: int, row_end: int) -> list[ImageRecord]:
        query = {"request_id": request_id, "row": {"$gte": row_start, "$lt": row_end}}
        return [_image_record(d) for d in self.images.find(query, _IMAGE_FIELDS).sort(_BY_POSITION)]

    def iter_images(
        self, request_id: str, batch_size: int = 5000, status: ImageStatus | None = None
    ) -> Iterator[ImageRecord]:
        # One cursor, read in server batches of batch_size along the unique index.
        with _wrap_errors():
            cursor = self.images.find(_images_query(request_id, status), _IMAGE_FIELDS)
            try:
                for doc in cursor.sort(_BY_POSITION).batch_size(batch_size):
                    yield _image_record(doc)
            finally:
                cursor.close()

    @_wrap_errors()
    def images_with_status(
        self, request_id: str, status: ImageStatus | None, offset: int, limit: int
    ) -> list[ImageRecord]:
        cursor = (
            self.images.find(_images_query(request_id, status), _IMAGE_FIELDS)
            .sort(_BY_POSITION)
            .skip(offset)
            .limit(limit)
        )
        return [_image_record(d) for d in cursor]

    @_wrap_errors()
    def failure_summary(self, request_id: str, limit: int = 20) -> list[ReasonCount]:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"request_id": request_id, "status": ImageStatus.FAILED.value}},
            {
                "$group": {
                    # Images failed before groups were stored group by their reason.
                    "_id": {"$ifNull": ["$reason_group", {"$ifNull": ["$error", ""]}]},
                    "n": {"$sum": 1},
                    "example": {"$min": "$error"},
                }
            },
            {"$sort": {"n": -1, "_id": 1}},
            {"$limit": limit},
        ]
        return [
            ReasonCount(d["_id"], d["n"], d.get("example") or "")
            for d in self.images.aggregate(pipeline)
        ]

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
        cancelled = by_status.get(ImageStatus.CANCELLED.value, 0)
        counters = {
            "processed_images": processed,
            "failed_images": failed,
            "cancelled_images": cancelled,
        }
        doc = self.requests.find_one_and_update(
            {"_id": request_id},
            {"$set": counters},
            projection=_COUNTERS,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise RequestNotFound(request_id)
        return _counters(doc)

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
                {"$set": result_fields(r)},
            )
            for r in results
        ]
        try:
            return self.images.bulk_write(ops, ordered=False).modified_count, None
        except BulkWriteError as exc:
            return int(exc.details.get("nModified", 0)), exc


def _counters(doc: Mapping[str, Any]) -> Counters:
    # .get: documents written before cancels existed have no cancelled_images.
    return Counters(doc["processed_images"], doc["failed_images"], doc.get("cancelled_images", 0))


def _lease(owner: str, now: datetime, lease_seconds: float) -> dict[str, Any]:
    expires = _ms(now + timedelta(seconds=lease_seconds))
    return {"lease_owner": owner, "lease_expires_at": expires, "heartbeat_at": _ms(now)}


def _lease_free(kind: str, now: datetime, owner: str | None = None) -> list[dict[str, Any]]:
    """`$or` clauses: the `kind` lease ("lease" or "delivery") is free, expired or owner's.

    `{field: None}` also matches a missing field: documents from before leases are free.
    """
    owner_field, expires_field = f"{kind}_owner", f"{kind}_expires_at"
    clauses: list[dict[str, Any]] = [
        {owner_field: None},
        {expires_field: None},
        {expires_field: {"$lte": _ms(now)}},
    ]
    if owner is not None:
        clauses.append({owner_field: owner})
    return clauses


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
        # .get: documents written before these fields existed have none of them.
        owner=doc.get("owner"),
        cancelled_images=doc.get("cancelled_images", 0),
        cancel_requested_at=_utc_or_none(doc.get("cancel_requested_at")),
        lease_owner=doc.get("lease_owner"),
        lease_expires_at=_utc_or_none(doc.get("lease_expires_at")),
        heartbeat_at=_utc_or_none(doc.get("heartbeat_at")),
        waiting_reason=doc.get("waiting_reason"),
        options=OutputOptions.from_dict(doc["options"]) if doc.get("options") else None,
    )


def _images_query(request_id: str, status: ImageStatus | None) -> dict[str, Any]:
    query: dict[str, Any] = {"request_id": request_id}
    if status is not None:
        query["status"] = status.value
    return query


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
        line=doc.get("line"),
    )
