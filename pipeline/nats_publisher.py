"""Publish completion events to NATS (the predecessor's connectNats/notifyCompletion).

nats-py is asyncio; the publisher owns one event loop on its own thread, so
the driver calls a plain `publish(event)` that waits a bounded time. The
client reconnects forever with a short wait, buffering publishes while the
server is away. Core NATS is at-most-once: a subscriber that is not connected
when an event is published does not get it (use the webhook, or JetStream on
the subject, when every event must arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any

import nats

log = logging.getLogger(__name__)


class NatsPublisher:
    def __init__(self, url: str, subject: str, *, timeout: float = 5.0):
        self.url = url
        self.subject = subject
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats", daemon=True)
        self._thread.start()
        self._client: Any = None

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout + 1)

    async def _connected(self):
        if self._client is None or self._client.is_closed:
            self._client = await nats.connect(
                self.url,
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # a NATS restart must not end publishing
                reconnect_time_wait=0.5,
                connect_timeout=self.timeout,
                name="imagepipe",
            )
        return self._client

    async def _publish(self, data: bytes) -> None:
        client = await self._connected()
        await client.publish(self.subject, data)
        await client.flush(timeout=self.timeout)

    def publish(self, event: dict[str, Any]) -> bool:
        """True once the server has the event; False (logged) when it could not be sent."""
        data = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
        try:
            self._call(self._publish(data))
            return True
        except Exception as exc:  # a notification must never fail the request
            log.warning("NATS publish to %s on %s failed: %s", self.url, self.subject, exc)
            return False

    def close(self) -> None:
        async def drain():
            if self._client is not None and not self._client.is_closed:
                await self._client.close()

        with contextlib.suppress(Exception):  # closing what may already be gone
            self._call(drain())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
