"""IJB-B / IJB-C evaluation from the public meta files (as insightface's ``recognition/_evaluation_/ijb`` reads them).

Layout under ``root`` (``IJBC/`` or ``IJBB/``; the meta files may sit in ``root/meta/`` or ``root`` itself)::

    loose_crop/                         the face images ("loose crops"), named as in the meta files
    meta/ijbc_face_tid_mid.txt          one line per image:  ``img_name template_id media_id``
    meta/ijbc_name_5pts_score.txt       one line per image:  ``img_name x1 y1 x2 y2 ... x5 y5 score``
                                        (5 landmarks in the loose crop: eyes, nose, mouth corners; detector score)
    meta/ijbc_template_pair_label.txt   one line per 1:1 pair: ``template_id_1 template_id_2 label`` (1 = same)
    meta/ijbc_1N_gallery_G1.csv         1:N gallery sets, CSV with a header row; the columns used are
    meta/ijbc_1N_gallery_G2.csv         ``TEMPLATE_ID`` and ``SUBJECT_ID`` (found by name; the other columns,
    meta/ijbc_1N_probe_mixed.csv        FILENAME, SIGHTING_ID, box, ..., are ignored). One row per image, so a
                                        template recurs; its subject must not change.

Assumptions (documented, checked where cheap): the text files are whitespace-separated; the two per-image files are
joined on ``img_name`` (they are row-aligned in the public release, which the join does not rely on); image names
are unique. IJB-B ships ``ijbb_1N_gallery_S1.csv`` / ``_S2.csv`` and ``ijbb_1N_probe_mixed.csv``: pass
``galleries=("S1", "S2")``.

Pipeline of :func:`evaluate_ijb`: the contract's crop with the given landmarks (no detection) -> embedder (flip
fusion if it has it) -> optional detector-score weighting -> media then template pooling -> L2-normalise; 1:1 TAR@FAR at
1e-6..1e-1 over the template pairs; 1:N CMC and TPIR@FPIR per gallery, averaged over the galleries.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arcface.eval.identification import open_set_identification
from arcface.eval.metrics import DEFAULT_FARS, tar_at_far
from arcface.eval.templates import embed_aligned, pool_templates
from arcface.inference.embedder import Embedder
from arcface.runtime.untrusted import reads

__all__ = [
    "IJBProtocol",
    "evaluate_ijb",
    "identify_1n",
    "load_ijb",
    "read_1n_csv",
    "read_face_tid_mid",
    "read_name_5pts_score",
    "read_template_pair_label",
    "verify_1to1",
]


# --------------------------------------------------------------------------------------------------
# Readers


def _rows(path: str | os.PathLike, min_cols: int) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < min_cols:
                raise ValueError(f"{path}:{n}: expected at least {min_cols} fields, got {len(parts)}: {line.strip()!r}")
            rows.append(parts)
    return rows


@reads("not an IJB face/template/media file")
def read_face_tid_mid(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read ``*_face_tid_mid.txt``: ``img_name template_id media_id`` per line.

    Returns:
        image names (N,), template ids (N,) int64, media ids (N,) int64.
    """
    rows = _rows(path, 3)
    names = [r[0] for r in rows]
    return names, np.array([int(r[1]) for r in rows], np.int64), np.array([int(r[2]) for r in rows], np.int64)


@reads("not an IJB template pair file")
def read_template_pair_label(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``*_template_pair_label.txt``: ``template_id_1 template_id_2 label`` per line.

    Returns:
        t1 (P,) int64, t2 (P,) int64, labels (P,) int64 (1 same subject, 0 different).
    """
    rows = _rows(path, 3)
    arr = np.array([[int(r[0]), int(r[1]), int(r[2])] for r in rows], np.int64).reshape(-1, 3)
    if not np.isin(arr[:, 2], (0, 1)).all():
        raise ValueError(f"{path}: labels must be 0 or 1")
    return arr[:, 0], arr[:, 1], arr[:, 2]


@reads("not an IJB landmark file")
def read_name_5pts_score(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read ``*_name_5pts_score.txt``: ``img_name x1 y1 ... x5 y5 score`` per line.

    Returns:
        image names (N,), landmarks (N, 5, 2) float32 (x, y) in the loose crop, detector scores (N,) float32.
    """
    rows = _rows(path, 12)
    names = [r[0] for r in rows]
    vals = np.array([[float(v) for v in r[1:12]] for r in rows], np.float32).reshape(-1, 11)
    if not np.isfinite(vals).all():
        raise ValueError(f"{path}: landmarks and scores must be finite numbers")
    return names, vals[:, :10].reshape(-1, 5, 2), vals[:, 10]


@reads("not an IJB 1:N CSV file")
def read_1n_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a 1:N gallery or probe CSV (header row with ``TEMPLATE_ID`` and ``SUBJECT_ID``).

    Returns:
        template ids (T,) int64, each once in first-seen order, and their subject ids (T,) int64.

    Raises:
        ValueError: a missing column, or one template listed under two subjects.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().upper() for h in next(reader)]
        try:
            ti, si = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
        except ValueError:
            raise ValueError(f"{path}: header needs TEMPLATE_ID and SUBJECT_ID, got {header}") from None
        subject_of: dict[int, int] = {}
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            t, s = int(row[ti]), int(row[si])
            if subject_of.setdefault(t, s) != s:
                raise ValueError(f"{path}:{n}: template {t} listed under subjects {subject_of[t]} and {s}")
    tids = np.fromiter(subject_of.keys(), np.int64, len(subject_of))
    return tids, np.fromiter(subject_of.values(), np.int64, len(subject_of))


