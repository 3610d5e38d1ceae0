"""Object storage on fsspec: local files by default, S3 (or any fsspec URL) by configuration.

A `StorageConfig` is small and picklable, so Dask tasks carry it and build
their own `Storage` on the worker; the filesystem object itself never
travels. fsspec caches filesystem instances per process, so building one per
task is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote

import fsspec
from fsspec.core import url_to_fs

from pipeline.errors import ConfigError, StorageError
from pipeline.keys import PUBLIC_KEY_PATTERN

LOCAL_PROTOCOLS = frozenset({"file", "local"})

# The only objects anyone with a link may read: output images (models.output_key).
# A request's input CSV, manifest and output CSV stay private: the API serves the
# output CSV to the request's owner (API_KEYS). With OUTPUT_URL_MODE=public the
# bucket grants anonymous reads on this pattern only (`public_read_policy`); S3
# and MinIO match "*" anywhere in a resource ARN, "/" included.


@dataclass(frozen=True)
class StorageConfig:
    url: str  # root, e.g. file:///srv/data/objects or s3://bucket/prefix
    public_base_url: str = ""  # where stored objects are fetched from by users
    options_json: str = "{}"  # fsspec storage options, JSON so the config stays hashable
    url_mode: str = "public"  # or "presigned" (s3 only)
    presign_expires: int = 7 * 24 * 3600

    @property
    def options(self) -> dict[str, Any]:
        return json.loads(self.options_json)


class Storage:
    def __init__(self, config: StorageConfig, fs: fsspec.AbstractFileSystem | None = None):
        self.config = config
        options = config.options
        if fs is None:
            try:
                fs, root = url_to_fs(config.url, **options)
            except (ImportError, ValueError) as exc:
                raise ConfigError(f"cannot use storage URL {config.url!r}: {exc}") from exc
        else:
            root = fs._strip_protocol(config.url)
        self.fs = fs
        self.root = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        is_s3 = self.is_s3 = protocol in ("s3", "s3a")
        if config.url_mode == "presigned" and not is_s3:
            raise ConfigError("OUTPUT_URL_MODE=presigned needs s3:// storage")
        if not self.is_local and not config.public_base_url and not is_s3:
            raise ConfigError(
                f"set PUBLIC_BASE_URL: there is no default public URL for {protocol}:// storage"
            )

    @property
    def is_local(self) -> bool:
        return self.protocol in LOCAL_PROTOCOLS

    def path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid storage key {key!r}")
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write `data` under `key`; an object store serves it with `content_type`."""
        # S3 would serve it as binary/octet-stream: a browser opening an output URL
        # would download the image instead of showing it.
        extra = {"ContentType": content_type} if content_type and self.is_s3 else {}
        try:
            if self.is_local:
                self.fs.makedirs(self.path(key).rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(self.path(key), data, **extra)
        except OSError as exc:
            raise StorageError(f"could not write {key}: {exc}") from exc

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write a large object without holding it in memory.

        Whole or not at all: written under a temporary name and moved into place,
        so a full disk or a failing `chunks` midway never leaves a truncated
        object under `key` (a reader would take it for the real one).
        """
        partial = f"{key}.partial-{uuid.uuid4().hex}"
        try:
            with self.open(partial, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
            self.move(partial, key)
        except BaseException as exc:
            with contextlib.suppress(StorageError):
                self.delete(partial)
            if isinstance(exc, OSError):
                raise StorageError(f"could not write {key}: {exc}") from exc
            raise

    def delete(self, key: str) -> None:
        """Remove one object; one that is not there is not an error."""
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"could not delete {key}: {exc}") from exc

    def probe(self) -> None:
        """Write and remove a small object under a fresh name: StorageError when the
        storage is gone, full or read-only. (A fresh name, since rewriting one
        object frees its space first and would succeed on a full disk.)"""
        key = f"health/probe-{uuid.uuid4().hex}"
        self.put(key, b"ok\n")
        self.delete(key)

    def get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"could not read {key}: {exc}") from exc

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """FileNotFoundError for a missing object; StorageError when the storage fails."""
        try:
            if "w" in mode and self.is_local:
                self.fs.makedirs(self.path(key).rsplit("/", 1)[0], exist_ok=True)
            return self.fs.open(self.path(key), mode)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"could not open {key}: {exc}") from exc

    def move(self, source: str, target: str) -> None:
        """Rename an object (atomic on local files; copy then delete on object stores,
        where the target still appears whole or not at all)."""
        try:
            self.fs.mv(self.path(source), self.path(target))
        except OSError as exc:
            raise StorageError(f"could not move {source} to {target}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def stamp(self, key: str) -> str:
        """What tells this version of an object from a rewrite: size and mtime or ETag."""
        try:
            info = self.fs.info(self.path(key))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"could not stat {key}: {exc}") from exc
        version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        return f"{info.get('size')}:{version}"

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix` (a folder such as "requests/<id>/").

        Nothing there is not an error, so a removal interrupted midway can simply
        run again. The prefix must name a folder below the root: an empty, absolute,
        "." or ".." one is refused rather than risk removing the whole store.
        """
        parts = prefix.removesuffix("/").split("/")
        if prefix.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"refusing to delete storage prefix {prefix!r}")
        key = "/".join(parts)
        try:
            self.fs.rm(self.path(key), recursive=True)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"could not delete {key}/: {exc}") from exc

    def url(self, key: str) -> str:
        """The URL of a stored object, as users will fetch it."""
        if self.config.url_mode == "presigned":
            return self.fs.sign(self.path(key), expiration=self.config.presign_expires)
        base = self.config.public_base_url.rstrip("/")
        if base:
            return f"{base}/{quote(key)}"
        # s3: the bucket's own HTTPS address (or the S3-compatible endpoint's)
        endpoint = self.config.options.get("client_kwargs", {}).get("endpoint_url")
        bucket, _, prefix = self.root.partition("/")
        path = f"{prefix}/{key}" if prefix else key
        if endpoint:
            return f"{endpoint.rstrip('/')}/{bucket}/{quote(path)}"
        return f"https://{bucket}.s3.amazonaws.com/{quote(path)}"


