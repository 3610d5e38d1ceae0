from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pymongo import MongoClient

from tests.mongo_server import INSTALL_COMMAND, SECANTUSD, SecantusServer, fresh_database_name
from tests.servers import ImageServer, WebhookReceiver


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test on the session's MongoDB server starts one (SecantusDB) unless MONGODB_URI
    # names it: an integration test wherever it lives (`make test-fast` leaves it out).
    for item in items:
        if "mongodb_uri" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def image_server():
    server = ImageServer().start()
    yield server
    server.stop()


@pytest.fixture
def webhook_receiver():
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory) -> Iterator[str]:
    """A MongoDB server for the session: MONGODB_URI when set (a real mongod, as
    `make test-mongo` runs), else SecantusDB started once on a free loopback port.

    A real server is pinged once, so an unreachable one fails every test that needs
    it at once (pytest caches a session fixture's error) instead of timing out in
    each. `make test-mongo` runs the tests that use it against a real mongod: list
    a new module of them in the Makefile's MONGO_TESTS.
    """
    uri = os.environ.get("MONGODB_URI")
    if uri:
        client: MongoClient
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.admin.command("ping")
        yield uri
        return
    if not SECANTUSD.exists():
        message = f"needs SecantusDB in .venv-secantus: run `{INSTALL_COMMAND}` (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing server is a broken build, not a skip
        pytest.skip(message)
    server = SecantusServer(tmp_path_factory.mktemp("secantusdb")).start()
    yield server.uri
    server.stop()


@pytest.fixture
def mongodb_database(mongodb_uri: str) -> Iterator[str]:
    """The name of a database on `mongodb_uri` that no other test uses; dropped after."""
    name = fresh_database_name()
    yield name
    client: MongoClient
    with MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)
