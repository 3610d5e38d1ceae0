"""How the API's server holds connections: the open-file plan and waitress's options."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from waitress.adjustments import Adjustments

from api.connections import (
    FD_RESERVE,
    FDS_PER_CONNECTION,
    descriptors_needed,
    plan_descriptors,
    waitress_options,
)
from pipeline.settings import Settings

INF = -1  # resource.RLIM_INFINITY on Linux and macOS
ROOT = Path(__file__).resolve().parents[2]
NEEDED_FOR_2000 = descriptors_needed(2000)


def test_a_soft_limit_that_fits_is_left_alone():
    for soft in (NEEDED_FOR_2000, 1_048_576, INF):
        plan = plan_descriptors(2000, soft=soft, hard=INF, infinity=INF)
        assert (plan.connection_limit, plan.new_soft_limit, plan.warning) == (2000, None, False)


def test_a_low_soft_limit_is_raised_to_the_hard_limit():
    plan = plan_descriptors(2000, soft=1024, hard=524_288, infinity=INF)
    assert (plan.connection_limit, plan.new_soft_limit, plan.warning) == (2000, 524_288, False)
    assert "raised from 1024 to 524288" in plan.note


def test_an_unlimited_hard_limit_raises_the_soft_one_to_what_is_needed():
    # macOS refuses RLIM_INFINITY as a soft limit; the number needed always works.
    plan = plan_descriptors(2000, soft=256, hard=INF, infinity=INF)
    assert (plan.connection_limit, plan.new_soft_limit) == (2000, NEEDED_FOR_2000)


def test_a_hard_limit_too_low_lowers_the_connection_limit_and_says_how_to_fix_it():
    plan = plan_descriptors(2000, soft=1024, hard=4096, infinity=INF)
    fits = (4096 - FD_RESERVE) // FDS_PER_CONNECTION
    assert (plan.connection_limit, plan.new_soft_limit, plan.warning) == (fits, 4096, True)
    assert plan.connection_limit * FDS_PER_CONNECTION + FD_RESERVE <= 4096
    assert f"accepting at most {fits}" in plan.note and "ulimit -Hn" in plan.note


def test_a_tiny_hard_limit_still_leaves_the_minimum():
    plan = plan_descriptors(2000, soft=256, hard=256, infinity=INF)
    assert (plan.connection_limit, plan.new_soft_limit, plan.warning) == (16, None, True)


def test_waitress_takes_the_options_and_the_settings_reach_it():
    settings = Settings.from_env(
        {"API_CONNECTION_LIMIT": "3000", "API_CHANNEL_TIMEOUT": "7", "API_THREADS": "12"}
    )
    adjustments = Adjustments(**waitress_options(settings, connection_limit=1500))
    assert adjustments.connection_limit == 1500  # what the open-file plan allows
    assert (adjustments.channel_timeout, adjustments.threads) == (7, 12)
    # select() stops the server at descriptor 1024; poll() does not.
    assert adjustments.asyncore_use_poll is True
    # Idle connections go within a second of their timeout, not 30 s later.
    assert adjustments.cleanup_interval <= 1


def make_room_in_a_process(soft: int, hard: int, connection_limit: int) -> list[str]:
    """Run make_room in a fresh process started with these limits; its log and limits."""
    script = textwrap.dedent(
        f"""
        import logging, resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
        logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
        log = logging.getLogger("t")
        log.setLevel(logging.INFO)
        from api.connections import make_room
        print("limit", make_room({connection_limit}, log))
        print("nofile", *resource.getrlimit(resource.RLIMIT_NOFILE))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def hard_limit():
    resource = pytest.importorskip("resource")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * descriptors_needed(100):
        pytest.skip(f"the hard open-file limit ({hard}) is too low to lower and raise")
    return hard


def test_make_room_raises_the_soft_limit_of_the_process(hard_limit):
    needed = descriptors_needed(100)
    ceiling = 2 * needed if hard_limit == INF else hard_limit
    lines = make_room_in_a_process(soft=needed - 1, hard=ceiling, connection_limit=100)
    assert lines[-2:] == ["limit 100", f"nofile {ceiling} {ceiling}"]
    assert lines[0].startswith(f"INFO api open files: soft limit raised from {needed - 1}")


def test_make_room_lowers_the_connection_limit_under_a_low_hard_limit(hard_limit):
    low = descriptors_needed(100) - 1
    lines = make_room_in_a_process(soft=low, hard=low, connection_limit=100)
    fits = (low - FD_RESERVE) // FDS_PER_CONNECTION
    assert lines[-2:] == [f"limit {fits}", f"nofile {low} {low}"]
    assert lines[0].startswith("WARNING api open files:")
