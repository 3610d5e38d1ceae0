"""The embedded record store: one SQLite file, safe to share between threads.

waitress API threads read while Dask driver threads write, so every thread
gets its own connection (`threading.local`); WAL mode lets those readers run
while a writer holds the lock, and `busy_timeout` makes writers queue instead
of failing. Every write is one explicit `BEGIN IMMEDIATE` transaction, taken
before the first read, so no two writers interleave their read-then-write:
that is also what makes a lease claim atomic between processes sharing the file.

Timestamps are ISO-8601 UTC text of fixed width with millisecond precision
(the same precision MongoDB keeps), so they sort and compare as text and both
backends return equal values.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from pipeline.records.rules import aware_utc, delivery_due, first_per_image, result_fields

log = logging.getLogger(__name__)
CLOSE_WAIT = 10.0  # seconds close() waits for a thread's statement to finish


def _status_in(statuses: frozenset[RequestStatus]) -> str:
    # Enum order, so the text is the same on every run.
    quoted = ", ".join(f"'{s.value}'" for s in RequestStatus if s in statuses)
    return f"status IN ({quoted})"


# The predicate must match the partial index's text for SQLite to use it.
_UNFINISHED = _status_in(UNFINISHED_STATUSES)
_FINAL = _status_in(FINAL_STATUSES)
# A lease nobody holds, or one that ran out (`:now` is the caller's clock).
_REQUEST_LEASE_FREE = (
    "(lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= :now)"
)
_BATCH = 500  # ids per IN (...): well under SQLite's bound-parameter limit

_TABLES = (
    """CREATE TABLE IF NOT EXISTS requests (
    request_id          TEXT PRIMARY KEY,
    status              TEXT NOT NULL,
    total_rows          INTEGER NOT NULL,
    total_images        INTEGER NOT NULL,
    processed_images    INTEGER NOT NULL DEFAULT 0,
    failed_images       INTEGER NOT NULL DEFAULT 0,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    started_at          TEXT,
    completed_at        TEXT,
    source_name         TEXT NOT NULL DEFAULT '',
    webhook_url         TEXT,
    output_key          TEXT,
    error               TEXT,
    webhook             TEXT NOT NULL DEFAULT '{}',
    owner               TEXT,
    cancelled_images    INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at TEXT,
    lease_owner         TEXT,
    lease_expires_at    TEXT,
    heartbeat_at        TEXT,
    delivery_owner      TEXT,
    delivery_expires_at TEXT
)""",
    """CREATE TABLE IF NOT EXISTS images (
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
)""",
)
# Columns added after the first release: CREATE TABLE IF NOT EXISTS leaves an older
# records.db as it was, so they are added on open (NULL or the default in its rows).
_ADDED_REQUEST_COLUMNS = (
    ("owner", "TEXT"),
    ("cancelled_images", "INTEGER NOT NULL DEFAULT 0"),
    ("cancel_requested_at", "TEXT"),
    ("lease_owner", "TEXT"),
    ("lease_expires_at", "TEXT"),
    ("heartbeat_at", "TEXT"),
    ("delivery_owner", "TEXT"),
    ("delivery_expires_at", "TEXT"),
    ("waiting_reason", "TEXT"),
    ("options", "TEXT"),  # JSON of OutputOptions; NULL for requests from before them
)
# The predicate must match the partial index's text for SQLite to use it.
_PENDING_DELIVERY = "json_extract(webhook, '$.status') = 'pending'"
# Indexes whose definition changed: an older file still has them under these names.
_DROPPED_INDEXES = ("requests_unfinished",)  # its predicate left out `queued`
# Created after the added columns, since some of them index those columns.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS requests_unfinished_by_age ON requests"
    f" (created_at, request_id) WHERE {_UNFINISHED}",
    # list_requests, newest first: all requests, or one owner's.
    "CREATE INDEX IF NOT EXISTS requests_created ON requests (created_at, request_id)",
    "CREATE INDEX IF NOT EXISTS requests_owner_created ON requests (owner, created_at, request_id)",
    "CREATE INDEX IF NOT EXISTS requests_completed ON requests (completed_at, request_id)"
    " WHERE completed_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS requests_pending_delivery ON requests (created_at, request_id)"
    f" WHERE {_PENDING_DELIVERY}",
    "CREATE INDEX IF NOT EXISTS images_pending ON images (request_id, row, position)"
    " WHERE status = 'pending'",
    # A request's failures: counted by reason group, listed in order.
    "CREATE INDEX IF NOT EXISTS images_failed ON images"
    " (request_id, reason_group, row, position) WHERE status = 'failed'",
    "CREATE INDEX IF NOT EXISTS images_status ON images (request_id, status, row, position)",
)
_ADDED_IMAGE_COLUMNS = (
    ("line", "INTEGER"),  # NULL for images recorded before lines were kept
    ("reason_group", "TEXT"),
)
_IMAGE_COLUMNS = (
    "row, position, serial, product_name, input_url, status,"
    " output_key, error, bytes_in, bytes_out, width, height, line"
)


class SqliteRecordStore:
    """`RecordStore` on a SQLite file. It must be a file: with a connection per thread,
    ":memory:" would give every thread its own empty database."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0):
        if str(path) in ("", ":memory:"):
            raise ValueError(
                "SqliteRecordStore needs a file path, not a private temporary database"
            )
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        # (thread, its connection, held while that thread uses the connection)
        self._connections: list[tuple[threading.Thread, sqlite3.Connection, threading.RLock]] = []
        self._closed = False
        # (device, inode) of the file opened here; set by the first connection.
        self._identity: tuple[int, int] | None = None
        with _wrap_errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            # journal_mode is persistent in the file, so setting it once is enough.
            conn.execute("PRAGMA journal_mode=WAL")
            _migrate(conn)

    # -- requests -------------------------------------------------------------
    def create_request(self, request: NewRequest) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO requests (request_id, status, total_rows, total_images,"
                " created_at, updated_at, source_name, webhook_url, owner, options)"
                " VALUES (:id, 'pending', :rows, :images, :at, :at, :source, :webhook_url,"
                " :owner, :options)",
                {
                    "id": request.request_id,
                    "rows": request.total_rows,
                    "images": request.total_images,
                    "at": _ts(request.created_at),
                    "source": request.source_name,
                    "webhook_url": request.webhook_url,
                    "owner": request.owner,
                    "options": json.dumps(request.options.as_dict()),
                },
            )

    def get_request(self, request_id: str) -> RequestRecord | None:
        rows = self._read("SELECT * FROM requests WHERE request_id = ?", (request_id,))
        return _request_record(rows[0]) if rows else None

    def mark_processing(self, request_id: str, at: datetime) -> None:
        # A final request stays final: resuming after a restart must not reopen it.
        with self._write() as conn:
            self._require(conn, request_id)
            conn.execute(
                "UPDATE requests SET status = 'processing', waiting_reason = NULL,"
                " started_at = COALESCE(started_at, :at), updated_at = :at"
                f" WHERE request_id = :id AND {_UNFINISHED}",
                {"at": _ts(at), "id": request_id},
            )

    def note_waiting(self, request_id: str, reason: str, at: datetime) -> None:
        with self._write() as conn:
            self._require(conn, request_id)
            conn.execute(
                "UPDATE requests SET waiting_reason = :reason, updated_at = :at"
                f" WHERE request_id = :id AND {_UNFINISHED}",
                {"reason": reason, "at": _ts(at), "id": request_id},
            )

    def mark_queued(self, request_id: str, at: datetime) -> None:
        with self._write() as conn:
            self._require(conn, request_id)
            conn.execute(
                "UPDATE requests SET status = 'queued', updated_at = :at"
                " WHERE request_id = :id AND status = 'pending'",
                {"at": _ts(at), "id": request_id},
            )

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
        params: dict[str, str | None] = {
            "status": RequestStatus(status).value,
            "at": _ts(at),
            "id": request_id,
        }
        params |= {"output_key": output_key, "error": error, "owner": owner}
        params |= {"webhook": None if webhook is None else json.dumps(webhook)}
        sql = (
            "UPDATE requests SET status = :status, completed_at = :at, updated_at = :at,"
            " output_key = :output_key, error = :error, webhook = COALESCE(:webhook, webhook),"
            " waiting_reason = NULL"
        )
        if owner is not None:
            # The owner's own write wins even past expiry, as long as nobody took over.
            sql += (
                ", lease_owner = NULL, lease_expires_at = NULL"
                f" WHERE request_id = :id AND {_UNFINISHED} AND lease_owner = :owner"
            )
        else:
            sql += " WHERE request_id = :id"
        with self._write() as conn:
            if conn.execute(sql, params).rowcount:
                return True
            self._require(conn, request_id)
            return False

    def set_webhook_state(
        self, request_id: str, state: dict[str, Any], *, owner: str | None = None
    ) -> bool:
        params = {"webhook": json.dumps(state), "id": request_id, "owner": owner}
        if owner is not None:
            sql = (
                "UPDATE requests SET webhook = :webhook, delivery_owner = NULL,"
                " delivery_expires_at = NULL WHERE request_id = :id AND delivery_owner = :owner"
            )
        else:
            sql = "UPDATE requests SET webhook = :webhook WHERE request_id = :id"
        with self._write() as conn:
            if conn.execute(sql, params).rowcount:
                return True
            self._require(conn, request_id)
            return False

    def claim_delivery(
        self, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> dict[str, Any] | None:
        now_text = _ts(now)
        with self._write() as conn:  # read, decide, write: one IMMEDIATE transaction
            row = conn.execute(
                "SELECT webhook, delivery_owner, delivery_expires_at FROM requests"
                " WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                return None
            state: dict[str, Any] = json.loads(row["webhook"])
            if state.get("status") != "pending" or not delivery_due(
                state.get("next_attempt_at"), now
            ):
                return None
            holder, expires = row["delivery_owner"], row["delivery_expires_at"]
            if holder not in (None, owner) and expires is not None and expires > now_text:
                return None
            conn.execute(
                "UPDATE requests SET delivery_owner = ?, delivery_expires_at = ?"
                " WHERE request_id = ?",
                (owner, _ts(now + timedelta(seconds=lease_seconds)), request_id),
            )
            return state

    def pending_deliveries(self) -> list[tuple[str, dict[str, Any]]]:
        # Every process's sweep asks (every LEASE_SECONDS / 3): a partial index on the
        # same expression keeps it to the pending rows, not a scan of every request.
        rows = self._read(
            "SELECT request_id, webhook FROM requests"
            f" WHERE {_PENDING_DELIVERY} ORDER BY created_at, request_id"
        )
        return [(r["request_id"], json.loads(r["webhook"])) for r in rows]

    def unfinished_requests(self) -> list[str]:
        rows = self._read(
            f"SELECT request_id FROM requests WHERE {_UNFINISHED} ORDER BY created_at, request_id"
        )
        return [r["request_id"] for r in rows]

    # -- leases -----------------------------------------------------------------
    def claim_request(
        self, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        params = {"id": request_id, "owner": owner, "now": _ts(now)}
        params["expires"] = _ts(now + timedelta(seconds=lease_seconds))
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE requests SET lease_owner = :owner, lease_expires_at = :expires,"
                f" heartbeat_at = :now WHERE request_id = :id AND {_UNFINISHED}"
                f" AND ({_REQUEST_LEASE_FREE} OR lease_owner = :owner)",
                params,
            )
            if cursor.rowcount:
                return True
            self._require(conn, request_id)
            return False

    def renew_leases(
        self, owner: str, request_ids: Sequence[str], now: datetime, lease_seconds: float
    ) -> set[str]:
        params = {"owner": owner, "now": _ts(now)}
        params["expires"] = _ts(now + timedelta(seconds=lease_seconds))
        held: set[str] = set()
        ids = list(dict.fromkeys(request_ids))
        with self._write() as conn:
            for start in range(0, len(ids), _BATCH):
                chunk = ids[start : start + _BATCH]
                marks = ", ".join(f":id{n}" for n in range(len(chunk)))
                # lease_owner = owner, expired or not: renewing never takes another's lease.
                rows = conn.execute(
                    "UPDATE requests SET lease_expires_at = :expires, heartbeat_at = :now"
                    f" WHERE request_id IN ({marks}) AND lease_owner = :owner AND {_UNFINISHED}"
                    " RETURNING request_id",
                    params | {f"id{n}": rid for n, rid in enumerate(chunk)},
                ).fetchall()
                held.update(r["request_id"] for r in rows)
        return held

    def release_request(self, request_id: str, owner: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE request_id = ? AND lease_owner = ?",
                (request_id, owner),
            )

    def claimable_requests(self, now: datetime, limit: int = 100) -> list[str]:
        rows = self._read(
            f"SELECT request_id FROM requests WHERE {_UNFINISHED} AND {_REQUEST_LEASE_FREE}"
            " ORDER BY created_at, request_id LIMIT :limit",
            {"now": _ts(now), "limit": max(limit, 0)},
        )
        return [r["request_id"] for r in rows]

    # -- cancel, delete, list ---------------------------------------------------
    def request_cancel(self, request_id: str, at: datetime) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE requests SET cancel_requested_at = COALESCE(cancel_requested_at, :at),"
                " updated_at = CASE WHEN cancel_requested_at IS NULL THEN :at ELSE updated_at END"
                f" WHERE request_id = :id AND {_UNFINISHED}",
                {"at": _ts(at), "id": request_id},
            )
            if cursor.rowcount:
                return True
            self._require(conn, request_id)
            return False

    def cancel_requested(self, request_ids: Sequence[str]) -> set[str]:
        ids = list(dict.fromkeys(request_ids))
        found: set[str] = set()
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            marks = ", ".join("?" * len(chunk))
            rows = self._read(
                f"SELECT request_id FROM requests WHERE request_id IN ({marks})"
                " AND cancel_requested_at IS NOT NULL",
                chunk,
            )
            found.update(r["request_id"] for r in rows)
        return found

    def cancel_pending_images(self, request_id: str) -> int:
        with self._write() as conn:
            self._require(conn, request_id)
            cancelled = conn.execute(
                "UPDATE images SET status = 'cancelled'"
                " WHERE request_id = ? AND status = 'pending'",
                (request_id,),
            ).rowcount
            if cancelled:
                conn.execute(
                    "UPDATE requests SET cancelled_images = cancelled_images + ?"
                    " WHERE request_id = ?",
                    (cancelled, request_id),
                )
            return cancelled

    def delete_request(self, request_id: str) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "SELECT status FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is None:
                raise RequestNotFound(request_id)
            if not RequestStatus(row["status"]).is_final:
                return False
            conn.execute("DELETE FROM images WHERE request_id = ?", (request_id,))
            conn.execute("DELETE FROM requests WHERE request_id = ?", (request_id,))
            return True

    def expired_requests(self, completed_before: datetime, limit: int = 100) -> list[str]:
        rows = self._read(
            f"SELECT request_id FROM requests WHERE {_FINAL} AND completed_at < ?"
            " ORDER BY completed_at, request_id LIMIT ?",
            (_ts(completed_before), max(limit, 0)),
        )
        return [r["request_id"] for r in rows]

    def list_requests(
        self,
        *,
        owner: str | None = None,
        statuses: Sequence[RequestStatus] = (),
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[RequestRecord], int]:
        where = ["1"]
        params: dict[str, int | str] = {"offset": max(offset, 0), "limit": max(limit, 0)}
        if owner is not None:
            where.append("owner = :owner")
            params["owner"] = owner
        if statuses:
            wanted = list(dict.fromkeys(RequestStatus(s).value for s in statuses))
            where.append(f"status IN ({', '.join(f':s{n}' for n in range(len(wanted)))})")
            params |= {f"s{n}": value for n, value in enumerate(wanted)}
        condition = " AND ".join(where)
        # One read transaction: the page and the total come from the same snapshot.
        with self._snapshot() as conn:
            page = conn.execute(
                f"SELECT * FROM requests WHERE {condition}"
                " ORDER BY created_at DESC, request_id DESC LIMIT :limit OFFSET :offset",
                params,
            ).fetchall()
            total = conn.execute(
                f"SELECT count(*) FROM requests WHERE {condition}", params
            ).fetchone()[0]
        return [_request_record(r) for r in page], total

    # -- images ---------------------------------------------------------------
    def add_images(self, request_id: str, items: Sequence[ImageItem]) -> int:
        rows = (
            (request_id, i.row, i.position, i.serial, i.product_name, i.input_url, i.line or None)
            for i in items
        )
        with self._write() as conn:
            self._require(conn, request_id)
            cursor = conn.executemany(
                "INSERT OR IGNORE INTO images"
                " (request_id, row, position, serial, product_name, input_url, line)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return max(cursor.rowcount, 0)

    def apply_results(
        self, request_id: str, results: Sequence[ImageResult], at: datetime
    ) -> Counters:
        # Only pending images match, so a retried batch changes (and counts) nothing twice,
        # and a late result never overwrites an image its request's cancel left cancelled.
        update = (
            "UPDATE images SET status = :status, output_key = :output_key, error = :error,"
            " reason_group = :reason_group,"
            " bytes_in = :bytes_in, bytes_out = :bytes_out, width = :width, height = :height"
            " WHERE request_id = :request_id AND row = :row AND position = :position"
            " AND status = 'pending'"
        )
        unique = first_per_image(results)
        at_text = _ts(at)
        with self._write() as conn:
            # Successes and failures run apart so each rowcount says how many of that
            # kind actually left `pending`.
            changed = {}
            for ok in (True, False):
                params = (_result_params(request_id, r) for r in unique if r.ok is ok)
                changed[ok] = max(conn.executemany(update, params).rowcount, 0)
            processed, failed = changed[True] + changed[False], changed[False]
            if processed:
                conn.execute(
                    "UPDATE requests SET processed_images = processed_images + ?,"
                    " failed_images = failed_images + ?, updated_at = ? WHERE request_id = ?",
                    (processed, failed, at_text, request_id),
                )
            return self._counters(conn, request_id)

    def list_images(self, request_id: str, row_start: int, row_end: int) -> list[ImageRecord]:
        rows = self._read(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE request_id = ?"
            " AND row >= ? AND row < ? ORDER BY row, position",
            (request_id, row_start, row_end),
        )
        return [_image_record(r) for r in rows]

    def iter_images(
        self, request_id: str, batch_size: int = 5000, status: ImageStatus | None = None
    ) -> Iterator[ImageRecord]:
        # Keyset pagination: each chunk starts after the last key seen, via the unique
        # index, and is fetched whole, so no read transaction stays open across a yield
        # (an open one would pin the WAL and stop checkpoints while the caller is slow).
        after = (-1, -1)
        where, extra = _status_filter(status)
        while True:
            rows = self._read(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE request_id = ?{where}"
                " AND (row, position) > (?, ?) ORDER BY row, position LIMIT ?",
                (request_id, *extra, *after, batch_size),
            )
            yield from (_image_record(r) for r in rows)
            if len(rows) < batch_size:
                return
            after = (rows[-1]["row"], rows[-1]["position"])

    def images_with_status(
        self, request_id: str, status: ImageStatus | None, offset: int, limit: int
    ) -> list[ImageRecord]:
        where, extra = _status_filter(status)
        rows = self._read(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE request_id = ?{where}"
            " ORDER BY row, position LIMIT ? OFFSET ?",
            (request_id, *extra, limit, offset),
        )
        return [_image_record(r) for r in rows]

    def failure_summary(self, request_id: str, limit: int = 20) -> list[ReasonCount]:
        rows = self._read(
            "SELECT coalesce(reason_group, error, '') AS reason, count(*) AS n,"
            " min(error) AS example FROM images WHERE request_id = ? AND status = 'failed'"
            " GROUP BY 1 ORDER BY n DESC, reason LIMIT ?",
            (request_id, limit),
        )
        return [ReasonCount(r["reason"], r["n"], r["example"] or "") for r in rows]

    def pending_images(self, request_id: str) -> list[tuple[int, int]]:
        rows = self._read(
            "SELECT row, position FROM images WHERE request_id = ? AND status = 'pending'"
            " ORDER BY row, position",
            (request_id,),
        )
        return [(r["row"], r["position"]) for r in rows]

    def recount(self, request_id: str) -> Counters:
        with self._write() as conn:
            conn.execute(
                "UPDATE requests SET"
                " processed_images = (SELECT count(*) FROM images"
                "   WHERE request_id = :id AND status IN ('done', 'failed')),"
                " failed_images = (SELECT count(*) FROM images"
                "   WHERE request_id = :id AND status = 'failed'),"
                " cancelled_images = (SELECT count(*) FROM images"
                "   WHERE request_id = :id AND status = 'cancelled')"
                " WHERE request_id = :id",
                {"id": request_id},
            )
            return self._counters(conn, request_id)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for thread, conn, busy in connections:
            # Closing a connection another thread is using can crash the sqlite3
            # module (seen: a webhook delivery writing while a test closed the
            # store), so wait for that use to end; a thread stuck longer keeps it.
            if busy.acquire(timeout=CLOSE_WAIT):
                try:
                    conn.close()
                finally:
                    busy.release()
            else:
                log.warning("record store: %s still busy at close; left open", thread.name)

    # -- plumbing -------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RecordStoreError(f"record store {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self._local.busy = threading.RLock()
            # isolation_level=None: we issue BEGIN ourselves. check_same_thread=False
            # only so close() and the reaper below can close another thread's connection.
            timeout = self.busy_timeout
            if self._identity is None:  # the first connection: creates the file if need be
                conn = sqlite3.connect(
                    self.path, timeout=timeout, isolation_level=None, check_same_thread=False
                )
                self._identity = _file_identity(self.path)
            else:
                # The file this store opened, before and after: so this connection is
                # to it. mode=rw: a missing file is an error, not a new empty database.
                self._check_file()
                uri = f"{self.path.absolute().as_uri()}?mode=rw"
                conn = sqlite3.connect(
                    uri, timeout=timeout, isolation_level=None, check_same_thread=False, uri=True
                )
                self._check_file()
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            # NORMAL is durable in WAL mode except for the last commits on power loss.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._lock:
                # Driver threads come and go (one per request): close what dead ones left.
                for thread, other, _ in self._connections:
                    if not thread.is_alive():
                        other.close()
                self._connections = [
                    *((t, c, b) for t, c, b in self._connections if t.is_alive()),
                    (threading.current_thread(), conn, self._local.busy),
                ]
        return conn

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with _wrap_errors():
            conn = self._conn()
            with self._local.busy:
                self._check_file()
                return conn.execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that see one state of the file (a deferred read transaction)."""
        with self._transaction("BEGIN") as conn:
            yield conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with _wrap_errors():
            conn = self._conn()
            with self._local.busy:
                self._check_file()
                conn.execute(begin)
                try:
                    yield conn
                    conn.commit()
                except BaseException:
                    # Also after a failed COMMIT, which leaves the transaction open.
                    if conn.in_transaction:
                        conn.rollback()
                    raise
                # Again after the commit: a write that went into a file deleted or
                # replaced meanwhile is lost with it, so the caller must not count on it.
                self._check_file()

    def _check_file(self) -> None:
        """RecordStoreError unless `path` is still the file this store opened.

        SQLite's connections hold the file open, so they go on reading and writing
        one deleted or replaced under them, and nobody will ever read that again:
        uploads would be accepted into nothing. The file is compared by device and
        inode (a stat per statement, about a microsecond). A file moved away and
        back is the same file and works again at once. A different file at the
        path is not adopted while the process runs: it is another database (the
        requests driven here and their leases are not in it), and SQLite finds a
        database's write-ahead log by name (`records.db-wal`): the old file's log,
        still in use here and left behind even after its connections close, would
        be replayed into the new file. A restart after a deletion starts a new,
        empty database (SQLite ignores a log next to an empty file).
        """
        current = _file_identity(self.path)
        if current is not None and current == self._identity:
            return
        if current is None:
            raise RecordStoreError(
                f"the SQLite file {self.path} is gone (deleted or moved away) while this "
                "process had it open; put the same file back, or restart the service to "
                "start a new, empty one"
            )
        raise RecordStoreError(
            f"the SQLite file {self.path} was replaced while this process had it open; to "
            f"use the new one, stop the service, remove {self.path.name}-wal and "
            f"{self.path.name}-shm (the old file's log: SQLite would apply it to the new "
            "file), and start it again"
        )

    @staticmethod
    def _require(conn: sqlite3.Connection, request_id: str) -> None:
        if conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone():
            return
        raise RequestNotFound(request_id)

    @staticmethod
    def _counters(conn: sqlite3.Connection, request_id: str) -> Counters:
        row = conn.execute(
            "SELECT processed_images, failed_images, cancelled_images FROM requests"
            " WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            raise RequestNotFound(request_id)
        return Counters(row["processed_images"], row["failed_images"], row["cancelled_images"])


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a new or older file to the current schema, in one transaction.

    IMMEDIATE: two processes opening an old file at once must not both add a column.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in _TABLES:
            conn.execute(table)
        for table, added in (
            ("requests", _ADDED_REQUEST_COLUMNS),
            ("images", _ADDED_IMAGE_COLUMNS),
        ):
            present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, declaration in added:
                if name not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
        for name in _DROPPED_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        for index in _INDEXES:
            conn.execute(index)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None when there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordStoreError(f"cannot reach the SQLite file {path}: {exc}") from exc
    return stat.st_dev, stat.st_ino


@contextmanager
def _wrap_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise RecordStoreError(f"SQLite record store failed: {exc}") from exc


def _result_params(request_id: str, result: ImageResult) -> dict[str, Any]:
    return {"request_id": request_id, "row": result.row, "position": result.position} | (
        result_fields(result)
    )


def _ts(at: datetime) -> str:
    return aware_utc(at).isoformat(timespec="milliseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _dt_or_none(text: str | None) -> datetime | None:
    return None if text is None else _dt(text)


def _request_record(row: sqlite3.Row) -> RequestRecord:
    return RequestRecord(
        request_id=row["request_id"],
        status=RequestStatus(row["status"]),
        total_rows=row["total_rows"],
        total_images=row["total_images"],
        processed_images=row["processed_images"],
        failed_images=row["failed_images"],
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
        started_at=_dt_or_none(row["started_at"]),
        completed_at=_dt_or_none(row["completed_at"]),
        source_name=row["source_name"],
        webhook_url=row["webhook_url"],
        output_key=row["output_key"],
        error=row["error"],
        webhook=json.loads(row["webhook"]),
        owner=row["owner"],
        cancelled_images=row["cancelled_images"],
        cancel_requested_at=_dt_or_none(row["cancel_requested_at"]),
        lease_owner=row["lease_owner"],
        lease_expires_at=_dt_or_none(row["lease_expires_at"]),
        heartbeat_at=_dt_or_none(row["heartbeat_at"]),
        waiting_reason=row["waiting_reason"],
        options=OutputOptions.from_dict(json.loads(row["options"])) if row["options"] else None,
    )


def _status_filter(status: ImageStatus | None) -> tuple[str, tuple[str, ...]]:
    return ("", ()) if status is None else (" AND status = ?", (status.value,))


def _image_record(row: sqlite3.Row) -> ImageRecord:
    values = dict(zip(row.keys(), row, strict=True))
    values["status"] = ImageStatus(values["status"])
    return ImageRecord(**values)
