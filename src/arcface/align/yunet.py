"""YuNet (OpenCV Zoo) through ``cv2.FaceDetectorYN``, with the bundled int8 block-quantised model."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from importlib.resources import as_file

import cv2
import numpy as np

from arcface.align._resources import bundled_weight
from arcface.align.detection import DETECTORS, FaceDetector

__all__ = ["YuNet"]

#: The bundled model file, under ``arcface/weights/``.
YUNET_MODEL = ("detectors", "face_detection_yunet_2023mar_int8bq.onnx")


@DETECTORS.register("yunet")
class YuNet(FaceDetector):
    """OpenCV's YuNet detector (faces of roughly 10 to 300 pixels; downscale bigger ones with ``max_side``).

    The score threshold defaults to 0.7 rather than OpenCV's 0.9, at which some of LFW's faces are missed.

    OpenCV's output per face is (x, y, w, h, 5 landmarks, score); its landmark order (subject's right eye,
    i.e. image-left, first) is already this package's order. Images are converted to BGR for OpenCV.

    Args:
        score_threshold: minimum face score.
        nms_threshold: IoU threshold of OpenCV's NMS.
        top_k: candidates kept before NMS.
        max_side: images whose longer side exceeds this are downscaled for detection.
        min_score: drop final detections below this score.
        model_path: an ONNX YuNet model; None uses the bundled one.
    """

    def __init__(
        self,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int | None = 1600,
        min_score: float = 0.0,
        model_path: str | None = None,
    ) -> None:
        super().__init__(max_side=max_side, min_score=min_score)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        with _model_file(model_path) as path, _quiet_opencv():
            self._net = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), self.score_threshold, self.nms_threshold, int(top_k)
            )
        # One OpenCV net, resized per image: calls from several threads (the service's pool, FaceRecognizer.main_crops)
        # take turns, or one thread's setInputSize would land between another's resize and detect.
        self._lock = threading.Lock()

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        with self._lock:
            self._net.setInputSize((w, h))
            _, faces = self._net.detect(bgr)
        if faces is None or len(faces) == 0:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        faces = faces.astype(np.float64)  # (N, 15)
        boxes = np.column_stack([faces[:, :2], faces[:, :2] + faces[:, 2:4]])
        return boxes, faces[:, 14], faces[:, 4:14].reshape(-1, 5, 2)

    def __repr__(self) -> str:
        return f"YuNet(score_threshold={self.score_threshold}, max_side={self.max_side})"


@contextlib.contextmanager
def _model_file(model_path: str | None) -> Iterator[object]:
    if model_path is not None:
        yield model_path
        return
    with as_file(bundled_weight(*YUNET_MODEL)) as path:
        yield path


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's "targets are not supported by the new graph engine" warning while the net loads."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(level)
