"""Align a tree of photos into crops (a training set): ``SRC/person/photo.jpg`` -> ``DST/person/photo.png``.

The tree is mirrored: each photo's main face is cut by the face pipeline's aligner
(:class:`~arcface.align.FaceAligner`, the embedding contract's template at ``size`` pixels square), the per-image
work of :class:`arcface.batch.jobs.Worker`. An engine (:mod:`arcface.batch.engines`) runs it: local worker
processes (:func:`arcface.runtime.workers.process_map`), each with its own aligner, or an actor pool on Ray.

Resumable: a crop is written under a temporary name and renamed when complete, so an existing output is a finished
one and is skipped on the next run (files that failed are tried again). An existing crop is checked before it is
trusted (a regular file that decodes completely as an image of the crop's size); one that fails is aligned again,
with a line saying why (:attr:`AlignResult.redone`). With the Ray engine
(:mod:`arcface.batch.ray_engine`) the unit of resume is the job's shard: a shard an earlier run wrote is not computed
again, and its rows (detector score, landmarks, the crop's file) stay in the job folder.

Every run writes a report (JSON, or a table for a ``.tsv`` name) with the counts and each failed file with its
reason: ``no_face``, or the image loader's reason (``corrupt``, ``not_image``, ``empty``, ``too_large``,
``unsupported``, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcface.align.transform import CropSpec
from arcface.batch.engines import EngineOptions, JobReport, check_engine, run_job
from arcface.batch.failures import Failure
from arcface.batch.jobs import Item, JobSettings, encode_image
from arcface.io.files import find_images_walk, write_bytes_atomic
from arcface.io.images import ImageError, load_image
from arcface.io.walk import FilePolicy

__all__ = ["FORMATS", "REPORT_NAME", "AlignResult", "align_tree", "encode_image"]

#: Output formats: lossless PNG (default) or JPEG.
FORMATS = {"png": ".png", "jpg": ".jpg"}
REPORT_NAME = "align_report.json"


@dataclass
class AlignResult:
    """What :func:`align_tree` did.

    Attributes:
        images: photos found under the source (with the files the safe walker skipped).
        aligned: crops written by this run.
        skipped_existing: photos whose crop already existed.
        failures: photos that could not be aligned (relative paths), with their reasons; first the files the safe
            walker skipped (``not_regular``, ``link_outside``, ``too_large``, ...).
        skipped_files: how many of ``failures`` the walker skipped before any work.
        redone: one line for each existing crop that failed its check and was aligned again.
        several_faces: photos with more than one face (the main one was kept).
        report: the report file.
        job: what the engine did (shards, actors).
    """

    images: int = 0
    aligned: int = 0
    skipped_existing: int = 0
    skipped_files: int = 0
    redone: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    several_faces: list[str] = field(default_factory=list)
    report: Path | None = None
    job: JobReport = field(default_factory=JobReport)


def align_tree(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    size: int = 112,
    image_format: str = "png",
    quality: int = 95,
    detector: str = "mtcnn",
    detector_options: dict[str, Any] | None = None,
    workers: int | None = None,
    report: str | os.PathLike | None = None,
    progress_bar: bool = True,
    threads: int | str | None = None,
    engine: EngineOptions | None = None,
    policy: FilePolicy | None = None,
) -> AlignResult:
    """Align the main face of every photo under ``src`` into ``dst``, mirroring the folders.

    Args:
        src: the photos, e.g. one sub-folder per identity.
        dst: where the crops go (created); outputs that exist are skipped.
        size: crop side in pixels (a multiple of 112 or 128).
        image_format: "png" (lossless) or "jpg".
        quality: JPEG quality.
        detector: detector name.
        detector_options: its options (``max_side``, ``model_path``, ...).
        workers: processes of the local engine (1 runs in this process); None: the thread policy's (one per usable
            CPU, fewer for a short job; see :mod:`arcface.runtime.threads`).
        report: the report file (default ``dst/align_report.json``; a ``.tsv`` name writes a table).
        progress_bar: report progress on stderr.
        threads: CPUs the local engine may use (workers x threads each); None: ``ARCFACE_THREADS``, else the usable
            CPUs.
        engine: the engine (default: local with ``workers`` processes on ``threads`` CPUs); with Ray, ``src`` and
            ``dst`` must be on storage every node of the cluster mounts at the same path.
        policy: which files under ``src`` are read (:class:`~arcface.io.walk.FilePolicy`: links leading out, size
            cap); FIFOs, sockets and devices never are. Skipped files are reported as failures.

    Returns:
        An :class:`AlignResult`.

    Raises:
        FileNotFoundError: ``src`` is not a folder.
        ValueError: a bad option, ``dst`` equal to ``src``, or no images under ``src``.
        WorkerDied: a worker process died (the crops written so far are kept: run again to resume).
        JobError: the Ray engine cannot run the job (the shards written so far are kept: run again to resume).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder" if not src.exists() else f"{src}: not a folder")
    if dst.resolve() == src.resolve():
        raise ValueError("DST_DIR must differ from SRC_DIR")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be in 1..100, got {quality}")
    if image_format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {image_format!r}")
    CropSpec.square(size)  # ValueError for a size the template does not scale to
    det_options = dict(detector_options or {})
    report_path = Path(report) if report else dst / REPORT_NAME

    walk = find_images_walk(src, exclude=dst, policy=policy)
    images = walk.files
    if not images and not walk.skipped:
        raise ValueError(f"{src}: no images found")
    skipped = [Failure(Path(s.path).relative_to(src).as_posix(), s.reason, s.message) for s in walk.skipped]
    outputs = _plan_outputs(images, src, dst, FORMATS[image_format])
    items = [Item(str(i), output=str(o)) for i, o in zip(images, outputs)]
    options = engine or EngineOptions(workers=workers, threads=threads)
    check_engine(options)
    redone: list[str] = []
    if options.engine == "local":  # an output that exists and passes its check is done; with Ray a written shard is
        items = [it for it in items if not _crop_done(Path(it.output), size, redone)]
    settings = JobSettings("align", detector=detector, detector_options=det_options, size=size, quality=quality)
    result = AlignResult(images=len(images) + len(skipped), skipped_existing=len(images) - len(items),
                         skipped_files=len(skipped), redone=redone, failures=skipped, report=report_path)  # fmt: skip
    dst.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(dst)

    for row in run_job(settings, items, options, report=result.job, progress_bar=progress_bar):
        rel = Path(row.path).relative_to(src).as_posix()
        if row.failure is not None:
            result.failures.append(Failure(rel, row.failure.reason, row.failure.message))
        elif row.reused:
            result.skipped_existing += 1
        else:
            result.aligned += 1
        if row.faces > 1:
            result.several_faces.append(rel)

    counts = {
        "images": result.images,
        "aligned": result.aligned,
        "skipped_existing": result.skipped_existing,
        "failed": len(result.failures),
        "several_faces": len(result.several_faces),
    }
    info = {"src": str(src), "dst": str(dst), "size": size, "format": image_format, "detector": detector}
    _write_report(report_path, info, counts, result.failures, result.several_faces)
    return result


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


