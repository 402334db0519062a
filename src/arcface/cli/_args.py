"""What the image subcommands (detect, align, embed, verify, eval, gallery) share: exit codes (their table is in
``arcface.cli``), the detector and model options and the recognizer they build, the images a SRC argument names, and
failure lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arcface.align.detection import FaceDetector
from arcface.align.detectors import DETECTORS, create_detector
from arcface.batch.engines import ENGINES, EngineOptions
from arcface.batch.failures import Failure
from arcface.batch.jobs import JobSettings
from arcface.inference.embedder import BACKENDS, PRECISIONS
from arcface.inference.recognizer import FaceRecognizer
from arcface.io.files import collect_images
from arcface.runtime import threads as thread_policy

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NO_FACE = 3


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""

# --------------------------------------------------------------------------------------------------
# Threads


def _threads(value: str) -> int | str:
    try:
        return thread_policy.parse_threads(value, "--threads") or "auto"
    except thread_policy.ThreadsError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--threads ")) from None  # argparse names the option


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--threads N``: the CPUs the command may use (the thread policy's override, as ``ARCFACE_THREADS``)."""
    p.add_argument(
        "--threads", type=_threads, default=None, metavar="N",
        help="CPUs to use (threads in all, split between workers by the thread policy); default $ARCFACE_THREADS, "
        "else the usable CPUs (affinity mask and cgroup CPU quota)",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Detector options


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """Add ``--detector``, ``--scrfd-model``, ``--max-side`` and ``--threads`` to a subcommand."""
    p.add_argument("--detector", choices=DETECTORS.names(), default="mtcnn", help="face detector (default mtcnn)")
    p.add_argument("--scrfd-model", default=None, metavar="PATH", help="the SCRFD .onnx file (with --detector scrfd)")
    p.add_argument(
        "--max-side", type=int, default=1600, metavar="PX",
        help="photos with a longer side are downscaled for detection; landmarks map back (default 1600)",
    )  # fmt: skip
    add_threads_arg(p)


def detector_options(args: argparse.Namespace, *, threads: int | None = None) -> tuple[str, dict[str, Any]]:
    """The detector name and constructor options from the parsed ``add_detector_args`` options.

    Args:
        args: parsed arguments.
        threads: intra-op threads of an onnxruntime detector (SCRFD); None lets it choose.

    Raises:
        CliError: SCRFD without ``--scrfd-model``, a missing model file, or ``--max-side`` below 16.
    """
    name = args.detector
    if args.max_side is not None and args.max_side < 16:
        raise CliError(f"--max-side must be at least 16, got {args.max_side}")
    options: dict[str, Any] = {"max_side": args.max_side}
    if name == "scrfd":
        if not args.scrfd_model:
            raise CliError("--detector scrfd needs --scrfd-model PATH (the SCRFD .onnx file is not bundled)")
        if not Path(args.scrfd_model).is_file():
            raise CliError(f"SCRFD model {args.scrfd_model} does not exist")
        options["model_path"] = args.scrfd_model
        if threads is not None:
            options["num_threads"] = threads
    elif args.scrfd_model:
        raise CliError(f"--scrfd-model only applies to --detector scrfd (got --detector {name})")
    return name, options


def make_detector(args: argparse.Namespace) -> FaceDetector:
    """The detector the options of ``add_detector_args`` ask for, with this process's threads set for detection."""
    thread_policy.apply(thread_policy.decide("detect", threads=getattr(args, "threads", None)))
    name, options = detector_options(args)
    return create_detector(name, **options)


# --------------------------------------------------------------------------------------------------
# Model options


def add_model_args(p: argparse.ArgumentParser, *, flip: bool | None = False) -> None:
    """Add ``--model``, ``--arch``, ``--precision``, ``--backend`` and ``--flip`` (default ``flip``; None: no flag)."""
    p.add_argument("--model", default="default", help="default, sface, or a .safetensors/.pth/.onnx model file")
    p.add_argument("--arch", default=None, help="backbone name for a .pth state dict (r50, mbf, ...)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="embedding precision (default auto: bf16 where the CPU runs it natively and it keeps "
                        "cosine >= 0.99 to fp32, else fp32)")  # fmt: skip
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="embedding backend: torch (eager), jit (frozen TorchScript graph), onnx (onnxruntime); "
                        "default auto (jit where bf16 is native, else torch; ONNX files: onnxruntime)")  # fmt: skip
    if flip is not None:
        p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=flip,
                       help=f"flip-test fusion, image + mirror image (default {'on' if flip else 'off'})")  # fmt: skip


