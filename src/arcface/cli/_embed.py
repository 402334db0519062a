"""``arcface embed SRC --out F.npz``: the embedding of the main face of each image, in one ``.npz``.

SRC is an image, a folder (walked recursively) or a text file listing image paths (one per line, relative to
the list file's folder). A file that cannot be read or has no face is recorded and skipped. The ``.npz``
(written atomically, loadable with ``np.load(F)`` without pickle) holds:

==============  ==============================================================================
``paths``       (N,) str, the images embedded, in order
``embeddings``  (N, D) float32, unit rows
``contract``    () str, the model contract as JSON (``ModelContract.from_json``)
``errors``      (M, 3) str, one row per skipped image: path, reason code, message
``options``     () str, JSON: flip, aligned, detector
==============  ==============================================================================

Exit status: 0 when at least one image was embedded, 1 when none was (the file is still written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from arcface.batch.failures import Failure, failure_of
from arcface.cli._args import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    add_detector_args,
    add_model_args,
    collect_sources,
    print_failures,
    recognizer_from_args,
)
from arcface.io.files import atomic_path
from arcface.runtime.progress import progress


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
    p.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    add_detector_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Detect, align and embed each image; write the npz; print a summary."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    if not args.out.lower().endswith(".npz"):
        raise CliError(f"--out {args.out}: the output must be an .npz file")
    sources = collect_sources(args.src)
    rec = recognizer_from_args(args, batch_size=args.batch_size)

    paths: list[str] = []
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    failures: list[Failure] = []

    def flush() -> None:
        if pending:
            chunks.append(rec.embed_batch(pending, aligned=True))
            pending.clear()

    crops = rec.main_crops(sources, aligned=args.aligned)  # photos side by side (the thread policy's workers)
    for path, crop in progress(zip(sources, crops), total=len(sources), desc="embed", enabled=not args.no_progress):
        if isinstance(crop, Exception):
            failures.append(failure_of(str(path), crop))
            continue
        pending.append(crop)
        paths.append(str(path))
        if len(pending) >= args.batch_size:
            flush()
    flush()

    d = rec.embedding_size
    embeddings = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, d), np.float32)
    _save(args.out, rec, paths, embeddings, failures, args)
    print(
        f"embedded {len(paths)} of {len(sources)} images into {args.out} "
        f"({d}-D, {rec.contract.architecture}, contract {rec.contract.id})"
        + (f"; {len(failures)} skipped (the npz's errors array)" if failures else "")
    )
    print_failures(failures)
    if not paths:
        print(f"arcface embed: error: no image of {args.src} could be embedded", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _save(out: str, rec, paths: list[str], embeddings: np.ndarray, failures, args: argparse.Namespace) -> None:
    errors = np.array([[f.path, f.reason, f.message] for f in failures], dtype=str).reshape(-1, 3)
    options = {"flip": bool(args.flip), "aligned": bool(args.aligned), "detector": args.detector}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            paths=np.array(paths, dtype=str),
            embeddings=embeddings,
            contract=np.array(rec.contract.to_json()),
            errors=errors,
            options=np.array(json.dumps(options)),
        )
