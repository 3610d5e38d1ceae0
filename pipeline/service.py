"""Build the real objects from Settings, and say what each component is.

The API's `get_app`, the CLI and the notebook all start here, so the laptop
defaults and the cluster configuration are the same code with different
environment variables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from distributed import Client

from pipeline.cluster import close_client, dashboard_url, start_client
from pipeline.csv_input import CsvLimits
from pipeline.deliveries import Deliveries, parse_schedule
from pipeline.fetch import FetchConfig
from pipeline.nats_publisher import NatsPublisher
from pipeline.notify import WebhookSender
from pipeline.records import MongoRecordStore, RecordStore, SqliteRecordStore
from pipeline.runner import Runner
from pipeline.settings import Settings
from pipeline.storage import Storage, storage_config
from pipeline.tasks import JobSpec

log = logging.getLogger("imagepipe")


@dataclass
class Services:
    settings: Settings
    store: RecordStore
    storage: Storage
    client: Client
    runner: Runner
    descriptions: dict[str, str]
    dashboard_url: str | None = None
    deliveries: Deliveries | None = None
    nats: NatsPublisher | None = None

    def close(self, drain_seconds: float = 5.0) -> None:
        if self.deliveries is not None:
            # Give due deliveries a moment; what is left stays pending in the
            # records and is resumed by the next API start.
            self.deliveries.wait_settled(drain_seconds)
            self.deliveries.stop()
        if self.nats is not None:
            self.nats.close()
        close_client(self.client)
        self.store.close()


def open_store(settings: Settings) -> tuple[RecordStore, str]:
    if settings.mongodb_uri:
        store = MongoRecordStore.from_uri(settings.mongodb_uri, settings.mongodb_db)
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


def csv_limits(settings: Settings) -> CsvLimits:
    return replace(
        CsvLimits(),
        max_bytes=settings.max_upload_bytes,
        max_rows=settings.max_rows,
        max_urls=settings.max_urls,
    )


def fetch_config(settings: Settings) -> FetchConfig:
    return FetchConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        total_timeout=settings.total_timeout,
        max_redirects=settings.max_redirects,
        max_bytes=settings.max_image_bytes,
        retries=settings.fetch_retries,
        backoff=settings.fetch_backoff,
        allow_private_networks=settings.allow_private_networks,
    )


def build_services(settings: Settings, *, client: Client | None = None) -> Services:
    descriptions: dict[str, str] = {}
    store, descriptions["records"] = open_store(settings)
    storage, descriptions["storage"] = open_storage(settings)
    if client is None:
        client, descriptions["dask"] = start_client(settings)
    else:
        descriptions["dask"] = f"dask: given client, dashboard {client.dashboard_link}"
    fetch = fetch_config(settings)

    def job_spec(request_id: str) -> JobSpec:
        return JobSpec(
            request_id=request_id,
            storage=storage.config,
            fetch=fetch,
            quality=settings.jpeg_quality,
            max_pixels=settings.max_pixels,
            fetch_concurrency=settings.fetch_concurrency,
        )

    sender = WebhookSender(
        secret=settings.webhook_secret,
        timeout=settings.webhook_timeout,
        allow_private_networks=settings.allow_private_networks,
    )
    deliveries = Deliveries(
        store, sender, schedule=parse_schedule(settings.webhook_retry_schedule)
    ).start()
    nats = (
        NatsPublisher(settings.nats_url, settings.nats_subject).start()
        if settings.nats_url
        else None
    )
    runner = Runner(
        client,
        store,
        storage,
        job_spec,
        batch_size=settings.batch_size,
        limits=csv_limits(settings),
        deliveries=deliveries,
        publish=nats.publish if nats else None,
        api_base_url=settings.base_url,
        default_webhook_url=settings.webhook_url,
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
        runner,
        descriptions,
        dashboard_url(client, settings),
        deliveries,
        nats,
    )
