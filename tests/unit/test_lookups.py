"""Name lookups bounded by the caller's time, shared while in flight."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.lookups import Lookups

ANSWER = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]


class Resolver:
    """Answers ANSWER, after `gate` opens when one is given; counts its calls."""

    def __init__(self, gate: threading.Event | None = None, error: BaseException | None = None):
        self.gate = gate
        self.error = error
        self.calls: list[tuple[str, int]] = []
        self.asked = threading.Event()

    def __call__(self, host, port, type=0):
        assert type == socket.SOCK_STREAM
        self.calls.append((host, port))
        self.asked.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.error is not None:
            raise self.error
        return ANSWER


def test_the_answer_is_the_resolvers():
    resolver = Resolver()
    assert Lookups(resolver).lookup("images.test", 80, 5.0) == ANSWER
    assert Lookups(resolver).lookup("images.test", 80, None) == ANSWER  # no limit: asked directly
    assert resolver.calls == [("images.test", 80)] * 2


def test_the_resolvers_errors_are_raised_to_the_caller():
    lookups = Lookups(Resolver(error=socket.gaierror(-2, "Name or service not known")))
    with pytest.raises(socket.gaierror) as caught:
        lookups.lookup("nowhere.test", 80, 5.0)
    assert caught.value.args == (-2, "Name or service not known")
    assert lookups.in_flight() == 0


def test_a_silent_name_server_costs_the_caller_only_its_time():
    gate = threading.Event()
    lookups = Lookups(Resolver(gate))
    try:
        with pytest.raises(TimeoutError, match=r"no answer within 0\.2s"):
            lookups.lookup("silent.test", 80, 0.2)
        assert lookups.in_flight() == 1  # abandoned, still asking the resolver
    finally:
        gate.set()
    # ...and its thread ends when the resolver gives up.
    for _ in range(100):
        if lookups.in_flight() == 0:
            break
        threading.Event().wait(0.05)
    assert lookups.in_flight() == 0


def test_no_time_left_asks_nothing():
    resolver = Resolver()
    with pytest.raises(TimeoutError):
        Lookups(resolver).lookup("images.test", 80, 0.0)
    assert resolver.calls == []


def test_overlapping_lookups_of_one_name_share_one_question():
    gate = threading.Event()
    resolver = Resolver(gate)
    lookups = Lookups(resolver)
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(lookups.lookup, "shop.test", 443, 10.0) for _ in range(20)]
        assert resolver.asked.wait(5)
        gate.set()
        answers = [f.result() for f in futures]
    assert answers == [ANSWER] * 20
    assert resolver.calls == [("shop.test", 443)]
    # Nothing is kept once the answer is given: the next connection asks again.
    assert lookups.lookup("shop.test", 443, 10.0) == ANSWER
    assert len(resolver.calls) == 2


def test_other_names_are_asked_while_one_name_server_is_silent():
    silent = threading.Event()

    def resolve(host, port, type=0):
        if host == "silent.test":
            silent.wait(30)
        return ANSWER

    lookups = Lookups(resolve)
    try:
        with ThreadPoolExecutor(8) as pool:
            stuck = [pool.submit(lookups.lookup, "silent.test", 80, 0.5) for _ in range(4)]
            assert lookups.lookup("fine.test", 80, 5.0) == ANSWER
            for future in stuck:
                with pytest.raises(TimeoutError):
                    future.result()
    finally:
        silent.set()


def test_past_the_thread_limit_a_caller_waits_within_its_time():
    gate = threading.Event()
    lookups = Lookups(Resolver(gate), max_threads=1)
    try:
        with pytest.raises(TimeoutError):
            lookups.lookup("first.test", 80, 0.1)  # holds the only thread
        with pytest.raises(TimeoutError, match="no lookup thread free"):
            lookups.lookup("second.test", 80, 0.2)
    finally:
        gate.set()
    assert lookups.lookup("second.test", 80, 5.0) == ANSWER  # the thread came back


@pytest.mark.timing
def test_a_caller_with_more_time_starts_the_lookup_its_starter_gave_up_on():
    # One thread, held by a silent name server for about 0.5 s.
    hold = threading.Event()
    lookups = Lookups(Resolver(hold), max_threads=1)
    with pytest.raises(TimeoutError):
        lookups.lookup("held.test", 80, 0.05)
    threading.Timer(0.5, hold.set).start()
    with ThreadPoolExecutor(2) as pool:
        hasty = pool.submit(lookups.lookup, "shop.test", 80, 0.2)  # waits for the thread...
        time.sleep(0.05)
        patient = pool.submit(lookups.lookup, "shop.test", 80, 5.0)  # ...and joins it
        with pytest.raises(TimeoutError, match="no lookup thread free"):
            hasty.result()
        assert patient.result() == ANSWER  # not handed the hasty caller's failure


def test_a_resolver_that_raises_anything_reaches_the_callers_as_itself():
    class Interrupted(BaseException):
        pass

    lookups = Lookups(Resolver(error=Interrupted("stop")))
    with pytest.raises(Interrupted, match="stop"):
        lookups.lookup("images.test", 80, 5.0)


def test_an_address_is_asked_directly(monkeypatch):
    resolver = Resolver()
    lookups = Lookups(resolver)

    def no_thread(*args, **kwargs):
        raise AssertionError("an address needs no lookup thread")

    monkeypatch.setattr("pipeline.lookups.threading.Thread", no_thread)
    assert lookups.lookup("127.0.0.1", 80, 5.0) == ANSWER
    assert lookups.lookup("::1", 80, 5.0) == ANSWER
    assert resolver.calls == [("127.0.0.1", 80), ("::1", 80)]


def test_no_thread_to_be_had_is_a_temporary_resolution_failure(monkeypatch):
    class NoThread:
        def __init__(self, *args, **kwargs):
            pass

        def start(self):
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr("pipeline.lookups.threading.Thread", NoThread)
    lookups = Lookups(Resolver())
    with pytest.raises(socket.gaierror) as caught:
        lookups.lookup("images.test", 80, 5.0)
    assert caught.value.errno == socket.EAI_AGAIN
    assert "can't start new thread" in str(caught.value)
    assert lookups.in_flight() == 0
