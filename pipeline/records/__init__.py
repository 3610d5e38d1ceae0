"""Where requests and their images are recorded: SQLite by default, MongoDB when configured."""

from pipeline.records.base import RecordStore
from pipeline.records.mongo import MongoRecordStore
from pipeline.records.sqlite import SqliteRecordStore

__all__ = ["MongoRecordStore", "RecordStore", "SqliteRecordStore"]
