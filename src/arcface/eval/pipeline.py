"""The evaluation pipeline: detection, alignment and embedding of a verification set, with an on-disk cache (a
second run is fast). Detection and cropping go through the face pipeline's :class:`~arcface.align.FaceAligner`
(one per worker process), embedding through the :class:`~arcface.inference.embedder.Embedder`.

Two kinds of entries, each one ``.npz`` file written atomically under the cache folder:

* ``crops/KEY.npz``: the aligned crop of one image and whether it is a fallback. KEY hashes the image's
  absolute path, mtime (ns) and size, the detector name and options, and the crop's size and template points,
  so crops are shared between every model that takes the same crop (detection runs once for several models).
* ``embeddings/KEY.npz``: the (M, D) embeddings of a whole set. KEY hashes the keys of its crops (or the
  ``.bin`` file's path, mtime and size), the model contract's id, the flip flag, and the precision and backend
  that actually ran (:func:`embedding_path`), so float32 and bfloat16 embeddings of one model never mix.

A cache file that cannot be read (torn, corrupt, wrong shape) is ignored and rebuilt.

**Images without a face**: the detector's main face is used; when it finds none, the image's centre square of
side ``0.55 * min(H, W)`` (for LFW's 250x250: the central 137x137, about where a deep-funneled face lies) is
resized to the crop size. Such images are counted (``fallbacks``) and reported; their pairs are scored like any
other. Unreadable images are errors.

Detection runs in ``workers`` processes (:func:`arcface.runtime.workers.process_map`: ``spawn``, one torch thread
each); it is the slow part. By default one "detect" thread plan, decided once per set (:mod:`arcface.runtime.threads`),
chooses them: one per usable CPU, fewer for a short job (one per ``MIN_ITEMS_PER_PROCESS`` images; one runs in this
process). Embedding runs in this process on the plan the Embedder was built with (its passes side by side), a batch
at a time as the crops arrive, so it overlaps the workers' detection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from arcface.align.aligner import cached_aligner
from arcface.align.transform import CropSpec
from arcface.eval.datasets import PairSet
from arcface.inference.embedder import Embedder
from arcface.io.images import ImageError, load_image
from arcface.runtime import threads as thread_policy
from arcface.runtime.progress import Progress
from arcface.runtime.untrusted import load_npz
from arcface.runtime.workers import process_map

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CACHE",
    "FALLBACK_FRACTION",
    "DetectionSpec",
    "EmbedStats",
    "EvalCache",
    "align_images",
    "centre_crop",
    "iter_crops",
    "decode_aligned",
    "embed_pair_set",
]

#: Default cache folder (relative to the working directory).
DEFAULT_CACHE = Path(".cache/arcface")

#: Side of the fallback centre square, as a fraction of the image's shorter side.
FALLBACK_FRACTION = 0.55


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


class EvalCache:
    """An ``.npz`` store under ``root`` (``None`` disables it: every get misses, every put is dropped).

    Args:
        root: the cache folder; created on first write.
    """

    def __init__(self, root: str | os.PathLike | None = DEFAULT_CACHE) -> None:
        self.root = None if root is None else Path(root)

    def _path(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}.npz"

    def get(self, kind: str, key: str, check: Callable[[dict[str, np.ndarray]], bool] | None = None):
        """The arrays stored under (kind, key), or None when absent or unreadable (a bad file is removed).

        Args:
            kind: "crops" or "embeddings".
            key: the entry's hash.
            check: extra validation of the loaded arrays; False counts as corrupt.
        """
        if self.root is None:
            return None
        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            arrays = load_npz(path)  # sizes checked against the file before numpy allocates
            if check is not None and not check(arrays):
                raise ValueError("unexpected content")
            return arrays
        except Exception as e:  # a torn or foreign file: rebuild it
            log.warning("cache file %s is unreadable (%s); rebuilding it", path, e)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def put(self, kind: str, key: str, **arrays: np.ndarray) -> None:
        """Store arrays under (kind, key), atomically (a reader never sees half a file)."""
        if self.root is None:
            return
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


@dataclass(frozen=True)
class DetectionSpec:
    """How the crops of a set are made: the detector, its options and the crop (from the model contract).

    Attributes:
        detector: detector name ("mtcnn", "yunet", "scrfd").
        detector_options: its constructor options (``max_side``, ``model_path``, ...).
        crop: the crop a contract asks for.
    """

    detector: str = "mtcnn"
    detector_options: dict = field(default_factory=dict)
    crop: CropSpec = field(default_factory=CropSpec)

    @property
    def size(self) -> int:
        """Side of the (square) crop."""
        return self.crop.input_size[0]

    @classmethod
    def for_contract(cls, contract, detector: str = "mtcnn", detector_options: dict | None = None) -> DetectionSpec:
        """The crop a model contract asks for (square input only)."""
        h, w = contract.input_size
        if h != w:
            raise ValueError(f"contract {contract.id}: evaluation needs a square input, got {h}x{w}")
        spec = CropSpec(tuple(contract.input_size), contract.template, tuple(map(tuple, contract.template_points)))
        return cls(detector, dict(detector_options or {}), spec)

    def key(self) -> dict:
        """The JSON-able part of a crop's cache key."""
        return {"detector": self.detector, "options": self.detector_options, "size": self.size,
                "template": self.crop.template, "points": self.crop.template_points}  # fmt: skip


