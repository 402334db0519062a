"""What the commands that read a user's folders or lists share: ``--follow-links`` and ``--max-file-size`` (the
safe walker's policy, :mod:`arcface.io.walk`), the images a SRC argument names, and the skipped files' report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from arcface.batch.failures import Failure
from arcface.batch.options import JobReport
from arcface.cli._args import CliError
from arcface.io.files import collect_images
from arcface.io.walk import DEFAULT_MAX_FILE_BYTES, FilePolicy, Skipped, Walk, parse_size, summarise_skipped


def _size(value: str) -> int | None:
    try:
        return parse_size(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_file_args(p: argparse.ArgumentParser) -> None:
    """Add ``--follow-links`` and ``--max-file-size`` to a command that walks a user's folder or list."""
    g = p.add_argument_group("input files", "which files of the input are read (FIFOs, sockets and devices never are)")
    g.add_argument(
        "--follow-links", action="store_true",
        help="follow symbolic links that lead outside the input folder (default: skip them, each listed as skipped)",
    )  # fmt: skip
    g.add_argument(
        "--max-file-size", type=_size, default=DEFAULT_MAX_FILE_BYTES, metavar="SIZE",
        help=f"skip bigger files (e.g. 50M, 2G, or none; default {DEFAULT_MAX_FILE_BYTES >> 20}M)",
    )  # fmt: skip


def file_policy(args: argparse.Namespace) -> FilePolicy:
    """The walker's policy from the options of :func:`add_file_args` (defaults where a command has none)."""
    return FilePolicy(
        follow_links=bool(getattr(args, "follow_links", False)),
        max_bytes=getattr(args, "max_file_size", DEFAULT_MAX_FILE_BYTES),
    )


def collect(src: str | os.PathLike, policy: FilePolicy) -> Walk:
    """The images SRC names and the files skipped (:func:`arcface.io.files.collect_images`).

    Raises:
        CliError: ``src`` does not exist, a folder holds no images, or a list file cannot be read or names none.
    """
    try:
        return collect_images(src, policy=policy)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None


def as_failures(skipped: Sequence[Skipped]) -> list[Failure]:
    """The skipped files as the batch jobs' failure records (path, reason, message)."""
    return [Failure(s.path, s.reason, s.message) for s in skipped]


def report_job(report: JobReport) -> None:
    """What the engine did: its summary line on stdout, and on stderr one line for each shard of an earlier run
    that failed its check and was computed again."""
    for line in report.shards_redone:
        print(line, file=sys.stderr)
    if report.summary():
        print(report.summary())


def report_skipped(command: str, skipped: Sequence[Skipped | Failure], *, limit: int = 10, file=None) -> None:
    """On stderr: one line counting the files the walker skipped, by reason, then the first ``limit`` of them, one
    line each (nothing when none was skipped)."""
    out = file or sys.stderr
    line = summarise_skipped(Skipped(s.path, s.reason, s.message) for s in skipped)
    if not line:
        return
    print(f"arcface {command}: {line}", file=out)
    for s in skipped[:limit]:
        print(f"  skipped: {s.message}", file=out)
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more", file=out)
