"""Run the benchmark: `make bench`, or `python -m tests.bench` with the legs and sizes wanted.

    python -m tests.bench                                  every leg, full sizes (~40 min)
    python -m tests.bench --legs throughput --sizes 1000   a quick throughput run (~1 min)
    python -m tests.bench --legs fairness --fairness-big 3000   a quick fairness run (~2 min)
    python -m tests.bench --legs formats                   output formats (~1.5 min)
    python -m tests.bench --legs resize512                 ours vs img2dataset at 512 (~2.5 min)
    python -m tests.bench --legs resize512 --resize-images 300 --resize-repeats 1   (~40 s)
    python -m tests.bench.calibrate                        the WebP/AVIF quality calibration
                                                           (not a leg: ~35 min, see calibrate.py)

Times are for a 2-core machine; the full run is mostly the throughput leg's 100k
request (~17 min) and the fairness leg (9-13 min).

`make bench BENCH_ARGS="--legs formats,resize512"` runs the same through make,
which also builds the img2dataset venv the resize512 leg needs. The legs run one
after another, never at once (the machine's cores are the thing measured).

throughput (issue 7): for each size N, start the real service (waitress +
LocalCluster, embedded defaults), upload a CSV of N image URLs served from a
loopback host with injected latency, poll status with concurrent clients,
wait for the webhook. In the same run, measure the compute floor on the same
images.

fairness (issue 11, fairness.py): small requests uploaded while a big one
runs, against each one alone on the same service.

formats (issue 13, formats.py): jpeg, webp and avif at the server's default
qualities over the corpus: bytes, mean luma SSIM against the source, CPU ms.

resize512 (issue 13, resize.py): the service with max_width=max_height=512
against img2dataset on the same URLs, and a bare-Pillow floor for the resize.

Prints tables and the targets judged, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import urllib3

from tests.bench import corpus, fairness, floor, formats, resize
from tests.bench.imagehost import ImageHost
from tests.integration.service import Service
from tests.servers import WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
LEGS = ("throughput", "fairness", "formats", "resize512")


class RssMonitor(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.stop = threading.Event()
        self.api_peak = 0
        self.worker_peak = 0
        self.cpu: dict[str, float] = {}  # CPU seconds so far, by role

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.api_peak = max(self.api_peak, self.process.memory_info().rss)
                api = self.process.cpu_times()
                workers = 0.0
                for child in self.process.children(recursive=True):
                    self.worker_peak = max(self.worker_peak, child.memory_info().rss)
                    times = child.cpu_times()
                    workers += times.user + times.system
                self.cpu = {"api": api.user + api.system, "workers": workers}
            except psutil.Error:
                pass
            self.stop.wait(self.interval)


def poll(url: str, interval: float, stop: threading.Event, latencies: list[float]) -> None:
    http = urllib3.PoolManager(maxsize=1, retries=False, timeout=10)
    while not stop.is_set():
        start = time.perf_counter()
        response = http.request("GET", url)
        elapsed = time.perf_counter() - start
        if response.status == 200:
            latencies.append(elapsed)
        stop.wait(max(0.0, interval - elapsed))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def measure_floor(sample: list[bytes], times: int) -> list[float]:
    return [floor.measure(sample, floor.PIPELINE_ENCODER) for _ in range(times)]


def run_request(service: Service, receiver: WebhookReceiver, csv: bytes, n: int, args) -> dict:
    """One request through the running service: upload, poll while it runs, webhook."""
    delivered = len(receiver.deliveries)
    start = time.perf_counter()
    response = service.upload(csv)
    upload_s = time.perf_counter() - start
    assert response.status == 202, response.data
    request_id = json.loads(response.data)["request_id"]

    stop = threading.Event()
    latencies: list[float] = []
    status_url = f"{service.base_url}/api/v1/status/{request_id}"
    pollers = [
        threading.Thread(
            target=poll, args=(status_url, args.poll_interval, stop, latencies), daemon=True
        )
        for _ in range(args.pollers)
    ]
    for p in pollers:
        p.start()
    receiver.wait_for(delivered + 1, timeout=args.timeout)
    elapsed = time.perf_counter() - start
    stop.set()
    for p in pollers:
        p.join()
    final = service.get_json(f"/api/v1/status/{request_id}")
    assert final["processed_images"] == n, final
    return {
        "seconds": elapsed,
        "upload_s": upload_s,
        "latencies": latencies,
        "status": final["status"],
        "failed": final["failed_images"],
    }


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def service_env(args) -> dict[str, str]:
    """The service's settings under test, the same for every leg."""
    env = {"DASK_WORKERS": str(args.workers), "DASK_THREADS_PER_WORKER": str(args.threads)}
    if args.batch_size:
        env["BATCH_SIZE"] = str(args.batch_size)
    return env


