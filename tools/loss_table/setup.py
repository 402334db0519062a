"""What defines a run of the loss-table experiment: the rows (one head each), the setup, the LFW layout."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcface.eval.datasets import read_lfw_pairs

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = REPO / "configs" / "lfw_small_r18.yaml"
HEADLINE = ("softmax", "arcface (0.5)")


@dataclass(frozen=True)
class LossRow:
    """One row of the table: a name and the head it trains with."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def head_params(self) -> dict[str, Any]:
        return dict(self.params)


#: The rows, in the paper's order (Table 2): margins first, then the auxiliary variants.
ROWS: tuple[LossRow, ...] = (
    LossRow("softmax", "softmax"),
    LossRow("normface", "normface", {"s": 64.0}),
    LossRow("sphereface", "sphereface", {"m1": 4}),
    LossRow("cosface (0.35)", "cosface", {"s": 64.0, "m": 0.35}),
    LossRow("arcface (0.5)", "arcface", {"s": 64.0, "m": 0.5}),
    LossRow("combined (1, 0.3, 0.2)", "combined", {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}),
    LossRow("arcface + intra", "arcface", {"s": 64.0, "m": 0.5, "aux": {"intra": 1.0}}),
    LossRow("arcface + inter", "arcface", {"s": 64.0, "m": 0.5, "aux": {"inter": 1.0}}),
    LossRow("arcface + triplet (0.35)", "arcface", {"s": 64.0, "m": 0.5, "aux": {"triplet": {"margin": 0.35}}}),
)


@dataclass
class Setup:
    """Everything that defines a run of the experiment (recorded in the JSON)."""

    lfw: Path
    work: Path
    out: Path
    steps: int = 800
    seeds: int = 2
    seed_rows: int = 2
    rows: tuple[str, ...] = ()
    finetune_steps: int = 200
    finetune: bool = True
    config: Path = BASE_CONFIG
    readme: Path | None = None
    workers: int | None = None
    threads: int = 0
    jobs: int = 1
    progress: bool = True

    @property
    def threads_per_job(self) -> int:
        """Torch threads of each training process: ``threads``, else the cores shared by the jobs."""
        return self.threads or max(1, (os.cpu_count() or 1) // max(1, self.jobs))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def held_out_people(lfw: Path) -> set[str]:
    """The people named in View 1's test pairs (``pairsDevTest.txt``)."""
    pairs = read_lfw_pairs(lfw / "pairsDevTest.txt", lfw, n_folds=2).image_pairs()  # folds unused
    return {Path(p).parent.name for a, b, _ in pairs for p in (a, b)}


def _images_dir(lfw: Path) -> Path:
    for name in ("lfw-deepfunneled", "lfw", "lfw_funneled"):
        if (lfw / name).is_dir():
            return lfw / name
    raise FileNotFoundError(f"{lfw}: no lfw-deepfunneled/ (or lfw/) image folder")


def images_dir(lfw: Path) -> Path:
    """The photo folder of an LFW copy (deep-funneled first)."""
    for name in ("lfw-deepfunneled", "lfw", "lfw_funneled"):
        if (lfw / name).is_dir():
            return lfw / name
    raise FileNotFoundError(f"{lfw}: no lfw-deepfunneled/ (or lfw/) image folder")