# --------------------------------------------------------------------------------------------------
# Protocol


@dataclass
class IJBProtocol:
    """The parsed meta files of one IJB benchmark.

    Attributes:
        image_paths: (N,) paths of the loose crops.
        template_ids: (N,) template of each image.
        media_ids: (N,) media of each image.
        landmarks: (N, 5, 2) landmarks in each loose crop.
        scores: (N,) detector scores.
        pairs: (t1 (P,), t2 (P,), labels (P,)) of the 1:1 protocol, or None.
        galleries: ``{name: (template ids, subject ids)}`` of the 1:N galleries (may be empty).
        probes: (template ids, subject ids) of the 1:N probes, or None.
    """

    image_paths: list[Path]
    template_ids: np.ndarray
    media_ids: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    galleries: dict[str, tuple[np.ndarray, np.ndarray]]
    probes: tuple[np.ndarray, np.ndarray] | None


def _meta(root: Path, filename: str) -> Path | None:
    for d in (root / "meta", root):
        if (d / filename).is_file():
            return d / filename
    return None


def load_ijb(
    root: str | os.PathLike,
    name: str = "ijbc",
    *,
    galleries: Sequence[str] = ("G1", "G2"),
    probe: str = "mixed",
    image_dir: str = "loose_crop",
) -> IJBProtocol:
    """Read an IJB protocol from its meta files (see the module docstring for the layout).

    Args:
        root: the benchmark folder (holding ``loose_crop/`` and ``meta/``).
        name: file prefix, ``"ijbc"`` or ``"ijbb"``.
        galleries: 1:N gallery names (``"G1", "G2"`` for IJB-C, ``"S1", "S2"`` for IJB-B).
        probe: 1:N probe set name (``ijbc_1N_probe_{probe}.csv``).
        image_dir: folder of the images under ``root``.

    Returns:
        The protocol; the 1:1 pairs and the 1:N sets are None / empty when their files are absent.

    Raises:
        FileNotFoundError: the per-image meta files are missing.
        ValueError: an image of the tid/mid file has no landmarks.
    """
    root = Path(root)
    tid_file = _meta(root, f"{name}_face_tid_mid.txt")
    lmk_file = _meta(root, f"{name}_name_5pts_score.txt")
    for f, fn in ((tid_file, "face_tid_mid"), (lmk_file, "name_5pts_score")):
        if f is None:
            raise FileNotFoundError(f"{root}: no {name}_{fn}.txt in {root / 'meta'} or {root}")
    names, tids, mids = read_face_tid_mid(tid_file)
    lnames, lmks, scores = read_name_5pts_score(lmk_file)
    if lnames != names:  # join on the name (the public files are row-aligned; this does not rely on it)
        where = {n: i for i, n in enumerate(lnames)}
        missing = [n for n in names if n not in where]
        if missing:
            raise ValueError(f"{lmk_file}: no landmarks for {len(missing)} images, e.g. {missing[0]}")
        order = np.array([where[n] for n in names], np.int64)
        lmks, scores = lmks[order], scores[order]
    pair_file = _meta(root, f"{name}_template_pair_label.txt")
    pairs = read_template_pair_label(pair_file) if pair_file else None
    gal: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for g in galleries:
        f = _meta(root, f"{name}_1N_gallery_{g}.csv")
        if f is not None:
            gal[g] = read_1n_csv(f)
    probe_file = _meta(root, f"{name}_1N_probe_{probe}.csv")
    return IJBProtocol(
        image_paths=[root / image_dir / n for n in names],
        template_ids=tids,
        media_ids=mids,
        landmarks=lmks,
        scores=scores,
        pairs=pairs,
        galleries=gal,
        probes=read_1n_csv(probe_file) if probe_file else None,
    )


# --------------------------------------------------------------------------------------------------
# Metrics on template features


