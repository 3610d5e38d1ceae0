"""The politeness figure (issue 12): a host that allows 4 requests at once, N images.

    python -m tests.bench.politeness                      500 images, this tree's code
    python -m tests.bench.politeness --root /tmp/before   the same against another tree
    python -m tests.bench.politeness --set MAX_CONNECTIONS_PER_HOST=2

Starts a loopback host that serves `--limit` requests at once, each taking
`--latency` seconds (0.05, as the throughput leg's host), and answers
`429` with `Retry-After: 1` above that, writes a CSV of `--images` URLs on
it, and runs `python -m pipeline run` on it from `--root` with the embedded
defaults (a LocalCluster of one worker process per core), plus any `--set`
variables. Prints how many images succeeded, why the others failed, and what
the host saw (peak concurrent requests, served, refused), as JSON.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import tempfile
import time
from pathlib import Path

from tests import imagefactory as images
from tests.integration.flows import products_csv
from tests.integration.service import run_pipeline
from tests.throttlehost import ThrottlingHost

ROOT = Path(__file__).resolve().parents[2]


def run(
    root: Path, n: int, limit: int, latency: float, extra: dict[str, str], workdir: Path
) -> dict:
    host = ThrottlingHost(images.jpeg_rgb(), limit=limit, retry_after="1", hold=latency)
    with host:
        source = workdir / "products.csv"
        source.write_bytes(products_csv([host.url(i) for i in range(n)], per_row=1))
        env = {
            **os.environ,
            "PYTHONPATH": str(root),  # the tree measured, not the installed one
            "DATA_DIR": str(workdir / "data"),
            "ALLOW_PRIVATE_NETWORKS": "1",
            "DASK_DASHBOARD_ADDRESS": "",
            **extra,
        }
        started = time.monotonic()
        done = run_pipeline(str(source), "--no-progress", env=env, root=root, timeout=1800)
        elapsed = time.monotonic() - started
        stats = host.stats
    output = source.with_suffix(".output.csv")
    succeeded = 0
    if output.exists():
        with output.open() as f:
            succeeded = sum(1 for row in list(csv.reader(f))[1:] if row[-1])
    # "failed: line 12 http://…: download failed: HTTP 429": group by reason
    reasons = collections.Counter(
        re.sub(r"\d+(\.\d+)?", "#", line.split(": ", 2)[2])
        for line in done.stderr.splitlines()
        if line.startswith("failed: line ")
    )
    return {
        "root": str(root),
        "settings": extra,
        "images": n,
        "host_limit": limit,
        "host_latency": latency,
        "exit_code": done.returncode,
        "summary": done.stdout.strip().splitlines()[-1:] or done.stderr.strip()[-500:],
        "succeeded": succeeded,
        "failed_reasons": dict(reasons.most_common()),
        "host_peak_concurrent": stats.peak,
        "host_served": stats.served,
        "host_refused": stats.refused,
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.politeness")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--limit", type=int, default=4, help="requests the host serves at once")
    parser.add_argument(
        "--latency", type=float, default=0.05, help="seconds the host takes per image"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="the code tree to run")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.set)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.root.resolve(), args.images, args.limit, args.latency, extra, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
