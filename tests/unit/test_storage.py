"""Storage on real local storage: what delete_prefix removes, keeps and refuses; what
the storage boundary turns the filesystem library's errors into."""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import ObjectNotFound, StorageError
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


# -- the storage boundary: a missing object, a failing store -------------------------


def test_a_missing_object_is_object_not_found_wherever_it_is_read(storage):
    key = f"requests/{RID}/output.csv"
    for read in (storage.get, storage.open, storage.stamp):
        with pytest.raises(ObjectNotFound, match=f"could not .* {key}") as caught:
            read(key)
        assert isinstance(caught.value.__cause__, FileNotFoundError)
    storage.delete(key)  # removing what is not there is not an error


def test_a_store_that_is_gone_is_a_storage_error_not_a_missing_object(tmp_path):
    storage = Storage(storage_config(f"file://{tmp_path}/objects", ""))
    (tmp_path / "objects").write_bytes(b"not a directory\n")  # every path below fails
    key = f"requests/{RID}/output.csv"
    for call in (
        lambda: storage.get(key),
        lambda: storage.open(key),
        lambda: storage.put(key, b"x"),
        lambda: storage.put_chunks(key, [b"x"]),
    ):
        with pytest.raises(StorageError) as caught:
            call()
        assert not isinstance(caught.value, ObjectNotFound)


class UnreachableS3(LocalFileSystem):
    """S3 whose endpoint refuses connections, as s3fs reports it: botocore's own
    error, passed on untranslated (it is no OSError)."""

    protocol = ("s3", "s3a")

    def _open(self, path, mode="rb", **kwargs):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")

    def info(self, path, **kwargs):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")


def unreachable_s3(tmp_path) -> Storage:
    return Storage(
        storage_config(f"file://{tmp_path}/objects", ""), fs=UnreachableS3(skip_instance_cache=True)
    )


def test_the_s3_librarys_own_errors_are_storage_errors(tmp_path):
    storage = unreachable_s3(tmp_path)
    key = f"requests/{RID}/input.csv"
    for call in (
        lambda: storage.get(key),
        lambda: storage.open(key),
        lambda: storage.stamp(key),
        lambda: storage.put(key, b"x"),
    ):
        with pytest.raises(StorageError, match="Could not connect") as caught:
            call()
        assert isinstance(caught.value.__cause__, EndpointConnectionError)
