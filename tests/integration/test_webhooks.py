"""Webhook delivery against real receivers on loopback: retries, give-ups, resume, and
slow or hostile receivers that must not delay anyone else's webhook."""

from __future__ import annotations

import base64
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from api.resources import status_body
from pipeline.deliveries import Deliveries
from pipeline.models import NewRequest
from pipeline.notify import WebhookSender
from pipeline.records.sqlite import SqliteRecordStore
from tests.servers import free_port
from tests.stalling_receiver import StallingReceiver

pytestmark = pytest.mark.integration
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
EVENT = {"event": "request.completed", "request_id": "r1", "status": "completed"}


@pytest.fixture
def store(tmp_path):
    store = SqliteRecordStore(tmp_path / "records.db")
    store.create_request(
        NewRequest(request_id="r1", created_at=datetime.now(UTC), total_rows=1, total_images=1)
    )
    yield store
    store.close()


def deliveries(store, schedule=(0.05, 0.1, 0.2), start=True, timeout=2.0, **kw) -> Deliveries:
    sender = WebhookSender(secret=SECRET, timeout=timeout, allow_private_networks=True)
    d = Deliveries(store, sender, schedule=schedule, jitter=lambda: 0.5, **kw)
    return d.start() if start else d


def final_state(store, d: Deliveries) -> dict:
    assert d.wait_idle(30)
    return store.get_request("r1").webhook


def test_failing_then_accepting_receiver_gets_one_accepted_delivery(store, webhook_receiver):
    webhook_receiver.script = [(503, {}), (429, {"Retry-After": "1"})]
    d = deliveries(store)
    d.enqueue("r1", webhook_receiver.url, EVENT)
    state = final_state(store, d)
    d.stop()

    got = webhook_receiver.deliveries
    assert [x["status"] for x in got] == [503, 429, 200]
    assert len({x["headers"]["webhook-id"] for x in got}) == 1  # stable id for dedup
    accepted = [x for x in got if x["status"] == 200]
    assert len(accepted) == 1
    assert Webhook(SECRET).verify(accepted[0]["raw"], accepted[0]["headers"]) == EVENT
    assert got[2]["at"] - got[1]["at"] >= 0.95  # Retry-After honoured over the 0.1 s schedule
    assert state["status"] == "delivered" and state["attempt_count"] == 3
    assert [a["status_code"] for a in state["attempts"]] == [503, 429, 200]
    assert state["attempts"][1]["retry_after"] == 1.0
    record = store.get_request("r1")
    shown = status_body(record, "http://api", now=record.updated_at)["webhook"]  # the status API
    assert shown["status"] == "delivered" and shown["id"] == "msg_r1"
    assert [a["status_code"] for a in shown["attempts"]] == [503, 429, 200]
    assert all(a["at"] for a in shown["attempts"]) and "payload" not in shown


def test_receiver_down_for_the_whole_schedule_ends_failed(store):
    d = deliveries(store)
    d.enqueue("r1", f"http://127.0.0.1:{free_port()}/hook", EVENT)
    state = final_state(store, d)
    d.stop()
    assert state["status"] == "failed"
    assert state["attempt_count"] == 4  # the first try plus one per scheduled delay
    assert all("delivery failed" in a["error"] for a in state["attempts"])


@pytest.mark.parametrize(("status", "extra"), [(302, {"Location": "/elsewhere"}), (410, {})])
def test_redirects_and_client_errors_give_up_at_once(store, webhook_receiver, status, extra):
    webhook_receiver.script = [(status, extra)]
    d = deliveries(store)
    d.enqueue("r1", webhook_receiver.url, EVENT)
    state = final_state(store, d)
    d.stop()
    assert state["status"] == "failed" and state["attempt_count"] == 1
    assert [x["path"] for x in webhook_receiver.deliveries] == ["/hook"]  # not followed
    assert f"HTTP {status}" in state["attempts"][0]["error"]


def test_pending_delivery_is_resumed_after_a_restart(store, webhook_receiver):
    webhook_receiver.script = [(503, {})]
    first = deliveries(store, schedule=(3600,))  # next try an hour away
    first.enqueue("r1", webhook_receiver.url, EVENT)
    assert first.wait_settled(10)  # tried once, the retry is an hour away
    first.stop()  # the API process goes away
    assert store.get_request("r1").webhook["status"] == "pending"

    later = datetime.now(UTC) + timedelta(hours=2)
    second = deliveries(store, schedule=(3600,), clock=lambda: later)
    assert second.resume() == 1
    state = final_state(store, second)
    second.stop()
    assert state["status"] == "delivered" and state["attempt_count"] == 2
    ids = {x["headers"]["webhook-id"] for x in webhook_receiver.deliveries}
    assert ids == {"msg_r1"}


