from __future__ import annotations

import pytest

from tests.servers import ImageServer, WebhookReceiver


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