def run_size(n: int, args, images, host: ImageHost, workdir: Path) -> dict:
    sample = [im.data for im in images] * 2
    # The floor drifts with the machine (other tenants, clocks): it is measured
    # before and after the pipeline runs and the median is used.
    floors = measure_floor(sample, 3)
    floor_plain_ips = floor.measure(sample, floor.PILLOW_DEFAULTS)
    mean_mp = statistics.fmean(im.megapixels for im in images)
    repeats = args.repeats or max(1, min(3, 3000 // n))

    receiver = WebhookReceiver().start()
    service = Service(workdir / f"data-{n}", WEBHOOK_URL=receiver.url, **service_env(args)).start()
    monitor = RssMonitor(service.pid)
    monitor.start()
    host_process, harness = psutil.Process(host.pid), psutil.Process()
    time.sleep(1.0)  # one sample of the idle service, so start-up CPU is not counted
    cpu_at_start = dict(monitor.cpu)
    host_at_start, harness_at_start = cpu_seconds(host_process), cpu_seconds(harness)
    csv, megapixels = corpus.build_csv(host, images, n)
    try:
        runs = [run_request(service, receiver, csv, n, args) for _ in range(repeats)]
        cpu = {k: v - cpu_at_start.get(k, 0.0) for k, v in monitor.cpu.items()}
        cpu["image_host"] = cpu_seconds(host_process) - host_at_start
        # Pollers, webhook receiver and uploads: they share the machine too.
        cpu["bench_harness"] = cpu_seconds(harness) - harness_at_start
    finally:
        monitor.stop.set()
        service.stop()
        receiver.stop()
    floors += measure_floor(sample, 2)
    floor_ips = statistics.median(floors)
    elapsed = statistics.median(r["seconds"] for r in runs)
    latencies = [x for r in runs for x in r["latencies"]]
    e2e_ips = n / elapsed
    return {
        "images": n,
        "status": runs[-1]["status"],
        "failed_images": runs[-1]["failed"],
        "requests": repeats,
        "seconds": round(elapsed, 2),
        "seconds_each": [round(r["seconds"], 2) for r in runs],
        "images_per_s": round(e2e_ips, 1),
        "megapixels_per_s": round(megapixels / elapsed, 1),
        "ms_per_image": round(1000 * elapsed / n, 2),
        "floor_images_per_s": round(floor_ips, 1),
        "floor_measurements": [round(f, 1) for f in floors],
        "floor_megapixels_per_s": round(floor_ips * mean_mp, 1),
        "ratio_to_floor": round(e2e_ips / floor_ips, 3),
        "floor_pillow_defaults_images_per_s": round(floor_plain_ips, 1),
        "ratio_to_pillow_defaults_floor": round(e2e_ips / floor_plain_ips, 3),
        "upload_s": round(max(r["upload_s"] for r in runs), 3),
        "status_polls": len(latencies),
        "status_p50_ms": round(1000 * percentile(latencies, 50), 2) if latencies else None,
        "status_p99_ms": round(1000 * percentile(latencies, 99), 2) if latencies else None,
        "api_peak_rss_mb": round(monitor.api_peak / 2**20, 1),
        "worker_peak_rss_mb": round(monitor.worker_peak / 2**20, 1),
        # CPU ms per image by process, from the first upload to the last webhook
        "cpu_ms_per_image": {k: round(1000 * v / (n * repeats), 2) for k, v in cpu.items()},
        "floor_cpu_ms_per_image": round(1000 * (os.cpu_count() or 1) / floor_ips, 2),
    }


def verdicts(results: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets against this run's figures (None: size not in this run)."""
    by_size = {r["images"]: r for r in results}
    out: list[tuple[str, bool | None, str]] = []
    for n in (1000, 10000):
        r = by_size.get(n)
        out.append(
            (
                f"{n} images: throughput >= 0.85 of the floor",
                None if r is None else r["ratio_to_floor"] >= 0.85,
                "" if r is None else f"ratio {r['ratio_to_floor']}",
            )
        )
    big, small = by_size.get(100000), by_size.get(1000)
    out.append(
        (
            "100k images: API peak RSS <= 400 MB (LocalCluster's scheduler included)",
            None if big is None else big["api_peak_rss_mb"] <= 400,
            "" if big is None else f"{big['api_peak_rss_mb']} MB",
        )
    )
    growth = big["ms_per_image"] / small["ms_per_image"] if big and small else None
    out.append(
        (
            "100k images: time per image within 10% of the 1k run",
            None if growth is None else growth <= 1.10,
            "" if growth is None else f"{growth:.3f}x",
        )
    )
    out.append(
        (
            "100k-URL CSV: upload answered in under 2 s",
            None if big is None else big["upload_s"] < 2,
            "" if big is None else f"{big['upload_s']} s",
        )
    )
    p99 = max((r["status_p99_ms"] or 0 for r in results), default=None)
    out.append(
        (
            "status p99 under 50 ms during processing",
            None if p99 is None else p99 < 50,
            "" if p99 is None else f"worst p99 {p99} ms",
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument(
        "--legs", default=",".join(LEGS), help=f"comma-separated, of: {', '.join(LEGS)}"
    )
    parser.add_argument("--sizes", default="1000,10000,100000", help="throughput leg's requests")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per image request")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=0, help="LocalCluster workers (0: cores)")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the service default")
    parser.add_argument(
        "--repeats", type=int, default=0, help="requests per size (0: 3 up to 1k, then 1)"
    )
    parser.add_argument("--fairness-big", type=int, default=20000, help="images of the big request")
    parser.add_argument(
        "--fairness-small", type=int, default=5, help="1-image requests during the big one"
    )
    parser.add_argument(
        "--fairness-medium", type=int, default=2, help="100-image requests during the big one"
    )
    parser.add_argument("--webp-quality", type=int, help="formats leg (default: OptionDefaults)")
    parser.add_argument("--avif-quality", type=int, help="formats leg (default: OptionDefaults)")
    parser.add_argument("--resize-images", type=int, default=2000, help="resize512 leg's request")
    parser.add_argument("--resize-repeats", type=int, default=3, help="resize512 runs per side")
    parser.add_argument(
        "--img2dataset-venv", type=Path, default=ROOT / ".venv-img2dataset", help="resize512 leg"
    )
    parser.add_argument("--corpus", type=int, default=120, help="distinct images")
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    legs = set(args.legs.split(","))
    if not legs or legs - set(LEGS):
        parser.error(f"--legs: any of {', '.join(LEGS)}, not {args.legs!r}")
    if "resize512" in legs:
        resize.img2dataset_bin(args.img2dataset_venv)  # missing: say so before anything runs

    # One folder per corpus size: the image host serves every file in its folder.
    folder = args.out / f"corpus-{args.corpus}"
    images = corpus.load_or_build(folder, args.corpus)
    results, fair, fmts, resized = [], None, None, None
    with tempfile.TemporaryDirectory() as tmp, ImageHost(folder, args.latency) as host:
        if "throughput" in legs:
            for n in (int(s) for s in args.sizes.split(",")):
                result = run_size(n, args, images, host, Path(tmp))
                results.append(result)
                print(json.dumps(result), flush=True)
        if "fairness" in legs:
            fair = fairness.run(args, service_env(args), images, host, Path(tmp))
            print(json.dumps(fair), flush=True)
        if "formats" in legs:
            fmts = formats.run(args, images)
            print(json.dumps(fmts), flush=True)
        if "resize512" in legs:
            resized = resize.run(args, service_env(args), images, host, Path(tmp))
            print(json.dumps(resized), flush=True)
    # Only the legs that ran are judged (a leg left out is not a target missed).
    targets = (
        (verdicts(results) if results else [])
        + (fairness.verdicts(fair) if fair else [])
        + (formats.verdicts(fmts) if fmts else [])
        + (resize.verdicts(resized) if resized else [])
    )
    report = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": results,
        "fairness": fair,
        "formats": fmts,
        "resize512": resized,
        "targets": [{"target": t, "met": met, "figure": figure} for t, met, figure in targets],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))
    if results:
        print_table(results)
    if fair:
        fairness.print_table(fair)
    if fmts:
        formats.print_table(fmts)
    if resized:
        resize.print_table(resized)
    print()
    for target, met, figure in targets:
        # None: the size was not in this run, or the run's noise leaves it open
        mark = {True: "met", False: "NOT MET", None: "not judged"}[met]
        print(f"{mark:>12}  {target}  {figure}")
    print(f"\nwritten {path}")


def print_table(results: list[dict]) -> None:
    columns = [
        "images",
        "images_per_s",
        "megapixels_per_s",
        "floor_images_per_s",
        "ratio_to_floor",
        "ms_per_image",
        "upload_s",
        "status_p50_ms",
        "status_p99_ms",
        "api_peak_rss_mb",
        "worker_peak_rss_mb",
    ]
    print("\n" + " | ".join(columns))
    for r in results:
        print(" | ".join(str(r[c]) for c in columns))


if __name__ == "__main__":
    main()