def _crop_done(path: Path, size: int, redone: list[str]) -> bool:
    """Whether ``path`` is a finished crop: a regular file that decodes completely (the one image loader) as a
    ``size`` x ``size`` image. A file there that is not is removed (to be aligned again) and ``redone`` gets a line
    saying why."""
    if not path.exists() and not path.is_symlink():
        return False
    try:
        h, w = load_image(path, max_pixels=size * size).shape[:2]  # every pixel decoded: a truncated crop fails
        why = None if (w, h) == (size, size) else f"{w}x{h} pixels, not {size}x{size}"
    except ImageError as e:
        why = e.problem
    if why is None:
        return True
    redone.append(f"{path}: not a finished crop ({why}); aligning it again")
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def _remove_stale_temporaries(dst: Path) -> None:
    """Delete the half-written crops of an interrupted run (``.NAME.tmpPID.png``, see ``atomic_path``)."""
    pattern = re.compile(r"^\..+\.tmp\d+\.(png|jpg)$")
    for dirpath, _, filenames in os.walk(dst):
        for f in filenames:
            if pattern.match(f):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, f))


def _write_report(
    path: Path, settings: dict[str, Any], counts: dict[str, int], failures: list[Failure], several: list[str]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".tsv":
        lines = ["# " + " ".join(f"{k}={v}" for k, v in {**settings, **counts}.items()), "path\treason\tmessage"]
        lines += [f"{f.path}\t{f.reason}\t{f.message.replace(chr(9), ' ')}" for f in failures]
        text = "\n".join(lines) + "\n"
    else:
        doc = {**settings, "counts": counts, "failures": [f.as_dict() for f in failures], "several_faces": several}
        text = json.dumps(doc, indent=2) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
