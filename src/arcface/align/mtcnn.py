"""MTCNN (Zhang et al. 2016, https://arxiv.org/abs/1604.02878), the detector of the ArcFace paper.

A cascade of three small networks: P-Net proposes windows over an image pyramid, R-Net and O-Net refine
them on 24x24 and 48x48 crops; O-Net also gives the five landmarks. The weights are the facenet-pytorch
2.6.0 state dicts (MIT, (c) 2019 Timothy Esler, see ``arcface/weights/NOTICE.md``); the networks are written
here so that their parameter names match those files.

Layout facts of those weights (learnt from facenet-pytorch, which converted them from the original
Caffe model via TensorFlow): inputs are NCHW RGB scaled as ``(x - 127.5) * 0.0078125`` and are *not*
transposed; the fully connected layers of R-Net and O-Net expect their input flattened in (W, H, C)
order (a leftover of the column-major original), hence the ``permute(0, 3, 2, 1)`` before them. Box
offsets are (dx1, dy1, dx2, dy2) in units of the box size; O-Net's ten landmark outputs are five x then
five y, relative to its input box.

Speed (tuned for one torch thread per process; ``bench/mtcnn_speed.py``): ``detect_batch`` takes several
images through each stage together, ``detect`` is a batch of one.

- P-Net runs over canvases into which the pyramid levels of all images are shelf-packed (a few widths tried for
  the least area); a cell counts only where its
  12x12 window lies inside one level. Its two 1x1 heads are one matrix product, its 10-channel PReLU runs on
  (W * C) rows.
- R-Net and O-Net crops of all images are cut together (:func:`_crop`: separable 2x2-supersampled bilinear
  weights, two batched matrix products per group of similar patch size) from a 2x mip pyramid, an anti-aliased
  stand-in for the area interpolation of the reference implementation, and go through the networks in chunks.
- Ceil-mode pooling is hand-written (strided maxima, row pairs of even maps).

Per image, candidates are decoded and suppressed as on that image alone: same coordinates, and P-Net candidates
listed in the order of the previous single-image canvas, so that NMS breaks score ties (P-Net's probabilities
saturate at 1.0) the same way whatever the batch. Results agree with the previous implementation to 7e-5 px on
300 LFW images and between ``detect`` and ``detect_batch`` to 3e-5 px (rounding of the batched matrix products).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arcface.align._resources import bundled_weight
from arcface.align.detection import DETECTORS, FaceDetector
from arcface.align.nms import nms

__all__ = ["MTCNN", "ONet", "PNet", "RNet"]

_EMPTY = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


class _MaxPoolCeil(nn.Module):
    """``nn.MaxPool2d(kernel, stride, ceil_mode=True)``, as the maximum of strided views.

    PyTorch's CPU max-pooling was the second most costly op of P-Net: on its 10-channel channels_last map of
    the packed pyramid (always even-sized, so no window overhangs) the strided maximum gives the same values
    several times faster. Where the last window overhangs the map, a 3x3 / 2 window over an even-sized map is a
    maximum over row pairs (R-Net's first pooling, where it beats PyTorch's kernel); otherwise the full windows are
    maxima of strided views and the overhanging one the maximum of what is left (no slower than PyTorch's).
    """

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        if kernel < stride:
            raise ValueError(f"kernel {kernel} < stride {stride}: windows would skip pixels")
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel, self.stride
        h, w = x.shape[-2:]
        if h < k or w < k:
            return F.max_pool2d(x, k, s, ceil_mode=True)
        if k == 3 and s == 2 and h % 2 == 0 and w % 2 == 0 and _channels_last(x):
            return _pool_3x3_even(x)
        if (h - k) % s or (w - k) % s:  # ceil mode adds a window that overhangs the map
            return _pool_overhang(_pool_overhang(x, k, s, -2), k, s, -1)
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        rows = x[..., 0 : (oh - 1) * s + 1 : s, :]
        for i in range(1, k):
            rows = torch.maximum(rows, x[..., i : i + (oh - 1) * s + 1 : s, :])
        out = rows[..., 0 : (ow - 1) * s + 1 : s]
        for j in range(1, k):
            out = torch.maximum(out, rows[..., j : j + (ow - 1) * s + 1 : s])
        return out


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _pool_3x3_even(x: torch.Tensor) -> torch.Tensor:
    """Ceil-mode 3x3 / stride-2 max-pooling of an even-sized channels_last map (R-Net's first pooling).

    Window ``i`` covers rows ``2i, 2i + 1, 2i + 2`` (the last one only ``2i, 2i + 1``): the maximum of each row pair,
    then of that and the next pair's first row. Pairs are halves of a (rows / 2, 2, W * C) view, so every maximum runs
    over long contiguous rows, faster than strided windows or PyTorch's kernel on R-Net's small maps.
    """
    n, c, h, w = x.shape
    hh, wh = h // 2, w // 2
    rows = x.permute(0, 2, 3, 1).reshape(n, hh, 2, w * c)
    out = torch.maximum(rows[:, :, 0], rows[:, :, 1])  # (n, hh, w * c): rows 2i, 2i + 1
    torch.maximum(out[:, :-1], rows[:, 1:, 0], out=out[:, :-1])  # and row 2i + 2
    cols = out.view(n * hh, wh, 2, c)
    pooled = torch.maximum(cols[:, :, 0], cols[:, :, 1])  # (n * hh, wh, c): columns 2j, 2j + 1
    torch.maximum(pooled[:, :-1], cols[:, 1:, 0], out=pooled[:, :-1])  # and column 2j + 2
    return pooled.view(n, hh, wh, c).permute(0, 3, 1, 2)


def _pool_overhang(x: torch.Tensor, k: int, s: int, dim: int) -> torch.Tensor:
    """Ceil-mode max-pooling of ``x`` (k >= s, size >= k) along ``dim`` (-2 or -1), in ``x``'s memory format."""
    n = x.shape[dim]
    full = (n - k) // s + 1  # windows inside the map
    size = full + (1 if (n - k) % s else 0)  # ceil mode: one more, starting inside the map (k >= s)
    shape = list(x.shape)
    shape[dim] = size
    cl = _channels_last(x) and not x.is_contiguous()
    out = torch.empty(shape, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if cl else torch.contiguous_format)  # fmt: skip
    inner = out.narrow(dim, 0, full)
    span = (full - 1) * s + 1
    torch.maximum(x.narrow(dim, 0, span)[_step(dim, s)], x.narrow(dim, 1, span)[_step(dim, s)], out=inner)
    for i in range(2, k):
        torch.maximum(inner, x.narrow(dim, i, span)[_step(dim, s)], out=inner)
    if size > full:
        torch.amax(x.narrow(dim, full * s, n - full * s), dim=dim, keepdim=True, out=out.narrow(dim, full, 1))
    return out


def _step(dim: int, s: int) -> tuple[slice, ...]:
    """Index taking every ``s``-th entry along ``dim`` (-2 or -1)."""
    return (Ellipsis, slice(None, None, s), slice(None)) if dim == -2 else (Ellipsis, slice(None, None, s))


def _face_prob(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2, ...) face / non-face logits -> (N, ...) face probability: softmax's second entry, computed as
    sigmoid(l1 - l0) (the same value; a softmax over the 2-channel channels_last map of P-Net is far slower)."""
    return torch.sigmoid(logits[:, 1] - logits[:, 0])


class PNet(nn.Module):
    """Proposal network: fully convolutional, one 12x12 window per output cell (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = _MaxPoolCeil(2, 2)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)  # face / non-face logits
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) normalised -> offsets (N, 4, h, w), face probability (N, h, w)."""
        x = self.pool1(_prelu_rows(self.conv1(x), self.prelu1.weight))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        # The two 1x1 heads as one matrix product over the channels_last map: the convolutions' values bit for bit
        # (PyTorch runs 1x1 convolutions on this layout through its slow im2col path).
        n, c, h, w = x.shape
        weight = torch.cat([self.conv4_1.weight, self.conv4_2.weight]).view(6, c)
        bias = torch.cat([self.conv4_1.bias, self.conv4_2.bias])
        y = torch.addmm(bias, x.permute(0, 2, 3, 1).reshape(-1, c), weight.t()).view(n, h, w, 6)
        return y[..., 2:].permute(0, 3, 1, 2), torch.sigmoid(y[..., 1] - y[..., 0])  # as _face_prob


def _prelu_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.prelu`` of a channels_last map with few channels, as rows of (W * C) values.

    PyTorch's PReLU kernel broadcasts the weight along the innermost (channel) dimension of a channels_last map; with
    P-Net's 10 channels that loop is not vectorised (rows with a tiled weight give the same values faster).
    """
    n, c, h, w = x.shape
    if not x.is_contiguous(memory_format=torch.channels_last):
        return F.prelu(x, weight)
    rows = F.prelu(x.permute(0, 2, 3, 1).reshape(n * h, w * c), weight.repeat(w))
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = _MaxPoolCeil(3, 2)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = _MaxPoolCeil(3, 2)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)  # face / non-face logits
        self.dense5_2 = nn.Linear(128, 4)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 24, 24) normalised -> offsets (N, 4), face probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))  # (N, 64, 3, 3)
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))  # (W, H, C) flattening order
        return self.dense5_2(x), _face_prob(self.dense5_1(x))


