"""One settings object, built from the environment in one place.

`Settings.from_env()` is called by the entry points (the API's `get_app`,
the CLI, the notebook); everything below them receives the object. Nothing
reads os.environ at import time.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, OptionError
from pipeline.options import (
    DEFAULT_FORMAT,
    DEFAULT_QUALITY,
    OptionDefaults,
    check_defaults,
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Short keys can be guessed; 16 characters of token_urlsafe are 96 random bits.
MIN_API_KEY_CHARS = 16
# waitress counts its own listening sockets against its connection limit.
MIN_API_CONNECTION_LIMIT = 16


@dataclass(frozen=True)
class Settings:
    # Service
    host: str = "127.0.0.1"  # 0.0.0.0 to accept connections from other machines (containers)
    port: int = 5000
    data_dir: Path = Path("data")
    api_base_url: str = ""  # the API's public address; default http://localhost:{port}
    log_level: str = "INFO"
    # One line per HTTP request on the `imagepipe.access` logger, whatever LOG_LEVEL
    # (api/access_log.py says what a line holds and what it never holds).
    access_log: bool = True

    # Storage: any fsspec URL; default is local files under data_dir/objects
    storage_url: str = ""
    s3_endpoint_url: str = ""
    # Public base of stored outputs; default {api_base_url}/media for local storage,
    # the bucket's HTTPS address for s3
    public_base_url: str = ""
    # Output URLs on s3: "public" (PUBLIC_BASE_URL or the bucket's address; the
    # bucket must allow reads) or "presigned" (private bucket, URLs that expire)
    output_url_mode: str = "public"
    presign_expires: int = 7 * 24 * 3600  # the longest SigV4 allows

    # Records: MongoDB when set, else SQLite at data_dir/records.db
    mongodb_uri: str = ""
    mongodb_db: str = "imagepipe"

    # Dask: an existing scheduler when set, else a LocalCluster
    dask_scheduler_address: str = ""
    dask_workers: int = 0  # 0: one per core
    dask_threads_per_worker: int = 2
    dask_dashboard_address: str = ":8787"  # "" disables the dashboard

    # Output defaults, for requests that do not choose (README "Output options"):
    # the format, a quality per format (pipeline/options.py says how WebP's and
    # AVIF's were calibrated), and the box outputs fit inside (0: none).
    output_format: str = DEFAULT_FORMAT
    jpeg_quality: int = DEFAULT_QUALITY["jpeg"]
    webp_quality: int = DEFAULT_QUALITY["webp"]
    avif_quality: int = DEFAULT_QUALITY["avif"]
    max_width: int = 0
    max_height: int = 0

    # Processing
    batch_size: int = 32
    # Batches in flight on the cluster for all the requests one API process drives,
    # shared round-robin between them; 0: twice the cluster's worker threads.
    max_batches_in_flight: int = 0
    fetch_concurrency: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 30.0
    max_redirects: int = 5
    max_image_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    fetch_retries: int = 2
    fetch_backoff: float = 0.5  # seconds before the first retry; doubles, with jitter
    allow_private_networks: bool = False

    # Memory per image (README "The memory a worker needs"). The transform estimates
    # from an image's header what decoding, converting and re-encoding it takes, and
    # refuses it over MAX_IMAGE_MEMORY bytes; 0: 13 bytes per pixel of MAX_PIXELS
    # (650 MB at the default), derived in pipeline/image_plan.py.
    max_image_memory: int = 0

    # Politeness to image hosts (README "Politeness to image hosts"), per worker
    # process: at most MAX_CONNECTIONS_PER_HOST downloads of one host at once; after
    # a 429 or 503 no download of that host starts for its Retry-After (at most
    # HOST_PAUSE_MAX seconds), else for HOST_BACKOFF seconds, doubled while it refuses.
    max_connections_per_host: int = 8
    host_backoff: float = 1.0
    host_pause_max: float = 60.0

    # Sharing (README "Running several API processes"). An unfinished request is
    # driven by the one process holding its lease in the record store; a process
    # silent for LEASE_SECONDS loses its requests to the others' sweeps (every
    # LEASE_SECONDS / 3). RETENTION_DAYS > 0: final requests older than that are
    # deleted with their stored objects; 0 keeps them forever.
    lease_seconds: float = 30.0
    retention_days: float = 0.0

    # Upload limits
    max_upload_bytes: int = 50 * 1024 * 1024
    max_rows: int = 200_000
    max_urls: int = 1_000_000

    # API protection (README "Protecting the API").
    # A token bucket per client (its API key, else its address) refills at
    # RATE_LIMIT_PER_MINUTE and holds at most RATE_LIMIT_BURST requests;
    # RATE_LIMIT_PER_MINUTE=0 turns the limit off. /health is never limited.
    rate_limit_per_minute: int = 120
    rate_limit_burst: int = 30
    # Images (/media/ outputs and thumbnails) have their own bucket per client, so a
    # page of thumbnails neither spends the API's tokens nor gets refused; 0: unlimited.
    media_rate_limit_per_minute: int = 1200
    media_rate_limit_burst: int = 500
    # Comma-separated keys; when set, every route but /health needs one and each
    # request is visible only to the key that made it. repr=False: never logged.
    api_keys: str = field(default="", repr=False)
    # Comma-separated addresses or networks (CIDR) of this deployment's own proxies
    # and load balancers: from them, the client is the rightmost X-Forwarded-For
    # entry that is not one of them (api/forwarded.py); empty: the peer is the client.
    trusted_proxies: str = ""

    # API connections (README "Protecting the API", "Behind a reverse proxy").
    # waitress keeps every open connection in one event loop and stops accepting
    # at API_CONNECTION_LIMIT; it closes a connection that sent and received
    # nothing for API_CHANNEL_TIMEOUT seconds (whole seconds: waitress's unit), and
    # runs the requests themselves on API_THREADS threads. api/connections.py
    # explains the defaults.
    api_connection_limit: int = 2000
    api_channel_timeout: int = 15
    api_threads: int = 8

    # Notifications (README "Webhooks and NATS for receivers")
    webhook_url: str = ""
    webhook_timeout: float = 10.0
    # Standard Webhooks signing key: whsec_<base64> (base64 of at least 16 bytes).
    webhook_secret: str = field(default="", repr=False)
    # Seconds before each retry (jittered); after the last, the delivery is "failed".
    webhook_retry_schedule: str = "5,30,120,600,1800,3600"
    # Webhook attempts at once (at most one per receiver host), so a slow receiver
    # holds one slot and never delays the others' webhooks.
    webhook_concurrency: int = 8
    nats_url: str = ""  # e.g. nats://127.0.0.1:4222; empty: no NATS
    nats_subject: str = "images.request.completed"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}  # each parsed to its field's type by _parse
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw.strip(), f.default)
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """Every environment variable this object reads (used to check compose files)."""
        return frozenset(f.name.upper() for f in fields(cls))

    @property
    def retry_schedule(self) -> tuple[float, ...]:
        """WEBHOOK_RETRY_SCHEDULE as seconds (checked by `validate`)."""
        return parse_schedule(self.webhook_retry_schedule)

    def option_defaults(self) -> OptionDefaults:
        return OptionDefaults(
            format=self.output_format.strip().lower(),
            jpeg_quality=self.jpeg_quality,
            webp_quality=self.webp_quality,
            avif_quality=self.avif_quality,
            max_width=self.max_width or None,
            max_height=self.max_height or None,
        )

    def validate(self) -> None:
        try:
            check_defaults(self.option_defaults())
        except OptionError as exc:
            name = "OUTPUT_FORMAT" if exc.field == "format" else exc.field.upper()
            raise ConfigError(f"{name} {exc.message}") from exc
        if self.output_url_mode not in ("public", "presigned"):
            raise ConfigError(
                f"OUTPUT_URL_MODE must be 'public' or 'presigned', got {self.output_url_mode!r}"
            )
        if not 1 <= self.presign_expires <= 7 * 24 * 3600:
            raise ConfigError("PRESIGN_EXPIRES must be 1..604800 seconds")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"PORT must be 1..65535, got {self.port}")
        for name in ("batch_size", "fetch_concurrency", "dask_threads_per_worker"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be at least 1")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive")
        if self.lease_seconds < 1:
            raise ConfigError(f"LEASE_SECONDS must be at least 1, got {self.lease_seconds:g}")
        if self.retention_days < 0:
            raise ConfigError("RETENTION_DAYS must be 0 (keep forever) or more")
        if self.max_batches_in_flight < 0:
            raise ConfigError("MAX_BATCHES_IN_FLIGHT must be 0 (automatic) or more")
        if self.max_image_memory < 0:
            raise ConfigError("MAX_IMAGE_MEMORY must be 0 (derived from MAX_PIXELS) or more")
        if self.max_connections_per_host < 1:
            raise ConfigError("MAX_CONNECTIONS_PER_HOST must be at least 1")
        if self.host_backoff < 0 or self.host_pause_max < 0:
            raise ConfigError("HOST_BACKOFF and HOST_PAUSE_MAX must be 0 or more")
        self._validate_api_protection()
        try:
            parse_schedule(self.webhook_retry_schedule)
        except ValueError:
            raise ConfigError(
                "WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds, e.g. 5,30,120"
            ) from None
        if self.webhook_concurrency < 1:
            raise ConfigError("WEBHOOK_CONCURRENCY must be at least 1")

    def _validate_api_protection(self) -> None:
        for name in ("max_upload_bytes", "max_rows", "max_urls"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be at least 1")
        for name in ("api_channel_timeout", "api_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be at least 1")
        if self.api_connection_limit < MIN_API_CONNECTION_LIMIT:
            raise ConfigError(f"API_CONNECTION_LIMIT must be at least {MIN_API_CONNECTION_LIMIT}")
        for prefix in ("rate_limit", "media_rate_limit"):
            per_minute, burst = (
                getattr(self, f"{prefix}_per_minute"),
                getattr(self, f"{prefix}_burst"),
            )
            name = prefix.upper()
            if per_minute < 0:
                raise ConfigError(f"{name}_PER_MINUTE must be 0 (no limit) or more")
            if per_minute and burst < 1:
                raise ConfigError(
                    f"{name}_BURST must be at least 1 (set {name}_PER_MINUTE=0 to turn "
                    "that limit off)"
                )
        try:
            self.trusted_proxy_networks  # noqa: B018  (parsed to be checked)
        except ValueError as exc:
            raise ConfigError(f"TRUSTED_PROXIES: {exc}") from None
        for number, key in enumerate(self.api_key_list, 1):
            # Messages name the key's position, never the key: they end up in logs.
            if len(key) < MIN_API_KEY_CHARS or any(ch.isspace() for ch in key):
                raise ConfigError(
                    f"API_KEYS: key {number} must be at least {MIN_API_KEY_CHARS} characters "
                    "without spaces; make one with "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )

    @property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        """TRUSTED_PROXIES parsed; ValueError naming an entry that is not an address or network."""
        return parse_networks(self.trusted_proxies)

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The configured API keys, without blanks or repeats; empty: no keys needed."""
        keys = (key.strip() for key in self.api_keys.split(","))
        return tuple(dict.fromkeys(key for key in keys if key))

    @property
    def base_url(self) -> str:
        return (self.api_base_url or f"http://localhost:{self.port}").rstrip("/")

    @property
    def is_local_storage(self) -> bool:
        return not self.storage_url or self.storage_url.startswith(("file://", "/"))

    @property
    def media_base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"{self.base_url}/media" if self.is_local_storage else ""

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "objects").resolve().as_uri()

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "records.db"


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            lowered = raw.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
        return raw
    except ValueError as exc:
        kind = type(default).__name__
        raise ConfigError(f"{name.upper()}={raw!r} is not a valid {kind}") from exc


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """ "10.0.0.0/8, 192.0.2.7" -> networks (an address is a network of one)."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an address or a network (CIDR)") from None
    return tuple(networks)


def parse_schedule(text: str) -> tuple[float, ...]:
    """ "5,30,120" -> (5.0, 30.0, 120.0); ValueError unless non-negative seconds."""
    delays = tuple(float(part) for part in text.split(",") if part.strip())
    if not delays or any(d < 0 for d in delays):
        raise ValueError("a comma-separated list of non-negative seconds")
    return delays


# Every setting's default, for the value objects built from Settings (FetchConfig,
# CsvLimits, HostPolicy, JobSpec, `transform.compress`): their defaults are these,
# so each is written once, above.
DEFAULTS = Settings()
