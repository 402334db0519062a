"""SCRFD (Guo et al. 2021, https://arxiv.org/abs/2105.04714) from a user-supplied ONNX file, via onnxruntime.

InsightFace's SCRFD weights are licensed for non-commercial research only, so none ship with this package:
pass ``model_path``. Decoding follows insightface's ``scrfd.py``: models with 6 / 9 outputs have strides
8, 16, 32 and two anchors per cell; 10 / 15 outputs have strides 8 to 128 and one anchor; the outputs are
scores, then box distances, then (with keypoints) landmark offsets, each in stride order, in units of the
stride from the anchor centre. Input: RGB, ``(x - 127.5) / 128``, letterboxed top-left into ``input_size``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from arcface.align.detection import DETECTORS, FaceDetector
from arcface.align.nms import nms

__all__ = ["SCRFD"]


@DETECTORS.register("scrfd")
class SCRFD(FaceDetector):
    """SCRFD with five keypoints (e.g. ``scrfd_2.5g_bnkps.onnx``).

    Args:
        model_path: the ONNX file (required; not bundled).
        input_size: (width, height) of the letterboxed network input; images are resized to fit it, small ones
            upscaled, as insightface does. For small photos such as LFW's 250x250 prefer (320, 320): at 640 their
            faces grow to ~400 pixels and 43 of LFW's 13,233 score below 0.5.
        score_threshold: minimum face score.
        nms_threshold: IoU threshold of the NMS.
        max_side: images whose longer side exceeds this are downscaled first (the letterbox shrinks them anyway).
        min_score: drop final detections below this score.
        providers: onnxruntime execution providers; None means CPU.
        num_threads: onnxruntime intra-op threads; None: the torch intra-op thread count that
            (:mod:`arcface.runtime.threads`: one thread; parallelism comes from photos side by side).
    """

    def __init__(
        self,
        model_path: str | Path,
        input_size: tuple[int, int] = (640, 640),
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_side: int | None = None,
        min_score: float = 0.0,
        providers: list[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        super().__init__(max_side=max_side, min_score=min_score)
        import onnxruntime as ort  # optional dependency, needed only here

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"SCRFD model {path} not found")
        self.model_path = path
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if min(self.input_size) < 32 or any(s % 32 for s in self.input_size):
            raise ValueError(f"input_size must be multiples of 32, got {input_size}")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        opts = ort.SessionOptions()
        if num_threads is None:
            # the entry point's thread plan is already applied to this process: its session takes the same count
            num_threads = torch.get_num_threads()
        opts.intra_op_num_threads = int(num_threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        n_out = len(self._session.get_outputs())
        layouts = {6: ((8, 16, 32), 2, False), 9: ((8, 16, 32), 2, True), 10: ((8, 16, 32, 64, 128), 1, False)}
        layouts[15] = ((8, 16, 32, 64, 128), 1, True)
        if n_out not in layouts:
            raise ValueError(f"{path} has {n_out} outputs; expected an SCRFD model with 6, 9, 10 or 15")
        self.strides, self.num_anchors, has_kps = layouts[n_out]
        if not has_kps:
            raise ValueError(f"{path} has no keypoint outputs; a *_kps SCRFD model is needed for alignment")
        self._centres = {stride: self._anchor_centres(stride) for stride in self.strides}

    def _anchor_centres(self, stride: int) -> np.ndarray:
        """(H/stride * W/stride * anchors, 2) anchor centres (x, y) in input pixels, row-major, anchors innermost."""
        w, h = self.input_size
        ys, xs = np.mgrid[: h // stride, : w // stride]
        centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64) * stride
        return np.repeat(centres, self.num_anchors, axis=0)

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        in_w, in_h = self.input_size
        fit = min(in_w / w, in_h / h)
        nw, nh = max(1, int(w * fit)), max(1, int(h * fit))
        canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        canvas[:nh, :nw] = cv2.resize(image, (nw, nh))
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]  # (1, 3, H, W) RGB
        outs = self._session.run(None, {self._input_name: blob})
        k = len(self.strides)
        boxes, scores, kps = [], [], []
        for i, stride in enumerate(self.strides):
            score = outs[i].reshape(-1)
            pos = np.nonzero(score >= self.score_threshold)[0]
            centres = self._centres[stride][pos]  # (P, 2)
            dist = outs[i + k].reshape(-1, 4)[pos].astype(np.float64) * stride
            boxes.append(np.hstack([centres - dist[:, :2], centres + dist[:, 2:]]))
            offs = outs[i + 2 * k].reshape(-1, 5, 2)[pos].astype(np.float64) * stride
            kps.append(centres[:, None] + offs)
            scores.append(score[pos].astype(np.float64))
        boxes_a, scores_a, kps_a = np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)
        # Undo the letterbox with the exact per-axis scale (insightface uses nh / h for both axes).
        scale = np.array([nw / w, nh / h])
        boxes_a, kps_a = boxes_a / np.tile(scale, 2), kps_a / scale
        keep = nms(boxes_a, scores_a, self.nms_threshold)
        return boxes_a[keep], scores_a[keep], kps_a[keep]

    def __repr__(self) -> str:
        return f"SCRFD({str(self.model_path)!r}, input_size={self.input_size}, max_side={self.max_side})"
