from __future__ import annotations

import pytest

from pipeline.records.sqlite import SqliteRecordStore
from pipeline.settings import Settings
from pipeline.storage import Storage, storage_config
from tests.api.support import RecordingRunner, make_client, stored_files


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path, max_upload_bytes=64 * 1024, api_base_url="http://api.test")


@pytest.fixture
def store(settings):
    store = SqliteRecordStore(settings.sqlite_path)
    yield store
    store.close()


@pytest.fixture
def storage(settings):
    return Storage(storage_config(settings.resolved_storage_url, settings.media_base_url))


@pytest.fixture
def runner():
    return RecordingRunner()


@pytest.fixture
def client(settings, store, storage, runner):
    return make_client(settings, store, storage, runner)


@pytest.fixture
def assert_nothing_recorded(settings, store, runner):
    """A refused upload left no trace: nothing submitted, recorded or stored."""

    def check():
        assert runner.submitted == []
        assert store.unfinished_requests() == []
        assert stored_files(settings) == []

    return check
