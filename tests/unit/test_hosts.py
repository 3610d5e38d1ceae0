"""Per-host politeness: the pure decisions with an injected clock, and the limiter's shell."""

from __future__ import annotations

import threading
from email.utils import formatdate

import pytest

from pipeline.errors import ConfigError, FetchError
from pipeline.hosts import (
    MAX_RETRY_AFTER,
    REGROW_AFTER,
    GiveUp,
    HostLimiter,
    HostPolicy,
    HostState,
    Start,
    Wait,
    admit,
    allowed_now,
    answered,
    host_key,
    host_policy,
    is_idle,
    limiter_for,
    parse_retry_after,
    started,
)
from pipeline.settings import Settings

POLICY = HostPolicy(max_connections=4, backoff=1.0, max_pause=60.0)


def running(n: int, state: HostState | None = None) -> HostState:
    state = state or HostState()
    for _ in range(n):
        state = started(state)
    return state


# --- which host a URL counts against ---


def test_host_key_is_name_and_port_whatever_the_spelling():
    assert host_key("https://CDN.Example.com/a.jpg") == "cdn.example.com:443"
    assert host_key("http://cdn.example.com/a.jpg?x=1") == "cdn.example.com:80"
    assert host_key("http://cdn.example.com:8080/a") == "cdn.example.com:8080"
    assert host_key("http://[::1]:81/a") == "::1:81"
    # two servers on one address are two hosts (each has its own limits)
    assert host_key("http://127.0.0.1:8001/a") != host_key("http://127.0.0.1:8002/a")


# --- the cap ---


def test_downloads_start_up_to_the_cap_then_wait_for_one_to_end():
    assert admit(running(3), POLICY, now=0.0, deadline=30.0) == Start()
    assert admit(running(4), POLICY, now=0.0, deadline=30.0) == Wait(30.0)
    after_one = answered(running(4), POLICY, now=1.0, started_at=0.0, status=200)
    assert after_one.active == 3
    assert admit(after_one, POLICY, now=1.0, deadline=30.0) == Start()


def test_a_download_that_gets_no_slot_before_its_deadline_gives_up_saying_why():
    decision = admit(running(4), POLICY, now=30.0, deadline=30.0, host="cdn.example.com:443")
    assert isinstance(decision, GiveUp)
    assert "waiting for a connection to cdn.example.com:443" in decision.reason
    assert "4 downloads of it at once" in decision.reason


# --- the pause ---


def test_429_with_retry_after_pauses_the_host_for_that_long():
    state = answered(running(1), POLICY, now=10.0, started_at=9.0, status=429, retry_after=5.0)
    assert state.paused_until == 15.0
    # no download of the host starts during the pause, even with free slots
    assert admit(state, POLICY, now=12.0, deadline=40.0) == Wait(15.0)
    assert admit(state, POLICY, now=15.0, deadline=40.0) == Start()


def test_retry_after_is_capped_by_the_policy():
    state = answered(running(1), POLICY, now=0.0, started_at=0.0, status=503, retry_after=3600.0)
    assert state.paused_until == 60.0


def test_an_image_that_cannot_start_before_its_deadline_fails_at_once_saying_the_host_asked():
    state = answered(running(1), POLICY, now=0.0, started_at=0.0, status=429, retry_after=50.0)
    decision = admit(state, POLICY, now=1.0, deadline=31.0, host="cdn.example.com:443")
    assert isinstance(decision, GiveUp)  # not Wait: the pause outlasts the image's time
    assert decision.reason.startswith("cdn.example.com:443 asked to slow down (HTTP 429")
    assert "Retry-After 50s" in decision.reason


def test_without_retry_after_the_pause_grows_while_the_host_keeps_refusing():
    state, pauses, now = HostState(), [], 0.0
    for _ in range(8):
        state = answered(started(state), POLICY, now=now, started_at=now, status=503)
        pauses.append(state.paused_until - now)
        now = state.paused_until  # the next download starts when the pause ends, refused again
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    # one answer that is not a refusal ends the streak: the next pause is short again
    state = answered(started(state), POLICY, now=now, started_at=now, status=200)
    state = answered(started(state), POLICY, now=now, started_at=now, status=503)
    assert state.paused_until - now == 1.0


def test_refusals_of_downloads_sent_before_the_pause_do_not_escalate_it():
    # Four downloads in flight; the host refuses all four, one after another.
    state = running(4)
    state = answered(state, POLICY, now=1.0, started_at=0.0, status=429)
    first = state
    for t in (1.1, 1.2, 1.3):
        state = answered(state, POLICY, now=t, started_at=0.0, status=429)
    assert state.refusals == first.refusals == 1
    assert allowed_now(state, POLICY) == allowed_now(first, POLICY) == 2
    assert state.paused_until == pytest.approx(2.3)  # lengthened by the last one heard
    assert state.active == 0


def test_a_connection_failure_says_nothing_about_throttling():
    state = answered(running(2), POLICY, now=1.0, started_at=0.0, status=None)
    assert state == running(1)


# --- how many at once after a refusal ---


