"""Storage.delete_prefix on real local storage: what goes, what stays, what is refused."""

from __future__ import annotations

import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import StorageError
from pipeline.storage import Storage, storage_config

RID = "a" * 32


@pytest.fixture
def storage(tmp_path):
    return Storage(storage_config(f"file://{tmp_path}/objects", ""))


def objects(tmp_path) -> list[str]:
    root = tmp_path / "objects"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_removes_everything_under_the_prefix_and_nothing_else(storage, tmp_path):
    for key in (
        f"requests/{RID}/input.csv",
        f"requests/{RID}/manifest.parquet",
        f"requests/{RID}/images/0000000-000.jpg",
        f"requests/{RID}/images/0000001-000.jpg",
        # a sibling whose name starts with the same characters, and an unrelated object
        f"requests/{RID}b/input.csv",
        "requests/other/images/0000000-000.jpg",
    ):
        storage.put(key, b"x")
    storage.delete_prefix(f"requests/{RID}/")
    assert objects(tmp_path) == [
        f"requests/{RID}b/input.csv",
        "requests/other/images/0000000-000.jpg",
    ]
    assert not (tmp_path / "objects" / "requests" / RID).exists()
    assert not storage.exists(f"requests/{RID}/input.csv")


def test_the_trailing_slash_is_optional(storage, tmp_path):
    storage.put(f"requests/{RID}/input.csv", b"x")
    storage.delete_prefix(f"requests/{RID}")
    assert objects(tmp_path) == []


def test_a_missing_prefix_is_not_an_error(storage, tmp_path):
    storage.delete_prefix(f"requests/{RID}/")  # nothing was ever stored
    storage.put(f"requests/{RID}/input.csv", b"x")
    storage.delete_prefix(f"requests/{RID}/")
    storage.delete_prefix(f"requests/{RID}/")  # a retry after a removal that did finish
    assert objects(tmp_path) == []


@pytest.mark.parametrize(
    "prefix",
    ["", "/", "/requests/x/", "../objects", "requests/../", "requests/x/../../", ".", "./", "a//b"],
)
def test_dangerous_prefixes_are_refused_and_nothing_goes(storage, tmp_path, prefix):
    storage.put(f"requests/{RID}/input.csv", b"x")
    with pytest.raises(StorageError, match="refusing"):
        storage.delete_prefix(prefix)
    assert objects(tmp_path) == [f"requests/{RID}/input.csv"]


class RefusingFileSystem(LocalFileSystem):
    def rm(self, path, recursive=False, maxdepth=None):
        raise PermissionError(13, "Permission denied", path)


def test_backend_failures_are_storage_errors(tmp_path):
    storage = Storage(storage_config(f"file://{tmp_path}/objects", ""), fs=RefusingFileSystem())
    storage.put(f"requests/{RID}/input.csv", b"x")
    with pytest.raises(StorageError, match=f"could not delete requests/{RID}/") as caught:
        storage.delete_prefix(f"requests/{RID}/")
    assert isinstance(caught.value.__cause__, PermissionError)
    assert objects(tmp_path) == [f"requests/{RID}/input.csv"]
