"""The face pipeline, from photo to identity: detect, align, embed, compare, verify.

    >>> rec = FaceRecognizer()                      # bundled MobileFaceNet + MTCNN
    >>> faces = rec.analyze("group.jpg")            # list[Face] main face first, each with .crop and .embedding
    >>> faces = rec.detect("group.jpg")             # list[Face] (boxes and landmarks only)
    >>> crops = rec.align("group.jpg")              # list of (112, 112, 3) uint8 RGB, same order
    >>> emb = rec.embed("me.jpg")                   # (D,) float32, unit norm, of the main face
    >>> rec.verify("me.jpg", "me_too.jpg")          # Verification(similarity=0.71, same=True, threshold=0.43)

Images may be paths, encoded bytes, PIL images, or numpy arrays ((H, W, 3) uint8 RGB or (H, W) grey); they
all go through :func:`arcface.io.images.load_image`, so bad input raises
:class:`~arcface.io.images.ImageError`, and an image without a face raises :class:`NoFaceError`.
Already-aligned crops (the contract's input size, e.g. 112x112) skip detection with ``aligned=True``.

The "main face" of a photo is the first of :meth:`FaceRecognizer.detect`: large and near the centre
(:func:`arcface.align.rank_faces`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np

from arcface.align.aligner import FaceAligner
from arcface.align.detection import FaceDetector
from arcface.align.face import Face
from arcface.inference.contract import ModelContract
from arcface.inference.embedder import Embedder
from arcface.inference.loader import load_model
from arcface.io.images import ImageError, ImageSource, load_image
from arcface.runtime import threads as thread_policy
from arcface.runtime.workers import thread_map

__all__ = ["DEFAULT_FLIP", "Face", "FaceRecognizer", "NoFaceError", "Verification"]

#: Flip-test fusion default of :class:`FaceRecognizer`; the bundled model's threshold is calibrated with it. Off: on
#: LFW View 1 flip fusion scored the same accuracy at twice the embedding cost.
DEFAULT_FLIP = False


class NoFaceError(ValueError):
    """No face was found in an image; ``str(error)`` is one line naming the image.

    Attributes:
        source: the image's name (its path, or ``"<array>"``, ``"<PIL image>"``, ``"<bytes>"``).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__(f"{source}: no face found")

    def __reduce__(self):
        return (type(self), (self.source,))


@dataclass(frozen=True)
class Verification:
    """The answer to "same person?".

    Attributes:
        similarity: cosine similarity of the two L2-normalised embeddings, in [-1, 1].
        same: ``similarity > threshold``.
        threshold: the cosine threshold used.
    """

    similarity: float
    same: bool
    threshold: float

    @property
    def distance_l2(self) -> float:
        """Squared L2 distance of the unit embeddings, ``2 - 2 * similarity``."""
        return 2.0 - 2.0 * self.similarity

    @property
    def threshold_l2(self) -> float:
        """The threshold as a squared L2 distance (same when ``distance_l2 < threshold_l2``)."""
        return 2.0 - 2.0 * self.threshold


