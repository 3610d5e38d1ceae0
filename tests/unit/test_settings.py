from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import Settings


def test_defaults_are_the_embedded_laptop_setup():
    s = Settings.from_env({})
    assert s.port == 5000 and s.jpeg_quality == 50
    assert s.mongodb_uri == "" and s.dask_scheduler_address == ""
    assert s.sqlite_path == Path("data/records.db")
    assert s.resolved_storage_url == (Path("data") / "objects").resolve().as_uri()
    assert s.base_url == "http://localhost:5000"
    assert s.media_base_url == "http://localhost:5000/media"
    assert s.allow_private_networks is False


def test_environment_overrides_and_types():
    s = Settings.from_env(
        {
            "PORT": "8080",
            "DATA_DIR": "/srv/pipe",
            "JPEG_QUALITY": "70",
            "ALLOW_PRIVATE_NETWORKS": "yes",
            "TOTAL_TIMEOUT": "2.5",
            "STORAGE_URL": "s3://bucket/prefix",
            "API_BASE_URL": "https://pipe.example.com/",
        }
    )
    assert (s.port, s.jpeg_quality, s.total_timeout) == (8080, 70, 2.5)
    assert s.data_dir == Path("/srv/pipe") and s.allow_private_networks is True
    assert s.base_url == "https://pipe.example.com"
    assert s.media_base_url == ""  # s3: the bucket's own address, decided by storage


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PORT": "http"}, "PORT='http' is not a valid int"),
        ({"JPEG_QUALITY": "0"}, "JPEG_QUALITY must be 1-95"),
        ({"ALLOW_PRIVATE_NETWORKS": "maybe"}, "ALLOW_PRIVATE_NETWORKS"),
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE"),
        ({"READ_TIMEOUT": "-1"}, "READ_TIMEOUT"),
        ({"API_CONNECTION_LIMIT": "10"}, "API_CONNECTION_LIMIT must be at least 16"),
        ({"API_CHANNEL_TIMEOUT": "0"}, "API_CHANNEL_TIMEOUT must be at least 1"),
        ({"API_CHANNEL_TIMEOUT": "1.5"}, "API_CHANNEL_TIMEOUT='1.5' is not a valid int"),
        ({"API_THREADS": "0"}, "API_THREADS must be at least 1"),
        ({"WEBHOOK_CONCURRENCY": "0"}, "WEBHOOK_CONCURRENCY must be at least 1"),
    ],
)
def test_bad_values_are_named(env, needle):
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_api_connection_defaults_outlast_idle_clients():
    # waitress's own defaults (100 connections, 120 s idle) let 100 silent clients
    # lock everyone out for two minutes.
    s = Settings.from_env({})
    assert s.api_connection_limit >= 1000
    assert s.api_channel_timeout <= 30
    assert s.api_threads >= 4
    s = Settings.from_env(
        {"API_CONNECTION_LIMIT": "5000", "API_CHANNEL_TIMEOUT": "60", "API_THREADS": "16"}
    )
    assert (s.api_connection_limit, s.api_channel_timeout, s.api_threads) == (5000, 60, 16)


def test_env_names_lists_every_setting():
    names = Settings.env_names()
    assert {
        "PORT",
        "DATA_DIR",
        "MONGODB_URI",
        "STORAGE_URL",
        "DASK_SCHEDULER_ADDRESS",
        "WEBHOOK_URL",
    } <= names
