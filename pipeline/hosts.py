"""Per-host politeness: a cap on concurrent downloads per host, and a pause when it says so.

Product CSVs come from few hosts, so without a cap every download thread of
a worker can hit one host at once; and a host that answers `429 Too Many
Requests` or `503 Service Unavailable` is asking every client, not one
image, to back off. One `HostLimiter` per worker process (`limiter_for`)
holds the state of each host its downloads touch, shared by all the batch
tasks and download threads of that process:

- at most `max_connections` downloads of a host run at once;
- after a 429 or 503 no download of that host starts until the pause is
  over: the host's `Retry-After` (capped at `max_pause`), else `backoff`
  seconds doubled for each pause in a row while the host keeps refusing;
- each pause also halves how many downloads of the host may run at once
  (down to one), which grows back by one every `REGROW_AFTER` seconds
  without a refusal: the host's own limit, unknown to us and shared with
  the other worker processes, is found in a few pauses instead of every
  download the cap lets start being refused again when a pause ends;
- waiting counts against the image's own deadline: an image that cannot
  start before it fails at once, with a reason saying why.

The decisions (`admit`, `answered`) are pure functions of a `HostState`, a
time and an answer; `HostLimiter` is the thin, thread-safe shell that keeps
the states and blocks the threads. The fetcher calls `HostLimiter.slot`
around each attempt, retries included, so its own retries of a 429 wait for
the same pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from pipeline.errors import ConfigError, FetchError
from pipeline.settings import DEFAULTS, Settings

# The answers that mean "slow down", for every client of the host.
SLOW_DOWN = frozenset({429, 503})
# What a Retry-After header may ask for before the policy's own cap applies:
# bounds an absurd date or number, whatever the policy says.
MAX_RETRY_AFTER = 3600.0
# Seconds without a refusal before a slowed-down host gets one more download at
# once. Each step up past the host's own limit costs a pause, so steps are rare
# next to pauses (a second or so): about one pause per 10 s at the host's limit.
REGROW_AFTER = 10.0


@dataclass(frozen=True)
class HostPolicy:
    max_connections: int = DEFAULTS.max_connections_per_host
    # The pause after a 429/503 without Retry-After; doubles while refused.
    backoff: float = DEFAULTS.host_backoff
    max_pause: float = DEFAULTS.host_pause_max  # the longest, whatever Retry-After says

    def __post_init__(self) -> None:
        # Built once at start-up from Settings: a bad value fails there, not per image.
        if self.max_connections < 1:
            raise ConfigError(
                f"max connections per host must be at least 1, got {self.max_connections}"
            )
        if self.backoff < 0 or self.max_pause < 0:
            raise ConfigError("host backoff and max pause must be 0 or more")


def host_policy(settings: Settings) -> HostPolicy:
    """The politeness the settings set (MAX_CONNECTIONS_PER_HOST, HOST_BACKOFF, HOST_PAUSE_MAX)."""
    return HostPolicy(
        max_connections=settings.max_connections_per_host,
        backoff=settings.host_backoff,
        max_pause=settings.host_pause_max,
    )


@dataclass(frozen=True)
class HostState:
    active: int = 0  # downloads of the host running now
    # Downloads allowed at once now (None: the policy's max_connections): halved by
    # each pause, one more per REGROW_AFTER seconds without one, back up to the cap.
    limit: int | None = None
    limit_since: float = float("-inf")  # (clock time) the limit last changed
    paused_since: float = float("-inf")  # (clock times) the last pause
    paused_until: float = float("-inf")  # no download starts before this
    refusals: int = 0  # pauses in a row (a 429 or 503 starts one)
    refused_with: str = ""  # what the host said last, for the images' reasons


@dataclass(frozen=True)
class Start:
    """Start the download now."""


@dataclass(frozen=True)
class Wait:
    """Wait until `until` (or until a download of the host ends), then ask again."""

    until: float


@dataclass(frozen=True)
class GiveUp:
    """The download cannot start before its deadline."""

    reason: str


def host_key(url: str) -> str:
    """The host a URL's downloads count against: its name and port (an origin's server)."""
    parts = urlsplit(url)
    name = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{name}:{port or (443 if parts.scheme == 'https' else 80)}"


def admit(
    state: HostState, policy: HostPolicy, now: float, deadline: float, host: str = "the host"
) -> Start | Wait | GiveUp:
    """May a download of this host start now, given its deadline?"""
    if now < state.paused_until:
        if state.paused_until >= deadline:
            # The pause outlasts the image's time: fail now instead of holding a thread.
            return GiveUp(
                f"{host} asked to slow down ({state.refused_with}); "
                "the download could not start within its time limit"
            )
        return Wait(state.paused_until)
    allowed = allowed_now(state, policy)
    if state.active >= allowed:
        if now >= deadline:
            slowed = f", slowed down after {state.refused_with}" if state.limit else ""
            return GiveUp(
                f"timed out waiting for a connection to {host} "
                f"({allowed} downloads of it at once{slowed})"
            )
        return Wait(deadline)
    return Start()


def allowed_now(state: HostState, policy: HostPolicy) -> int:
    if state.limit is None:
        return policy.max_connections
    return min(state.limit, policy.max_connections)


def started(state: HostState) -> HostState:
    return replace(state, active=state.active + 1)


def answered(
    state: HostState,
    policy: HostPolicy,
    now: float,
    started_at: float,
    status: int | None,
    retry_after: float | None = None,
) -> HostState:
    """The host's state after one of its downloads (started at `started_at`) ended.

    `status` is the HTTP status the host answered (200 for a download that
    succeeded), None when it never answered (connection failed, timed out).
    """
    state = replace(state, active=max(state.active - 1, 0))
    if status is None:
        return state  # says nothing about whether the host wants us to slow down
    if status not in SLOW_DOWN:
        return _succeeded(state, policy, now)
    said = f"HTTP {status}" + (f", Retry-After {retry_after:g}s" if retry_after is not None else "")
    if started_at < state.paused_since:
        # Sent before the pause began: the same refusal heard again. It may
        # lengthen the pause but neither escalates it nor slows the host further.
        until = now + pause_for(policy, max(state.refusals - 1, 0), retry_after)
        return replace(state, paused_until=max(state.paused_until, until), refused_with=said)
    # Halving what runs at once (as TCP does on a loss) finds a host's own
    # limit in a few pauses, where a fixed cap above it would be refused again
    # by every download it lets start when the pause ends.
    until = now + pause_for(policy, state.refusals, retry_after)
    return replace(
        state,
        limit=max(1, allowed_now(state, policy) // 2),
        limit_since=now,
        paused_since=now,
        paused_until=max(state.paused_until, until),
        refusals=state.refusals + 1,
        refused_with=said,
    )


def _succeeded(state: HostState, policy: HostPolicy, now: float) -> HostState:
    if state.limit is None or now - state.limit_since < REGROW_AFTER:
        return replace(state, refusals=0)
    limit = state.limit + 1
    return replace(
        state,
        refusals=0,
        limit=None if limit >= policy.max_connections else limit,
        limit_since=now,
    )


def pause_for(policy: HostPolicy, level: int, retry_after: float | None) -> float:
    """Seconds to pause a host: its Retry-After, else the backoff for `level` pauses in a row."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_pause)
    return min(policy.backoff * 2 ** min(level, 32), policy.max_pause)


