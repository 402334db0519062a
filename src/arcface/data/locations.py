"""Where evaluation data that is not shipped with the package lives: ``$ARCFACE_DATA``, ``../shared`` or the
download folder.

Nothing here downloads (``arcface data get`` does: :mod:`arcface.data.downloads`); functions return None when
the data is absent so callers can say how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

from arcface.data.downloads import default_data_dir

LFW_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
LFW_HINT = (
    "LFW (deep-funneled) was not found. `arcface data get lfw` downloads and verifies it (about 110 MB), or set "
    "ARCFACE_DATA to a folder holding lfw/lfw-deepfunneled/ and "
    f"lfw/pairs.txt (or place ../shared beside the repository). By hand: {LFW_URL} (13,233 images of "
    "5,749 people) and pairs.txt / pairsDevTrain.txt / pairsDevTest.txt from the LFW site; expected MD5: "
    "pairs.txt 9f1ba174e4e1c508ff7cdf10ac338a7d, pairsDevTest.txt 5132f7440eb68cf58910c8a45a2ac10b, "
    "pairsDevTrain.txt 4f27cbf15b2da4a85c1907eb4181ad21 (per-image MD5s: shared/data/lfw/lfw-deepfunneled.md5)."
)


def data_roots() -> list[Path]:
    """Candidate data folders in order: $ARCFACE_DATA, $ARCFACE_SHARED/data, ../shared/data, the download folder.

    ``../shared/data`` is looked for beside the working directory and beside each parent of this package;
    ``ARCFACE_NO_SHARED_LOOKUP=1`` skips that search (a test of a fresh machine sets it). The download folder is
    where ``arcface data get`` installs by default (:func:`arcface.data.downloads.default_data_dir`).
    """
    roots = []
    if os.environ.get("ARCFACE_DATA"):
        roots.append(Path(os.environ["ARCFACE_DATA"]))
    if os.environ.get("ARCFACE_SHARED"):
        roots.append(Path(os.environ["ARCFACE_SHARED"]) / "data")
    if os.environ.get("ARCFACE_NO_SHARED_LOOKUP", "") in ("", "0"):
        here = Path(__file__).resolve()
        for parent in (Path.cwd(), *here.parents):
            cand = parent.parent / "shared" / "data"
            if cand.is_dir():
                roots.append(cand)
                break
    downloads = default_data_dir()
    if downloads not in roots:
        roots.append(downloads)
    return roots


def find_lfw() -> Path | None:
    """The LFW folder (holding ``lfw-deepfunneled/`` and ``pairs.txt``), or None."""
    for root in data_roots():
        cand = root / "lfw"
        if (cand / "lfw-deepfunneled").is_dir():
            return cand
    return None
