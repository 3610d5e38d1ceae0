"""The fairness leg (issue 11): small requests uploaded while a big one runs.

On one service (waitress + LocalCluster, the throughput leg's settings):
1. baselines: a 100-image request alone (median of 3), and the big request
   alone before and after the contended run (a shared machine drifts by ±10%
   within minutes, so one baseline cannot judge a 10% loss);
2. contended: upload the big request; once 10% of it is done, upload 1-image
   and 100-image requests spread over the middle of its expected run, and
   time each from its upload's 202 to a final status.

A small request counts only when it ended while the big one was still seen
running: one that ends after it was not contended, or had to wait for it.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import psutil
import urllib3

from pipeline.settings import Settings
from tests.bench import corpus
from tests.bench.imagehost import ImageHost
from tests.integration.service import Service

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}
MEDIUM = 100  # images in the "100-image" requests
# The first small request goes up once this share of the big one is done: past
# its staging and start-up, when it occupies the whole cluster.
START_AT = 0.10
# Small uploads are spread over this share of the big request's time alone, so
# they land in its middle (from ~10% to ~70% done) and a fair driver has time
# to finish each before the big one ends.
SPREAD = 0.6
# Status polls of a small request: 50 ms for its first 5 s, then 200 ms. Under a
# driver that makes small requests wait, seven of them polling at 20/s for
# minutes would be the harness's own load on a 2-core machine; past 5 s the
# target is missed anyway and 200 ms is within 4% of the figure.
FAST_POLL, SLOW_POLL, FAST_FOR = 0.05, 0.2, 5.0
BIG_POLL = 0.25
# The service's settings that shape sharing, recorded with the figures (None:
# not in the code under test; max_batches_in_flight 0: twice the worker threads).
SERVICE_SETTINGS = (
    "dask_threads_per_worker",
    "batch_size",
    "fetch_concurrency",
    "max_batches_in_flight",
)


class Follower(threading.Thread):
    """Polls one request's status until it is final; what it saw is readable meanwhile."""

    def __init__(self, http, url: str, accepted: float, fast: float, slow: float, timeout: float):
        super().__init__(daemon=True)
        self.http, self.url, self.accepted = http, url, accepted
        self.fast, self.slow, self.deadline = fast, slow, accepted + timeout
        self.first_seen: dict[str, float] = {}  # status -> seconds after the 202
        self.last: dict = {}
        self.last_running_at: float | None = None  # perf_counter of the last unfinished poll
        self.final_at: float | None = None  # perf_counter of the first final poll
        self.polls = 0
        self.errors = 0  # polls without an answer: the figures stand, the count is reported

    def run(self) -> None:
        while time.perf_counter() < self.deadline:
            try:
                response = self.http.request("GET", self.url)
            except urllib3.exceptions.HTTPError:
                self.errors += 1
                time.sleep(self.slow)
                continue
            now = time.perf_counter()
            assert response.status == 200, (response.status, response.data)
            self.last = json.loads(response.data)
            self.polls += 1
            self.first_seen.setdefault(self.last["status"], round(now - self.accepted, 3))
            if self.last["status"] in FINAL:
                self.final_at = now
                return
            self.last_running_at = now
            interval = self.fast if now - self.accepted < FAST_FOR else self.slow
            time.sleep(max(0.0, interval - (time.perf_counter() - now)))

    @property
    def seconds(self) -> float:
        assert self.final_at is not None, f"not final before the timeout: {self.last}"
        return self.final_at - self.accepted


def start(service: Service, http, csv: bytes, args, poll: tuple[float, float]) -> Follower:
    response = service.upload(csv)
    accepted = time.perf_counter()  # the clock starts at the 202, as a user's would
    assert response.status == 202, response.data
    url = f"{service.base_url}/api/v1/status/{json.loads(response.data)['request_id']}"
    follower = Follower(http, url, accepted, *poll, args.timeout)
    follower.start()
    return follower


