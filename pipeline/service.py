"""Build the real objects from Settings, say what each is, and run their lifecycle.

The API, the CLI and the notebook all start here, so the laptop defaults
and the cluster configuration are the same code with different environment
variables, and they share one lifecycle: `build_services(...).start()` (the
driver, pending webhooks, the periodic sweep that also resumes unfinished
requests) and `close()` (the driver first, so nothing it runs is failed by
the shutdown; the Dask client only if it was created here).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from distributed import Client

from pipeline.clock import utc_now
from pipeline.cluster import close_client, dashboard_url, start_client
from pipeline.completion import Completion
from pipeline.connection import DaskConnection
from pipeline.csv_input import csv_limits
from pipeline.deliveries import Deliveries
from pipeline.driver import Driver, lease_owner_id
from pipeline.fetch import fetch_config
from pipeline.hosts import host_policy
from pipeline.links import Links
from pipeline.models import RequestRecord
from pipeline.nats_publisher import NatsPublisher
from pipeline.notify import WebhookSender
from pipeline.records.base import RecordStore
from pipeline.records.mongo import MongoRecordStore
from pipeline.records.sqlite import SqliteRecordStore
from pipeline.removal import remove_request
from pipeline.settings import Settings
from pipeline.storage import Storage, storage_config
from pipeline.sweeper import Sweeper
from pipeline.tasks import JobSpec

log = logging.getLogger("imagepipe")
MONGODB_SELECTION_TIMEOUT_MS = 5000


@dataclass
class Services:
    settings: Settings
    store: RecordStore
    storage: Storage
    client: Client
    driver: Driver
    sweeper: Sweeper
    deliveries: Deliveries
    descriptions: dict[str, str]
    dashboard_url: str | None = None
    nats: NatsPublisher | None = None
    owns_client: bool = True  # False: the caller gave the client and closes it

    def start(self, *, serve_others: bool = True) -> Services:
        """Start driving. `serve_others=False` for a batch run (the CLI, a notebook):
        it drives the requests it submits and renews their leases, but leaves
        other unfinished requests and pending webhooks to the API processes."""
        self.driver.start()
        self.deliveries.start()
        self.sweeper.serve_others = serve_others
        # Its first sweep, now, takes up the requests left unfinished and queues the
        # pending webhook deliveries.
        self.sweeper.start()
        return self

    def close(self, drain_seconds: float = 5.0) -> None:
        self.sweeper.stop()
        # Requests in flight stay unfinished, their leases freed for another process
        # or the next start; never failed by the shutdown.
        self.driver.stop()
        # Give due deliveries a moment; what is left stays pending in the records.
        self.deliveries.wait_settled(drain_seconds)
        self.deliveries.stop(timeout=1.0)  # an attempt stuck past that records itself later
        if self.nats is not None:
            self.nats.close()
        if self.owns_client:
            close_client(self.client)
        self.store.close()


def open_store(settings: Settings) -> tuple[RecordStore, str]:
    if settings.mongodb_uri:
        # A server that is down answers uploads with a 503 in seconds, not after
        # pymongo's 30 s default; a timeout in the URI itself wins.
        options = (
            {}
            if "serverselectiontimeoutms" in settings.mongodb_uri.lower()
            else {"serverSelectionTimeoutMS": MONGODB_SELECTION_TIMEOUT_MS}
        )
        store = MongoRecordStore.from_uri(settings.mongodb_uri, settings.mongodb_db, **options)
        return store, f"records: MongoDB database {settings.mongodb_db!r}"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteRecordStore(settings.sqlite_path), (
        f"records: SQLite at {settings.sqlite_path} "
        "(set MONGODB_URI=mongodb://host:27017 to use MongoDB)"
    )


def open_storage(settings: Settings) -> tuple[Storage, str]:
    config = storage_config(
        settings.resolved_storage_url,
        settings.media_base_url,
        settings.s3_endpoint_url,
        url_mode=settings.output_url_mode,
        presign_expires=settings.presign_expires,
    )
    storage = Storage(config)
    hint = " (set STORAGE_URL=s3://bucket/prefix to use S3)" if storage.is_local else ""
    return storage, f"storage: {config.url}, outputs served at {storage.url('')}{hint}"


def build_services(settings: Settings, *, client: Client | None = None) -> Services:
    """Every component, built and wired but not started (`Services.start()`)."""
    descriptions: dict[str, str] = {}
    store, descriptions["records"] = open_store(settings)
    storage, descriptions["storage"] = open_storage(settings)
    owns_client = client is None
    if client is None:
        client, descriptions["dask"] = start_client(settings)
    else:
        descriptions["dask"] = f"dask: given client, dashboard {client.dashboard_link}"
    fetch = fetch_config(settings)

    def job_spec(record: RequestRecord) -> JobSpec:
        return JobSpec(
            request_id=record.request_id,
            storage=storage.config,
            fetch=fetch,
            # A request recorded before options existed comes out as the defaults say.
            options=record.options or settings.option_defaults().resolve(),
            max_pixels=settings.max_pixels,
            max_image_memory=settings.max_image_memory,
            fetch_concurrency=settings.fetch_concurrency,
            hosts=host_policy(settings),
        )

    owner = lease_owner_id()
    sender = WebhookSender(
        secret=settings.webhook_secret,
        timeout=settings.webhook_timeout,
        allow_private_networks=settings.allow_private_networks,
    )
    deliveries = Deliveries(
        store,
        sender,
        schedule=settings.retry_schedule,
        concurrency=settings.webhook_concurrency,
        owner=owner,
        lease_seconds=settings.lease_seconds,
    )
    nats = (
        NatsPublisher(settings.nats_url, settings.nats_subject).start()
        if settings.nats_url
        else None
    )
    completion = Completion(
        store,
        storage,
        deliveries,
        Links(settings.base_url),
        owner=owner,
        clock=utc_now,
        publish=nats.publish if nats else None,
        default_webhook_url=settings.webhook_url,
    )
    driver = Driver(
        DaskConnection(client, threading.Event()),
        store,
        storage,
        completion,
        job_spec,
        batch_size=settings.batch_size,
        limits=csv_limits(settings),
        owner=owner,
        lease_seconds=settings.lease_seconds,
        window=settings.max_batches_in_flight,
    )
    sweeper = Sweeper(
        store,
        driver,
        deliveries,
        lease_seconds=settings.lease_seconds,
        remove=lambda request_id: remove_request(store, storage, request_id),
        retention_days=settings.retention_days,
    )
    descriptions["sharing"] = (
        f"sharing: this process is {owner}; requests leased for {settings.lease_seconds:g}s "
        "(LEASE_SECONDS), "
        + (
            f"final requests deleted after {settings.retention_days:g} days (RETENTION_DAYS)"
            if settings.retention_days
            else "final requests kept (set RETENTION_DAYS to delete old ones)"
        )
    )
    if settings.mongodb_uri and not settings.api_base_url:
        descriptions["links"] = (
            "links: WARNING API_BASE_URL is not set; with several API processes behind a "
            f"load balancer, set it to the address clients use (now {settings.base_url})"
        )
    descriptions["webhook"] = (
        f"webhook: {settings.webhook_url}"
        if settings.webhook_url
        else "webhook: none by default (set WEBHOOK_URL, or send webhook_url with an upload)"
    )
    descriptions["signing"] = (
        "webhook signing: Standard Webhooks, HMAC-SHA256 (WEBHOOK_SECRET)"
        if settings.webhook_secret
        else "webhook signing: WARNING unsigned, receivers cannot verify (set WEBHOOK_SECRET)"
    )
    descriptions["nats"] = (
        f"nats: publishing to {settings.nats_subject} on {settings.nats_url}"
        if settings.nats_url
        else "nats: off (set NATS_URL=nats://host:4222 to publish completion events)"
    )
    descriptions["network"] = (
        "network: WARNING private and loopback addresses allowed (ALLOW_PRIVATE_NETWORKS=1)"
        if settings.allow_private_networks
        else "network: only public addresses are fetched "
        "(ALLOW_PRIVATE_NETWORKS=1 for trusted networks)"
    )
    for line in descriptions.values():
        log.info(line)
    return Services(
        settings,
        store,
        storage,
        client,
        driver,
        sweeper,
        deliveries,
        descriptions,
        dashboard_url(client, settings),
        nats,
        owns_client,
    )
