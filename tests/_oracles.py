"""Shared by the importer tests: real aligned faces, the oracle code, realistic random weights, the comparison.

The oracles are the seed systems' own model files in ``../shared/reference/oracles`` (imported from there at
test time, never copied). A network gets random weights with realistic BatchNorm statistics: He-scaled
convs, random BN scale/shift and PReLU slopes, running statistics set from one training-mode pass over the
faces and then jittered (so that they are the right size but not the batch's own).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from conftest import require_shared

ORACLES = "reference/oracles"
N_FACES = 8
MIN_COSINE = 0.9999


@functools.lru_cache(maxsize=1)
def _faces(lfw: str) -> np.ndarray:
    from arcface.eval.samples import aligned_lfw_sample

    return aligned_lfw_sample(Path(lfw), N_FACES)


def lfw_faces() -> np.ndarray:
    """(8, 112, 112, 3) uint8 RGB: real LFW faces, MTCNN-aligned to the arcface template (cached per session)."""
    faces = _faces(str(require_shared("data/lfw/lfw-deepfunneled")))
    assert faces.shape == (N_FACES, 112, 112, 3)
    return faces


def oracle_dir(system: str) -> Path:
    """``../shared/reference/oracles/SYSTEM`` (skips, or fails under CI, when absent)."""
    return require_shared(f"{ORACLES}/{system}")


def import_oracle(system: str, filename: str) -> ModuleType:
    """Import one oracle file (e.g. ``treb1en/model.py``) under a private module name."""
    path = oracle_dir(system) / filename
    name = f"_oracle_{system}_{Path(filename).stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def randomize_(model: nn.Module, inputs: torch.Tensor, seed: int = 0) -> nn.Module:
    """Give ``model`` random weights and realistic BatchNorm statistics computed on ``inputs``; eval mode."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                normal(m.weight, (2.0 / fan_in) ** 0.5 if isinstance(m, nn.Conv2d) else fan_in**-0.5)
                if m.bias is not None:
                    normal(m.bias, 0.1)
            elif isinstance(m, nn.PReLU):
                uniform(m.weight, 0.05, 0.4)
        for m in bns:
            uniform(m.weight, 0.6, 1.4)
            normal(m.bias, 0.1)
        # One pass in training mode with momentum 1: running statistics := this batch's statistics.
        momenta = [m.momentum for m in bns]
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        for m in bns:
            m.momentum = 1.0
        model(inputs)
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            jitter = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_mean.add_(jitter * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.7 + 0.7)
    return model.eval()


def half_normalised(faces: np.ndarray) -> torch.Tensor:
    """TreB1eN's / face.evoLVe's own preprocessing: RGB, ToTensor (x / 255), Normalize(0.5, 0.5); (N, 3, H, W)."""
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).contiguous().float() / 255.0
    return (x - 0.5) / 0.5


def embed_converted(path: Path, faces: np.ndarray) -> np.ndarray:
    """Embeddings of aligned crops by our pipeline (the contract's preprocessing applied by it), float32."""
    from arcface import FaceRecognizer

    rec = FaceRecognizer(model=str(path), precision="fp32", flip=False)
    return rec.embed_batch(list(faces), aligned=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, (N, D) x (N, D) -> (N,), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_agree(ours: np.ndarray, original: np.ndarray, label: str) -> float:
    """Per-face cosine >= MIN_COSINE, and the faces' own embeddings differ (so the comparison can fail)."""
    assert ours.shape == original.shape, (ours.shape, original.shape)
    cos = cosines(ours, original)
    unit = original / np.linalg.norm(original, axis=1, keepdims=True)
    between = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
    print(f"{label}: min cosine to the original {cos.min():.7f} over {len(cos)} faces "
          f"(different faces: max cosine {between.max():.4f})")  # fmt: skip
    assert between.max() < 0.995, f"{label}: the random network maps different faces alike; the test proves nothing"
    assert cos.min() >= MIN_COSINE, f"{label}: per-face cosines {np.round(cos, 6)}"
    return float(cos.min())