def centre_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The fallback crop: the centre square of side ``FALLBACK_FRACTION * min(H, W)`` resized to (size, size).

    Args:
        rgb: (H, W, 3) uint8.
        size: output side.

    Returns:
        (size, size, 3) uint8.
    """
    h, w = rgb.shape[:2]
    side = max(1, round(FALLBACK_FRACTION * min(h, w)))
    y0, x0 = (h - side) // 2, (w - side) // 2
    square = rgb[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(square, (size, size), interpolation=interp))


#: Images a worker detects together (MTCNN shares its network passes between them: bench/mtcnn_speed.py).
DETECT_BATCH = 8
#: Crops embedded at a time as they arrive from the detection workers.
EMBED_BATCH = 64


def _align_chunk(args: tuple[list[str], DetectionSpec]) -> list[tuple[np.ndarray, bool]]:
    """Detect the main face of a few images together and crop each (centre crop when there is none); runs in a
    worker."""
    paths, spec = args
    images = [load_image(p) for p in paths]
    found = cached_aligner(spec.detector, spec.detector_options, spec.crop).faces_batch(images, max_faces=1)
    return [(faces[0].crop, False) if faces else (centre_crop(rgb, spec.size), True)
            for rgb, faces in zip(images, found, strict=True)]  # fmt: skip


def _image_key(path: Path, spec: DetectionSpec) -> str:
    p = Path(path).resolve()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError(str(path), "missing", "no such file") from None
    return _hash({"path": str(p), "mtime_ns": st.st_mtime_ns, "size": st.st_size, **spec.key()})


def _valid_crop(size: int) -> Callable[[dict[str, np.ndarray]], bool]:
    def check(a: dict[str, np.ndarray]) -> bool:
        c = a.get("crop")
        return c is not None and c.shape == (size, size, 3) and c.dtype == np.uint8 and "fallback" in a

    return check


def _valid_embeddings(arrays: dict[str, np.ndarray], m: int, d: int) -> bool:
    """A cached embeddings entry is used only as the pipeline writes it: (m, d) finite unit vectors and (m,) flags; a
    cache folder is a file on disk like any other, so anything else is rebuilt rather than trusted."""
    emb, fallback = arrays.get("embeddings", np.zeros(0)), arrays.get("fallback", np.zeros(0))
    if emb.shape != (m, d) or fallback.shape != (m,) or emb.dtype.kind != "f":
        return False
    norms = np.linalg.norm(emb.astype(np.float64), axis=1)
    return bool(np.isfinite(emb).all() and np.all(np.abs(norms - 1.0) <= 1e-3))


def iter_crops(
    paths: Sequence[str | os.PathLike],
    spec: DetectionSpec,
    cache: EvalCache,
    *,
    workers: int | None = None,
    progress: bool = True,
    counts: dict[str, int] | None = None,
    threads: int | str | None = None,
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """The aligned crop of the main face of each image, from the cache or by detection, as it becomes ready.

    Cached crops come first; the others are detected :data:`DETECT_BATCH` images at a time in ``workers``
    processes and yielded as they arrive, so a consumer (the embedding) works while the workers detect.

    Args:
        paths: M image files.
        spec: detector, crop size and template.
        cache: where crops are looked up and stored.
        workers: detection processes (1: in this process); None: the thread policy's (one per usable CPU, one per
            200 images at most).
        progress: report progress on stderr.
        counts: filled with ``{"cached": ..., "detected": ...}``.
        threads: CPUs detection may use; None: ``ARCFACE_THREADS``, else the usable CPUs.

    Yields:
        ``(index, crop, fallback)``: the image's position in ``paths``, its (S, S, 3) uint8 crop, and True where no
        face was found and the centre crop was used.

    Raises:
        ImageError: an image is missing or unreadable (the message names it).
    """
    paths = [Path(p) for p in paths]
    keys = [_image_key(p, spec) for p in paths]
    todo = []
    check = _valid_crop(spec.size)
    for i, key in enumerate(keys):
        hit = cache.get("crops", key, check)
        if hit is None:
            todo.append(i)
        else:
            yield i, hit["crop"], bool(hit["fallback"])
    if counts is not None:
        counts.update(cached=len(paths) - len(todo), detected=len(todo))
    chunks = [todo[s : s + DETECT_BATCH] for s in range(0, len(todo), DETECT_BATCH)]
    # One plan for the detection, sized by images (a worker process pays off from MIN_ITEMS_PER_PROCESS), not chunks.
    plan = thread_policy.decide("detect", threads=threads, workers=workers, items=len(todo))
    results = process_map(_align_chunk, [([str(paths[i]) for i in c], spec) for c in chunks], plan=plan,
                          chunksize=1)  # fmt: skip
    with Progress(len(todo), "detect+align", enabled=progress) as bar:
        for chunk, found in zip(chunks, results, strict=True):
            for i, (crop, fb) in zip(chunk, found, strict=True):
                cache.put("crops", keys[i], crop=crop, fallback=np.array(fb))
                yield i, crop, fb
            bar.update(len(chunk))


def align_images(
    paths: Sequence[str | os.PathLike],
    spec: DetectionSpec,
    cache: EvalCache,
    *,
    workers: int | None = None,
    progress: bool = True,
    threads: int | str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """All the crops of :func:`iter_crops` at once: ``(crops (M, S, S, 3) uint8, fallback (M,) bool, counts)``."""
    crops = np.zeros((len(paths), spec.size, spec.size, 3), np.uint8)
    fallback = np.zeros(len(paths), bool)
    counts: dict[str, int] = {}
    for i, crop, fb in iter_crops(paths, spec, cache, workers=workers, progress=progress, counts=counts,
                                  threads=threads):  # fmt: skip
        crops[i], fallback[i] = crop, fb
    return crops, fallback, counts


def decode_aligned(images: Sequence[bytes | str | os.PathLike], size: int | tuple[int, int]) -> np.ndarray:
    """Decode already-aligned crops (encoded bytes or files), resized to ``size`` when they differ.

    Args:
        images: M encoded images or paths.
        size: S or (H, W) wanted.

    Returns:
        (M, H, W, 3) uint8 RGB.
    """
    h, w = (size, size) if isinstance(size, int) else size
    out = np.zeros((len(images), h, w, 3), np.uint8)
    for i, img in enumerate(images):
        rgb = load_image(img, name=None if not isinstance(img, bytes) else f"<image {i}>")
        if rgb.shape[:2] != (h, w):
            interp = cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (w, h), interpolation=interp)
        out[i] = rgb
    return out


@dataclass
class EmbedStats:
    """What :func:`embed_pair_set` did and how long it took (seconds).

    Attributes:
        images: distinct images of the set.
        detected: images run through the detector in this call (0 on a cached run).
        crops_cached: crops read from the cache.
        fallbacks: images where no face was found (centre crop used).
        embeddings_cached: the embeddings came from the cache.
        seconds_align: time spent waiting for detection + alignment (or decoding); it overlaps the embedding.
        seconds_embed: embedding time.
    """

    images: int = 0
    detected: int = 0
    crops_cached: int = 0
    fallbacks: int = 0
    fallback_images: list = field(default_factory=list)
    embeddings_cached: bool = False
    seconds_align: float = 0.0
    seconds_embed: float = 0.0


def embed_pair_set(
    pairset: PairSet,
    embedder: Embedder,
    *,
    cache: EvalCache | None = None,
    detector: str = "mtcnn",
    detector_options: dict | None = None,
    workers: int | None = None,
    progress: bool = True,
    threads: int | str | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Embeddings of every image of a set (detected and aligned unless ``pairset.aligned``), cached.

    Args:
        pairset: the set.
        embedder: the model (its ``flip`` decides flip-test fusion; its contract the crop; its precision and backend
            are part of the cache key).
        cache: the cache (None: no cache).
        detector: detector name for unaligned images.
        detector_options: its options (``max_side`` defaults to 1600 as in ``FaceRecognizer``).
        workers: detection processes; None: the thread policy's (see the module docstring).
        progress: progress reports on stderr.
        threads: the CPU budget of the detection (the policy's "detect" plan); None: ``ARCFACE_THREADS``, else the
            usable CPUs. The embedding runs on the plan the embedder was built with.

    Returns:
        ``(embeddings, stats)``: (M, D) float32 unit rows in ``pairset.images`` order, and an :class:`EmbedStats`.
    """
    cache = cache if cache is not None else EvalCache(None)
    contract = embedder.contract
    stats = EmbedStats(images=len(pairset.images))
    options = {"max_side": 1600, **dict(detector_options or {})}
    spec = DetectionSpec.for_contract(contract, detector, options)
    if pairset.aligned:
        if pairset.source and Path(pairset.source).is_file():
            st = Path(pairset.source).stat()
            set_id = {"file": str(Path(pairset.source).resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size}
        else:
            set_id = {"images": [hashlib.sha256(bytes(b)).hexdigest() if isinstance(b, bytes) else
                                 _image_key(Path(b), spec) for b in pairset.images]}  # fmt: skip
        set_id["aligned_size"] = spec.size
    else:
        set_id = {"crops": [_image_key(Path(p), spec) for p in pairset.images]}
    key = _hash({**set_id, "contract": contract.id, "flip": bool(embedder.flip), "precision": embedder.precision,
                 "backend": embedder.backend})  # fmt: skip
    m, d = len(pairset.images), contract.embedding_size
    hit = cache.get("embeddings", key, lambda a: _valid_embeddings(a, m, d))
    if hit is not None:
        stats.embeddings_cached = True
        stats.crops_cached = m
        fallback = hit["fallback"].astype(bool)
        stats.fallbacks = int(fallback.sum())
        stats.fallback_images = [str(pairset.images[i]) for i in np.flatnonzero(fallback)]
        return hit["embeddings"].astype(np.float32), stats
    t0 = time.perf_counter()
    emb = np.zeros((m, d), np.float32)
    fallback = np.zeros(m, bool)
    if pairset.aligned:
        crops = decode_aligned(pairset.images, spec.size)
        stream: Iterator[tuple[int, np.ndarray, bool]] = ((i, c, False) for i, c in enumerate(crops))
    else:
        counts: dict[str, int] = {}
        stream = iter_crops(pairset.images, spec, cache, workers=workers, progress=progress, counts=counts,
                            threads=threads)  # fmt: skip
    # Embed what has arrived in batches while the workers detect the rest (the cores never wait for each other).
    rows: list[int] = []
    pending: list[np.ndarray] = []
    t_embed = 0.0

    def embed_pending() -> float:
        t1 = time.perf_counter()
        emb[rows] = embedder.embed(np.stack(pending))
        return time.perf_counter() - t1

    for i, crop, fb in stream:
        fallback[i] = fb
        rows.append(i)
        pending.append(crop)
        if len(pending) == EMBED_BATCH:
            t_embed += embed_pending()
            rows, pending = [], []
    if pending:
        t_embed += embed_pending()
    if not pairset.aligned:
        stats.detected, stats.crops_cached = counts["detected"], counts["cached"]
    stats.fallbacks = int(fallback.sum())
    stats.fallback_images = [str(pairset.images[i]) for i in np.flatnonzero(fallback)]
    stats.seconds_embed = t_embed
    stats.seconds_align = time.perf_counter() - t0 - t_embed
    cache.put("embeddings", key, embeddings=emb, fallback=fallback)
    return emb, stats