def is_idle(state: HostState, now: float) -> bool:
    """Nothing to remember: the state can be dropped (a fresh one is the same)."""
    return (
        state.active == 0
        and now >= state.paused_until
        and state.refusals == 0
        and state.limit is None
    )


def parse_retry_after(value: str | None, now: float, cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), capped.

    `now` is the wall-clock time (epoch seconds) an HTTP date is measured from.
    None when there is no usable value.
    """
    if not value:
        return None
    value = value.strip()
    try:
        if value.isdigit():
            seconds = float(value)
        else:
            seconds = parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(seconds, 0.0), cap)


class _Host:
    """One host's state and the threads waiting on it."""

    def __init__(self, lock: threading.Lock):
        self.state = HostState()
        self.changed = threading.Condition(lock)
        self.waiting = 0


class HostLimiter:
    """The per-process shell: keeps each host's state, blocks threads as `admit` says."""

    def __init__(self, policy: HostPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}

    @contextmanager
    def slot(self, url: str, deadline: float) -> Iterator[None]:
        """Hold one of the host's connections for one attempt at `url`.

        Blocks while the host is paused or busy; raises FetchError (not
        transient: retrying cannot beat the deadline) when the attempt cannot
        start before `deadline` (a `clock` time). The attempt's outcome is read
        from what leaves the block: nothing (success) or a FetchError with the
        host's status and Retry-After.
        """
        key = host_key(url)
        with self._lock:
            host = self._hosts.setdefault(key, _Host(self._lock))
            host.waiting += 1
            try:
                while True:
                    now = self.clock()
                    decision = admit(host.state, self.policy, now, deadline, key)
                    if isinstance(decision, Start):
                        host.state = started(host.state)
                        started_at = now
                        break
                    if isinstance(decision, GiveUp):
                        raise FetchError(decision.reason)
                    # (bounded: an endless deadline is not a valid timeout)
                    host.changed.wait(min(decision.until - now, MAX_RETRY_AFTER))
            finally:
                host.waiting -= 1
                self._forget_if_idle(key, host)
        status: int | None = None
        retry_after: float | None = None
        try:
            yield
            status = 200
        except FetchError as exc:
            status, retry_after = exc.status, exc.retry_after
            raise
        finally:
            with self._lock:
                host.state = answered(
                    host.state, self.policy, self.clock(), started_at, status, retry_after
                )
                host.changed.notify_all()
                self._forget_if_idle(key, host)

    def state(self, url: str) -> HostState:
        """The host's state now (a fresh one when nothing is remembered)."""
        with self._lock:
            host = self._hosts.get(host_key(url))
            return host.state if host is not None else HostState()

    def _forget_if_idle(self, key: str, host: _Host) -> None:
        # Keeps the registry to the hosts in use or paused, however many a worker meets.
        idle = host.waiting == 0 and is_idle(host.state, self.clock())
        if idle and self._hosts.get(key) is host:
            del self._hosts[key]


_limiters: dict[HostPolicy, HostLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(policy: HostPolicy) -> HostLimiter:
    """The process's limiter for this policy, shared by every task and thread of the worker."""
    with _limiters_lock:
        limiter = _limiters.get(policy)
        if limiter is None:
            limiter = _limiters[policy] = HostLimiter(policy)
        return limiter