def recognizer_from_args(args: argparse.Namespace, **options: Any) -> FaceRecognizer:
    """The :class:`FaceRecognizer` the parsed detector and model options ask for.

    Args:
        args: parsed ``add_detector_args`` + ``add_model_args`` options (``--flip`` when present, ``--device``).
        **options: more ``FaceRecognizer`` arguments (``threshold``) or ``model_options`` entries (``pass_size``).
    """
    name, det_options = detector_options(args)
    max_side = det_options.pop("max_side")
    threshold = options.pop("threshold", None)
    model_options = {**({"arch": args.arch} if args.arch else {}), **options}
    return FaceRecognizer(
        args.model, name, flip=bool(getattr(args, "flip", False)), precision=args.precision, backend=args.backend,
        threshold=threshold, device=getattr(args, "device", "cpu"), max_side=max_side, detector_options=det_options,
        model_options=model_options, threads=getattr(args, "threads", None),
    )  # fmt: skip


def job_settings(args: argparse.Namespace, kind: str, **options: Any) -> JobSettings:
    """The :class:`~arcface.batch.jobs.JobSettings` of a batch job from the parsed detector (and model) options.

    Args:
        args: parsed ``add_detector_args`` (+ ``add_model_args``) options.
        kind: "align", "embed" or "enroll".
        **options: more ``JobSettings`` fields (``aligned``, ``batch_size``, ``size``, ``quality``).
    """
    name, det_options = detector_options(args, threads=1 if kind == "align" else None)
    threads = getattr(args, "threads", None)
    if kind == "align":
        return JobSettings(kind, detector=name, detector_options=det_options, threads=threads, **options)
    return JobSettings(
        kind, model=args.model, model_options={"arch": args.arch} if args.arch else {}, flip=bool(args.flip),
        precision=args.precision, backend=args.backend, detector=name, detector_options=det_options,
        threads=threads, **options,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Engine options (the batch jobs)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Add ``--engine`` and the Ray engine's options to a batch subcommand."""
    g = p.add_argument_group("engine", "where the per-image work runs (see the README's 'Past one machine')")
    g.add_argument(
        "--engine", choices=ENGINES, default="local",
        help="local: this machine (default); ray: an actor pool on a Ray cluster, writing Parquet shards that a "
        "re-run resumes",
    )  # fmt: skip
    g.add_argument(
        "--address", default=None, metavar="ADDR",
        help="--engine ray: the cluster's head, HOST:PORT (or auto, or ray://HOST:PORT); default $RAY_ADDRESS, else "
        "a Ray instance started on this machine for the job",
    )  # fmt: skip
    g.add_argument(
        "--job-dir", default=None, metavar="DIR",
        help="--engine ray: the job folder (plan and shards; default .arcface-jobs/KIND-DIGEST here); the same "
        "command resumes from it",
    )  # fmt: skip
    g.add_argument("--actors", type=int, default=None, metavar="N",
                   help="--engine ray: actors (default: one per CPU of the cluster)")  # fmt: skip
    g.add_argument("--actor-cpus", type=float, default=0.5, metavar="C",
                   help="--engine ray: CPUs each actor asks for (default 0.5; a fraction is fine)")  # fmt: skip
    g.add_argument("--actor-gpus", type=float, default=0.0, metavar="G",
                   help="--engine ray: GPUs each actor asks for (default 0; > 0 runs on CUDA)")  # fmt: skip
    g.add_argument("--shard-size", type=int, default=256, metavar="N",
                   help="--engine ray: inputs per shard, the unit of work and of resume (default 256)")  # fmt: skip


def engine_options(args: argparse.Namespace, *, workers: int | None = None) -> EngineOptions:
    """The :class:`~arcface.batch.engines.EngineOptions` of the parsed ``add_engine_args`` options (and ``--threads``).

    Raises:
        ValueError: a bad value, or a Ray option with ``--engine local``.
    """
    return EngineOptions(
        args.engine, workers=workers, threads=getattr(args, "threads", None), address=args.address,
        job_dir=args.job_dir, actors=args.actors,
        actor_cpus=args.actor_cpus, actor_gpus=args.actor_gpus, shard_size=args.shard_size,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Finding images


def collect_sources(src: str | os.PathLike) -> list[Path]:
    """The images named by ``src``: an image file, a folder (recursive), or a text file listing paths, as the safe
    walker keeps them with its default policy (:func:`arcface.io.files.collect_images`, which also says which files
    it skipped and why; commands that report those use ``cli._files.collect``).

    Raises:
        CliError: ``src`` does not exist, a folder holds no images, or a list file cannot be read or names none.
    """
    try:
        return collect_images(src).files
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None


# --------------------------------------------------------------------------------------------------
# Failures and image output


def print_failures(failures: Sequence[Failure], *, limit: int = 10, file=None) -> None:
    """List the first ``limit`` failures on stderr, one line each, then how many more."""
    out = sys.stderr if file is None else file
    for f in failures[:limit]:
        print(f"  failed: {f.message}" if f.path in f.message else f"  failed: {f.path}: {f.message}", file=out)
    if len(failures) > limit:
        print(f"  ... and {len(failures) - limit} more", file=out)


# --------------------------------------------------------------------------------------------------
# Progress and output files
