"""``arcface align SRC_DIR DST_DIR``: detect and align every photo of a tree, to prepare a training set.

The tree is mirrored: ``SRC_DIR/person/photo.jpg`` becomes ``DST_DIR/person/photo.png``, the aligned crop of
the photo's main face (the embedding contract's template, ``--size`` pixels square). The work is spread
over a process pool; each worker builds its own detector once and runs with one thread.

Resumable: a crop is written under a temporary name and renamed when complete, so an existing output is a
finished one and is skipped on the next run (files that failed are tried again).

Every run writes a report, ``DST_DIR/align_report.json`` (``--report F.tsv`` for a table), with the counts and
each failed file with its reason: ``no_face``, or the image loader's reason (``corrupt``, ``not_image``,
``empty``, ``too_large``, ``unsupported``, ...). Exit status 0 even when some files failed; 1 when no photo
could be aligned (or on a bad option).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arcface.cli._batch import EXIT_ERROR, EXIT_OK, Failure, add_detector_args

if TYPE_CHECKING:
    from arcface.align.detection import FaceDetector

#: Output formats: lossless PNG (default) or JPEG.
FORMATS = {"png": ".png", "jpg": ".jpg"}
REPORT_NAME = "align_report.json"

# One task: (source path, output path, crop size, JPEG quality); one result: (source path, faces, failure).
_Task = tuple[str, str, int, int]
_Result = tuple[str, int, "Failure | None"]

_DETECTOR: FaceDetector | None = None  # the detector of a pool worker, built once by _init_worker


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


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
        "--workers", type=int, default=default_workers(),
        help="processes (default: the CPU cores, here %(default)s); 1 runs in this process",
    )  # fmt: skip
    add_detector_args(p)
    p.add_argument(
        "--report", default=None, metavar="PATH",
        help=f"the report file (default DST_DIR/{REPORT_NAME}); a .tsv name writes a table",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Plan the outputs, align what is missing, write the report, print a summary."""
    import sys

    from arcface.align.template import template_for_size
    from arcface.cli import CliError
    from arcface.cli._batch import detector_options, print_failures
    from arcface.io.files import find_images
    from arcface.runtime.progress import progress

    src, dst = Path(args.src_dir), Path(args.dst_dir)
    if not src.is_dir():
        raise CliError(f"{src}: no such folder" if not src.exists() else f"{src}: not a folder")
    if dst.resolve() == src.resolve():
        raise CliError("DST_DIR must differ from SRC_DIR")
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if not 1 <= args.quality <= 100:
        raise CliError(f"--quality must be in 1..100, got {args.quality}")
    template_for_size(args.size)  # ValueError for a size the template does not scale to
    name, options = detector_options(args, threads=1)
    report_path = Path(args.report) if args.report else dst / REPORT_NAME

    images = find_images(src, exclude=dst)
    if not images:
        raise CliError(f"{src}: no images found")
    outputs = _plan_outputs(images, src, dst, FORMATS[args.format])
    tasks: list[_Task] = [(str(i), str(o), args.size, args.quality) for i, o in zip(images, outputs) if not o.exists()]
    skipped = len(images) - len(tasks)
    dst.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(dst)

    failures: list[Failure] = []
    several: list[str] = []
    aligned = 0
    results = _run_tasks(tasks, name, options, args.workers)
    for path, n_faces, failure in progress(results, total=len(tasks), desc="align", enabled=not args.no_progress):
        rel = Path(path).relative_to(src).as_posix()
        if failure is not None:
            failures.append(Failure(rel, failure.reason, failure.message))
            continue
        aligned += 1
        if n_faces > 1:
            several.append(rel)

    counts = {
        "images": len(images),
        "aligned": aligned,
        "skipped_existing": skipped,
        "failed": len(failures),
        "several_faces": len(several),
    }
    settings = {"src": str(src), "dst": str(dst), "size": args.size, "format": args.format, "detector": name}
    _write_report(report_path, settings, counts, failures, several)
    print(
        f"aligned {aligned} of {len(images)} images into {dst} ({skipped} already done, {len(failures)} failed"
        f"{f', {len(several)} with several faces (main face kept)' if several else ''}); report: {report_path}"
    )
    print_failures(failures)
    if aligned + skipped == 0:
        print(
            f"arcface align: error: no image could be aligned ({len(failures)} failed, see {report_path})",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _plan_outputs(images: Sequence[Path], src: Path, dst: Path, suffix: str) -> list[Path]:
    """Output path of each image: the same relative path with ``suffix``; ``a.jpg`` and ``a.png`` in one
    folder would collide, so the later one keeps its suffix in the name (``a.png.png``)."""
    taken: set[Path] = set()
    outputs = []
    for img in images:
        rel = img.relative_to(src)
        out = dst / rel.with_suffix(suffix)
        if out in taken:
            out = dst / rel.parent / (rel.name + suffix)
        taken.add(out)
        outputs.append(out)
    return outputs


def _remove_stale_temporaries(dst: Path) -> None:
    """Delete the half-written crops of an interrupted run (``.NAME.tmpPID.png``, see ``atomic_path``)."""
    pattern = re.compile(r"^\..+\.tmp\d+\.(png|jpg)$")
    for dirpath, _, filenames in os.walk(dst):
        for f in filenames:
            if pattern.match(f):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, f))


