"""Where evaluation data that is not shipped with the package lives: ``$ARCFACE_DATA`` or ``../shared``.

Nothing here downloads; functions return None when the data is absent so callers can say how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

LFW_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
LFW_HINT = (
    "LFW (deep-funneled) was not found. Set ARCFACE_DATA to a folder holding lfw/lfw-deepfunneled/ and "
    f"lfw/pairs.txt (or place ../shared beside the repository). Download {LFW_URL} (13,233 images of "
    "5,749 people) and pairs.txt / pairsDevTrain.txt / pairsDevTest.txt from the LFW site; expected MD5: "
    "pairs.txt 9f1ba174e4e1c508ff7cdf10ac338a7d, pairsDevTest.txt 5132f7440eb68cf58910c8a45a2ac10b, "
    "pairsDevTrain.txt 4f27cbf15b2da4a85c1907eb4181ad21 (per-image MD5s: shared/data/lfw/lfw-deepfunneled.md5)."
)


def data_roots() -> list[Path]:
    """Candidate data folders in order: $ARCFACE_DATA, $ARCFACE_SHARED/data, ../shared/data."""
    roots = []
    if os.environ.get("ARCFACE_DATA"):
        roots.append(Path(os.environ["ARCFACE_DATA"]))
    if os.environ.get("ARCFACE_SHARED"):
        roots.append(Path(os.environ["ARCFACE_SHARED"]) / "data")
    here = Path(__file__).resolve()
    for parent in (Path.cwd(), *here.parents):
        cand = parent.parent / "shared" / "data"
        if cand.is_dir():
            roots.append(cand)
            break
    return roots


def find_lfw() -> Path | None:
    """The LFW folder (holding ``lfw-deepfunneled/`` and ``pairs.txt``), or None."""
    for root in data_roots():
        cand = root / "lfw"
        if (cand / "lfw-deepfunneled").is_dir():
            return cand
    return None