def test_delivery_does_not_block_the_caller(store, webhook_receiver):
    webhook_receiver.script = [(503, {})] * 3
    d = deliveries(store, schedule=(0.2, 0.2, 0.2))
    done = threading.Event()

    def enqueue() -> None:
        d.enqueue("r1", webhook_receiver.url, EVENT)
        done.set()

    threading.Thread(target=enqueue).start()
    assert done.wait(1.0)  # enqueue returns at once; retries happen on the delivery thread
    assert final_state(store, d)["status"] == "delivered"
    d.stop()


def test_a_delivery_queued_twice_is_still_tried_on_schedule(store, webhook_receiver):
    webhook_receiver.script = [(503, {})]
    d = deliveries(store, schedule=(3600,), start=False)
    d.enqueue("r1", webhook_receiver.url, EVENT)
    assert d.resume() == 1  # the same delivery queued a second time
    d.start()
    assert d.wait_settled(10)
    d.stop()
    assert len(webhook_receiver.deliveries) == 1  # the retry waits its hour
    assert store.get_request("r1").webhook["attempt_count"] == 1


# -- slow and hostile receivers ------------------------------------------------
# The hostile receivers listen on ::1, the ordinary one on 127.0.0.1: two hosts,
# as the one-attempt-per-host rule counts them.


@pytest.fixture
def silent_receiver():
    receiver = StallingReceiver("::1").start()
    yield receiver
    receiver.stop()


def add_requests(store, *request_ids: str) -> None:
    for request_id in request_ids:
        store.create_request(
            NewRequest(
                request_id=request_id,
                created_at=datetime.now(UTC),
                total_rows=1,
                total_images=1,
            )
        )


def event_of(request_id: str) -> dict:
    return EVENT | {"request_id": request_id}


def webhook(store, request_id: str) -> dict:
    return store.get_request(request_id).webhook


def test_a_silent_receiver_does_not_delay_another_receivers_webhook(
    store, webhook_receiver, silent_receiver
):
    add_requests(store, "r2")
    d = deliveries(store, schedule=(3600,), timeout=5)
    d.enqueue("r1", silent_receiver.url, EVENT)
    silent_receiver.wait_for(1)
    assert d.resume() == 1  # every sweep queues it again while its attempt hangs

    d.enqueue("r2", webhook_receiver.url, event_of("r2"))
    got = webhook_receiver.wait_for(1, timeout=1.0)  # not after the silent one's 5 s

    assert got[0]["body"]["request_id"] == "r2"
    assert silent_receiver.holding == 1  # the slow one is still in its attempt
    assert webhook(store, "r1")["attempt_count"] == 0
    silent_receiver.release()  # hangs up: the attempt ends as a connection error
    assert d.wait_settled(10)  # its retry is an hour away
    d.stop()
    assert webhook(store, "r2")["status"] == "delivered"
    slow = webhook(store, "r1")
    assert slow["status"] == "pending" and slow["attempts"][0]["error"]
    # One attempt, recorded once, though the sweep queued it again mid-attempt.
    assert slow["attempt_count"] == silent_receiver.requests == 1


def test_many_deliveries_to_one_hostile_host_hold_one_slot(
    store, webhook_receiver, silent_receiver
):
    hostile = [f"h{n}" for n in range(12)]
    add_requests(store, *hostile, "r2")
    # Two slots: without the per-host rule the hostile host would take both.
    d = deliveries(store, schedule=(3600,), timeout=5, concurrency=2)
    for request_id in hostile:
        d.enqueue(request_id, silent_receiver.url, event_of(request_id))
    silent_receiver.wait_for(1)

    d.enqueue("r2", webhook_receiver.url, event_of("r2"))
    webhook_receiver.wait_for(1, timeout=1.0)

    assert silent_receiver.most_held == 1  # one attempt at a time at that host
    d.stop(timeout=0.5)
    silent_receiver.release()  # the stuck attempt ends (connection closed) after stop()
    assert d.wait_idle(10)
    assert webhook(store, "r2")["status"] == "delivered"
    counts = [webhook(store, request_id)["attempt_count"] for request_id in hostile]
    assert sum(counts) == silent_receiver.requests == 1  # recorded, once, after stop()
    assert all(webhook(store, r)["status"] == "pending" for r in hostile)  # left for resume()


@pytest.mark.timing
def test_stop_returns_promptly_while_an_attempt_is_stuck(store):
    dripping = StallingReceiver("127.0.0.1", drip=0.05).start()  # every read gets a byte
    try:
        d = deliveries(store, schedule=(3600,), timeout=30)
        d.enqueue("r1", dripping.url, EVENT)
        dripping.wait_for(1)

        began = time.monotonic()
        d.stop(timeout=0.5)
        stopped_in = time.monotonic() - began

        assert dripping.holding == 1  # the attempt is still stuck...
        assert stopped_in < 2.0  # ...and stop() did not wait for it beyond its timeout
        dripping.release()
        assert d.wait_idle(10)
        state = webhook(store, "r1")
        assert state["status"] == "pending"
        assert state["attempt_count"] == dripping.requests == 1
    finally:
        dripping.stop()
