"""The one 5-point alignment template of the embedding contract (docs/architecture.md).

Every crop the models see is made by mapping five detected landmarks onto these points. The template is
defined here and nowhere else; other sizes are derived from it by :func:`template_for_size`.
"""

from __future__ import annotations

import numpy as np

#: Template for a 112x112 crop, (x, y) in pixel coordinates, image-left eye first:
#: left eye, right eye, nose tip, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE: np.ndarray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE.setflags(write=False)

#: The crop size the template is defined for.
TEMPLATE_SIZE = 112

#: The template's name in model contracts.
TEMPLATE_NAME = "arcface_112"


def template_for_size(image_size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The template scaled for a square crop of ``image_size`` pixels, as insightface's ``estimate_norm``.

    A size divisible by 112 scales the template by ``image_size / 112``. Otherwise a size divisible by 128
    scales it by ``ratio = image_size / 128`` and shifts x by ``8 * ratio`` (the 112-wide face centred in a
    128-wide crop). 224 is thus ``2 * template``; 128 is ``template + (8, 0)``.

    Args:
        image_size: side of the square crop in pixels; divisible by 112 or by 128.

    Returns:
        (5, 2) float64 array of (x, y) target points.

    Raises:
        ValueError: if ``image_size`` is divisible by neither 112 nor 128.
    """
    size = int(image_size)
    if size <= 0 or (size % 112 and size % 128):
        raise ValueError(f"image_size must be a positive multiple of 112 or 128, got {image_size!r}")
    if size % 112 == 0:
        ratio, diff_x = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        diff_x = 8.0 * ratio
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += diff_x
    return dst
