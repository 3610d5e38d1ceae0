"""Small thumbnails of a request's output images, made on demand for the page.

`GET /api/v1/requests/{request_id}/thumbnails/{row}-{position}.jpg` (row and
position numbered from 1, as the API's products and images are) answers the
output image fitted inside 160x160 as a JPEG of a few kilobytes, so a page of
a thousand images never fetches the full outputs. Each is made once, from the
stored output, and cached under the request's prefix (`thumbnail_key`), so
deleting the request deletes its thumbnails. Only whoever may read the request
may read them; they are limited by the images' rate-limit bucket, not the
API's (api/limits.py).

Memory: the image work is `pipeline.thumbnails` (Pillow, imported when the
first thumbnail is made, so the API starts without it): a JPEG output is
decoded at a reduced scale, WebP and AVIF whole, so an output whose decoded
pixels would exceed its `MAX_SOURCE_PIXELS` gets no thumbnail (a 404 that says
why: the full image is still at its output_url), and at most `MAX_DECODING`
thumbnails are made at once per API process.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading

import falcon

from api.auth import ApiKeys
from api.errors import NotFound
from api.resources import readable_request
from pipeline.errors import NoThumbnail, ObjectNotFound, StorageError
from pipeline.keys import thumbnail_key
from pipeline.links import Links
from pipeline.records.base import RecordStore
from pipeline.storage import Storage

log = logging.getLogger(__name__)

THUMBNAIL_ROUTE = "/api/v1/requests/{request_id}/thumbnails/{image}"
MAX_DECODING = 2
# Numbered from 1; nine digits is far beyond any request (and keeps the integers small).
_IMAGE_NAME = re.compile(r"(?P<row>[1-9]\d{0,8})-(?P<position>[1-9]\d{0,8})\.jpg")


def thumbnail_path(request_id: str, row: int, position: int) -> str:
    """The thumbnail's path (0-based row and position in; the path numbers from 1)."""
    return Links("").thumbnail(request_id, row, position)


class Thumbnails:
    """GET: an output image's thumbnail (JPEG), cached in storage after the first."""

    def __init__(
        self,
        store: RecordStore,
        storage: Storage,
        *,
        keys: ApiKeys,
        max_pixels: int | None = None,  # None: pipeline.thumbnails.MAX_SOURCE_PIXELS
        max_decoding: int = MAX_DECODING,
    ):
        self.store = store
        self.storage = storage
        self.keys = keys
        self.max_pixels = max_pixels
        self._decoding = threading.BoundedSemaphore(max_decoding)

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, request_id: str, image: str
    ) -> None:
        readable_request(self.store, self.keys, req, request_id)
        match = _IMAGE_NAME.fullmatch(image)
        if match is None:
            raise NotFound(
                f"No thumbnail {image!r}: thumbnails are named <row>-<position>.jpg, "
                "both numbered from 1."
            )
        row, position = int(match["row"]) - 1, int(match["position"]) - 1
        key = thumbnail_key(request_id, row, position)
        data = self._cached(key)
        if data is None:
            data = self._make(request_id, row, position, key)
        etag = hashlib.sha256(data).hexdigest()[:32]
        resp.etag = etag
        # With keys, a shared cache must not hand one owner's thumbnail to another caller.
        resp.cache_control = ["private" if self.keys.required else "public", "max-age=86400"]
        if any(tag in ("*", etag) for tag in req.if_none_match or ()):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = "image/jpeg"
        resp.data = data

    def _cached(self, key: str) -> bytes | None:
        try:
            return self.storage.get(key)
        except ObjectNotFound:
            return None

    def _make(self, request_id: str, row: int, position: int, key: str) -> bytes:
        name = f"row {row + 1}, image {position + 1}"
        found = [
            i for i in self.store.list_images(request_id, row, row + 1) if i.position == position
        ]
        if not found or found[0].output_key is None:
            raise NotFound(f"Request {request_id} has no output image at {name} (yet).")
        output_key = found[0].output_key
        # Pillow, loaded by the first thumbnail made, never by the API's start.
        from pipeline.thumbnails import make_thumbnail

        with self._decoding:
            data = self._cached(key)  # made by another thread while this one waited
            if data is not None:
                return data
            try:
                with self.storage.open(output_key, "rb") as source:
                    data = make_thumbnail(source, max_pixels=self.max_pixels)
            except ObjectNotFound as exc:
                raise NotFound(f"The output image at {name} is no longer stored.") from exc
            except NoThumbnail as exc:
                raise NoThumbnail(
                    f"No thumbnail for {name}: {exc}. The image itself is at its output_url."
                ) from exc
        try:
            self.storage.put_chunks(key, [data])  # whole or not at all: never half a JPEG
        except StorageError as exc:
            # Served anyway; the next request makes it again.
            log.warning("thumbnail %s not cached: %s", key, exc)
        return data
