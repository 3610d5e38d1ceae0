"""Output writes are retried a bounded number of times."""

from typing import cast

import pytest

from pipeline.errors import StorageError
from pipeline.storage import Storage
from pipeline.tasks import WRITE_ATTEMPTS, put_with_retries


class FlakyStorage:
    """Fails the first `failures` writes, then stores (a hand-written fake; put_with_retries
    calls only put)."""

    def __init__(self, failures: int):
        self.failures = failures
        self.attempts = 0
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise StorageError(f"could not write {key}: throttled")
        self.objects[key] = data


def test_transient_failure_is_retried_with_backoff():
    storage = FlakyStorage(failures=2)
    waits: list[float] = []
    put_with_retries(cast(Storage, storage), "k", b"data", sleep=waits.append)
    assert storage.objects == {"k": b"data"}
    assert waits == [0.2, 0.4]


def test_persistent_failure_raises_after_the_last_attempt():
    storage = FlakyStorage(failures=99)
    waits: list[float] = []
    with pytest.raises(StorageError, match="throttled"):
        put_with_retries(cast(Storage, storage), "k", b"data", sleep=waits.append)
    assert storage.attempts == WRITE_ATTEMPTS and len(waits) == WRITE_ATTEMPTS - 1