def test_each_pause_halves_the_downloads_allowed_at_once_down_to_one():
    policy = HostPolicy(max_connections=8, max_pause=60.0)
    state, allowed, now = HostState(), [], 0.0
    for _ in range(5):
        state = answered(started(state), policy, now=now, started_at=now, status=429, retry_after=1)
        allowed.append(allowed_now(state, policy))
        now = state.paused_until
    assert allowed == [4, 2, 1, 1, 1]
    assert admit(running(1, state), policy, now=now, deadline=now + 30) == Wait(now + 30)


def test_the_allowance_grows_back_one_step_per_quiet_interval_up_to_the_cap():
    policy = HostPolicy(max_connections=4, max_pause=60.0)
    state = answered(started(HostState()), policy, now=0.0, started_at=0.0, status=429)
    assert allowed_now(state, policy) == 2

    def ok(state: HostState, at: float) -> HostState:
        return answered(started(state), policy, now=at, started_at=at, status=200)

    state = ok(state, REGROW_AFTER - 0.5)  # too soon
    assert allowed_now(state, policy) == 2
    state = ok(state, REGROW_AFTER)
    assert allowed_now(state, policy) == 3
    state = ok(state, REGROW_AFTER + 1)  # one step per interval, however many successes
    assert allowed_now(state, policy) == 3
    state = ok(state, 2 * REGROW_AFTER)
    assert allowed_now(state, policy) == 4
    assert is_idle(state, now=2 * REGROW_AFTER)  # nothing left to remember


def test_a_paused_or_slowed_host_is_remembered():
    paused = answered(running(1), POLICY, now=0.0, started_at=0.0, status=429, retry_after=2)
    assert not is_idle(paused, now=1.0)
    assert not is_idle(paused, now=3.0)  # pause over, but the allowance is still halved
    assert is_idle(HostState(), now=0.0)
    assert not is_idle(running(1), now=0.0)


# --- Retry-After ---


def test_retry_after_in_seconds_or_as_an_http_date_capped():
    now = 1_800_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90.0)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0  # already past
    assert parse_retry_after("99999999", now) == MAX_RETRY_AFTER
    assert parse_retry_after("99999999", now, cap=60.0) == 60.0
    for unusable in (None, "", "soon", "-5", "1.5e3", "Sun, 99 Foo 2030"):
        assert parse_retry_after(unusable, now) is None


# --- settings ---


def test_settings_make_the_policy_and_refuse_nonsense():
    settings = Settings.from_env(
        {"MAX_CONNECTIONS_PER_HOST": "3", "HOST_BACKOFF": "0.5", "HOST_PAUSE_MAX": "20"}
    )
    assert host_policy(settings) == HostPolicy(max_connections=3, backoff=0.5, max_pause=20.0)
    assert Settings().max_connections_per_host == HostPolicy().max_connections == 8
    for bad in ({"MAX_CONNECTIONS_PER_HOST": "0"}, {"HOST_PAUSE_MAX": "-1"}):
        with pytest.raises(ConfigError):
            Settings.from_env(bad)
    with pytest.raises(ConfigError):
        HostPolicy(max_connections=0)


# --- the shell ---


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def refuse(status: int, retry_after: float | None = None) -> FetchError:
    return FetchError(f"HTTP {status}", transient=True, status=status, retry_after=retry_after)


def test_the_limiter_blocks_the_download_over_the_cap_until_one_ends():
    limiter = HostLimiter(HostPolicy(max_connections=2))
    url = "http://cdn.example.com/a.jpg"
    release = threading.Event()
    inside = threading.Semaphore(0)
    third_started = threading.Event()

    def download(flag: threading.Event | None = None) -> None:
        with limiter.slot(url, deadline=float("inf")):
            if flag is not None:
                flag.set()
                return
            inside.release()
            release.wait(10)

    holders = [threading.Thread(target=download) for _ in range(2)]
    for t in holders:
        t.start()
    for _ in holders:
        assert inside.acquire(timeout=10)
    third = threading.Thread(target=download, args=(third_started,))
    third.start()
    # the third is blocked (two running); it starts once one of them ends
    assert not third_started.wait(0.2)
    assert limiter.state(url).active == 2
    release.set()
    assert third_started.wait(10)
    for t in [*holders, third]:
        t.join(10)
    # nothing left to remember of a host that behaved
    assert limiter._hosts == {}


def test_the_limiter_learns_the_pause_from_the_fetch_error_and_fails_fast_past_the_deadline():
    clock = Clock(100.0)
    limiter = HostLimiter(POLICY, clock=clock)
    url = "http://cdn.example.com/a.jpg"
    with pytest.raises(FetchError), limiter.slot(url, deadline=130.0):
        raise refuse(429, retry_after=45.0)
    assert limiter.state(url).paused_until == 145.0
    # another image of the host, due at 130: cannot start before it, fails without waiting
    with pytest.raises(FetchError) as failure, limiter.slot(url, deadline=130.0):
        pytest.fail("started during the pause")
    assert "cdn.example.com:80 asked to slow down (HTTP 429, Retry-After 45s)" in str(failure.value)
    assert not failure.value.transient  # the fetch's retries could not beat the deadline
    # another host is not paused
    with limiter.slot("http://other.example.com/b.jpg", deadline=130.0):
        pass


def test_one_limiter_per_process_and_policy():
    assert limiter_for(POLICY) is limiter_for(HostPolicy(max_connections=4))
    assert limiter_for(POLICY) is not limiter_for(HostPolicy(max_connections=5))
