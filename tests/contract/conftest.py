"""Record store backends for the contract suite, one fixture parameter each.

- ``sqlite``: always; a file under tmp_path.
- ``mongomock``: always; an in-process fake of MongoDB (see `MongomockBulkShim`).
- ``mongodb``: a real server, only when MONGODB_URI is set, e.g.
  ``MONGODB_URI=mongodb://localhost:27017 make test``. Each test gets a
  throwaway database that is dropped afterwards.
"""

from __future__ import annotations

import inspect
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mongomock
import mongomock.collection
import pytest
from pymongo import MongoClient

from pipeline.records import MongoRecordStore, RecordStore, SqliteRecordStore

REAL_MONGO_SKIP = (
    "needs a real MongoDB server: set MONGODB_URI, "
    "e.g. MONGODB_URI=mongodb://localhost:27017 make test"
)


class MongomockBulkShim(mongomock.collection.BulkOperationBuilder):
    """mongomock 4.3's bulk builder, accepting the ``sort=None`` pymongo >= 4.11 passes.

    pymongo's ``UpdateOne._add_to_bulk`` now calls
    ``add_update(..., sort=self._sort)``, and mongomock's builder has no ``sort``
    parameter, so *every* ``bulk_write([UpdateOne(...)])`` fails with a TypeError
    (mongomock issue #912, fix proposed in PR #933, unreleased). The store does
    not use ``sort``; this shim accepts only ``sort=None`` and refuses a real sort
    rather than silently ignoring it. It is installed only in the ``mongomock``
    fixture and only while mongomock still lacks the parameter.

    What the mongomock leg proves: the store's pymongo call shapes (bulk_write of
    UpdateOne, insert_many(ordered=False) and its duplicate-key BulkWriteError,
    find_one_and_update, aggregate), its filters and update operators, and the
    store's semantics as mongomock interprets them. What it does NOT prove: a real
    server's unique-index and update behaviour under concurrent writers,
    transactions, write concerns, performance, or differences between server
    versions. That is what the ``mongodb`` leg (MONGODB_URI) is for.
    """

    def add_update(
        self,
        selector,
        doc,
        multi=False,
        upsert=False,
        collation=None,
        array_filters=None,
        hint=None,
        sort=None,
    ):
        if sort is not None:
            raise NotImplementedError(f"mongomock cannot apply UpdateOne(sort={sort!r})")
        super().add_update(
            selector,
            doc,
            multi,
            upsert,
            collation=collation,
            array_filters=array_filters,
            hint=hint,
        )


def mongomock_needs_bulk_shim() -> bool:
    builder = mongomock.collection.BulkOperationBuilder
    return "sort" not in inspect.signature(builder.add_update).parameters


@dataclass
class Backend:
    """A store plus what a contract test needs to look past it."""

    name: str
    store: RecordStore
    # Overwrite a request's counters behind the store's back.
    set_counters: Callable[[str, int, int], None]
    # A second store on the same data, as after a process restart.
    reopen: Callable[[], RecordStore]


def sqlite_backend(tmp_path) -> Iterator[Backend]:
    path = tmp_path / "records.db"
    opened: list[RecordStore] = []

    def set_counters(request_id: str, processed: int, failed: int) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE requests SET processed_images = ?, failed_images = ? WHERE request_id = ?",
                (processed, failed, request_id),
            )
        conn.close()

    def reopen() -> RecordStore:
        opened.append(SqliteRecordStore(path))
        return opened[-1]

    store = SqliteRecordStore(path)
    yield Backend("sqlite", store, set_counters, reopen)
    for each in [store, *opened]:
        each.close()


def mongo_backend(name: str, store: RecordStore, database, reopen) -> Backend:
    def set_counters(request_id: str, processed: int, failed: int) -> None:
        fields = {"processed_images": processed, "failed_images": failed}
        database["requests"].update_one({"_id": request_id}, {"$set": fields})

    return Backend(name, store, set_counters, reopen)


def mongomock_backend(monkeypatch) -> Iterator[Backend]:
    if mongomock_needs_bulk_shim():
        monkeypatch.setattr(mongomock.collection, "BulkOperationBuilder", MongomockBulkShim)
    # tz_aware=False on purpose: the store must still return aware UTC datetimes.
    database = mongomock.MongoClient()["imagepipe"]
    yield mongo_backend(
        "mongomock", MongoRecordStore(database), database, lambda: MongoRecordStore(database)
    )


@pytest.fixture(scope="session")
def mongodb_uri() -> str:
    """MONGODB_URI, checked once: an unreachable server fails every real-server test at
    once (pytest caches a session fixture's error) instead of timing out in each."""
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip(REAL_MONGO_SKIP)
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client.admin.command("ping")
    return uri


def real_mongodb_backend(uri: str) -> Iterator[Backend]:
    db_name = f"imagepipe_test_{uuid.uuid4().hex[:12]}"
    stores: list[MongoRecordStore] = []

    def reopen() -> RecordStore:
        stores.append(MongoRecordStore.from_uri(uri, db_name, serverSelectionTimeoutMS=5000))
        return stores[-1]

    # The store under test is built the production way: from_uri, tz_aware client.
    store = reopen()
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        yield mongo_backend("mongodb", store, client[db_name], reopen)
    finally:
        for each in stores:
            each.close()
        client.drop_database(db_name)
        client.close()


@pytest.fixture(params=["sqlite", "mongomock", "mongodb"])
def backend(request, tmp_path, monkeypatch) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield from sqlite_backend(tmp_path)
    elif request.param == "mongomock":
        yield from mongomock_backend(monkeypatch)
    else:
        yield from real_mongodb_backend(request.getfixturevalue("mongodb_uri"))


@pytest.fixture(params=["sqlite", "mongodb"])
def concurrent_backend(request, tmp_path) -> Iterator[Backend]:
    """Backends whose behaviour under concurrent writers is worth asserting.

    mongomock is left out: it is not a model of a server under concurrent load.
    """
    if request.param == "sqlite":
        yield from sqlite_backend(tmp_path)
    else:
        yield from real_mongodb_backend(request.getfixturevalue("mongodb_uri"))


@pytest.fixture
def store(backend: Backend) -> RecordStore:
    return backend.store


@pytest.fixture
def mongomock_bulk_shim() -> type[MongomockBulkShim]:
    return MongomockBulkShim