class ONet(nn.Module):
    """Output network on 48x48 crops: boxes, landmarks, scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        # PyTorch's kernel: on O-Net's larger maps it beats the row pairs (which win on R-Net's 22x22 maps); the
        # same values.
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = _MaxPoolCeil(3, 2)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = _MaxPoolCeil(2, 2)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)  # face / non-face logits
        self.dense6_2 = nn.Linear(256, 4)  # box offsets
        self.dense6_3 = nn.Linear(256, 10)  # landmarks: 5 x then 5 y, relative to the box

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, 48, 48) normalised -> offsets (N, 4), landmarks (N, 10), face probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))  # (N, 128, 3, 3)
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))  # (W, H, C) flattening order
        return self.dense6_2(x), self.dense6_3(x), _face_prob(self.dense6_1(x))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Raw 0..255 pixels -> the networks' input scale, in channels_last layout."""
    return ((x - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)


@DETECTORS.register("mtcnn")
class MTCNN(FaceDetector):
    """The MTCNN cascade with facenet-pytorch's defaults.

    ``detect_batch`` runs several images through each network together (their pyramid levels share P-Net canvases,
    their R-Net and O-Net crops share forward passes) and gives per image what ``detect`` gives.

    Args:
        min_face_size: smallest face side (pixels of the detection image) searched for; sets the first pyramid
            scale ``12 / min_face_size``.
        factor: ratio between successive pyramid scales.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        max_side: images whose longer side exceeds this are downscaled for detection (see ``FaceDetector``).
        min_score: drop final detections below this score.
        device: torch device for the networks.
        weights_dir: folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt``; None uses the bundled weights.
        batch_size: most crops per R-Net / O-Net forward pass (bounds memory on crowded images).
    """

    #: NMS thresholds: P-Net within one scale, P-Net across scales, R-Net, O-Net (intersection over minimum).
    NMS = (0.5, 0.7, 0.7, 0.7)
    #: Most P-Net canvas pixels per forward pass (a larger level gets a canvas of its own).
    CANVAS_PIXELS = 1 << 17
    #: Most crops per R-Net / O-Net pass on CPU (per-crop cost flat from 128 / 32 up, rising below).
    CHUNK = {24: 128, 48: 32}
    #: Most image pixels that ``detect_batch`` takes through the cascade together (bounds memory).
    GROUP_PIXELS = 1 << 22

    def __init__(
        self,
        min_face_size: float = 20.0,
        factor: float = 0.709,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        max_side: int | None = 1600,
        min_score: float = 0.0,
        device: str | torch.device = "cpu",
        weights_dir: str | None = None,
        batch_size: int = 1024,
    ) -> None:
        super().__init__(max_side=max_side, min_score=min_score)
        if min_face_size < 12:
            raise ValueError(f"min_face_size must be at least 12 (P-Net's window), got {min_face_size}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must have three values, got {thresholds!r}")
        self.min_face_size = float(min_face_size)
        self.factor = float(factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            net.load_state_dict(_load_state_dict(name, weights_dir))
            # channels_last: PyTorch's CPU max-pooling is several times faster in NHWC than in NCHW.
            net.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._detect_batch([image])[0]

    def _detect_batch(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        start = 0
        while start < len(images):  # groups of images bounded in pixels, at least one image each
            stop, pixels = start + 1, images[start].shape[0] * images[start].shape[1]
            while stop < len(images) and pixels + images[stop].shape[0] * images[stop].shape[1] <= self.GROUP_PIXELS:
                pixels += images[stop].shape[0] * images[stop].shape[1]
                stop += 1
            out += self._cascade(images[start:stop])
            start = stop
        return out

    @torch.inference_mode()
    def _cascade(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The three stages on several images; per image the same arithmetic as on that image alone."""
        imgs = [image.astype(np.float32) for image in images]
        found = self._stage1(imgs)
        live = [i for i, (boxes, _) in enumerate(found) if len(boxes)]
        mips = {i: _MipPyramid(imgs[i], self.device) for i in live}
        found2 = self._stage2([mips[i] for i in live], [found[i][0] for i in live])
        live2 = [(i, boxes) for i, (boxes, _) in zip(live, found2) if len(boxes)]
        found3 = self._stage3([mips[i] for i, _ in live2], [boxes for _, boxes in live2])
        result = [_EMPTY] * len(images)
        for (i, _), r in zip(live2, found3):
            result[i] = r
        return result

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid scales for an image of this size (largest first)."""
        out: list[float] = []
        scale = 12.0 / self.min_face_size
        min_len = min(height, width) * scale
        while min_len >= 12:
            out.append(scale)
            scale *= self.factor
            min_len *= self.factor
        return out

    def _stage1(self, imgs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """P-Net over the pyramid levels of all images, packed into canvases -> per image square boxes and scores."""
        levels = []  # (image, level, hs, ws) of every pyramid level
        for i, img in enumerate(imgs):
            h, w = img.shape[:2]
            levels += [(i, k, int(h * s + 1), int(w * s + 1)) for k, s in enumerate(self.scales(h, w))]  # as reference
        # Each image's candidates are listed in the order of the reference implementation's own canvas (row-major
        # over its shelf packing): score ties in NMS are broken by that order, so it must not depend on the batch.
        ref_offsets: dict[tuple[int, int], tuple[int, int]] = {}
        for i in range(len(imgs)):
            own = [(hs, ws) for j, _, hs, ws in levels if j == i]
            if own:
                ref_offsets.update({(i, k): off for k, off in enumerate(_pack(own)[0])})
        cand = []  # per canvas: (item, local row, local col, prob, reg (n, 4))
        for canvas, placed in _fill_canvases(imgs, levels, self.CANVAS_PIXELS):
            x = torch.from_numpy(canvas).permute(2, 0, 1)[None].to(self.device)  # channels_last view of (H, W, 3)
            reg, prob = self.pnet(x)
            reg, prob = reg[0].permute(1, 2, 0).cpu().numpy(), prob[0].cpu().numpy()  # (oh, ow, 4), (oh, ow)
            label = np.full(prob.shape, -1, dtype=np.int32)  # the level whose area holds the cell's window, else -1
            for item, oy, ox in placed:
                hs, ws = levels[item][2:]
                if hs >= 12 and ws >= 12:
                    label[oy // 2 : (oy + hs - 12) // 2 + 1, ox // 2 : (ox + ws - 12) // 2 + 1] = item
            ii, jj = np.nonzero((prob >= self.thresholds[0]) & (label >= 0))
            if len(ii) == 0:
                continue
            item = label[ii, jj]
            origin = np.zeros((len(levels), 2), dtype=np.int64)
            for it, oy, ox in placed:
                origin[it] = (oy // 2, ox // 2)
            cand.append((item, ii - origin[item, 0], jj - origin[item, 1], prob[ii, jj], reg[ii, jj]))
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros((0, 4)), np.zeros(0))] * len(imgs)
        if not cand:
            return out
        item, li, lj, prob, reg = (np.concatenate(parts) for parts in zip(*cand))
        meta = np.array(levels, dtype=np.int64).reshape(-1, 4)  # (image, level, hs, ws)
        ref = np.array([ref_offsets[(i, k)] for i, k, _, _ in levels], dtype=np.int64).reshape(-1, 2) // 2
        image = meta[item, 0]
        order = np.lexsort((lj + ref[item, 1], li + ref[item, 0], image))  # by image, then the reference order
        bounds = np.searchsorted(image[order], np.arange(len(imgs) + 1))
        for i in range(len(imgs)):
            sel = order[bounds[i] : bounds[i + 1]]
            if len(sel) == 0:
                continue
            h, w = imgs[i].shape[:2]
            lv = meta[item[sel], 1]
            hw = meta[item[sel], 2:].astype(np.float64)
            sy, sx = hw[:, 0] / h, hw[:, 1] / w  # exact per-axis scale of each level
            x1, y1 = (2 * lj[sel]) / sx, (2 * li[sel]) / sy
            boxes = np.column_stack([x1, y1, x1 + 12 / sx, y1 + 12 / sy])
            scores = prob[sel].astype(np.float64)
            offs = reg[sel].astype(np.float64)
            keep = nms(boxes, scores, self.NMS[0], groups=lv)
            boxes, scores, offs = boxes[keep], scores[keep], offs[keep]
            keep = nms(boxes, scores, self.NMS[1])
            boxes = _square(_regress(boxes[keep], offs[keep]))
            out[i] = _valid(boxes, scores[keep])
        return out

    def _stage2(self, mips: list[_MipPyramid], boxes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """R-Net on 24x24 crops -> per image refined square boxes and scores."""
        out = []
        for b, (offs, prob) in zip(boxes, self._run(self.rnet, mips, boxes, 24)):
            keep = prob > self.thresholds[1]
            b, scores, offs = b[keep], prob[keep], offs[keep]
            keep = nms(b, scores, self.NMS[2])
            out.append(_valid(_square(_regress(b[keep], offs[keep])), scores[keep]))
        return out

    def _stage3(
        self, mips: list[_MipPyramid], boxes: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """O-Net on 48x48 crops -> per image final boxes, scores, landmarks."""
        out = []
        for b, (offs, lms, prob) in zip(boxes, self._run(self.onet, mips, boxes, 48)):
            keep = prob > self.thresholds[2]
            b, scores, offs, lms = b[keep], prob[keep], offs[keep], lms[keep]
            wh = b[:, 2:] - b[:, :2]  # (N, 2)
            landmarks = b[:, None, :2] + wh[:, None] * np.stack([lms[:, :5], lms[:, 5:]], axis=-1)  # (N, 5, 2)
            b = _regress(b, offs)
            keep = nms(b, scores, self.NMS[3], mode="min")
            out.append((b[keep], scores[keep], landmarks[keep]))
        return out

    def _run(
        self, net: nn.Module, mips: list[_MipPyramid], boxes: list[np.ndarray], size: int
    ) -> list[tuple[np.ndarray, ...]]:
        """Crop every image's ``boxes`` to ``size`` x ``size``, run ``net`` on all crops in chunks, return its
        outputs per image as float64 arrays."""
        flat = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        image = np.repeat(np.arange(len(boxes)), [len(b) for b in boxes])
        chunk = self.batch_size if self.device.type != "cpu" else min(self.batch_size, self.CHUNK.get(size, 64))
        span = 8 * chunk  # crops held at once (bounds memory on crowded images)
        outs: list[list[np.ndarray]] = []  # per output of the net, its parts in the boxes' order
        for first in range(0, len(flat), span):
            crops, order = _crop(mips, flat[first : first + span], image[first : first + span], size, self.device)
            parts = [[o.cpu().double().numpy() for o in net(crops[i : i + chunk])] for i in range(0, len(crops), chunk)]
            for k, values in enumerate(np.concatenate(p) for p in zip(*parts)):
                back = np.empty_like(values)
                back[order] = values  # crops were cut in groups of similar patch size: back to the boxes' order
                if k == len(outs):
                    outs.append([])
                outs[k].append(back)
        cuts = np.cumsum([len(b) for b in boxes])[:-1]
        return list(zip(*(np.split(np.concatenate(parts), cuts) for parts in outs)))

    def __repr__(self) -> str:
        return (
            f"MTCNN(min_face_size={self.min_face_size}, factor={self.factor}, thresholds={self.thresholds}, "
            f"max_side={self.max_side}, device={str(self.device)!r})"
        )


def _load_state_dict(name: str, weights_dir: str | None) -> dict[str, torch.Tensor]:
    if weights_dir is not None:
        return torch.load(f"{weights_dir}/{name}.pt", map_location="cpu", weights_only=True)
    with bundled_weight("mtcnn", f"{name}.pt").open("rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def _packed_pyramid(
    img: np.ndarray, scales: list[float]
) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
    """Resize ``img`` (H, W, 3) float32 to every scale (area interpolation) and pack the levels into one canvas.

    Returns:
        canvas (Hc, Wc, 3) float32 (0 between levels), (oy, ox) offset and (hs, ws) size of each level.
    """
    h, w = img.shape[:2]
    sizes = [(int(h * s + 1), int(w * s + 1)) for s in scales]  # as the reference implementation
    offsets, canvas_hw = _layout(sizes)
    canvas = np.zeros((*canvas_hw, 3), dtype=np.float32)
    for (oy, ox), (hs, ws) in zip(offsets, sizes):
        canvas[oy : oy + hs, ox : ox + ws] = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA)
    return canvas, offsets, sizes


def _fill_canvases(
    imgs: list[np.ndarray], levels: list[tuple[int, int, int, int]], max_pixels: int
) -> Iterator[tuple[np.ndarray, list[tuple[int, int, int]]]]:
    """The pyramid levels of several images, packed into canvases of about ``max_pixels`` at most.

    Args:
        imgs: (H, W, 3) float32 images.
        levels: (image, level, hs, ws) per pyramid level.
        max_pixels: pixel budget of a canvas (a larger level gets a canvas of its own).

    Yields:
        canvas (Hc, Wc, 3) float32 at the networks' input scale, and (index into ``levels``, oy, ox) per level on it.
    """
    order = sorted(range(len(levels)), key=lambda k: (-levels[k][2], -levels[k][3]))
    groups: list[list[int]] = []
    area = 0
    for k in order:
        a = _even(levels[k][2]) * _even(levels[k][3])
        if not groups or area + a > max_pixels:
            groups.append([])
            area = 0
        groups[-1].append(k)
        area += a
    for group in groups:
        offsets, canvas_hw = _layout([levels[k][2:] for k in group])
        canvas = np.zeros((*canvas_hw, 3), dtype=np.float32)  # between levels: 0 (no cell reads it whole)
        for k, (oy, ox) in zip(group, offsets):
            i, _, hs, ws = levels[k]
            level = cv2.resize(imgs[i], (ws, hs), interpolation=cv2.INTER_AREA)
            level -= 127.5  # _normalise's arithmetic, in place, while the level is in cache
            level *= 0.0078125
            canvas[oy : oy + hs, ox : ox + ws] = level
        yield canvas, [(k, oy, ox) for k, (oy, ox) in zip(group, offsets)]


def _even(n: int) -> int:
    return n + n % 2


def _layout(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Shelf-pack rectangles at even offsets (P-Net's stride is 2) into the canvas of least area among a few widths.

    Rectangles go tallest first onto shelves (:func:`_shelves`); the less canvas outside the levels, the less of
    P-Net's work is wasted.

    Returns:
        (oy, ox) per rectangle, in the order of ``sizes``, and the canvas (height, width).
    """
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][0], -sizes[i][1]))
    padded = [(_even(sizes[i][0]), _even(sizes[i][1])) for i in order]
    widest = max(w for _, w in padded)
    area = sum(h * w for h, w in padded)
    widths = {widest} | {max(widest, _even(round(math.sqrt(area) * f))) for f in (0.75, 1.0, 1.25, 1.5, 2.0, 3.0)}
    best: tuple[int, int, int, list[tuple[int, int]]] | None = None
    for width in sorted(widths):
        offsets, height = _shelves(padded, width)
        if best is None or height * width < best[0]:
            best = (height * width, height, width, offsets)
    assert best is not None
    _, height, width, offsets = best
    out: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    for pos, i in enumerate(order):
        out[i] = offsets[pos]
    return out, (height, width)


def _shelves(sizes: list[tuple[int, int]], width: int) -> tuple[list[tuple[int, int]], int]:
    """Place (h, w) rectangles, tallest first, on shelves of a canvas ``width`` wide: (oy, ox) each, and the height.

    A shelf is as tall as its first rectangle; a rectangle goes, on the first shelf where it fits, either at the
    bottom of a column whose rectangles are at least as wide (stacked while the shelf height allows) or into a new
    column at the shelf's right end; else onto a new shelf. On one image's pyramid the small levels so stack beside
    the second one, in less canvas than a row per shelf.
    """
    shelves: list[list] = []  # [y, height, used width, columns [[x, width, used height]]]
    offsets = []
    for hs, ws in sizes:
        spot = None
        for shelf in shelves:
            y, h, used, columns = shelf
            for col in columns:
                if ws <= col[1] and col[2] + hs <= h:
                    spot = (y + col[2], col[0])
                    col[2] += hs
                    break
            if spot is None and used + ws <= width:
                spot = (y, used)
                columns.append([used, ws, hs])
                shelf[2] += ws
            if spot is not None:
                break
        if spot is None:
            y = shelves[-1][0] + shelves[-1][1] if shelves else 0
            shelves.append([y, hs, ws, [[0, ws, hs]]])
            spot = (y, 0)
        offsets.append(spot)
    return offsets, (shelves[-1][0] + shelves[-1][1]) if shelves else 0


def _pack(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """The reference implementation's packing of one image's levels (widest level's width, levels in order).

    Only its order matters now: candidates are listed row-major over this canvas, as the reference did, so that NMS
    breaks score ties the same way whatever canvases P-Net actually ran on.

    Returns:
        (oy, ox) per level and the canvas (height, width).
    """
    width = sizes[0][1] + sizes[0][1] % 2
    offsets, shelf_y, shelf_h, x = [], 0, 0, 0
    for hs, ws in sizes:
        if x > 0 and x + ws > width:
            shelf_y, shelf_h, x = shelf_y + shelf_h, 0, 0
        offsets.append((shelf_y, x))
        x += ws + ws % 2
        shelf_h = max(shelf_h, hs + hs % 2)
    return offsets, (shelf_y + shelf_h, width)


def _regress(boxes: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """Apply (dx1, dy1, dx2, dy2) offsets in units of the box width / height."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return boxes + offs * np.tile(wh, 2)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Square boxes around the same centre, side = the longer side."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdims=True) / 2
    return np.hstack([centre - half, centre + half])


def _valid(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(1) & np.isfinite(boxes).all(1)
    return boxes[keep], scores[keep]


class _MipPyramid:
    """The image and its successive 2x average-pooled halvings, for anti-aliased crops of any size.

    A halving is the mean of each 2x2 block (a trailing odd row / column is dropped, as ``avg_pool2d(x, 2)``),
    computed by OpenCV's area resize of the even part: the same numbers as torch's, faster on (H, W, 3).
    """

    def __init__(self, image: np.ndarray, device: torch.device) -> None:
        self.device = device
        self._arrays = [np.ascontiguousarray(image, dtype=np.float32)]  # (H, W, 3) raw 0..255 values
        self._transposed: dict[int, np.ndarray] = {}

    def array(self, k: int) -> np.ndarray:
        """Level ``k`` as (H_k, W_k, 3) float32."""
        while len(self._arrays) <= k:
            prev = self._arrays[-1]
            h, w = prev.shape[0] // 2, prev.shape[1] // 2
            self._arrays.append(cv2.resize(prev[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA))
        return self._arrays[k]

    def level(self, k: int) -> torch.Tensor:
        """Level ``k`` as a (1, 3, H_k, W_k) tensor (a view of :meth:`array`)."""
        return torch.from_numpy(self.array(k)).permute(2, 0, 1)[None].to(self.device)

    def transposed(self, k: int) -> np.ndarray:
        """Level ``k`` with x and y swapped, (W_k, H_k, 3) float32 (cut R-Net's and O-Net's patches from)."""
        if k not in self._transposed:
            self._transposed[k] = cv2.transpose(self.array(k))
        return self._transposed[k]

    def max_level(self) -> int:
        h0, w0 = self._arrays[0].shape[:2]
        return max(0, int(math.log2(max(min(h0, w0), 1))) - 1)


def _group_sides(side: np.ndarray, size: int) -> np.ndarray:
    """Patch side per box, rounded up so that boxes share few groups (one pair of matrix products per group).

    Sides go up to a multiple of 8; a group then joins the next larger one while the extra products of its boxes
    cost less than a group's own overhead (taken as the products of 1.5 M multiply-adds), which only happens
    when a group holds few boxes (one image's crops; a batch fills every group).
    """
    side = (side + 7) // 8 * 8
    groups, counts = np.unique(side, return_counts=True)
    target = {}
    carry = 0  # boxes carried up from smaller groups
    for i, (r, m) in enumerate(zip(groups.tolist(), counts.tolist())):
        m += carry
        if i + 1 < len(groups):
            up = groups[i + 1]
            extra = m * size * 3 * (up * (up + size) - r * (r + size))  # multiply-adds added by moving up
            if extra < 1_500_000:
                target[r], carry = up, m
                continue
        target[r], carry = r, 0
    for r in reversed(groups.tolist()):  # resolve chains of moves
        if target[r] != r:
            target[r] = target[target[r]]
    return np.array([target[r] for r in side.tolist()], dtype=np.int64).reshape(side.shape)


def _crop(
    mips: list[_MipPyramid], boxes: np.ndarray, image: np.ndarray, size: int, device: torch.device
) -> tuple[torch.Tensor, np.ndarray]:
    """Resample boxes of several images to (size, size) crops at the networks' input scale; outside the image is 0.

    Each box is sampled from the mip level where a crop pixel spans 1 to 2 level pixels, at 2x2 points per crop
    pixel (bilinear, the coordinates of ``grid_sample(align_corners=False)`` in float32), averaged: an anti-aliased
    stand-in for the area interpolation of the reference implementation. Bilinear sampling and the 2x2 mean are
    separable, so a crop is ``Wy @ patch @ Wx^T`` with (size, r) weight matrices of 4 non-zeros per row (r: the
    patch side): two batched matrix products per group of similar r instead of gathering 16 pixels per crop pixel
    (``grid_sample`` then a 2x2 mean is slower; the values agree to within rounding).

    Args:
        mips: one pyramid per image.
        boxes: (N, 4) boxes in image pixels.
        image: (N,) index into ``mips`` of each box's image.
        size: crop side.
        device: where the crops go.

    Returns:
        crops (N, 3, size, size) channels_last, ``(x - 127.5) / 128``, in some order; and ``order``, the index in
        ``boxes`` of each crop's box.
    """
    ss = 2 * size
    n = len(boxes)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    image = np.asarray(image, dtype=np.int64).reshape(-1)
    wh = boxes[:, 2:] - boxes[:, :2]
    top = np.array([m.max_level() for m in mips], dtype=np.int64)[image] if n else np.zeros(0, dtype=np.int64)
    lvl = np.clip(np.floor(np.log2(np.maximum(wh.max(1) / size, 1.0))), 0, top).astype(np.int64)
    # The (image, level) each box is cut from: its transposed array and its (height, width).
    keys, src = np.unique(image * 64 + lvl, return_inverse=True)
    src = src.reshape(-1)
    levels = [mips[key // 64].transposed(key % 64) for key in keys.tolist()]  # (W_k, H_k, 3) each
    shapes = np.array([a.shape[1::-1] for a in levels], dtype=np.int64).reshape(-1, 2)[src]  # (n, 2) (H_k, W_k)
    # Sample coordinates along x (rows :n) and y (rows n:), as grid_sample computes them.
    lo = np.concatenate([boxes[:, 0], boxes[:, 1]])
    ext = np.concatenate([wh[:, 0], wh[:, 1]])
    nk = np.concatenate([shapes[:, 1], shapes[:, 0]]).astype(np.float64)  # level width, height
    f = np.exp2(np.concatenate([lvl, lvl]).astype(np.float64))
    t = (np.arange(ss) + 0.5) / ss  # sample positions within the box, in box units
    grid = (2 * (lo[:, None] + t * ext[:, None]) / (f * nk)[:, None] - 1).astype(np.float32)  # grid_sample's [-1, 1]
    c = (grid + np.float32(1)) * (nk / 2).astype(np.float32)[:, None] - np.float32(0.5)  # its unnormalize
    tap0 = np.floor(c)
    wts = np.empty((2 * n, ss, 2), dtype=np.float32)
    wts[..., 1] = c - tap0
    wts[..., 0] = np.float32(1) - wts[..., 1]
    wts *= np.float32(0.5)  # the 2x2 mean, half per axis (exact)
    tap0 = tap0.astype(np.int64)
    start = tap0[:, 0]  # first level pixel of each patch along the axis
    rel = np.empty((2 * n, ss, 2), dtype=np.int64)
    rel[..., 0] = tap0 - start[:, None]
    rel[..., 1] = rel[..., 0] + 1
    span = rel[:, -1, 1] + 1
    side = _group_sides(np.maximum(span[:n], span[n:]), size)
    order = np.argsort(side, kind="stable")
    crops = torch.empty((n, 3, size, size), memory_format=torch.channels_last)
    rows = crops.permute(0, 2, 3, 1).view(n, size, size * 3)  # (n, y, (x, c)): channels_last memory
    pos = 0
    for r in np.unique(side).tolist():
        sel = order[pos : pos + int((side == r).sum())]
        m = len(sel)
        both = np.concatenate([sel, sel + n])
        weights = torch.zeros((2 * m, size, r)).scatter_add_(
            2, torch.from_numpy(rel[both].reshape(2 * m, size, 4)), torch.from_numpy(wts[both].reshape(2 * m, size, 4))
        )
        wx, wy = weights[:m], weights[m:]  # (m, size, r)
        patch = np.zeros((m, r, r, 3), dtype=np.float32)  # (m, x, y, c): cut from the transposed levels
        for j, (k, x0, y0) in enumerate(zip(src[sel].tolist(), start[sel].tolist(), start[sel + n].tolist())):
            a = levels[k]
            xa, xb = max(x0, 0), min(x0 + r, a.shape[0])
            ya, yb = max(y0, 0), min(y0 + r, a.shape[1])
            if xa < xb and ya < yb:
                patch[j, xa - x0 : xb - x0, ya - y0 : yb - y0] = a[xa:xb, ya:yb]
        half = torch.bmm(wx, torch.from_numpy(patch).view(m, r, r * 3))  # (m, x_out, (y, c))
        half = half.view(m, size, r, 3).transpose(1, 2).reshape(m, r, size * 3)  # (m, y, (x_out, c))
        torch.bmm(wy, half, out=rows[pos : pos + m])  # (m, y_out, (x_out, c))
        pos += m
    crops.sub_(127.5).mul_(0.0078125)  # _normalise's arithmetic, in place
    return crops.to(device), order
