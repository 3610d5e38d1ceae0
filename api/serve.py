"""Serve the API with waitress: `python -m api` (what `make run` does).

`get_app()` is the entry point for other WSGI servers: it builds and starts
every component from the environment.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import falcon
from waitress.server import BaseWSGIServer, create_server

from api.access_log import ACCESS_LOGGER
from api.app import create_app
from api.connections import JsonErrorChannel, connections_summary, make_room, waitress_options
from api.uploads import max_body_bytes
from pipeline.health import Backends
from pipeline.service import Services, build_services
from pipeline.settings import Settings

log = logging.getLogger("imagepipe")


def build_from_env(settings: Settings | None = None) -> tuple[falcon.App, Services]:
    """The app and its services, built but not started."""
    settings = settings or Settings.from_env()
    services = build_services(settings)
    backends = Backends(services.store, services.storage)

    def health() -> dict:
        # The driver's client: it connects a new one when a lost scheduler outlasts
        # the old one's reconnecting (a closed client has no scheduler address).
        client = services.driver.connection.client
        running = client.status == "running"
        info = client.scheduler_info(n_workers=-1) if running else {}
        checked = backends.report()
        return {
            "records": checked["records"] | {"description": services.descriptions["records"]},
            "storage": checked["storage"] | {"description": services.descriptions["storage"]},
            "dask": {
                "healthy": running,
                "error": None if running else f"no Dask scheduler (client {client.status})",
                "status": client.status,
                "workers": len(info.get("workers", {})),
                "dashboard": services.dashboard_url,
                "scheduler": client.scheduler.address
                if client.scheduler
                else settings.dask_scheduler_address,
            },
        }

    app = create_app(
        settings,
        services.store,
        services.storage,
        services.driver,
        health=health,
        dashboard_url=services.dashboard_url,
    )
    return app, services


def get_app() -> falcon.App:
    """Entry point for WSGI servers: build everything from the environment and start it."""
    app, services = build_from_env()
    services.start()
    return app


def protection_summary(settings: Settings) -> str:
    """One log line: what guards the API and how to change it (never the keys)."""
    if settings.rate_limit_per_minute:
        limit = (
            f"{settings.rate_limit_per_minute}/min per client, bursts of "
            f"{settings.rate_limit_burst} (RATE_LIMIT_PER_MINUTE, RATE_LIMIT_BURST)"
        )
    else:
        limit = "no rate limit (set RATE_LIMIT_PER_MINUTE to add one)"
    if settings.media_rate_limit_per_minute:
        limit += (
            f"; images {settings.media_rate_limit_per_minute}/min, bursts of "
            f"{settings.media_rate_limit_burst} (MEDIA_RATE_LIMIT_PER_MINUTE, _BURST)"
        )
    else:
        limit += "; images not rate limited"
    count = len(settings.api_key_list)
    keys = f"{count} API key(s) required" if count else "open, no API keys (set API_KEYS)"
    return f"{limit}; {keys}; uploads up to {settings.max_upload_bytes:,} bytes"


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # ACCESS_LOG decides alone whether the access lines are seen, whatever LOG_LEVEL;
    # off, the app has no access middleware and waitress's refusals are not logged.
    logging.getLogger(ACCESS_LOGGER).setLevel(
        logging.INFO if settings.access_log else logging.WARNING
    )
    # SIGTERM (docker stop, CI teardown) exits through `finally`, closing the cluster cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Before anything opens files, so the embedded cluster's workers inherit it too.
    connection_limit = make_room(settings.api_connection_limit, log)
    host = settings.host
    # The port is bound before anything else starts: taken, it fails here, in a
    # second, not after a cluster was started; and the embedded cluster's own
    # (random) ports can never land on it. Nothing is answered until run().
    app = LaterApp()
    server = listen(
        app,
        host=host,
        port=settings.port,
        **waitress_options(settings, connection_limit),
        # waitress refuses bigger bodies itself (a declared length at once, a
        # chunked one as it passes the limit), so they are never buffered whole;
        # its 413 is JSON like the app's own (api.connections.JsonErrorChannel).
        max_request_body_size=max_body_bytes(settings),
        ident="imagepipe",
    )
    app.app, services = build_from_env(settings)
    try:
        services.start()
        log.info("api: listening on http://%s:%d (HOST, PORT)", host, settings.port)
        log.info("api protection: %s", protection_summary(settings))
        log.info("api connections: %s", connections_summary(settings, connection_limit))
        server.run()
    finally:
        services.close()


class LaterApp:
    """The WSGI app, given to waitress before it is built (see `main`)."""

    app: falcon.App | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None, "answered before the app was built"
        return self.app(environ, start_response)


def listen(app: Any, **options: Any) -> Any:
    """`waitress.serve`'s server, bound and listening but not yet answering (its
    `.run()` does), with the API's JSON body on what waitress refuses itself.

    waitress makes a connection with its server's `channel_class`, and the answer
    to a refused request with that channel's `error_task_class`; each listening
    server (one per address `HOST` resolves to) gets `JsonErrorChannel`.
    """
    # wasyncore's map: file descriptor -> dispatcher (the waitress stubs say -> socket).
    server_map: dict[int, object] = {}
    server = create_server(app, map=server_map, **options)  # type: ignore[arg-type]
    for dispatcher in server_map.values():
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = JsonErrorChannel
    return server
