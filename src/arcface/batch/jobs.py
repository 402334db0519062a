"""The per-image work of the batch jobs (align, embed, enrol): one definition, whichever engine runs it.

    >>> settings = JobSettings("embed", model="default", detector="mtcnn")
    >>> worker = Worker(settings)                         # loads the model once (a process, a Ray actor)
    >>> rows = worker.run([Item("a.jpg"), Item("b.jpg")])  # list[Row], one per item, in order

A :class:`Worker` holds what a process needs to do the work (the face pipeline's aligner, and for ``embed`` and
``enroll`` the model) and turns items into :class:`Row` s: the main face's detector score, its five landmarks, and
its embedding (``embed``, ``enroll``) or its crop written to the item's output file (``align``). A photo that cannot
be read or has no face gives a row with a :class:`~arcface.batch.failures.Failure` and the job goes on.

The engines (:mod:`arcface.batch.engines`) only decide where workers run: in this process, in local worker
processes, or as actors of a Ray cluster. :class:`JobSettings` is what they ship to each worker (plain data, and
:meth:`JobSettings.describe` is what a job's manifest records).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from arcface.align.aligner import FaceAligner
from arcface.align.face import Face
from arcface.align.transform import CropSpec
from arcface.batch.failures import Failure, failure_of
from arcface.inference.contract import ModelContract
from arcface.inference.recognizer import FaceRecognizer, NoFaceError
from arcface.io.files import write_bytes_atomic
from arcface.io.images import load_image
from arcface.runtime.workers import thread_map

__all__ = [
    "EMBEDDING_NORM_TOLERANCE", "KINDS", "Item", "JobError", "JobSettings", "Row", "Worker", "cached_worker",
    "encode_image", "model_facts", "release_workers",
]

#: How far a unit embedding's L2 norm may be from 1 (float32 rounding is far below this); rows outside it are
#: failures, and shards read back are checked against the same bound.
EMBEDDING_NORM_TOLERANCE = 1e-3

#: The batch jobs: ``align`` (crops to files), ``embed`` (embeddings), ``enroll`` (embeddings with an identity).
KINDS = ("align", "embed", "enroll")


class JobError(RuntimeError):
    """A batch job cannot go on (an engine that is not installed or not reachable, a job folder that holds another
    job, workers that keep dying); ``str(error)`` is one line for a person. What was computed so far is kept."""


@dataclass(frozen=True)
class Item:
    """One input of a job.

    Attributes:
        path: the photo (a path every worker can read: on a cluster, on storage every node mounts alike).
        identity: ``enroll``: the person (the photo's folder name); else empty.
        output: ``align``: the crop file to write; else empty.
    """

    path: str
    identity: str = ""
    output: str = ""


@dataclass
class Row:
    """What the work made of one item.

    Attributes:
        path: the item's path.
        identity: the item's identity (``enroll``), else empty.
        embedding: the main face's (D,) float32 unit embedding (``embed``, ``enroll``); None for ``align`` and on
            failure.
        score: the main face's detector score; None on failure and for ``embed --aligned`` (no detection).
        landmarks: the main face's (5, 2) float32 landmarks in the photo's pixels; None as ``score``.
        faces: faces found in the photo (0 on failure; 1 for aligned crops).
        output: ``align``: the crop file written; else empty.
        failure: why the item failed, or None.
        reused: the row comes from a shard that an earlier run of the job wrote (the Ray engine's resume).
    """

    path: str
    identity: str = ""
    embedding: np.ndarray | None = None
    score: float | None = None
    landmarks: np.ndarray | None = None
    faces: int = 0
    output: str = ""
    failure: Failure | None = None
    reused: bool = False

    @property
    def ok(self) -> bool:
        """The item was processed (no failure)."""
        return self.failure is None


@dataclass(frozen=True)
class JobSettings:
    """What each image of a job goes through; the same for every engine and every worker.

    Attributes:
        kind: "align", "embed" or "enroll".
        model: a model name or file (``embed``, ``enroll``); on a cluster, a file every node can read.
        model_options: more :func:`~arcface.inference.loader.load_model` arguments (``arch``).
        flip: flip-test fusion.
        precision: the Embedder's precision ("auto", "fp32", "bf16").
        backend: the Embedder's backend ("auto", "torch", "jit", "onnx").
        detector: the detector name.
        detector_options: its options (``max_side``, ``model_path``, ...).
        aligned: ``embed``: the images are aligned crops (no detection).
        batch_size: crops per forward pass.
        size: ``align``: the crop side in pixels.
        quality: ``align``: JPEG quality.
        threads: CPUs one worker's face pipeline may use (photos detected side by side, the model's threads; see
            :class:`~arcface.FaceRecognizer`); None: ``ARCFACE_THREADS``, else the usable CPUs. The engines set it per
            worker process or actor; it does not change the rows, so the manifest leaves it out.
    """

    kind: str
    model: str = "default"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    flip: bool = False
    precision: str = "auto"
    backend: str = "auto"
    detector: str = "mtcnn"
    detector_options: Mapping[str, Any] = field(default_factory=dict)
    aligned: bool = False
    batch_size: int = 64
    size: int = 112
    quality: int = 95
    threads: int | str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"job kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}")
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "model_options", dict(self.model_options))
        object.__setattr__(self, "detector_options", dict(self.detector_options))

    def describe(self) -> dict[str, Any]:
        """The settings as JSON-ready data: what a job's manifest records (a change makes its shards stale).

        Fields that do not apply to the kind are left out, so e.g. ``align`` does not depend on the model.
        """
        doc = dataclasses.asdict(self)
        unused = {"align": ("model", "model_options", "flip", "precision", "backend", "aligned", "batch_size"),
                  "embed": ("size", "quality"),
                  "enroll": ("size", "quality", "aligned")}[self.kind]  # fmt: skip
        for name in (*unused, "threads"):
            doc.pop(name)
        return json.loads(json.dumps(doc, sort_keys=True, default=str))

    def recognizer(self, device: str = "cpu") -> FaceRecognizer:
        """The face pipeline of an ``embed`` / ``enroll`` job."""
        options = dict(self.detector_options)
        max_side = options.pop("max_side", 1600)
        return FaceRecognizer(
            self.model, self.detector, flip=self.flip, precision=self.precision, backend=self.backend,
            device=device, max_side=max_side, detector_options=options, threads=self.threads,
            model_options=self.model_options,
        )  # fmt: skip


def model_facts(contract: ModelContract) -> dict[str, Any]:
    """What a job's plan records of its model: the contract's id (embeddings of another model are other rows) and
    the embedding size, which every embedding read back from the job's shards is checked against."""
    return {"contract": contract.id, "embedding_size": int(contract.embedding_size)}


class Worker:
    """The per-image work of one job in one process: the aligner (and model) loaded once, then items -> rows.

    Args:
        settings: the job.
        device: torch device of the model and of MTCNN ("cpu"; "cuda" on a GPU actor).

    Raises:
        FileNotFoundError, ValueError, KeyError: a bad model or detector (see :class:`~arcface.FaceRecognizer`).
    """

    def __init__(self, settings: JobSettings, device: str = "cpu") -> None:
        self.settings = settings
        self.recognizer: FaceRecognizer | None = None
        if settings.kind == "align":
            options = dict(settings.detector_options)
            if settings.detector == "mtcnn" and device != "cpu":
                options.setdefault("device", device)
            self.aligner = FaceAligner(settings.detector, CropSpec.square(settings.size), options)
        else:
            self.recognizer = settings.recognizer(device)
            self.aligner = self.recognizer.aligner

    @property
    def contract(self) -> ModelContract | None:
        """The model's contract (None for ``align``)."""
        return None if self.recognizer is None else self.recognizer.contract

    def run(self, items: Sequence[Item]) -> list[Row]:
        """One row per item, in order; a bad photo is a row with its failure (never an exception)."""
        rows: list[Row] = []
        crops: list[np.ndarray] = []
        pending: list[Row] = []  # rows whose crop waits for the model
        # photos side by side on this process's threads (the thread policy's "pipeline" plan: one torch thread each)
        side_by_side = self.recognizer.thread_plan.item_threads if self.recognizer is not None else 1
        for row, crop in thread_map(self._one_or_failure, items, workers=side_by_side):
            rows.append(row)
            if crop is not None:
                crops.append(crop)
                pending.append(row)
        if crops:
            assert self.recognizer is not None
            embeddings = self.recognizer.embedder.embed(crops)  # (N, D) unit rows
            for row, e in zip(pending, embeddings):
                e = np.asarray(e, dtype=np.float32)
                norm = float(np.linalg.norm(e.astype(np.float64)))
                if np.isfinite(e).all() and abs(norm - 1.0) <= EMBEDDING_NORM_TOLERANCE:
                    row.embedding = e
                else:  # a degenerate crop: recorded, never written as a row a reader would have to trust
                    message = f"{row.path}: the model gave an embedding that is not finite and of unit norm"
                    row.failure, row.faces = Failure(row.path, "bad_embedding", message), 0
                    row.score = row.landmarks = None
        return rows

    def _one_or_failure(self, item: Item) -> tuple[Row, np.ndarray | None]:
        try:
            return self._one(item)
        except Exception as e:  # one bad photo must not stop a long batch: it becomes a failure row
            return Row(item.path, item.identity, failure=failure_of(item.path, e)), None

    def _one(self, item: Item) -> tuple[Row, np.ndarray | None]:
        """The row of one item and the crop still to embed (None for ``align``). Raises on a bad photo."""
        if self.settings.aligned:
            assert self.recognizer is not None
            return Row(item.path, item.identity, faces=1), self.recognizer.aligned_crop(item.path)
        faces = self.aligner.faces(load_image(item.path), max_faces=1)
        if not faces:
            raise NoFaceError(item.path)
        main: Face = faces[0]
        row = Row(item.path, item.identity, score=main.score, landmarks=np.array(main.landmarks), faces=len(faces))
        if self.settings.kind != "align":
            return row, main.crop
        Path(item.output).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(item.output, encode_image(main.crop, item.output, quality=self.settings.quality))
        row.output = item.output
        return row, None


def encode_image(rgb: np.ndarray, path: str | os.PathLike, *, quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB image in the format of ``path``'s suffix (.png, .jpg, ...) with OpenCV.

    Raises:
        ValueError: the suffix is not an image format OpenCV can write.
    """
    suffix = Path(path).suffix.lower()
    if not suffix or not cv2.haveImageWriter(f"x{suffix}"):
        raise ValueError(f"{path}: cannot write an image of type {suffix or '(no suffix)'}; use .png or .jpg")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the image as {suffix}")
    return buf.tobytes()


_WORKERS: dict[str, Worker] = {}


def cached_worker(settings: JobSettings, device: str = "cpu") -> Worker:
    """This process's worker for ``settings``, built once (a worker process or actor keeps one per job)."""
    key = json.dumps([settings.describe(), settings.threads, device], sort_keys=True)
    if key not in _WORKERS:
        _WORKERS.clear()
        _WORKERS[key] = Worker(settings, device)
    return _WORKERS[key]


def release_workers() -> None:
    """Drop this process's cached worker (its model), e.g. when a job run in this process is done."""
    _WORKERS.clear()
