"""The Falcon application factory.

`create_app` receives every collaborator (tests pass fakes or real ones).
Building the real ones from the environment is `api.serve`'s job (`main` for
`python -m api`, `get_app` for other WSGI servers), which imports this module,
never the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import falcon

from api import docs, errors, openapi
from api.access_log import AccessLog
from api.auth import ApiKeys, RequireApiKey
from api.forwarded import ClientAddresses
from api.images import FailuresCsv, RequestImages
from api.limits import RateLimit, rate_limits
from api.requests import Cancellation, Canceller, Request, Requests
from api.resources import Health, Html, Media, OpenApi, OutputCsv, RequestStatusResource
from api.thumbnails import THUMBNAIL_ROUTE, Thumbnails
from api.uploads import MAX_WEBHOOK_URL_CHARS, Submitter, Uploads
from pipeline.clock import Clock, utc_now
from pipeline.intake import new_request_id
from pipeline.records.base import RecordStore
from pipeline.settings import Settings
from pipeline.storage import Storage

# Load balancers and orchestrators probe it often and without credentials.
UNLIMITED_PATHS = frozenset({"/health"})
# Readable without a key: the page asks for the key itself; the docs are public.
PUBLIC_PATHS = UNLIMITED_PATHS | {"/", "/docs", "/api/v1/openapi.json"}
PAGE = Path(__file__).with_name("static") / "index.html"
# Polled every few seconds by every load balancer: a line per healthy answer would
# bury the log. An unhealthy one (503) is still logged.
QUIET_PATHS = UNLIMITED_PATHS


class Runner(Submitter, Canceller, Protocol):
    """What the API needs of the runner (pipeline.driver.Driver): Uploads submits each
    recorded request; a cancel recorded in the store is passed on, so the process that
    drives the request acts at once."""


def create_app(
    settings: Settings,
    store: RecordStore,
    storage: Storage,
    runner: Runner,
    *,
    health: Callable[[], dict] | None = None,
    clock: Clock = utc_now,
    new_id: Callable[[], str] = new_request_id,
    monotonic: Callable[[], float] = time.monotonic,
    dashboard_url: str | None = None,
) -> falcon.App:
    """`monotonic` is the rate limiter's clock (seconds); `clock` stamps records."""
    # Who is calling: behind TRUSTED_PROXIES, the client they forward for.
    address = ClientAddresses(settings.trusted_proxy_networks)
    keys = ApiKeys(settings.api_key_list, address=address)
    # Limit first, so failed key guesses are limited too (by address).
    middleware: list[AccessLog | RateLimit | RequireApiKey] = []
    if settings.access_log:  # first: it times, and logs, every answer the others give too
        middleware.append(AccessLog(monotonic, quiet_paths=QUIET_PATHS, address=address))
    # The API's bucket and the images' own (each off when its per-minute setting is 0).
    middleware += rate_limits(settings, keys.client_id, clock=monotonic, open_paths=UNLIMITED_PATHS)
    middleware.append(RequireApiKey(keys, open_paths=PUBLIC_PATHS))

    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    # The file is read from its part's stream (bounded in Uploads); these bound the rest.
    multipart = falcon.media.MultipartFormHandler()
    multipart.parse_options.max_body_part_count = 16
    multipart.parse_options.max_body_part_buffer_size = MAX_WEBHOOK_URL_CHARS * 4
    app.req_options.media_handlers[falcon.MEDIA_MULTIPART] = multipart

    base_url = settings.base_url
    uploads = Uploads(settings, store, storage, runner, clock=clock, new_id=new_id, keys=keys)
    status = RequestStatusResource(
        store, storage, base_url=base_url, keys=keys, dashboard_url=dashboard_url, clock=clock
    )
    for prefix in ("/api/v1/upload", "/api/images/upload"):  # the second: seed clients
        app.add_route(prefix, uploads)
    for prefix in ("/api/v1/status/{request_id}", "/api/status/{request_id}"):  # older clients
        app.add_route(prefix, status)
    app.add_route(
        "/api/v1/requests",
        Requests(store, base_url=base_url, keys=keys, dashboard_url=dashboard_url, clock=clock),
    )
    app.add_route(
        "/api/v1/requests/{request_id}",
        Request(
            store, storage, base_url=base_url, keys=keys, dashboard_url=dashboard_url, clock=clock
        ),
    )
    app.add_route(
        "/api/v1/requests/{request_id}/images",
        RequestImages(store, storage, base_url=base_url, keys=keys),
    )
    app.add_route("/api/v1/requests/{request_id}/failures.csv", FailuresCsv(store, keys=keys))
    app.add_route(THUMBNAIL_ROUTE, Thumbnails(store, storage, keys=keys))
    app.add_route(
        "/api/v1/requests/{request_id}/cancel",
        Cancellation(
            store, runner, base_url=base_url, keys=keys, clock=clock, dashboard_url=dashboard_url
        ),
    )
    app.add_route("/api/v1/output/{request_id}.csv", OutputCsv(store, storage, keys=keys))
    app.add_route("/health", Health(health or (lambda: {})))
    spec = openapi.document(base_url, settings.option_defaults())
    app.add_route("/api/v1/openapi.json", OpenApi(spec))
    app.add_route("/docs", Html(docs.render(spec)))
    app.add_route("/", Html(PAGE.read_text(encoding="utf-8")))
    if storage.is_local:
        app.add_route("/media/{key:path}", Media(storage, store, keys=keys))
    errors.register(app)
    return app
