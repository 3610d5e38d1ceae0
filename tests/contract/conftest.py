"""Record store backends for the contract suite, one fixture parameter each.

- ``sqlite``: a file under tmp_path.
- ``mongodb``: a MongoDB server over the real wire protocol, from the session's
  `mongodb_uri` fixture (tests/conftest.py): SecantusDB started once per session
  on loopback, or a real mongod when MONGODB_URI is set (``make test-mongo``).
  Each test gets a throwaway database that is dropped afterwards.

What the ``mongodb`` leg proves against SecantusDB: the store's queries, update
operators, unique index (duplicate-key errors from ``insert_many(ordered=False)``
and ``bulk_write``), conditional updates and atomic claims, sent by pymongo's
real driver code over the wire and answered by a server that holds the data,
with several threads writing at once. What only a real mongod proves: replica-set
failover and elections, write concerns and read preferences under failure, query
plans and index use at scale, and differences between server versions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pymongo import MongoClient

from pipeline.records.base import RecordStore
from pipeline.records.mongo import MongoRecordStore
from pipeline.records.sqlite import SqliteRecordStore


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


def real_mongodb_backend(uri: str, db_name: str) -> Iterator[Backend]:
    """A store on `db_name` (the `mongodb_database` fixture drops it afterwards)."""
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
        client.close()


def any_backend(request, tmp_path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield from sqlite_backend(tmp_path)
    else:
        yield from real_mongodb_backend(
            request.getfixturevalue("mongodb_uri"), request.getfixturevalue("mongodb_database")
        )


# The mongodb leg starts a server (SecantusDB, once a session): an integration test,
# left out of `make test-fast` as the SQLite leg is not.
BACKENDS = ["sqlite", pytest.param("mongodb", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Iterator[Backend]:
    yield from any_backend(request, tmp_path)


@pytest.fixture(params=BACKENDS)
def concurrent_backend(request, tmp_path) -> Iterator[Backend]:
    """The backends under concurrent writers (the same two: both are real servers)."""
    yield from any_backend(request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> RecordStore:
    return backend.store
