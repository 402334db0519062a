"""1:N identification: MegaFace-style CMC and open-set TPIR@FPIR over a :class:`~arcface.index.VectorIndex`.

    >>> evaluate_identification(probes, probe_ids, None, None, distractors)["cmc"]
    {1: 0.98, 5: 0.99, 10: 1.0}

Protocols of :func:`evaluate_identification`:

- ``"megaface"`` (default), as MegaFace (Kemelmacher-Shlizerman et al., CVPR 2016, https://arxiv.org/abs/1512.00596)
  runs it: every mated (probe, gallery image) pair is one trial whose gallery is that ONE image plus all
  distractors; the rank is 1 + the number of distractors scoring above the mated image. Only the distractors are
  indexed (one search per probe, ``k = max(ranks)``), so a million distractors cost one index, not one per trial.
- ``"gallery"``: closed-set search of each probe in the whole gallery plus the distractors; the rank is the first
  position holding the probe's identity.

Verification numbers (``tar_at_far``) use genuine = the mated pair scores and impostors = probe x distractor scores.
The TAR@FAR rule is :func:`arcface.eval.metrics.tar_at_far`.

Open-set identification (:func:`open_set_identification`) on LFW (:func:`lfw_open_set`): people with two or more
photos are enrolled with their first one and searched with their second (mated searches); people with one photo are
never enrolled and searched once each (non-mated searches). The people are split by a hash of their name into a
calibration part (two thirds) and a held-out part (one third), so a threshold chosen on one is checked on the other.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arcface.eval.metrics import DEFAULT_FARS, cmc_from_ranks, tar_at_far, threshold_at_far
from arcface.index import VectorIndex
from arcface.io.walk import check_file

__all__ = ["OpenSetProtocol", "evaluate_identification", "lfw_open_set", "open_set_identification"]

# --------------------------------------------------------------------------------------------------
# Closed-set (MegaFace) evaluation


def evaluate_identification(
    probe_emb: np.ndarray,
    probe_ids: np.ndarray,
    gallery_emb: np.ndarray | None,
    gallery_ids: np.ndarray | None,
    distractor_emb: np.ndarray | None = None,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    fars: Iterable[float] = DEFAULT_FARS,
    index: str = "exact",
    index_params: dict[str, Any] | None = None,
    protocol: str = "megaface",
    max_impostor_pairs: int = 50_000_000,
    seed: int = 0,
) -> dict[str, Any]:
    """CMC and TAR@FAR of probes against a gallery plus distractors, searched through an index.

    Args:
        probe_emb: (P, D) unit rows.
        probe_ids: (P,) identity labels.
        gallery_emb: (G, D) unit rows, or None: the gallery is the probe set itself and a probe is never matched
            with its own row (MegaFace: every image of a person is probe against each other image).
        gallery_ids: (G,) identity labels (None with ``gallery_emb=None``).
        distractor_emb: (M, D) unit rows of people in neither set, or None.
        ranks: CMC ranks to report.
        fars: FARs of the verification part (probe x distractor impostors; probe x other-identity gallery rows
            where there are no distractors).
        index: ``"exact"``, ``"hnsw"`` or ``"ivf"``: how the distractors (``"megaface"``) or gallery + distractors
            (``"gallery"``) are searched. An approximate index is also run exactly and its recall reported.
        index_params: extra :class:`VectorIndex` arguments.
        protocol: ``"megaface"`` (one mated gallery image + all distractors per trial) or ``"gallery"`` (the
            whole gallery + distractors; rank of the first row with the probe's identity).
        max_impostor_pairs: beyond this many probe x distractor pairs the impostor scores of the verification part
            use a random subset of the distractors (``"impostor_pairs"`` says how many were used).
        seed: seed of that subset.

    Returns:
        ``{"cmc": {rank: share}, "tar_at_far": {...} (see :func:`tar_at_far`), "recall_vs_exact": float | None
        (approximate kind: share of probes whose top-1 is the exact top-1; None for "exact"), "trials": int,
        "genuine_pairs": int, "impostor_pairs": int, "protocol": str, "index": str}``.
    """
    if protocol not in ("megaface", "gallery"):
        raise ValueError(f"unknown protocol {protocol!r}; expected 'megaface' or 'gallery'")
    probe_emb = np.ascontiguousarray(probe_emb, dtype=np.float32)
    probe_ids = np.asarray(probe_ids).ravel()
    self_gallery = gallery_emb is None
    if self_gallery:
        gallery_emb, gallery_ids = probe_emb, probe_ids
    gallery_emb = np.ascontiguousarray(gallery_emb, dtype=np.float32)
    gallery_ids = np.asarray(gallery_ids).ravel()
    dim = probe_emb.shape[1]
    if distractor_emb is None:
        distractor_emb = np.zeros((0, dim), np.float32)
    distractor_emb = np.ascontiguousarray(distractor_emb, dtype=np.float32)
    for name, emb, ids in (("probe", probe_emb, probe_ids), ("gallery", gallery_emb, gallery_ids)):
        if emb.ndim != 2 or emb.shape[0] != ids.shape[0]:
            raise ValueError(f"{name}: {emb.shape} embeddings for {ids.shape[0]} ids")
    if gallery_emb.shape[1] != dim or distractor_emb.shape[1] != dim:
        raise ValueError("probe, gallery and distractor embeddings must have the same length")
    ranks = tuple(int(r) for r in ranks)
    kmax = max(ranks)
    params = dict(index_params or {})

    # Mated pairs: (probe i, gallery j) with equal ids, not the same row when the gallery is the probe set.
    same = probe_ids[:, None] == gallery_ids[None, :]  # (P, G)
    if self_gallery:
        np.fill_diagonal(same, False)
    sims = probe_emb @ gallery_emb.T  # (P, G)
    pi, gj = np.nonzero(same)
    if pi.size == 0:
        raise ValueError("no probe has a mated gallery row")
    genuine = sims[pi, gj]  # (T,)

    if protocol == "megaface":
        searched, searched_ids = distractor_emb, np.arange(distractor_emb.shape[0], dtype=np.int64)
    else:
        searched = np.concatenate([gallery_emb, distractor_emb])
        searched_ids = np.arange(searched.shape[0], dtype=np.int64)
    k = min(kmax if protocol == "megaface" else kmax + int(self_gallery), max(searched.shape[0], 1))
    scores, found = _search(searched, searched_ids, probe_emb, k, index, params)  # (P, k)
    recall = None
    if index != "exact" and searched.shape[0] > 0:
        _, exact_found = _search(searched, searched_ids, probe_emb, k, "exact", {})
        recall = float(np.mean(found[:, 0] == exact_found[:, 0]))

    if protocol == "megaface":
        # rank = 1 + distractors above the mated score; only the top kmax matter for the CMC.
        above = (scores[pi] > genuine[:, None]).sum(axis=1)  # (T,)
        seen_all = scores.shape[1] >= searched.shape[0]  # the search returned every distractor
        trial_ranks = np.where((above >= scores.shape[1]) & ~seen_all, np.inf, above + 1.0)
    else:
        n_gallery = gallery_emb.shape[0]
        gal_label = np.where(found < n_gallery, found, -1)
        if self_gallery:  # drop each probe's own row from its result list
            own = gal_label == np.arange(probe_emb.shape[0])[:, None]
            gal_label = np.where(own, -2, gal_label)
        trial_ranks = np.full(probe_emb.shape[0], np.inf)
        for p in np.unique(pi):
            pos = 0
            for lab in gal_label[p]:
                if lab == -2:
                    continue
                pos += 1
                if lab >= 0 and gallery_ids[lab] == probe_ids[p]:
                    trial_ranks[p] = pos
                    break
        trial_ranks = trial_ranks[np.unique(pi)]

    impostor, n_imp = _impostor_scores(probe_emb, probe_ids, gallery_ids, sims, distractor_emb, self_gallery,
                                       max_impostor_pairs, seed)
    return {
        "cmc": cmc_from_ranks(trial_ranks, ranks),
        "tar_at_far": tar_at_far(genuine, impostor, fars),
        "recall_vs_exact": recall,
        "trials": int(np.size(trial_ranks)),
        "genuine_pairs": int(genuine.size),
        "impostor_pairs": int(n_imp),
        "distractors": int(distractor_emb.shape[0]),
        "protocol": protocol,
        "index": index,
    }


def _search(
    x: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, kind: str, params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    if x.shape[0] == 0:
        return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
    idx = VectorIndex(x.shape[1], kind, **params)
    idx.add(x, ids)
    return idx.search(queries, k)


def _impostor_scores(
    probe_emb: np.ndarray,
    probe_ids: np.ndarray,
    gallery_ids: np.ndarray,
    sims: np.ndarray,
    distractors: np.ndarray,
    self_gallery: bool,
    max_pairs: int,
    seed: int,
) -> tuple[np.ndarray, int]:
    if distractors.shape[0] == 0:
        diff = probe_ids[:, None] != gallery_ids[None, :]
        if self_gallery:
            diff = np.triu(diff, 1)  # each unordered pair once
        return sims[diff], int(diff.sum())
    n_probe = probe_emb.shape[0]
    d = distractors
    if n_probe * d.shape[0] > max_pairs:
        keep = max(1, max_pairs // n_probe)
        rng = np.random.default_rng(seed)
        d = d[np.sort(rng.choice(d.shape[0], keep, replace=False))]
    return (probe_emb @ d.T).ravel(), n_probe * d.shape[0]


# --------------------------------------------------------------------------------------------------
# Open-set (IJB 1:N) evaluation


def open_set_identification(
    probe_feats: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_subjects: np.ndarray,
    *,
    fpirs: Sequence[float] = (0.01, 0.1),
    ranks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Open-set TPIR@FPIR and closed-set CMC of probe templates against one gallery (IJB-B/C 1:N).

    A probe is *mated* when its subject has a gallery template; the others are non-mated. CMC is over the mated
    probes. At FPIR f the threshold is set so that (at most) a share f of the non-mated probes have a top-1 score
    above it; TPIR is the share of mated probes whose top-1 is their subject **and** scores above it (rank-1
    TPIR, as NIST and the IJB papers report it).

    Args:
        probe_feats: (P, D) unit rows.
        probe_subjects: (P,) subject labels.
        gallery_feats: (G, D) unit rows.
        gallery_subjects: (G,) subject labels (one template per subject is usual, several are allowed).
        fpirs: false positive identification rates.
        ranks: CMC ranks.

    Returns:
        ``{"cmc": {rank: share}, "tpir_at_fpir": {fpir: tpir | None}, "threshold_at_fpir": {fpir: cosine | None},
        "mated": int, "non_mated": int}``; a TPIR (and its threshold) is None where ``f * non_mated < 1`` (not
        enough non-mated probes). FNIR at that FPIR is ``1 - TPIR``.
    """
    probe_subjects = np.asarray(probe_subjects).ravel()
    gallery_subjects = np.asarray(gallery_subjects).ravel()
    sims = np.asarray(probe_feats, np.float32) @ np.asarray(gallery_feats, np.float32).T  # (P, G)
    mated = np.isin(probe_subjects, gallery_subjects)
    if not mated.any():
        raise ValueError("no probe subject is in the gallery")
    order = np.argsort(-sims, axis=1, kind="stable")  # (P, G) best first
    hit = gallery_subjects[order] == probe_subjects[:, None]  # (P, G)
    # Rank by subject: several templates of one subject count once (first position of the subject).
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), sims.shape[1])
    subj_sorted = gallery_subjects[order]
    rank = np.array([np.unique(subj_sorted[p, : first[p] + 1]).size if first[p] < sims.shape[1] else np.inf
                     for p in range(sims.shape[0])], dtype=np.float64)
    cmc = cmc_from_ranks(rank[mated], ranks)
    top1 = sims.max(axis=1)
    top1_right = hit[:, 0]
    tpir: dict[float, float | None] = {}
    thresholds: dict[float, float | None] = {}
    for f in fpirs:
        thr = threshold_at_far(top1[~mated], f)  # the non-mated searches' top scores are the impostors
        thresholds[float(f)] = thr
        tpir[float(f)] = None if thr is None else float(np.mean(top1_right[mated] & (top1[mated] > thr)))
    return {
        "cmc": cmc,
        "tpir_at_fpir": tpir,
        "threshold_at_fpir": thresholds,
        "mated": int(mated.sum()),
        "non_mated": int((~mated).sum()),
    }


