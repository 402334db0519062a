"""Set-to-set face features: images -> media -> templates (IJB-B/IJB-C), frames -> video (YTF).

A *template* is a set of images and video frames of one subject; a *media* is one photo or one video within it. As
the ArcFace paper (https://arxiv.org/abs/1801.07698, IJB section) and insightface's IJB script do, the template
feature is the "feature centre": image features (optionally weighted by the detector score) are averaged per media,
the media features are averaged per template, and the result is L2-normalised. Averaging media first keeps a long
video from outweighing the photos of the same template.

    >>> feats = embed_aligned(images, landmarks, embedder)               # (N, D) unit rows
    >>> tids, tfeats = pool_templates(feats, template_ids, media_ids)    # (T,), (T, D) unit rows
    >>> video_template(frame_feats)                                      # (D,) unit vector
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from arcface.align.transform import crop
from arcface.inference.embedder import Embedder
from arcface.inference.runners import l2_normalise
from arcface.io.images import ImageSource, load_image

__all__ = ["embed_aligned", "pool_templates", "video_template"]


def video_template(frame_features: np.ndarray) -> np.ndarray:
    """The feature of a video (YouTube Faces style): the normalised mean of its frame features.

    Args:
        frame_features: (F, D) frame embeddings (unit rows, as the backends give them).

    Returns:
        (D,) float32 unit vector.

    Raises:
        ValueError: no frames, or not a 2-D array.
    """
    frames = np.asarray(frame_features, dtype=np.float32)
    if frames.ndim != 2 or frames.shape[0] == 0:
        raise ValueError(f"expected (F, D) frame features with F >= 1, got {frames.shape}")
    return l2_normalise(frames.mean(axis=0))


def pool_templates(
    features: np.ndarray,
    template_ids: np.ndarray,
    media_ids: np.ndarray,
    scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Template features: mean per (template, media), then mean of the media per template, L2-normalised.

    Args:
        features: (N, D) image features (unit rows).
        template_ids: (N,) template of each image (int).
        media_ids: (N,) media of each image (int); a media id may recur across templates, it is pooled per
            (template, media).
        scores: (N,) detector scores; when given each feature is multiplied by its score before pooling (insightface's
            ``use_detector_score``), so poor detections weigh less.

    Returns:
        template ids (T,) sorted ascending, and their features (T, D) float32 unit rows.
    """
    feats = np.asarray(features, dtype=np.float32)
    tids = np.asarray(template_ids).ravel()
    mids = np.asarray(media_ids).ravel()
    if feats.ndim != 2 or not feats.shape[0] == tids.shape[0] == mids.shape[0]:
        raise ValueError(f"features {feats.shape}, {tids.shape[0]} template ids, {mids.shape[0]} media ids differ")
    if scores is not None:
        s = np.asarray(scores, dtype=np.float32).ravel()
        if s.shape[0] != feats.shape[0]:
            raise ValueError(f"{s.shape[0]} scores for {feats.shape[0]} features")
        feats = feats * s[:, None]
    # (template, media) groups -> mean feature per group
    pairs, group = np.unique(np.stack([tids, mids], axis=1), axis=0, return_inverse=True)
    group = group.ravel()
    media_sum = np.zeros((pairs.shape[0], feats.shape[1]), np.float64)
    np.add.at(media_sum, group, feats)
    media_feat = media_sum / np.bincount(group, minlength=pairs.shape[0])[:, None]  # (M, D)
    # media -> template
    templates, tgroup = np.unique(pairs[:, 0], return_inverse=True)
    tgroup = tgroup.ravel()
    template_sum = np.zeros((templates.shape[0], feats.shape[1]), np.float64)
    np.add.at(template_sum, tgroup, media_feat)
    template_feat = template_sum / np.bincount(tgroup, minlength=templates.shape[0])[:, None]
    return templates, l2_normalise(template_feat)


def embed_aligned(
    images: Sequence[ImageSource],
    landmarks: np.ndarray,
    embedder: Embedder,
    *,
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Embed faces whose 5 landmarks are known (no detection): crop each image, embed in batches.

    Args:
        images: N images (paths, arrays, ... as :func:`arcface.io.images.load_image` reads them), e.g.
            the IJB loose crops.
        landmarks: (N, 5, 2) landmarks in each image's pixels (eyes, nose, mouth corners, image-left first).
        embedder: the model (:func:`arcface.load_model`; its ``flip`` gives flip-test fusion).
        batch_size: images loaded and embedded at once (bounds memory).
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        (N, D) float32 unit rows.
    """
    lms = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
    if lms.shape[0] != len(images):
        raise ValueError(f"{len(images)} images but {lms.shape[0]} landmark sets")
    out = np.zeros((len(images), embedder.embedding_size), np.float32)
    for s in range(0, len(images), batch_size):
        crops = [crop(load_image(img), lm, embedder.contract) for img, lm in
                 zip(images[s : s + batch_size], lms[s : s + batch_size])]  # fmt: skip
        out[s : s + len(crops)] = embedder.embed(np.stack(crops))
        if progress is not None:
            progress(s + len(crops), len(images))
    return out