def cpu_snapshot(service: Service, host: ImageHost) -> dict[str, float]:
    """CPU seconds so far: the service's process tree, the image host, this harness, all."""

    def own(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:  # a worker that exited meanwhile
            return 0.0
        return times.user + times.system

    api = psutil.Process(service.pid)
    machine = psutil.cpu_times()
    return {
        "service": own(api) + sum(own(c) for c in api.children(recursive=True)),
        "image_host": own(psutil.Process(host.pid)),
        "bench_harness": own(psutil.Process()),
        "machine": machine.user + machine.nice + machine.system + machine.irq + machine.softirq,
    }


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    used = {k: after[k] - before[k] for k in before}
    # Whatever else ran: other tenants of a shared machine, which the figures drift
    # with. The snapshots are not taken at one instant: on a quiet machine this can
    # come out a little below zero.
    used["others"] = max(0.0, used.pop("machine") - sum(used.values()))
    return {k: round(v, 1) for k, v in used.items()}


def big_alone(service: Service, http, csv: bytes, n: int, host: ImageHost, args) -> dict:
    cpu_before = cpu_snapshot(service, host)
    big = start(service, http, csv, args, (BIG_POLL, BIG_POLL))
    big.join()
    assert big.last["processed_images"] == n, big.last
    return {
        "seconds": round(big.seconds, 2),
        "images_per_s": round(n / big.seconds, 1),
        "cpu_s": cpu_used(cpu_before, cpu_snapshot(service, host)),
    }


def schedule(singles: int, hundreds: int) -> list[tuple[float, int]]:
    """(share of the spread, images) for each small request: 100-image ones among the 1s."""
    ones = [(i / singles, 1) for i in range(singles)]
    return sorted(ones + [((j + 0.5) / hundreds, MEDIUM) for j in range(hundreds)])


def contended(service, http, csvs: dict[int, bytes], n: int, alone_s: float, host, args) -> dict:
    cpu_before = cpu_snapshot(service, host)
    big = start(service, http, csvs[n], args, (BIG_POLL, BIG_POLL))
    while big.is_alive() and big.last.get("processed_images", 0) < START_AT * n:
        time.sleep(BIG_POLL)
    assert big.is_alive(), f"the big request ended before {START_AT:.0%} was seen: {big.last}"
    first_upload = time.perf_counter()
    small = []
    for share, images in schedule(args.fairness_small, args.fairness_medium):
        time.sleep(max(0.0, first_upload + share * SPREAD * alone_s - time.perf_counter()))
        if not big.is_alive():
            break  # the machine sped up since the baseline: later ones would not be contended
        progress = big.last["processed_images"] / n
        follower = start(service, http, csvs[images], args, (FAST_POLL, SLOW_POLL))
        small.append((images, progress, follower))
    big.join()
    cpu = cpu_used(cpu_before, cpu_snapshot(service, host))
    assert big.last["processed_images"] == n, big.last
    requests = []
    for images, progress, follower in small:
        follower.join()
        assert follower.final_at is not None, f"not final before the timeout: {follower.last}"
        assert big.last_running_at is not None, "the big request was never seen unfinished"
        requests.append(
            {
                "images": images,
                "uploaded_after_s": round(follower.accepted - big.accepted, 2),
                "big_done_at_upload": round(progress, 3),
                "seconds": round(follower.seconds, 3),
                "statuses": follower.first_seen,
                # Against the big one's last unfinished poll, not its first final one
                # (up to 0.25 s later): a request counted surely ended while it ran.
                "ended_during_big": follower.final_at <= big.last_running_at,
                "final_status": follower.last["status"],
                "polls": follower.polls,
                "poll_errors": follower.errors,
            }
        )
    return {
        "seconds": round(big.seconds, 2),
        "images_per_s": round(n / big.seconds, 1),
        "statuses": big.first_seen,
        "poll_errors": big.errors,
        "cpu_s": cpu,
        "small_requests": requests,
    }


def run(args, env: dict[str, str], images, host: ImageHost, workdir: Path) -> dict:
    n = args.fairness_big
    csvs = {k: corpus.build_csv(host, images, k)[0] for k in (1, MEDIUM, n)}
    service = Service(workdir / "data-fairness", **env).start()
    settings = Settings.from_env(service.env)
    http = urllib3.PoolManager(maxsize=16, retries=False, timeout=30)
    load_at_start = psutil.getloadavg()
    try:
        hundred_alone = []
        for _ in range(3):
            follower = start(service, http, csvs[MEDIUM], args, (FAST_POLL, SLOW_POLL))
            follower.join()
            hundred_alone.append(round(follower.seconds, 3))
        before = big_alone(service, http, csvs[n], n, host, args)
        during = contended(service, http, csvs, n, before["seconds"], host, args)
        after = big_alone(service, http, csvs[n], n, host, args)
    finally:
        service.stop()
    return summarize(n, settings, load_at_start, hundred_alone, before, during, after)


def summarize(n, settings, load_at_start, hundred_alone, before, during, after) -> dict:
    requests = during["small_requests"]

    def counted(images: int) -> list[float]:
        return [r["seconds"] for r in requests if r["images"] == images and r["ended_during_big"]]

    ones, hundreds = counted(1), counted(MEDIUM)
    hundred_alone_s = statistics.median(hundred_alone)
    alone_ips = [n / before["seconds"], n / after["seconds"]]
    contended_ips = n / during["seconds"]
    # The small requests' images are work the cluster owed them: the "cluster"
    # figure counts them with the big one's, so its loss is the cost of sharing
    # itself (switching, scheduling), apart from the work given away.
    given_away = sum(r["images"] for r in requests if r["ended_during_big"])
    cluster_ips = (n + given_away) / during["seconds"]
    return {
        "big_images": n,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "service": {
            "dask_workers": settings.dask_workers or os.cpu_count(),
            **{name: getattr(settings, name, None) for name in SERVICE_SETTINGS},
        },
        "hundred_alone_s": hundred_alone,
        "hundred_alone_median_s": hundred_alone_s,
        "big_alone_before": before,
        "big_alone_after": after,
        "big_alone_images_per_s": round(statistics.fmean(alone_ips), 1),
        "big_contended": during,
        "one_image_launched": sum(r["images"] == 1 for r in requests),
        "one_image_counted": len(ones),
        "one_image_median_s": round(statistics.median(ones), 3) if ones else None,
        "one_image_max_s": round(max(ones), 3) if ones else None,
        "hundred_launched": sum(r["images"] == MEDIUM for r in requests),
        "hundred_counted": len(hundreds),
        "hundred_median_s": round(statistics.median(hundreds), 3) if hundreds else None,
        "hundred_ratio": round(statistics.median(hundreds) / hundred_alone_s, 2)
        if hundreds
        else None,
        "big_loss_pct": round(100 * (1 - contended_ips / statistics.fmean(alone_ips)), 1),
        # Against the slower baseline and the faster one: how far the machine's
        # drift during this run leaves the loss uncertain.
        "big_loss_range_pct": [round(100 * (1 - contended_ips / x), 1) for x in sorted(alone_ips)],
        "cluster_images_per_s": round(cluster_ips, 1),
        "cluster_loss_pct": round(100 * (1 - cluster_ips / statistics.fmean(alone_ips)), 1),
    }


def verdicts(f: dict) -> list[tuple[str, bool | None, str]]:
    """Issue 11's targets. A small request that did not end during the big one misses its own."""

    def met(kind: str, target: bool) -> bool | None:
        if not f[f"{kind}_launched"]:
            return None
        return f[f"{kind}_counted"] == f[f"{kind}_launched"] and target

    ones = (
        f"median {f['one_image_median_s']} s, max {f['one_image_max_s']} s; "
        if f["one_image_counted"]
        else ""
    )
    hundreds = (
        f"median {f['hundred_median_s']} s vs {f['hundred_alone_median_s']} s alone: "
        f"{f['hundred_ratio']}x; "
        if f["hundred_counted"]
        else ""
    )
    before, after = f["big_alone_before"], f["big_alone_after"]
    # Met when under 10% against either baseline, missed when not under 10%
    # against either; in between the machine drifted too much to say.
    best, worst = f["big_loss_range_pct"]
    big_met = True if worst < 10 else False if best >= 10 else None
    return [
        (
            "fairness: a 1-image request during a big one completes in under 5 s (median)",
            met("one_image", (f["one_image_median_s"] or 0) < 5),
            f"{ones}{f['one_image_counted']} of {f['one_image_launched']} ended during the big one",
        ),
        (
            "fairness: a 100-image request during a big one takes about its own time (<= 1.5x)",
            met("hundred", (f["hundred_ratio"] or 0) <= 1.5),
            f"{hundreds}{f['hundred_counted']} of {f['hundred_launched']} ended during the big one",
        ),
        (
            f"fairness: the {f['big_images']}-image request loses under 10% of its throughput",
            big_met,
            f"{f['big_contended']['images_per_s']} images/s vs {f['big_alone_images_per_s']} "
            f"alone ({before['images_per_s']} before, {after['images_per_s']} after): "
            f"{f['big_loss_pct']}% lost ({best}% to {worst}% against either); "
            f"counting the small requests' images {f['cluster_loss_pct']}%",
        ),
    ]


def print_table(f: dict) -> None:
    s = f["service"]
    print(
        f"\nfairness: {f['big_images']}-image request, {f['cpus']} CPUs, "
        f"{s['dask_workers']} workers x {s['dask_threads_per_worker']} threads, "
        f"batch {s['batch_size']}, max batches in flight {s['max_batches_in_flight']}"
    )
    print(
        "images | uploaded, s after the big one | big one done | seconds to final | "
        "ended during the big one | statuses first seen, s after the 202"
    )
    for r in f["big_contended"]["small_requests"]:
        statuses = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        print(
            f"{r['images']} | {r['uploaded_after_s']} | {r['big_done_at_upload']:.0%} | "
            f"{r['seconds']} | {r['ended_during_big']} | {statuses}"
        )
    print(f"100 images alone: {f['hundred_alone_s']} s")
    for name in ("big_alone_before", "big_contended", "big_alone_after"):
        r = f[name]
        print(f"{name}: {r['seconds']} s, {r['images_per_s']} images/s, CPU s {r['cpu_s']}")