@functools.lru_cache(maxsize=8)
def storage_for(config: StorageConfig) -> Storage:
    """One Storage per config per process (workers build theirs from the task's config)."""
    return Storage(config)


def storage_config(
    storage_url: str,
    public_base_url: str,
    s3_endpoint_url: str = "",
    *,
    url_mode: str = "public",
    presign_expires: int = 7 * 24 * 3600,
) -> StorageConfig:
    options: dict[str, Any] = {}
    if storage_url.startswith(("s3://", "s3a://")):
        # SigV4: botocore's default presigning (SigV2) is refused by most regions and MinIO
        options["config_kwargs"] = {"signature_version": "s3v4"}
        if s3_endpoint_url:
            options["client_kwargs"] = {"endpoint_url": s3_endpoint_url}
    return StorageConfig(
        url=storage_url,
        public_base_url=public_base_url,
        options_json=json.dumps(options),
        url_mode=url_mode,
        presign_expires=presign_expires,
    )


def public_read_policy(storage_url: str) -> dict[str, Any]:
    """The bucket policy for OUTPUT_URL_MODE=public: anyone may read output images, nothing else.

    Put it on the bucket of STORAGE_URL (README "Output URLs on S3");
    docker-compose.yml puts the same one on its MinIO bucket. No listing is
    granted, so a link to one image reveals no other object.
    """
    scheme, _, location = storage_url.partition("://")
    bucket, _, prefix = location.strip("/").partition("/")
    if scheme not in ("s3", "s3a") or not bucket:
        raise ConfigError(
            f"a bucket policy needs s3://bucket[/prefix] storage, not {storage_url!r}"
        )
    keys = f"{prefix}/{PUBLIC_KEY_PATTERN}" if prefix else PUBLIC_KEY_PATTERN
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublicReadOutputImages",
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/{keys}"],
            }
        ],
    }