# --------------------------------------------------------------------------------------------------
# An open-set protocol built from LFW


@dataclass(frozen=True)
class OpenSetProtocol:
    """Who is enrolled and who searches, as (person, image path) lists.

    Attributes:
        gallery: one enrolment photo per enrolled person.
        mated: one search photo per enrolled person (another photo than the enrolled one).
        non_mated: one search photo per never-enrolled person.
    """

    gallery: list[tuple[str, Path]]
    mated: list[tuple[str, Path]]
    non_mated: list[tuple[str, Path]]


def _lfw_part(name: str) -> str:
    """``"heldout"`` for a third of the people (by a SHA-256 of the name: stable across machines), else calibration."""
    return "heldout" if int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 3 == 0 else "calibration"


def lfw_open_set(root: str | os.PathLike, part: str = "calibration") -> OpenSetProtocol:
    """The open-set LFW protocol of one part of the people (see the module docstring).

    Args:
        root: ``lfw-deepfunneled`` (one folder per person, ``name/name_0001.jpg``...).
        part: ``"calibration"`` (two thirds of the people) or ``"heldout"`` (the other third).

    Raises:
        ValueError: an unknown part, or a folder without people.
    """
    if part not in ("calibration", "heldout"):
        raise ValueError(f"part must be 'calibration' or 'heldout', got {part!r}")
    root = Path(root)
    people = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not people:
        raise ValueError(f"{root}: no person folders (expected lfw-deepfunneled)")
    gallery, mated, non_mated = [], [], []
    for person in people:
        if _lfw_part(person.name) != part:
            continue
        photos = sorted(p for p in person.glob("*.jpg") if check_file(p, root=root) is None)  # regular files only
        if len(photos) >= 2:
            gallery.append((person.name, photos[0]))
            mated.append((person.name, photos[1]))
        elif photos:
            non_mated.append((person.name, photos[0]))
    return OpenSetProtocol(gallery, mated, non_mated)
