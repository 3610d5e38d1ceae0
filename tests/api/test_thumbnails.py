"""Thumbnails of output images: small, cached once, the owner's only, never a 429 for a
page of them; and the images' own rate-limit bucket beside the API's."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import replace

import falcon
import falcon.testing
import pytest
from PIL import Image

from api import errors
from api.auth import ApiKeys, RequireApiKey, owner_id
from api.limits import is_image_path, rate_limits
from api.requests import Requests
from api.thumbnails import THUMBNAIL_ROUTE, Thumbnails, thumbnail_path
from pipeline.errors import ConfigError
from pipeline.keys import output_key, thumbnail_key
from pipeline.models import ImageItem, ImageResult, NewRequest
from pipeline.storage import Storage
from pipeline.thumbnails import BOX, make_thumbnail
from tests import imagefactory as images
from tests.api.support import T0, FakeMonotonic

KEY_A = "a" * 12 + "-key-one-0001"
KEY_B = "b" * 12 + "-key-two-0002"
RID = "7" * 32


class CountingStorage(Storage):
    """The real local storage, counting what is written through it."""

    def __init__(self, config):
        super().__init__(config)
        self.written: list[str] = []

    def put_chunks(self, key, chunks):
        self.written.append(key)
        super().put_chunks(key, chunks)


@pytest.fixture
def storage(storage):
    return CountingStorage(storage.config)


def app_with(store, storage, *, keys=(), limits=(), **kw) -> falcon.testing.TestClient:
    """The thumbnail route as create_app wires it: limits, then keys, then the resource."""
    api_keys = ApiKeys(keys)
    app = falcon.App(middleware=[*limits, RequireApiKey(api_keys, open_paths=frozenset())])
    app.add_route(THUMBNAIL_ROUTE, Thumbnails(store, storage, keys=api_keys, **kw))
    app.add_route("/api/v1/requests", Requests(store, base_url="", keys=api_keys))
    errors.register(app)
    return falcon.testing.TestClient(app)


def seed(store, storage, outputs: Mapping[tuple[int, int], bytes | None], owner=None) -> str:
    """A request whose images at (row, position) have the given stored outputs (None:
    failed), each product's line in the file being row + 2."""
    rows = max(r for r, _ in outputs) + 1
    store.create_request(
        NewRequest(RID, created_at=T0, total_rows=rows, total_images=len(outputs), owner=owner)
    )
    store.add_images(
        RID,
        [
            ImageItem(r, p, str(r), f"P{r}", f"https://img.test/{r}/{p}", line=r + 2)
            for r, p in outputs
        ],
    )
    store.mark_processing(RID, T0)
    results = []
    for (r, p), data in outputs.items():
        if data is None:
            results.append(ImageResult(r, p, ok=False, error="download failed: HTTP 404"))
        else:
            key = output_key(RID, r, p, "webp" if data[8:12] == b"WEBP" else "jpg")
            storage.put(key, data)
            results.append(ImageResult(r, p, ok=True, output_key=key))
    store.apply_results(RID, results, T0)
    return RID


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    images.photo(size).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def webp(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    images.photo(size).save(buffer, "WEBP", quality=50)
    return buffer.getvalue()


def test_thumbnail_fits_the_box_keeps_its_shape_and_is_small(store, storage):
    rid = seed(store, storage, {(0, 0): images.jpeg_rgb(), (0, 1): webp((300, 900))})
    client = app_with(store, storage)
    wide = client.simulate_get(thumbnail_path(rid, 0, 0))  # 640x480
    assert wide.status_code == 200 and wide.headers["content-type"] == "image/jpeg"
    assert decoded(wide.content).size == (160, 120)
    assert len(wide.content) < 16_000
    tall = client.simulate_get(f"/api/v1/requests/{rid}/thumbnails/1-2.jpg")  # numbered from 1
    assert decoded(tall.content).size == (53, 160)
    assert "public" in wide.headers["cache-control"]  # no keys: any cache may keep it


def test_small_outputs_are_never_enlarged(store, storage):
    rid = seed(store, storage, {(0, 0): jpeg((64, 48))})
    response = app_with(store, storage).simulate_get(thumbnail_path(rid, 0, 0))
    assert decoded(response.content).size == (64, 48)


def test_made_once_then_served_from_storage_with_an_etag(store, storage):
    rid = seed(store, storage, {(0, 0): images.jpeg_rgb(), (2, 0): images.jpeg_rgb()})
    client = app_with(store, storage)
    path = thumbnail_path(rid, 2, 0)
    first = client.simulate_get(path)
    assert storage.written == [thumbnail_key(rid, 2, 0)]
    assert thumbnail_key(rid, 2, 0) == f"requests/{rid}/thumbs/0000002-000.jpg"
    assert storage.get(thumbnail_key(rid, 2, 0)) == first.content
    again = client.simulate_get(path)
    assert again.content == first.content and storage.written == [thumbnail_key(rid, 2, 0)]
    assert again.headers["etag"] == first.headers["etag"]
    unchanged = client.simulate_get(path, headers={"If-None-Match": first.headers["etag"]})
    assert unchanged.status_code == 304 and not unchanged.content
    # Cached under the request's prefix: deleting the request deletes its thumbnails.
    assert thumbnail_key(rid, 2, 0).startswith(f"requests/{rid}/")


def test_only_the_owner_sees_a_thumbnail(store, storage):
    rid = seed(store, storage, {(0, 0): images.jpeg_rgb()}, owner=owner_id(KEY_A))
    client = app_with(store, storage, keys=(KEY_A, KEY_B))
    path = thumbnail_path(rid, 0, 0)
    assert client.simulate_get(path).status_code == 401
    other = client.simulate_get(path, headers={"X-API-Key": KEY_B})
    assert other.status_code == 404  # as for the request itself: it does not exist
    assert storage.written == []  # nothing made for a caller who may not see it
    mine = client.simulate_get(path, headers={"Authorization": f"Bearer {KEY_A}"})
    assert mine.status_code == 200
    assert "private" in mine.headers["cache-control"]  # no shared cache keeps it


def test_no_output_no_thumbnail(store, storage):
    rid = seed(store, storage, {(0, 0): images.jpeg_rgb(), (0, 1): None, (1, 0): jpeg((80, 60))})
    storage.delete(output_key(rid, 1, 0))  # recorded, but gone from storage
    client = app_with(store, storage)
    for path in (
        thumbnail_path(rid, 0, 1),  # failed: no output
        thumbnail_path(rid, 1, 0),  # output no longer stored
        thumbnail_path(rid, 5, 0),  # no such row
        f"/api/v1/requests/{rid}/thumbnails/0-1.jpg",  # numbered from 1
        f"/api/v1/requests/{rid}/thumbnails/1-1.png",
        f"/api/v1/requests/{rid}/thumbnails/..%2F..%2Finput.csv",
        f"/api/v1/requests/{'0' * 32}/thumbnails/1-1.jpg",  # no such request
    ):
        response = client.simulate_get(path)
        assert response.status_code == 404, path
        assert response.json["title"], path
    assert storage.written == []


def test_a_source_over_the_pixel_limit_is_refused_before_decoding(store, storage):
    # 1400x1400: a WebP is decoded whole; a JPEG at 1/4 (its draft, at least twice the
    # box) is 350x350.
    rid = seed(store, storage, {(0, 0): webp((1400, 1400)), (1, 0): jpeg((1400, 1400))})
    client = app_with(store, storage, max_pixels=200_000)
    refused = client.simulate_get(thumbnail_path(rid, 0, 0))
    assert refused.status_code == 404
    assert refused.json["title"] == "No thumbnail"
    assert "1400x1400" in refused.json["description"]
    assert "200,000" in refused.json["description"]
    assert storage.written == []
    drafted = client.simulate_get(thumbnail_path(rid, 1, 0))
    assert drafted.status_code == 200 and decoded(drafted.content).size == (160, 160)


def test_make_thumbnail_refuses_what_the_pipeline_never_writes():
    for data in (images.png_rgba(), images.truncated_jpeg(), images.not_an_image()):
        with pytest.raises(Exception, match="not a readable image"):
            make_thumbnail(io.BytesIO(data))
    assert decoded(make_thumbnail(io.BytesIO(images.webp()))).size[0] <= BOX[0]


def test_a_page_of_thumbnails_never_spends_the_apis_tokens(settings, store, storage):
    """200 thumbnails at once from one client: all served; the JSON API keeps its burst."""
    outputs = {(r, 0): jpeg((64, 48)) for r in range(200)}
    rid = seed(store, storage, outputs)
    settings = replace(settings, rate_limit_per_minute=60, rate_limit_burst=3)
    clock = FakeMonotonic()  # frozen: no refill during the test
    limits = rate_limits(settings, ApiKeys().client_id, clock=clock, open_paths=frozenset())
    client = app_with(store, storage, limits=limits)
    codes = [client.simulate_get(thumbnail_path(rid, r, 0)).status_code for r in range(200)]
    assert codes == [200] * 200
    listing = [client.simulate_get("/api/v1/requests").status_code for _ in range(4)]
    assert listing == [200, 200, 200, 429]  # the API's own burst, untouched by the images
    # The images' bucket has its own limit and headers.
    response = client.simulate_get(thumbnail_path(rid, 0, 0))
    assert response.headers["ratelimit-limit"] == str(settings.media_rate_limit_burst)


def test_the_images_bucket_refuses_past_its_own_burst(settings, store, storage):
    rid = seed(store, storage, {(0, 0): jpeg((64, 48))})
    settings = replace(settings, media_rate_limit_per_minute=60, media_rate_limit_burst=2)
    limits = rate_limits(
        settings, ApiKeys().client_id, clock=FakeMonotonic(), open_paths=frozenset()
    )
    client = app_with(store, storage, limits=limits)
    codes = [client.simulate_get(thumbnail_path(rid, 0, 0)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert client.simulate_get("/api/v1/requests").status_code == 200  # the API's bucket


def test_each_limit_turns_off_on_its_own(settings):
    both_off = replace(settings, rate_limit_per_minute=0, media_rate_limit_per_minute=0)
    assert rate_limits(both_off, ApiKeys().client_id, open_paths=frozenset()) == []
    images_only = replace(settings, rate_limit_per_minute=0)
    [limit] = rate_limits(images_only, ApiKeys().client_id, open_paths=frozenset())
    assert limit.covers("/media/requests/x/images/0000000-000.jpg")
    assert not limit.covers("/api/v1/requests")
    with pytest.raises(ConfigError, match="MEDIA_RATE_LIMIT_PER_MINUTE"):
        rate_limits(
            replace(settings, media_rate_limit_per_minute=-1),
            ApiKeys().client_id,
            open_paths=frozenset(),
        )


def test_image_paths_are_outputs_and_thumbnails_only():
    assert is_image_path(thumbnail_path(RID, 0, 0))
    assert is_image_path(f"/media/requests/{RID}/images/0000000-000.jpg")
    for path in (
        f"/api/v1/requests/{RID}",
        f"/api/v1/requests/{RID}/images",
        f"/api/v1/requests/{RID}/failures.csv",
        "/api/v1/upload",
        "/media",
        "/",
    ):
        assert not is_image_path(path), path