def _run_tasks(tasks: list[_Task], name: str, options: dict[str, Any], workers: int) -> Iterator[_Result]:
    """Results in task order: in this process (one worker) or from a process pool."""
    if not tasks:
        return
    if workers == 1 or len(tasks) == 1:
        from arcface.align.detection import create_detector

        detector = create_detector(name, **options)
        for task in tasks:
            yield _align_one(task, detector)
        return

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from arcface.cli import CliError

    workers = min(workers, len(tasks))
    chunk = max(1, min(16, len(tasks) // (workers * 4)))
    # spawn: a fresh interpreter per worker; forking a process that already runs torch's threads can hang.
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(name, options)
    )
    try:
        yield from pool.map(_align_in_worker, tasks, chunksize=chunk)
    except BrokenProcessPool:
        raise CliError(
            "a worker process died (out of memory?); the crops written so far are kept: run the same command "
            "again to resume"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(name: str, options: dict[str, Any]) -> None:
    """Pool initializer: one thread per worker, Ctrl-C handled by the parent, one detector per worker."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from arcface.align.detection import create_detector

    global _DETECTOR
    _DETECTOR = create_detector(name, **options)


def _align_in_worker(task: _Task) -> _Result:
    assert _DETECTOR is not None, "_init_worker did not run"
    return _align_one(task, _DETECTOR)


def _align_one(task: _Task, detector: FaceDetector) -> _Result:
    """Load, detect, crop the main face, write the crop atomically; a failure is returned, not raised."""
    from arcface.align.transform import norm_crop
    from arcface.cli._batch import encode_image, failure_of
    from arcface.inference.recognizer import NoFaceError
    from arcface.io.files import write_bytes_atomic
    from arcface.io.images import load_image

    src, out, size, quality = task
    try:
        rgb = load_image(src)
        faces = detector.detect(rgb)
        if not faces:
            raise NoFaceError(src)
        crop = norm_crop(rgb, faces[0].landmarks, image_size=size)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, encode_image(crop, out, quality=quality))
        return src, len(faces), None
    except Exception as e:  # one bad photo must not stop a long batch: it goes into the report with its reason
        return src, 0, failure_of(src, e)


def _write_report(
    path: Path, settings: dict[str, Any], counts: dict[str, int], failures: list[Failure], several: list[str]
) -> None:
    from arcface.io.files import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".tsv":
        lines = ["# " + " ".join(f"{k}={v}" for k, v in {**settings, **counts}.items()), "path\treason\tmessage"]
        lines += [f"{f.path}\t{f.reason}\t{f.message.replace(chr(9), ' ')}" for f in failures]
        text = "\n".join(lines) + "\n"
    else:
        doc = {**settings, "counts": counts, "failures": [f.as_dict() for f in failures], "several_faces": several}
        text = json.dumps(doc, indent=2) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
