"""Batch runs from the shell: `python -m pipeline run products.csv -o output.csv`.

Exit codes a script can use:
  0  every image done
  1  finished, some images failed (completed_with_errors)
  2  the CSV or the command line is invalid (nothing was run)
  3  the request failed as a whole
  4  configuration error (environment variables)
  5  the request was cancelled (through the API, by another process sharing the
     records); images that had no result yet are listed as cancelled
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.batch import failures, results_frame, run_csv, write_output_csv
from pipeline.csv_input import parse_products
from pipeline.errors import ConfigError, InputError
from pipeline.models import RequestStatus
from pipeline.options import OptionError, resolve_options
from pipeline.service import build_services, csv_limits
from pipeline.settings import Settings

EXIT = {
    RequestStatus.COMPLETED: 0,
    RequestStatus.COMPLETED_WITH_ERRORS: 1,
    RequestStatus.FAILED: 3,
    RequestStatus.CANCELLED: 5,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="Compress every image of a product CSV."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="process a CSV and write the output CSV")
    run.add_argument("csv", type=Path, help="CSV with S. No., Product Name, Input Image Urls")
    run.add_argument(
        "-o", "--output", type=Path, help="output CSV path (default: <csv>.output.csv)"
    )
    run.add_argument(
        "--format",
        help="output format: jpeg, webp or avif (default: OUTPUT_FORMAT or jpeg)",
    )
    run.add_argument(
        "--quality",
        help="quality 1-95 (default: the format's, JPEG_QUALITY, WEBP_QUALITY or AVIF_QUALITY)",
    )
    run.add_argument(
        "--max-width", help="fit outputs inside this width, never enlarging (default: MAX_WIDTH)"
    )
    run.add_argument(
        "--max-height", help="fit outputs inside this height, never enlarging (default: MAX_HEIGHT)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 4
    given = {
        "format": args.format,
        "quality": args.quality,
        "max_width": args.max_width,
        "max_height": args.max_height,
    }
    try:
        # Judged as the upload form judges them, before a cluster starts.
        options = resolve_options(given, settings.option_defaults())
    except OptionError as exc:
        print(f"invalid option --{exc.field.replace('_', '-')}: {exc.message}", file=sys.stderr)
        return 2
    if not args.csv.is_file():
        print(f"no such file: {args.csv}", file=sys.stderr)
        return 2
    try:
        # Checked before a cluster starts, so a bad file fails in milliseconds.
        parse_products(args.csv.read_bytes(), csv_limits(settings))
    except InputError as exc:
        print(f"invalid CSV: {exc}", file=sys.stderr)
        return 2
    services = build_services(settings).start(serve_others=False)
    try:
        print(services.descriptions["dask"], file=sys.stderr)
        record = run_csv(services, args.csv, **options.as_dict(), progress=not args.no_progress)
        output = args.output or args.csv.with_suffix(".output.csv")
        if record.output_key:
            write_output_csv(services, record.request_id, output)
        failed = failures(results_frame(services, record.request_id))
        for row in failed.itertuples():
            print(f"failed: line {row.row} {row.input_url}: {row.error}", file=sys.stderr)
        if record.status is RequestStatus.CANCELLED:
            print("the request was cancelled", file=sys.stderr)
        counts = f"{record.succeeded_images}/{record.total_images} images done, "
        counts += f"{record.failed_images} failed"
        if record.cancelled_images:
            counts += f", {record.cancelled_images} cancelled"
        if record.output_key:
            outcome = f"; output CSV {output}"
        else:
            outcome = f"; error: {record.error}" if record.error else "; no output CSV"
        print(f"{record.status}: {counts}{outcome}")
        return EXIT[record.status]
    finally:
        services.close()
