"""Publish completion events to NATS (the predecessor's connectNats/notifyCompletion).

nats-py is asyncio; the publisher owns one event loop on its own thread, so
the driver calls a plain `publish(event)` that waits a bounded time. One
connect task is started with the publisher and retries until the server
answers; after that the client reconnects forever by itself, buffering
publishes while the server is away (sent on reconnect, unless the buffer
fills or the process stops first).

Core NATS is at most once: a subscriber that is not connected when an event
is published does not get it (use the webhook, or JetStream on the subject,
when every event must arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import nats
from nats.aio.client import Client

from pipeline.notify import event_body

log = logging.getLogger(__name__)


class NatsPublisher:
    def __init__(
        self,
        url: str,
        subject: str,
        *,
        timeout: float = 5.0,
        reconnect_wait: float = 0.5,
        connect=nats.connect,
    ):
        self.url = url
        self.subject = subject
        self.timeout = timeout
        self.reconnect_wait = reconnect_wait
        self._connect = connect
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats", daemon=True)
        self._connecting: asyncio.Future[Client] | None = None
        self._reachable = True  # only the first error of an outage is logged loudly
        self._closed = False

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> NatsPublisher:
        self._thread.start()
        # One connect task for the publisher's life: publishes wait on it (bounded)
        # instead of each starting a connection of its own while the server is away.
        self._run(self._start_connecting(), timeout=self.timeout)
        return self

    @property
    def connected(self) -> bool:
        client = self._client()
        return client is not None and client.is_connected

    def close(self) -> None:
        """Send what is buffered (bounded wait), close the connection, stop the loop."""
        if self._closed or not self._thread.is_alive():
            self._closed = True
            return
        self._closed = True
        with contextlib.suppress(Exception):  # closing what may already be gone
            self._run(self._shutdown(), timeout=self.timeout + 1)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # -- publishing -----------------------------------------------------------
    def publish(self, event: dict[str, Any]) -> bool:
        """True once the server has the event; False (logged) when that is not known."""
        if self._closed or self._connecting is None:
            return False
        data = event_body(event)
        try:
            sent = self._run(self._publish(data), timeout=2 * self.timeout + 1)
        except Exception as exc:  # a notification must never fail the request
            log.warning(
                "NATS: event for %s not published on %s to %s (%s)",
                event.get("request_id"),
                self.subject,
                self.url,
                f"{type(exc).__name__} {exc}".strip(),
            )
            return False
        if not sent:
            log.warning(
                "NATS: %s unreachable; event for %s buffered until it reconnects",
                self.url,
                event.get("request_id"),
            )
        return sent

    async def _publish(self, data: bytes) -> bool:
        assert self._connecting is not None
        client = await asyncio.wait_for(asyncio.shield(self._connecting), self.timeout)
        await client.publish(self.subject, data)
        if not client.is_connected:  # reconnecting: the client keeps it in its buffer
            return False
        # nats-py annotates flush(timeout: int) but hands it to asyncio.wait_for: any seconds.
        await client.flush(timeout=self.timeout)  # type: ignore[arg-type]
        return True

    # -- loop-side helpers ------------------------------------------------------
    def _run(self, coro, *, timeout: float):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()  # never leave work behind on the loop
            raise

    def _client(self) -> Client | None:
        task = self._connecting
        if task is None or not task.done() or task.cancelled() or task.exception():
            return None
        return task.result()

    async def _start_connecting(self) -> None:
        self._connecting = asyncio.ensure_future(self._connect_until_up())

    async def _connect_until_up(self) -> Client:
        # With max_reconnect_attempts=-1 nats-py's connect itself keeps trying
        # (reconnect_time_wait apart) until the server answers.
        client = await self._connect(
            self.url,
            name="imagepipe",
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # a NATS restart must not end publishing
            reconnect_time_wait=self.reconnect_wait,
            connect_timeout=self.timeout,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._reachable = True
        log.info("NATS: connected to %s", self.url)
        return client

    async def _shutdown(self) -> None:
        task = self._connecting
        if task is not None and not task.done():
            task.cancel()  # never reached the server: nothing to flush
        client = self._client()
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self.timeout)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for other in others:
            other.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _on_error(self, exc: Exception) -> None:
        if self._reachable:
            self._reachable = False
            log.warning("NATS: %s: %s; retrying every %ss", self.url, exc, self.reconnect_wait)
        else:
            log.debug("NATS: %s: %s", self.url, exc)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("NATS: disconnected from %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        self._reachable = True
        log.info("NATS: reconnected to %s", self.url)