def _lookup(template_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each wanted template id in the sorted ``template_ids``; KeyError for unknown ones."""
    pos = np.searchsorted(template_ids, wanted)
    ok = (pos < template_ids.size) & (template_ids[np.minimum(pos, template_ids.size - 1)] == wanted)
    if not ok.all():
        raise KeyError(f"{int((~ok).sum())} templates have no images, e.g. {int(wanted[~ok][0])}")
    return pos


def verify_1to1(
    template_ids: np.ndarray,
    template_feats: np.ndarray,
    t1: np.ndarray,
    t2: np.ndarray,
    labels: np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, Any]:
    """1:1 verification of template pairs: cosine scores, TAR@FAR.

    Args:
        template_ids: (T,) sorted template ids (as :func:`~arcface.eval.templates.pool_templates` returns them).
        template_feats: (T, D) unit rows.
        t1, t2: (P,) template ids of the pairs.
        labels: (P,) 1 same subject, 0 different.
        fars: false accept rates.

    Returns:
        ``{"tar_at_far": {far: {...}}, "scores": (P,) float32, "positives": int, "negatives": int}``.
    """
    feats = np.asarray(template_feats, np.float32)
    a, b = _lookup(template_ids, np.asarray(t1)), _lookup(template_ids, np.asarray(t2))
    scores = np.einsum("ij,ij->i", feats[a], feats[b])  # (P,)
    labels = np.asarray(labels).astype(bool)
    return {
        "tar_at_far": tar_at_far(scores[labels], scores[~labels], fars),
        "scores": scores,
        "positives": int(labels.sum()),
        "negatives": int((~labels).sum()),
    }


def identify_1n(
    template_ids: np.ndarray,
    template_feats: np.ndarray,
    galleries: dict[str, tuple[np.ndarray, np.ndarray]],
    probes: tuple[np.ndarray, np.ndarray],
    *,
    fpirs: Sequence[float] = (0.01, 0.1),
    ranks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """1:N identification of probe templates in each gallery, and the mean over galleries.

    Probes whose subject is not in a gallery are its non-mated (open-set) probes.

    Returns:
        ``{"per_gallery": {name: open_set_identification result}, "cmc": {rank: mean}, "tpir_at_fpir": {fpir:
        mean or None}}``.
    """
    feats = np.asarray(template_feats, np.float32)
    p_rows = _lookup(template_ids, probes[0])
    per = {}
    for g, (g_tids, g_subj) in galleries.items():
        per[g] = open_set_identification(
            feats[p_rows], probes[1], feats[_lookup(template_ids, g_tids)], g_subj, fpirs=fpirs, ranks=ranks
        )
    if not per:
        raise ValueError("no 1:N gallery")
    cmc = {r: float(np.mean([res["cmc"][r] for res in per.values()])) for r in ranks}
    tpir: dict[float, float | None] = {}
    for f in fpirs:
        vals = [res["tpir_at_fpir"][float(f)] for res in per.values()]
        tpir[float(f)] = None if any(v is None for v in vals) else float(np.mean(vals))
    return {"per_gallery": per, "cmc": cmc, "tpir_at_fpir": tpir}


def evaluate_ijb(
    root: str | os.PathLike | IJBProtocol,
    embedder: Embedder,
    *,
    name: str = "ijbc",
    use_detector_score: bool = True,
    fars: Sequence[float] = DEFAULT_FARS,
    fpirs: Sequence[float] = (0.01, 0.1),
    ranks: Sequence[int] = (1, 5, 10),
    galleries: Sequence[str] = ("G1", "G2"),
    batch_size: int = 128,
    features: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a model on an IJB benchmark: image features -> template features -> 1:1 and 1:N results.

    Args:
        root: the benchmark folder, or an already loaded :class:`IJBProtocol`.
        embedder: the model (``load_model(..., flip=True)`` for flip-test fusion).
        name: file prefix ("ijbc", "ijbb").
        use_detector_score: weight each image feature by its detector score before pooling.
        fars: 1:1 false accept rates.
        fpirs: 1:N false positive identification rates.
        ranks: 1:N CMC ranks.
        galleries: 1:N gallery names.
        batch_size: images embedded at once.
        features: (N, D) precomputed image features in the protocol's image order (skips embedding).
        progress: ``progress(done, total)`` while embedding.

    Returns:
        ``{"images": N, "templates": T, "1:1": verify_1to1 result without the scores (or None), "1:N":
        identify_1n result (or None), "features": (N, D) image features}``.
    """
    proto = root if isinstance(root, IJBProtocol) else load_ijb(root, name, galleries=galleries)
    if features is None:
        features = embed_aligned(proto.image_paths, proto.landmarks, embedder, batch_size=batch_size, progress=progress)
    tids, tfeats = pool_templates(
        features, proto.template_ids, proto.media_ids, proto.scores if use_detector_score else None
    )
    one = None
    if proto.pairs is not None:
        one = verify_1to1(tids, tfeats, *proto.pairs, fars=fars)
        one.pop("scores")
    many = None
    if proto.probes is not None and proto.galleries:
        many = identify_1n(tids, tfeats, proto.galleries, proto.probes, fpirs=fpirs, ranks=ranks)
    return {
        "images": len(proto.image_paths),
        "templates": int(tids.size),
        "1:1": one,
        "1:N": many,
        "features": features,
    }
