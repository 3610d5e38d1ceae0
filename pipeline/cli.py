"""Batch runs from the shell: `python -m pipeline run products.csv -o output.csv`.

Exit codes a script can use:
  0  every image done
  1  finished, some images failed (completed_with_errors)
  2  the CSV or the command line is invalid (nothing was run)
  3  the request failed as a whole
  4  configuration error (environment variables)
  5  the request was cancelled (through the API, by another process sharing the
     records); images that had no result yet are listed as cancelled
  6  the request finished (its status is printed) but its outputs could not be
     written here: the output CSV, the failures CSV or --output-dir's files

Failures are named by the line of the CSV file (the header is line 1), as the
API and the page name them: one line each on stderr, or counted by reason
when there are more than MAX_LISTED_FAILURES, with every one in a failures CSV.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.batch import (
    EXPORT_FAILURES,
    EXPORT_IMAGES,
    describe_outputs,
    export,
    run_csv,
    write_failures_csv,
    write_output_csv,
)
from pipeline.csv_input import csv_limits, parse_products
from pipeline.errors import ConfigError, InputError, OptionError, StorageError
from pipeline.models import ImageStatus, RequestRecord, RequestStatus
from pipeline.options import resolve_options
from pipeline.service import Services, build_services
from pipeline.settings import Settings

EXIT = {
    RequestStatus.COMPLETED: 0,
    RequestStatus.COMPLETED_WITH_ERRORS: 1,
    RequestStatus.FAILED: 3,
    RequestStatus.CANCELLED: 5,
}
EXIT_OUTPUTS_NOT_WRITTEN = 6
MAX_LISTED_FAILURES = 20  # more are counted by reason instead of listed
TOP_REASONS = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="Compress every image of a product CSV."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="process a CSV and write the output CSV")
    run.add_argument("csv", type=Path, help="CSV with S. No., Product Name, Input Image Urls")
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output CSV path (default: <csv>.output.csv), its links the stored images' URLs;"
        " failures go to <output>.failures.csv",
    )
    where.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write every output image under DIR/images/ and DIR/output.csv linking to them"
        " by relative paths (a folder to open, move or zip); failures go to DIR/failures.csv",
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
    if args.output is not None and not args.output.parent.is_dir():
        print(f"invalid option --output: no such folder {args.output.parent}", file=sys.stderr)
        return 2
    if args.output_dir is not None:
        try:
            # Made now, so a DIR that cannot be written fails before the images are processed.
            args.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"invalid option --output-dir: {exc}", file=sys.stderr)
            return 2
    services = build_services(settings).start(serve_others=False)
    try:
        print(services.descriptions["dask"], file=sys.stderr)
        record = run_csv(services, args.csv, **options.as_dict(), progress=not args.no_progress)
        try:
            written = write_outputs(services, record, args)
        except (OSError, StorageError) as exc:
            print_failures(services, record, None)
            print(f"{record.status}: {counts(record)}")
            print(f"the outputs could not be written: {exc}", file=sys.stderr)
            return EXIT_OUTPUTS_NOT_WRITTEN
        print_failures(services, record, written.failures_csv)
        if record.status is RequestStatus.CANCELLED:
            print("the request was cancelled", file=sys.stderr)
        first, *more = written.told
        print(f"{record.status}: {counts(record)}; {first}")
        for line in more:
            print(line)
        return EXIT[record.status]
    finally:
        services.close()


def counts(record: RequestRecord) -> str:
    text = f"{record.succeeded_images}/{record.total_images} images done, "
    text += f"{record.failed_images} failed"
    if record.cancelled_images:
        text += f", {record.cancelled_images} cancelled"
    return text


@dataclass(frozen=True)
class Written:
    told: list[str]  # the first completes the summary line
    failures_csv: Path | None


def write_outputs(services: Services, record: RequestRecord, args: argparse.Namespace) -> Written:
    """Write the outputs the command line asks for, and say where they are."""
    rid = record.request_id
    if args.output_dir is not None:
        exported = export(services, rid, args.output_dir)
        images = f"{exported.images} image{'' if exported.images == 1 else 's'}"
        told = [
            f"outputs in {exported.directory}: {exported.output_csv.name} and "
            f"{images} under {EXPORT_IMAGES}/"
        ]
        failures_csv = exported.failures_csv
    else:
        output = args.output or args.csv.with_suffix(".output.csv")
        if record.output_key:
            told = [f"output CSV {write_output_csv(services, rid, output)}"]
        else:
            told = ["no output CSV"]
        failures_csv = (
            write_failures_csv(services, rid, failures_path(output))
            if record.failed_images
            else None
        )
    if record.error:  # why the request failed (every image failed: the most common reason)
        told.append(f"error: {record.error}")
    if failures_csv:
        told.append(f"failures: {failures_csv}")
    if args.output_dir is None and record.succeeded_images:
        told += describe_outputs(services, rid)
        told.append("(--output-dir DIR: the images in one folder with a CSV that links to them)")
    return Written(told, failures_csv)


def failures_path(output: Path) -> Path:
    """Next to the output CSV: out.csv -> out.failures.csv."""
    return output.with_suffix(f".{EXPORT_FAILURES}")


def print_failures(services: Services, record: RequestRecord, failures_csv: Path | None) -> None:
    """Each failure with its line, or the most common reasons when there are many."""
    if not record.failed_images:
        return
    if record.failed_images <= MAX_LISTED_FAILURES:
        for image in services.store.iter_images(record.request_id, status=ImageStatus.FAILED):
            print(
                f"failed: line {image.file_line} {image.input_url}: {image.error}",
                file=sys.stderr,
            )
        return
    reasons = services.store.failure_summary(record.request_id, limit=TOP_REASONS)
    print(f"{record.failed_images:,} images failed; the most common reasons:", file=sys.stderr)
    width = len(f"{reasons[0].count:,}") if reasons else 0
    for reason in reasons:
        print(f"  {reason.count:>{width},}  {reason.reason}", file=sys.stderr)
    others = record.failed_images - sum(r.count for r in reasons)
    if others:
        print(f"  {others:>{width},}  other reasons", file=sys.stderr)
    if failures_csv is not None:
        print(f"every failure with its line and reason: {failures_csv}", file=sys.stderr)
