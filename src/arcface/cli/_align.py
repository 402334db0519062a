"""``arcface align SRC_DIR DST_DIR``: detect and align every photo of a tree, to prepare a training set.

The work is :func:`arcface.batch.align.align_tree` (see there: mirrored tree, resumable, a report of the failed
files); ``--engine ray`` runs it on a Ray cluster. Exit status 0 even when some files failed; 1 when no photo could
be aligned (or on a bad option).
"""

from __future__ import annotations

import argparse
import sys

from arcface.batch.align import FORMATS, REPORT_NAME, align_tree
from arcface.cli._args import (
    EXIT_ERROR,
    EXIT_OK,
    add_detector_args,
    add_engine_args,
    detector_options,
    engine_options,
    print_failures,
)
from arcface.cli._files import add_file_args, file_policy, report_job, report_skipped


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``align`` subcommand."""
    p = sub.add_parser(
        "align",
        help="detect and align a tree of photos into crops (a training set), in parallel, resumable",
        description="Align the main face of every photo under SRC_DIR into DST_DIR, mirroring the folders. "
        "Existing outputs are skipped (resume by running again). Failed files are listed in the report.",
    )
    p.add_argument("src_dir", metavar="SRC_DIR", help="the photos, e.g. one sub-folder per identity")
    p.add_argument("dst_dir", metavar="DST_DIR", help="where the aligned crops go (created)")
    p.add_argument("--size", type=int, default=112, help="crop side in pixels (default 112)")
    p.add_argument("--format", choices=sorted(FORMATS), default="png", help="png (lossless, default) or jpg")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality with --format jpg (default 95)")
    p.add_argument(
        "--workers", type=int, default=None,
        help="processes (default: the thread policy's: one per usable CPU, fewer for a short job); 1 runs in this "
        "process",
    )  # fmt: skip
    add_detector_args(p)
    add_engine_args(p)
    add_file_args(p)
    p.add_argument(
        "--report", default=None, metavar="PATH",
        help=f"the report file (default DST_DIR/{REPORT_NAME}); a .tsv name writes a table",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Align what is missing, write the report, print a summary."""
    name, options = detector_options(args, threads=1)
    engine = engine_options(args, workers=args.workers)
    r = align_tree(
        args.src_dir, args.dst_dir, size=args.size, image_format=args.format, quality=args.quality, detector=name,
        detector_options=options, workers=args.workers, report=args.report, progress_bar=not args.no_progress,
        threads=args.threads, engine=engine, policy=file_policy(args),
    )  # fmt: skip
    several = f", {len(r.several_faces)} with several faces (main face kept)" if r.several_faces else ""
    print(
        f"aligned {r.aligned} of {r.images} images into {args.dst_dir} ({r.skipped_existing} already done, "
        f"{len(r.failures)} failed{several}); report: {r.report}"
    )
    report_job(r.job)
    for line in r.redone:
        print(line, file=sys.stderr)
    report_skipped("align", r.failures[: r.skipped_files])
    print_failures(r.failures[r.skipped_files :])
    if r.aligned + r.skipped_existing == 0:
        print(
            f"arcface align: error: no image could be aligned ({len(r.failures)} failed, see {r.report})",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK
