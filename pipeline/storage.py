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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote

import fsspec
from fsspec.core import url_to_fs

from pipeline.errors import ConfigError, ObjectNotFound, StorageError
from pipeline.keys import PUBLIC_KEY_PATTERN

LOCAL_PROTOCOLS = frozenset({"file", "local"})

# The only objects anyone with a link may read: output images (keys.output_key).
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
        self._failures = _library_errors(protocol)

    @contextlib.contextmanager
    def _boundary(self, doing: str, *, reading: bool = True) -> Iterator[None]:
        """The storage boundary: what the filesystem library raises becomes ours.

        A missing object read is `ObjectNotFound`; anything else the library or
        the OS raises (gone, full, read-only, unreachable) is a `StorageError`,
        the original as its cause. A write that finds no parent fails the storage.
        """
        try:
            yield
        except FileNotFoundError as exc:
            kind = ObjectNotFound if reading else StorageError
            raise kind(f"could not {doing}: {exc}") from exc
        except self._failures as exc:
            raise StorageError(f"could not {doing}: {exc}") from exc

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
        with self._boundary(f"write {key}", reading=False):
            if self.is_local:
                self.fs.makedirs(self.path(key).rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(self.path(key), data, **extra)

    def put_chunks(self, key: str, chunks: Iterable[bytes]) -> None:
        """Write a large object without holding it in memory.

        Whole or not at all: written under a temporary name and moved into place,
        so a full disk or a failing `chunks` midway never leaves a truncated
        object under `key` (a reader would take it for the real one).
        """
        partial = f"{key}.partial-{uuid.uuid4().hex}"
        try:
            with self._boundary(f"write {key}", reading=False):
                with self.open(partial, "wb") as fh:
                    for chunk in chunks:
                        fh.write(chunk)
                self.move(partial, key)
        except BaseException:
            with contextlib.suppress(StorageError):
                self.delete(partial)
            raise

    def delete(self, key: str) -> None:
        """Remove one object; one that is not there is not an error."""
        try:
            with self._boundary(f"delete {key}"):
                self.fs.rm_file(self.path(key))
        except ObjectNotFound:
            return

    def probe(self) -> None:
        """Write and remove a small object under a fresh name: StorageError when the
        storage is gone, full or read-only. (A fresh name, since rewriting one
        object frees its space first and would succeed on a full disk.)"""
        key = f"health/probe-{uuid.uuid4().hex}"
        self.put(key, b"ok\n")
        self.delete(key)

    def get(self, key: str) -> bytes:
        """ObjectNotFound for a missing object; StorageError when the storage fails."""
        with self._boundary(f"read {key}"):
            return self.fs.cat_file(self.path(key))

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """ObjectNotFound for a missing object; StorageError when the storage fails.

        (Errors while reading or writing the file object itself are the caller's:
        they are OSErrors, which `errors.backend_unavailable` knows.)"""
        with self._boundary(f"open {key}", reading="r" in mode):
            if "w" in mode and self.is_local:
                self.fs.makedirs(self.path(key).rsplit("/", 1)[0], exist_ok=True)
            return self.fs.open(self.path(key), mode)

    def move(self, source: str, target: str) -> None:
        """Rename an object (atomic on local files; copy then delete on object stores,
        where the target still appears whole or not at all)."""
        with self._boundary(f"move {source} to {target}", reading=False):
            self.fs.mv(self.path(source), self.path(target))

    def exists(self, key: str) -> bool:
        with self._boundary(f"look for {key}"):
            return bool(self.fs.exists(self.path(key)))

    def stamp(self, key: str) -> str:
        """What tells this version of an object from a rewrite: size and mtime or ETag."""
        with self._boundary(f"stat {key}"):
            info = self.fs.info(self.path(key))
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
            with self._boundary(f"delete {key}/"):
                self.fs.rm(self.path(key), recursive=True)
        except ObjectNotFound:
            return

    def url(self, key: str) -> str:
        """The URL of a stored object, as users will fetch it."""
        if self.config.url_mode == "presigned":
            with self._boundary(f"sign a URL for {key}", reading=False):
                return str(self.fs.sign(self.path(key), expiration=self.config.presign_expires))
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


def _library_errors(protocol: str) -> tuple[type[Exception], ...]:
    """What a failing store raises through its fsspec library: OSErrors, and for S3
    botocore's own errors too, which s3fs passes on untranslated when S3 never
    answered (an endpoint refusing connections, no credentials, a timeout)."""
    if protocol in ("s3", "s3a"):
        # Loaded already: s3fs, which url_to_fs imported for this protocol, needs it.
        from botocore.exceptions import BotoCoreError, ClientError

        return (OSError, BotoCoreError, ClientError)
    return (OSError,)


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
