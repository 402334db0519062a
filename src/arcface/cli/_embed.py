"""``arcface embed SRC --out F.npz``: the embedding of the main face of each image, in one ``.npz``.

SRC is an image, a folder (walked recursively) or a text file listing image paths (one per line, relative to
the list file's folder), read with the safe walker (:mod:`arcface.io.walk`: regular files only, links kept inside
the folder unless ``--follow-links``, ``--max-file-size``). A file the walker skips, that cannot be read or has no
face is recorded and skipped. The work and the file
are :func:`arcface.batch.embed.embed_images` (see there for the ``.npz``'s arrays); ``--engine ray`` runs it on a
Ray cluster (:mod:`arcface.batch.ray_engine`).

Exit status: 0 when at least one image was embedded, 1 when none was (the file is still written).
"""

from __future__ import annotations

import argparse
import sys

from arcface.batch.embed import embed_images
from arcface.cli._args import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    add_detector_args,
    add_engine_args,
    add_model_args,
    engine_options,
    job_settings,
    print_failures,
)
from arcface.cli._files import add_file_args, as_failures, collect, file_policy, report_job, report_skipped


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``embed`` subcommand."""
    p = sub.add_parser(
        "embed",
        help="embed the main face of images (a file, a folder, or a list) into an .npz",
        description="Embed the main face of each image. Unreadable images and images without a face are "
        "recorded in the npz's errors array and skipped.",
    )
    p.add_argument("src", metavar="SRC", help="an image, a folder (recursive), or a .txt/.lst file of paths")
    p.add_argument("--out", required=True, metavar="F.npz", help="the .npz file to write")
    add_model_args(p)
    p.add_argument("--aligned", action="store_true", help="the images are aligned crops (no detection)")
    p.add_argument("--batch-size", type=int, default=64, help="photos per model call (default 64)")
    add_detector_args(p)
    add_engine_args(p)
    add_file_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Detect, align and embed each image; write the npz; print a summary."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    if not args.out.lower().endswith(".npz"):
        raise CliError(f"--out {args.out}: the output must be an .npz file")
    options = engine_options(args)
    found = collect(args.src, file_policy(args))
    skipped = as_failures(found.skipped)
    if not found.files:
        report_skipped("embed", skipped)
        raise CliError(f"{args.src}: no image to embed (every file was skipped)")
    settings = job_settings(args, "embed", aligned=args.aligned, batch_size=args.batch_size)
    r = embed_images(found.files, args.out, settings, options, progress_bar=not args.no_progress, skipped=skipped)
    print(
        f"embedded {r.embedded} of {r.images} images into {args.out} "
        f"({r.contract.embedding_size}-D, {r.contract.architecture}, contract {r.contract.id})"
        + (f"; {len(r.failures)} skipped (the npz's errors array)" if r.failures else "")
    )
    report_job(r.job)
    report_skipped("embed", skipped)
    print_failures(r.failures[len(skipped) :])
    if not r.embedded:
        print(f"arcface embed: error: no image of {args.src} could be embedded", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
