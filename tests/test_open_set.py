"""Open-set search on real LFW: the bundled model's identification threshold keeps strangers out.

Held-out people of the LFW open-set protocol (:func:`arcface.eval.identification.lfw_open_set`; the threshold was
calibrated on the other part): 150 people with two or more photos are enrolled in a real gallery with one photo each,
500 people who were never enrolled search it once each, and 50 enrolled people search with another photo. A search's
``match`` is decided as the API, the CLI and the page decide it (``FaceRecognizer.identified``). The embeddings are
computed once for the module (about 700 photos, side by side as ``embed_batch`` runs them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arcface.eval.identification import lfw_open_set
from arcface.gallery import Gallery
from conftest import embed_or_none, require_shared

LFW = "data/lfw/lfw-deepfunneled"
ENROLLED, STRANGERS, MATED = 150, 500, 50


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from arcface.inference.recognizer import FaceRecognizer

    root = require_shared(LFW)
    proto = lfw_open_set(root, "heldout")
    rec = FaceRecognizer("default", "mtcnn")

    def embed(paths: list[Path]) -> list[np.ndarray | None]:
        return embed_or_none(rec, paths)

    gallery_dir = tmp_path_factory.mktemp("open-set") / "gallery"
    enrolled: dict[str, int] = {}
    with Gallery.open(gallery_dir, rec.contract) as g:
        people = proto.gallery[:ENROLLED]
        for (name, _), e in zip(people, embed([p for _, p in people])):
            if e is not None:
                enrolled[name] = g.add_identity(name)
                g.add_face(enrolled[name], e, rec.contract.id)
        strangers = [e for e in embed([p for _, p in proto.non_mated[: STRANGERS + 20]]) if e is not None][:STRANGERS]
        stranger_hits = [g.search(e, 1)[0] for e in strangers]
        candidates = [(n, p) for n, p in proto.mated if n in enrolled][:MATED]
        mated = zip([n for n, _ in candidates], embed([p for _, p in candidates]))
        mated_hits = [(enrolled[n], g.search(e, 1)[0]) for n, e in mated if e is not None]
    return rec, stranger_hits, mated_hits


@pytest.mark.slow
@pytest.mark.shared
def test_strangers_are_not_matched(searched):
    rec, stranger_hits, _ = searched
    assert len(stranger_hits) == STRANGERS
    assert rec.identification_threshold is not None and rec.identification_threshold > rec.threshold
    false_matches = sum(bool(rec.identified(m.similarity)) for m in stranger_hits)
    print(f"\n{STRANGERS - false_matches}/{STRANGERS} strangers reported match: false "
          f"(identification threshold {rec.identification_threshold:.4f}, gallery of {ENROLLED})")  # fmt: skip
    assert STRANGERS - false_matches >= 0.99 * STRANGERS
    # the verification (1:1) threshold, used for 1:N as before, lets many strangers through
    assert sum(m.similarity > rec.threshold for m in stranger_hits) > 10 * max(false_matches, 1)


@pytest.mark.slow
@pytest.mark.shared
def test_enrolled_people_are_still_found(searched):
    rec, _, mated_hits = searched
    found = sum(m.identity_id == ident and bool(rec.identified(m.similarity)) for ident, m in mated_hits)
    print(f"\n{found}/{len(mated_hits)} enrolled people found and matched")
    assert len(mated_hits) >= 45 and found >= 0.75 * len(mated_hits)
