"""Rate limiting and API keys, through the HTTP layer (falcon.testing, no sleeps)."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from api.auth import owner_id
from api.limits import TokenBuckets
from pipeline.errors import ConfigError
from pipeline.models import NewRequest, RequestStatus
from pipeline.settings import Settings
from tests.api.support import GOOD_CSV, T0, FakeMonotonic, make_client, upload

KEY_A = "a" * 12 + "-key-one-0001"
KEY_B = "b" * 12 + "-key-two-0002"


@pytest.fixture
def clock():
    return FakeMonotonic()


def limited(settings, store, storage, runner, clock, per_minute=60, burst=3):
    settings = replace(settings, rate_limit_per_minute=per_minute, rate_limit_burst=burst)
    return make_client(settings, store, storage, runner, monotonic=clock)


def test_burst_then_429_with_retry_after_then_refill(settings, store, storage, runner, clock):
    client = limited(settings, store, storage, runner, clock)
    status = "/api/v1/status/" + "0" * 32
    codes = [client.simulate_get(status).status_code for _ in range(3)]
    assert codes == [404, 404, 404]  # within the burst: answered normally
    refused = client.simulate_get(status)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"  # 60/min: one token a second
    assert refused.json["title"] == "Too many requests"
    assert refused.headers["ratelimit-remaining"] == "0"
    clock.advance(1.0)
    assert client.simulate_get(status).status_code == 404
    assert client.simulate_get(status).status_code == 429


def test_health_is_never_limited(settings, store, storage, runner, clock):
    client = limited(settings, store, storage, runner, clock, burst=1)
    assert [client.simulate_get("/health").status_code for _ in range(10)] == [200] * 10


def test_limits_are_per_client(settings, store, storage, runner, clock):
    client = limited(settings, store, storage, runner, clock, burst=1)
    path = "/api/v1/status/" + "0" * 32
    assert client.simulate_get(path, remote_addr="10.0.0.1").status_code == 404
    assert client.simulate_get(path, remote_addr="10.0.0.1").status_code == 429
    assert client.simulate_get(path, remote_addr="10.0.0.2").status_code == 404


def test_behind_trusted_proxies_each_client_has_its_own_bucket(
    settings, store, storage, runner, clock
):
    behind = replace(settings, trusted_proxies="10.0.0.0/24")
    client = limited(behind, store, storage, runner, clock, burst=1)
    path = "/api/v1/status/" + "0" * 32

    def via_balancer(forwarded_for: str) -> int:
        headers = {"X-Forwarded-For": forwarded_for}
        return client.simulate_get(path, remote_addr="10.0.0.2", headers=headers).status_code

    assert via_balancer("198.51.100.9") == 404
    assert via_balancer("198.51.100.9") == 429  # that user's bucket is spent...
    assert via_balancer("198.51.100.10") == 404  # ...not the other users' behind the balancer
    # Entries a client writes itself are not believed: no fresh bucket for inventing one.
    assert via_balancer("203.0.113.77, 198.51.100.9") == 429


def test_the_header_is_ignored_without_trusted_proxies(settings, store, storage, runner, clock):
    client = limited(settings, store, storage, runner, clock, burst=1)
    path = "/api/v1/status/" + "0" * 32
    for n, expected in enumerate([404, 429, 429]):
        spoofed = {"X-Forwarded-For": f"198.51.100.{n}"}
        answer = client.simulate_get(path, remote_addr="172.16.0.9", headers=spoofed)
        assert answer.status_code == expected


def test_zero_disables_the_limit(settings, store, storage, runner, clock):
    client = limited(settings, store, storage, runner, clock, per_minute=0, burst=1)
    path = "/api/v1/status/" + "0" * 32
    assert {client.simulate_get(path).status_code for _ in range(50)} == {404}


def test_token_buckets_forget_idle_clients():
    clock = FakeMonotonic()
    buckets = TokenBuckets(60, 5, clock=clock, max_clients=3)
    for n in range(10):
        buckets.take(f"c{n}")
    assert len(buckets) == 3  # capped
    clock.advance(60)
    buckets.take("new")
    assert len(buckets) == 1  # the others refilled fully: same as no bucket


@pytest.fixture
def keyed(settings, store, storage, runner):
    return make_client(replace(settings, api_keys=f"{KEY_A}, {KEY_B}"), store, storage, runner)


def test_keys_required_everywhere_but_health(keyed):
    assert keyed.simulate_get("/health").status_code == 200
    missing = upload(keyed, GOOD_CSV)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json["title"] == "API key required"
    wrong = upload(keyed, GOOD_CSV, headers={"Authorization": "Bearer not-a-real-key-000000"})
    assert wrong.status_code == 401 and wrong.json["title"] == "Invalid API key"
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert keyed.simulate_get("/api/v1/status/" + "0" * 32).status_code == 401


def test_request_visible_only_to_the_key_that_made_it(keyed, store, storage):
    made = upload(keyed, GOOD_CSV, headers={"Authorization": f"Bearer {KEY_A}"})
    assert made.status_code == 202
    rid = made.json["request_id"]
    record = store.get_request(rid)
    assert record.owner == owner_id(KEY_A)
    assert KEY_A not in repr(record)  # only a digest is recorded
    status = f"/api/v1/status/{rid}"
    assert keyed.simulate_get(status, headers={"X-API-Key": KEY_A}).status_code == 200
    other = keyed.simulate_get(status, headers={"X-API-Key": KEY_B})
    assert other.status_code == 404  # not 403: existence is not revealed
    assert (
        keyed.simulate_get(f"/api/v1/output/{rid}.csv", headers={"X-API-Key": KEY_B}).status_code
        == 404
    )
    storage.put(f"requests/{rid}/images/0000000-000.jpg", b"\xff\xd8")
    media = f"/media/requests/{rid}/images/0000000-000.jpg"
    assert keyed.simulate_get(media, headers={"X-API-Key": KEY_B}).status_code == 404
    assert keyed.simulate_get(media, headers={"X-API-Key": KEY_A}).status_code == 200


def test_rate_limit_buckets_by_key_not_address(settings, store, storage, runner, clock):
    settings = replace(
        settings, api_keys=f"{KEY_A},{KEY_B}", rate_limit_per_minute=60, rate_limit_burst=1
    )
    client = make_client(settings, store, storage, runner, monotonic=clock)
    path = "/api/v1/status/" + "0" * 32
    assert client.simulate_get(path, headers={"X-API-Key": KEY_A}).status_code == 404
    assert client.simulate_get(path, headers={"X-API-Key": KEY_A}).status_code == 429
    assert client.simulate_get(path, headers={"X-API-Key": KEY_B}).status_code == 404


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"API_KEYS": "s3cr3t-shh"}, "key 1 must be at least 16"),
        ({"RATE_LIMIT_PER_MINUTE": "-1"}, "RATE_LIMIT_PER_MINUTE"),
        ({"RATE_LIMIT_BURST": "0"}, "RATE_LIMIT_BURST"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,nginx"}, r"TRUSTED_PROXIES: 'nginx' is not an address"),
    ],
)
def test_bad_protection_settings_are_named(env, needle):
    with pytest.raises(ConfigError, match=needle) as caught:
        Settings.from_env(env)
    assert "s3cr3t" not in str(caught.value)  # a rejected key is not echoed into logs


def test_keys_never_appear_in_settings_repr():
    settings = Settings.from_env({"API_KEYS": KEY_A})
    assert KEY_A not in repr(settings)


def test_every_answer_says_how_much_is_left(settings, store, storage, runner, clock):
    client = limited(settings, store, storage, runner, clock, per_minute=60, burst=3)
    first = client.simulate_get("/api/v1/status/" + "0" * 32)
    assert first.headers["ratelimit-limit"] == "3"
    assert first.headers["ratelimit-remaining"] == "2"
    assert first.headers["ratelimit-reset"] == "1"  # one token short, one a second


@pytest.mark.parametrize(("per_minute", "retry_after"), [(120, "1"), (10, "6"), (1, "60")])
def test_retry_after_is_whole_seconds_until_the_next_token(
    settings, store, storage, runner, clock, per_minute, retry_after
):
    client = limited(settings, store, storage, runner, clock, per_minute=per_minute, burst=1)
    path = "/api/v1/status/" + "0" * 32
    client.simulate_get(path)
    clock.advance(0.1)
    refused = client.simulate_get(path)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == retry_after
    assert refused.json["retry_after"] == int(retry_after)


def test_made_up_keys_do_not_buy_fresh_buckets(settings, store, storage, runner, clock):
    # Without API_KEYS a key header proves nothing, so the address is what counts.
    client = limited(settings, store, storage, runner, clock, burst=2)
    path = "/api/v1/status/" + "0" * 32
    codes = [
        client.simulate_get(path, headers={"X-API-Key": f"made-up-key-{n:08d}"}).status_code
        for n in range(4)
    ]
    assert codes == [404, 404, 429, 429]


def test_token_buckets_are_exact_under_concurrent_takers():
    buckets = TokenBuckets(60, 50, clock=FakeMonotonic())  # a frozen clock: no refill
    allowed: list[bool] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        allowed.extend(buckets.take("one-client").allowed for _ in range(25))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 50 and len(allowed) == 200


def test_docs_and_upload_page_need_no_key_but_the_api_does(keyed):
    # A browser cannot send a header to load the page that asks for the key.
    for path in ("/", "/docs", "/api/v1/openapi.json", "/health"):
        assert keyed.simulate_get(path).status_code == 200, path
    for path in ("/api/v1/status/" + "0" * 32, "/nope", "/media/x.jpg"):
        assert keyed.simulate_get(path).status_code == 401, path


def test_requests_made_before_keys_belong_to_no_key(keyed, store):
    store.create_request(
        NewRequest(request_id="e" * 32, created_at=T0, total_rows=1, total_images=1)
    )
    response = keyed.simulate_get("/api/v1/status/" + "e" * 32, headers={"X-API-Key": KEY_A})
    assert response.status_code == 404


def test_keyed_media_is_not_cached_for_everyone(keyed, storage):
    rid = upload(keyed, GOOD_CSV, headers={"X-API-Key": KEY_A}).json["request_id"]
    storage.put(f"requests/{rid}/images/0000000-000.jpg", b"\xff\xd8")
    path = f"/media/requests/{rid}/images/0000000-000.jpg"
    media = keyed.simulate_get(path, headers={"Authorization": f"bearer {KEY_A}"})
    assert media.status_code == 200
    assert "private" in media.headers["cache-control"]


def test_a_key_lists_only_its_own_requests(keyed, store):
    mine = [
        upload(keyed, GOOD_CSV, headers={"X-API-Key": KEY_A}).json["request_id"] for _ in range(2)
    ]
    theirs = upload(keyed, GOOD_CSV, headers={"X-API-Key": KEY_B}).json["request_id"]
    store.create_request(  # made before keys were turned on: nobody's
        NewRequest(request_id="e" * 32, created_at=T0, total_rows=1, total_images=1)
    )
    listed = keyed.simulate_get("/api/v1/requests", headers={"X-API-Key": KEY_A}).json
    assert sorted(r["request_id"] for r in listed["requests"]) == sorted(mine)
    assert listed["page"]["total"] == 2
    other = keyed.simulate_get("/api/v1/requests", headers={"Authorization": f"Bearer {KEY_B}"})
    assert [r["request_id"] for r in other.json["requests"]] == [theirs]
    assert keyed.simulate_get("/api/v1/requests").status_code == 401


def test_another_keys_request_cannot_be_cancelled_or_deleted(keyed, store, settings, runner):
    rid = upload(keyed, GOOD_CSV, headers={"X-API-Key": KEY_A}).json["request_id"]
    cancel = keyed.simulate_post(f"/api/v1/requests/{rid}/cancel", headers={"X-API-Key": KEY_B})
    assert cancel.status_code == 404 and cancel.json["title"] == "Request not found"
    assert runner.cancelled == []
    assert store.get_request(rid).cancel_requested_at is None

    store.finish(rid, RequestStatus.COMPLETED, T0)
    delete = keyed.simulate_delete(f"/api/v1/requests/{rid}", headers={"X-API-Key": KEY_B})
    assert delete.status_code == 404
    assert store.get_request(rid) is not None
    assert (settings.data_dir / "objects" / "requests" / rid / "input.csv").is_file()
    assert keyed.simulate_post(f"/api/v1/requests/{rid}/cancel").status_code == 401
    assert keyed.simulate_delete(f"/api/v1/requests/{rid}").status_code == 401

    # Its owner may.
    assert (
        keyed.simulate_delete(f"/api/v1/requests/{rid}", headers={"X-API-Key": KEY_A}).status_code
        == 204
    )
    assert store.get_request(rid) is None


def test_the_owner_can_cancel_its_request(keyed, store, runner):
    rid = upload(keyed, GOOD_CSV, headers={"X-API-Key": KEY_A}).json["request_id"]
    response = keyed.simulate_post(
        f"/api/v1/requests/{rid}/cancel", headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert response.status_code == 202 and response.json["cancel_requested_at"]
    assert runner.cancelled == [rid]