class FaceRecognizer:
    """The face pipeline: one detector and one model, detection once per photo.

    Embeddings are computed by an :class:`~arcface.inference.embedder.Embedder` (:attr:`embedder`, built by
    :func:`~arcface.inference.loader.load_model`): with the default ``precision="auto"`` the fastest path whose
    accuracy holds on this CPU (see :mod:`arcface.inference.embedder`). Crops are cut by a
    :class:`~arcface.align.aligner.FaceAligner` (:attr:`aligner`) to the model contract's template and size.

    Args:
        model: a model name ("default", "mobilefacenet", "sface"), a model file (``.safetensors``, ``.pth`` with
            ``model_options={"arch": ...}``, ``.onnx``), or a ready :class:`~arcface.inference.embedder.Embedder`
            (used as it is; ``flip``, ``device``, ``precision``, ``backend`` and ``model_options`` then do not apply).
        detector: a detector name ("mtcnn", "yunet", "scrfd") or a ``FaceDetector`` instance.
        flip: flip-test fusion (embedding of the crop plus of its mirror image, then normalised).
        precision: the Embedder's precision, "auto", "fp32" or "bf16".
        backend: the Embedder's backend, "auto", "torch", "jit" or "onnx".
        threshold: cosine threshold of :meth:`verify` (1:1); None uses the model contract's calibrated one.
        identification_threshold: cosine threshold of a 1:N gallery match (:meth:`identified`); None uses the
            contract's ``identification_threshold`` (calibrated for a false-positive identification rate).
        device: torch device of the model (and of MTCNN).
        max_side: photos with a longer side are downscaled for detection (landmarks map back, the crop is cut
            from the full-resolution photo).
        detector_options: extra arguments of the detector (e.g. ``{"min_face_size": 40}``).
        model_options: extra arguments of :func:`~arcface.inference.loader.load_model` (``arch``, ``options``,
            ``preset``, ``providers``, ``pass_size``, ``calibration``, ``min_cosine``).
        threads: the CPU budget of the pipeline; None: ``ARCFACE_THREADS``, else the usable CPUs (affinity and cgroup
            quota). Without ``plan`` this is an entry point: it decides the thread policy's "pipeline" plan
            (:mod:`arcface.runtime.threads`: the detector's small operators on one intra-op thread, that many photos
            side by side in :meth:`embed_batch` / :meth:`main_crops`, the model's passes side by side, onnxruntime on
            that many threads) and applies it to this process, once.
        plan: a thread plan decided by the caller (the service gives each request's recognizer
            ``plan.per_item()`` of its own); nothing is applied then, and the model is built with it.
        lone_threads: the largest OpenMP team a photo gets when it is alone in this recognizer and no other process
            runs (:class:`~arcface.runtime.threads.LoneWork`); None: the plan's CPUs. The service hands each
            request's share as ``plan`` and its own CPUs here, so a lone request on an idle service gets them.
            Nothing with the thread policy off (``ARCFACE_THREADS=legacy``).

    Raises:
        FileNotFoundError: unknown model name or missing file (see ``load_model``).
        KeyError: unknown detector name.
        ValueError: a contract whose crop this pipeline cannot make (non-square input, unknown template size);
            an unknown precision or backend name, or one the model cannot run; a bad ``threads`` or
            ``ARCFACE_THREADS``, or both ``threads`` and ``plan``, or a ``lone_threads`` that is not a positive
            integer (``ThreadsError``).
    """

    def __init__(
        self,
        model: str | os.PathLike | Embedder = "default",
        detector: str | FaceDetector = "mtcnn",
        *,
        flip: bool = DEFAULT_FLIP,
        precision: str = "auto",
        backend: str = "auto",
        threshold: float | None = None,
        identification_threshold: float | None = None,
        device: str = "cpu",
        max_side: int | None = 1600,
        detector_options: Mapping[str, Any] | None = None,
        model_options: Mapping[str, Any] | None = None,
        threads: int | str | None = None,
        plan: thread_policy.ThreadPlan | None = None,
        lone_threads: int | None = None,
    ) -> None:
        if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold}")
        model_options = dict(model_options or {})
        threads = model_options.pop("threads", None) if threads is None else threads
        thread_policy.positive(lone_threads, "lone_threads")  # ThreadsError, a ValueError
        #: The thread plan this pipeline runs with (its ``item_threads`` photos at a time in :meth:`main_crops`).
        self.thread_plan = thread_policy.entry_plan("pipeline", threads, plan)  # a bad setting fails before loading
        # a photo alone in this recognizer on an idle machine gets every usable CPU (up to 4) as its OpenMP team
        self._lone = None if self.thread_plan.legacy else thread_policy.LoneWork(lone_threads or self.thread_plan.cpus)
        if isinstance(model, Embedder):
            self.embedder = model
        else:
            self.embedder = load_model(
                model, precision=precision, backend=backend, flip=flip, device=device, plan=self.thread_plan,
                **model_options,
            )  # fmt: skip
        options = dict(detector_options or {})
        if not isinstance(detector, FaceDetector):
            options = {"max_side": max_side, **options}
            if detector == "mtcnn":
                options.setdefault("device", device)
        self.aligner = FaceAligner(detector, self.embedder.contract, options)
        self._threshold = None if threshold is None else float(threshold)
        if identification_threshold is not None and not -1.0 <= float(identification_threshold) <= 1.0:
            raise ValueError(f"identification_threshold is a cosine in [-1, 1], got {identification_threshold}")
        self._identification_threshold = None if identification_threshold is None else float(identification_threshold)

    # ----------------------------------------------------------------------------------------------
    # Properties

    @property
    def detector(self) -> FaceDetector:
        """The face detector."""
        return self.aligner.detector

    @property
    def precision(self) -> str:
        """The precision embeddings are computed in ("fp32" or "bf16"), as the Embedder chose it."""
        return self.embedder.precision

    @property
    def contract(self) -> ModelContract:
        """The model's contract: embeddings of recognizers with equal ``contract.id`` are comparable."""
        return self.embedder.contract

    @property
    def threshold(self) -> float | None:
        """The cosine threshold of :meth:`verify` (given, else the contract's calibrated one, else None)."""
        return self._threshold if self._threshold is not None else self.contract.threshold

    @property
    def identification_threshold(self) -> float | None:
        """The cosine threshold of a 1:N gallery match (given, else the contract's calibrated one, else None).

        Not :attr:`threshold`: that one is chosen for one comparison (1:1 verification); a search compares a
        stranger with every enrolled person, so its best hit needs a higher bar (see the contract's field).
        """
        if self._identification_threshold is not None:
            return self._identification_threshold
        return self.contract.identification_threshold

    def identified(self, similarity: float) -> bool | None:
        """Is a gallery hit of this cosine similarity a match (``similarity > identification_threshold``)?

        None when there is no identification threshold (the model is not calibrated for 1:N search).
        """
        t = self.identification_threshold
        return None if t is None else bool(similarity > t)

    @property
    def embedding_size(self) -> int:
        """D, the length of an embedding."""
        return self.embedder.embedding_size

    # ----------------------------------------------------------------------------------------------
    # Pipeline

    def analyze(self, image: ImageSource, *, max_faces: int | None = None) -> list[Face]:
        """Detect once, then crop and embed the faces found: the whole pipeline for one photo.

        Args:
            image: path, bytes, PIL image, or (H, W, 3) uint8 RGB / (H, W) grey array.
            max_faces: crop and embed only the first ``max_faces`` faces (main face first; None: all). Every face
                found is returned; the others have ``crop`` and ``embedding`` None (their count is still known).

        Returns:
            Faces (possibly none), main face first, with boxes and landmarks in the image's pixel coordinates and,
            for the first ``max_faces``, their aligned ``crop`` and (D,) unit ``embedding``.

        Raises:
            ImageError: the input is not a readable image.
        """
        with self._photo():
            faces = self.aligner.faces(load_image(image), max_faces)
            done = [f for f in faces if f.crop is not None]
            if not done:
                return faces
            emb = self.embedder.embed(np.stack([f.crop for f in done]))  # (n, D)
        return [dataclasses.replace(f, embedding=emb[i]) if i < len(done) else f for i, f in enumerate(faces)]

    def detect(self, image: ImageSource) -> list[Face]:
        """Find the faces in an image, main face first (boxes and landmarks; no crop, no embedding).

        Raises:
            ImageError: the input is not a readable image.
        """
        with self._photo():
            return self.aligner.detector.detect(load_image(image))

    def align(self, image: ImageSource) -> list[np.ndarray]:
        """Aligned crops of every face, in :meth:`detect` order.

        Returns:
            List of (H, W, 3) uint8 RGB crops, (H, W) the contract's ``input_size`` (112x112).
        """
        with self._photo():
            return [f.crop for f in self.aligner.faces(load_image(image))]

    def embed(self, image: ImageSource, *, aligned: bool = False) -> np.ndarray:
        """The embedding of the main face.

        Args:
            image: a photo, or with ``aligned=True`` an aligned crop of the contract's input size.
            aligned: skip detection and alignment.

        Returns:
            (D,) float32 of unit L2 norm.

        Raises:
            NoFaceError: no face in the photo (the message names it).
            ImageError: unreadable input.
        """
        return self.embed_batch([image], aligned=aligned)[0]

    def embed_faces(self, image: ImageSource) -> np.ndarray:
        """Embeddings of every face in a photo, in :meth:`detect` order.

        Returns:
            (N, D) float32 of unit rows; N = 0 when there is no face.
        """
        faces = self.analyze(image)
        if not faces:
            return np.zeros((0, self.embedding_size), np.float32)
        return np.stack([f.embedding for f in faces])

    def embed_batch(self, images: Iterable[ImageSource], *, aligned: bool = False) -> np.ndarray:
        """Embeddings of the main face of each image, run through the model in batches.

        Args:
            images: photos (or aligned crops with ``aligned=True``).
            aligned: skip detection and alignment.

        Returns:
            (N, D) float32 of unit rows, one per image.

        Raises:
            NoFaceError: for the first image without a face.
            ImageError: for the first unreadable image.
        """
        with self._work(images):
            crops = []
            for crop in self.main_crops(images, aligned=aligned):
                if isinstance(crop, Exception):
                    raise crop
                crops.append(crop)
            return self.embedder.embed(crops)

    def main_crops(self, images: Iterable[ImageSource], *, aligned: bool = False) -> Iterator[np.ndarray | Exception]:
        """The main face's aligned crop of each image, in order, ``thread_plan.item_threads`` photos at a time.

        Photos are detected side by side on threads of this process, each on the process's intra-op threads (the
        thread policy's one: MTCNN's small operators gain little from a team of threads, and a team stalls whenever
        another process takes one of its cores).

        Args:
            images: photos (or aligned crops with ``aligned=True``); may be a long iterator.
            aligned: the images are already aligned crops (loaded and checked only).

        Yields:
            (H, W, 3) uint8 RGB crops; in place of an image that fails, its exception (:class:`NoFaceError`,
            :class:`~arcface.io.images.ImageError`, ``ValueError``, ``OSError``), so one bad photo does not end a
            batch.
        """
        one = self.aligned_crop if aligned else self.main_crop

        def crop_or_error(image: ImageSource) -> np.ndarray | Exception:
            try:
                return one(image)
            except (ImageError, NoFaceError, ValueError, OSError) as e:
                return e

        with self._work(images):
            yield from thread_map(crop_or_error, images, workers=self.thread_plan.item_threads)

    def _work(self, images: Iterable[ImageSource]) -> contextlib.AbstractContextManager:
        """:meth:`_photo` for a single image, else :meth:`_batch`."""
        return self._photo() if isinstance(images, Sized) and len(images) <= 1 else self._batch()

    def _photo(self) -> contextlib.AbstractContextManager:
        """One photo's work: every usable CPU (up to 4) as its OpenMP team when it is alone and the machine idle
        (:class:`~arcface.runtime.threads.LoneWork`), else the plan's intra-op threads."""
        return self._lone.photo() if self._lone is not None else contextlib.nullcontext()

    def _batch(self) -> contextlib.AbstractContextManager:
        """Photos side by side: none counts as alone while they run."""
        return self._lone.batch() if self._lone is not None else contextlib.nullcontext()

    def compare(self, a: ImageSource | np.ndarray, b: ImageSource | np.ndarray, *, aligned: bool = False) -> float:
        """Cosine similarity of two faces.

        Args:
            a: an image (main face used) or a (D,) embedding of this recognizer (any 1-D array is taken as an
                embedding; images are 2-D or 3-D).
            b: likewise.
            aligned: the images are aligned crops.

        Returns:
            Cosine similarity in [-1, 1].

        Raises:
            ValueError: an embedding of the wrong length (another model's).
        """
        ea, eb = (self._embedding_of(x, aligned) for x in (a, b))
        return float(np.clip(np.dot(ea, eb), -1.0, 1.0))

    def verify(
        self, a: ImageSource | np.ndarray, b: ImageSource | np.ndarray, *, aligned: bool = False
    ) -> Verification:
        """Are ``a`` and ``b`` the same person? Compares their similarity with :attr:`threshold`.

        Raises:
            ValueError: no threshold (the model is not calibrated and none was given).
            NoFaceError, ImageError: as :meth:`embed`.
        """
        threshold = self.threshold
        if threshold is None:
            raise ValueError(
                f"model {self.contract.architecture} (contract {self.contract.id}) has no calibrated threshold; "
                "pass FaceRecognizer(threshold=...)"
            )
        sim = self.compare(a, b, aligned=aligned)
        return Verification(similarity=sim, same=sim > threshold, threshold=threshold)

    def __repr__(self) -> str:
        return f"FaceRecognizer(model={self.embedder!r}, detector={self.detector!r}, threshold={self.threshold})"

    def main_crop(self, image: ImageSource) -> np.ndarray:
        """The aligned crop of the main face of a photo, (H, W, 3) uint8 RGB.

        Raises:
            NoFaceError: no face in the photo. ImageError: unreadable input.
        """
        faces = self.aligner.faces(load_image(image), max_faces=1)
        if not faces:
            raise NoFaceError(_name(image))
        return faces[0].crop

    def aligned_crop(self, image: ImageSource) -> np.ndarray:
        """An already aligned crop, loaded and checked to be of the contract's input size.

        Raises:
            ValueError: another size. ImageError: unreadable input.
        """
        rgb = load_image(image)
        h, w = self.contract.input_size
        if rgb.shape[:2] != (h, w):
            raise ValueError(
                f"{_name(image)}: aligned=True needs a {w}x{h} aligned crop, got {rgb.shape[1]}x{rgb.shape[0]}"
            )
        return rgb

    # ----------------------------------------------------------------------------------------------
    # Helpers

    def _embedding_of(self, x: ImageSource | np.ndarray, aligned: bool) -> np.ndarray:
        if isinstance(x, np.ndarray) and x.ndim == 1:
            if x.shape[0] != self.embedding_size:
                raise ValueError(
                    f"embedding of length {x.shape[0]} does not come from this model "
                    f"({self.embedding_size}-D, contract {self.contract.id}); embeddings of different "
                    "contracts are never compared"
                )
            if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
                raise ValueError("an embedding must be a finite float vector")
            norm = float(np.linalg.norm(x))
            if norm == 0:
                raise ValueError("an embedding must not be all zeros")
            return (x / norm).astype(np.float32)
        return self.embed(x, aligned=aligned)


def _name(image: Any) -> str:
    """How error messages call an image (as load_image does)."""
    if isinstance(image, (str, os.PathLike)):
        return os.fsdecode(image)
    if isinstance(image, np.ndarray):
        return "<array>"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    filename = getattr(image, "filename", None)
    if filename:
        return os.fsdecode(filename)
    return "<PIL image>" if type(image).__module__.startswith("PIL") else f"<{type(image).__name__}>"
