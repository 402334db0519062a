"""The model side of the service: what it needs of a recognizer, the pool that runs it, and its thread plan.

The app talks to its engine only through :class:`Recognizer`, so a test can hand it a fake (or any other
implementation) instead of :class:`~arcface.inference.recognizer.FaceRecognizer`. The event loop never runs the
model: :class:`ModelPool` decodes, detects and embeds in a bounded thread pool, so ``/health`` answers while uploads
are being embedded.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from arcface.align.face import Face
from arcface.inference.contract import ModelContract
from arcface.inference.recognizer import FaceRecognizer, NoFaceError, Verification
from arcface.io.images import image_from_upload
from arcface.runtime import threads as thread_policy
from arcface.serve.settings import Settings, SettingsError

__all__ = ["ModelPool", "Recognizer", "service_threads"]

T = TypeVar("T")


@runtime_checkable
class Recognizer(Protocol):
    """What the service asks of its engine (:class:`~arcface.inference.recognizer.FaceRecognizer` is one).

    Images are (H, W, 3) uint8 RGB arrays; embeddings are unit vectors of the contract's size.
    """

    @property
    def contract(self) -> ModelContract:
        """The model contract its embeddings follow (the gallery is bound to its id)."""

    @property
    def threshold(self) -> float | None:
        """The 1:1 verification threshold (cosine), or None when not calibrated."""

    @property
    def identification_threshold(self) -> float | None:
        """The 1:N identification threshold (cosine), or None when not calibrated."""

    def identified(self, similarity: float) -> bool | None:
        """Whether a search hit passes the identification threshold (None: no threshold)."""

    def embed(self, image: np.ndarray) -> np.ndarray:
        """The embedding of the main face; raises NoFaceError when there is none."""

    def analyze(self, image: np.ndarray, *, max_faces: int | None = None) -> list[Face]:
        """Every face, main face first, the first ``max_faces`` with their embeddings."""

    def verify(self, a: np.ndarray, b: np.ndarray) -> Verification:
        """Compare two embeddings with the verification threshold; ValueError when there is none."""


def service_threads(
    settings: Settings, recognizer: Recognizer | None
) -> tuple[thread_policy.ThreadPlan, Recognizer]:
    """The service's thread decision, in one place: the plan (workload "service"), the default recognizer built on
    it when none is given, and this process's torch threads set to it (before the pool's threads start: they take
    torch's setting when they first run).

    Raises:
        SettingsError: a bad ``threads`` setting or ``ARCFACE_THREADS``.
    """
    try:
        plan = thread_policy.decide("service", threads=settings.threads, workers=settings.workers)
    except thread_policy.ThreadsError as e:
        raise SettingsError(str(e)) from None
    if recognizer is None:
        # each inference thread runs the whole pipeline of its request within its share of the plan; the recognizer
        # is handed that share and applies nothing itself; a request alone on an idle machine gets the service's CPUs
        # (up to 4) as its team
        recognizer = FaceRecognizer(settings.model, settings.detector, plan=plan.per_item(), lone_threads=plan.cpus)
    thread_policy.apply(plan)
    return plan, recognizer


class ModelPool:
    """Decode, detect and embed in a bounded thread pool, off the event loop.

    Args:
        recognizer: the engine.
        settings: the byte and pixel limits of an upload.
        plan: the thread plan: ``plan.item_threads`` threads in the pool.
    """

    def __init__(self, recognizer: Recognizer, settings: Settings, plan: thread_policy.ThreadPlan) -> None:
        self.recognizer = recognizer
        self.settings = settings
        self.plan = plan
        self.pool = ThreadPoolExecutor(max_workers=plan.item_threads, thread_name_prefix="arcface-model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the model pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an upload, with the service's limits."""
        return image_from_upload(data, self.settings.max_upload_bytes, self.settings.max_pixels, name=name)

    def embed(self, data: bytes, name: str) -> np.ndarray:
        """(D,) unit embedding of the main face of an upload."""
        rgb = self.decode(data, name)
        try:
            return self.recognizer.embed(rgb)
        except NoFaceError:
            raise NoFaceError(name) from None

    def enroll(self, data: bytes, name: str) -> list[Face]:
        """Every face of an upload, main face first, the main one with its embedding (detection runs once)."""
        faces = self.recognizer.analyze(self.decode(data, name), max_faces=1)
        if not faces:
            raise NoFaceError(name)
        return faces

    def close(self) -> None:
        """Stop the pool (queued jobs are cancelled)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
