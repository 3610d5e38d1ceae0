"""The fetcher against a real HTTP server on loopback."""

import pytest

from pipeline.errors import FetchError
from pipeline.fetch import FetchConfig, Fetcher

pytestmark = pytest.mark.integration


def fetcher(**overrides):
    config = FetchConfig(allow_private_networks=True, backoff=0.01, **overrides)
    return Fetcher(config)


def test_fetches_bytes(image_server):
    url = image_server.add("/a.jpg", b"x" * 200_000)
    assert fetcher().fetch(url) == b"x" * 200_000


def test_loopback_refused_without_the_switch(image_server):
    url = image_server.add("/a.jpg", b"x")
    with pytest.raises(FetchError, match="non-public"):
        Fetcher(FetchConfig()).fetch(url)
    assert image_server.hits.get("/a.jpg") is None


def test_follows_redirects_up_to_the_limit(image_server):
    target = image_server.add("/final.jpg", b"img")
    image_server.add("/r1", status=302, headers={"Location": "/final.jpg"})
    assert fetcher().fetch(image_server.url("/r1")) == b"img"
    image_server.add("/loop", status=301, headers={"Location": "/loop"})
    with pytest.raises(FetchError, match="too many redirects"):
        fetcher(max_redirects=3).fetch(image_server.url("/loop"))
    assert image_server.hits["/loop"] == 4
    assert target


def test_permanent_errors_are_not_retried(image_server):
    image_server.add("/gone", status=404)
    with pytest.raises(FetchError, match="HTTP 404") as caught:
        fetcher().fetch(image_server.url("/gone"))
    assert not caught.value.transient
    assert image_server.hits["/gone"] == 1


def test_transient_errors_are_retried_then_reported(image_server):
    image_server.add("/busy", status=503)
    with pytest.raises(FetchError, match="HTTP 503"):
        fetcher(retries=2).fetch(image_server.url("/busy"))
    assert image_server.hits["/busy"] == 3


def test_size_limit_stops_reading(image_server):
    url = image_server.add("/big", b"x" * 300_000)
    with pytest.raises(FetchError, match="over the limit"):
        fetcher(max_bytes=100_000).fetch(url)


def test_read_timeout(image_server):
    url = image_server.add("/slow", b"x", delay=2.0)
    with pytest.raises(FetchError, match="timed out"):
        fetcher(read_timeout=0.3, retries=0).fetch(url)


def test_connection_refused_is_transient():
    from tests.servers import free_port

    with pytest.raises(FetchError, match="connection failed") as caught:
        fetcher(retries=0).fetch(f"http://127.0.0.1:{free_port()}/x.jpg")
    assert caught.value.transient
