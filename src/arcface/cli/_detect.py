"""``arcface detect IMG [--draw OUT.png] [--json]``: the faces of one photo, main face first.

Prints one line per face (box, score, five landmarks) or, with ``--json``, one JSON object. ``--draw`` writes
the photo with every box and its landmarks, the main face in green, the others in orange.
Exit status: 0 faces found, 1 bad image or option, 3 no face (``no face found in IMG`` on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from arcface.batch.align import encode_image
from arcface.cli._args import EXIT_NO_FACE, EXIT_OK, CliError, add_detector_args, make_detector
from arcface.io.files import write_bytes_atomic
from arcface.io.images import load_image

MAIN_COLOUR = (0, 200, 0)  # RGB
OTHER_COLOUR = (255, 140, 0)
#: Landmark colours (RGB): left eye, right eye, nose, left and right mouth corner.
LANDMARK_COLOURS = ((255, 0, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``detect`` subcommand."""
    p = sub.add_parser(
        "detect",
        help="find the faces in a photo (boxes, scores, 5 landmarks)",
        description="Find the faces in a photo, main face first (large and near the centre). "
        "Exit status: 0 faces found, 1 error, 3 no face.",
    )
    p.add_argument("image", metavar="IMG", help="the photo")
    add_detector_args(p)
    p.add_argument("--draw", default=None, metavar="OUT.png", help="write the photo with boxes and landmarks")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the photo, detect, print (and draw)."""
    if args.draw:
        suffix = Path(args.draw).suffix.lower()
        if not suffix or not cv2.haveImageWriter(f"x{suffix}"):
            raise CliError(f"{args.draw}: cannot write an image of type {suffix or '(no suffix)'}; use .png or .jpg")
    detector = make_detector(args)
    rgb = load_image(args.image)
    faces = detector.detect(rgb)
    if args.json:
        h, w = rgb.shape[:2]
        doc = {"image": args.image, "width": w, "height": h, "faces": [_face_dict(f) for f in faces]}
        print(json.dumps(doc))
    else:
        for i, f in enumerate(faces, 1):
            print(_face_line(i, f))
    if args.draw:
        _draw_file(rgb, faces, args.draw)
    if not faces:
        print(f"arcface detect: no face found in {args.image}", file=sys.stderr)
        return EXIT_NO_FACE
    return EXIT_OK


def _face_dict(face) -> dict:
    return {
        "box": [round(v, 2) for v in face.box],
        "score": round(face.score, 4),
        "landmarks": np.round(face.landmarks.astype(np.float64), 2).tolist(),
    }


def _face_line(i: int, face) -> str:
    box = ", ".join(f"{v:.1f}" for v in face.box)
    lms = " ".join(f"({x:.1f}, {y:.1f})" for x, y in face.landmarks)
    return f"face {i}: box=({box}) score={face.score:.3f} landmarks={lms}"


def draw_faces(rgb: np.ndarray, faces) -> np.ndarray:
    """A copy of ``rgb`` with each face's box and five landmarks drawn; the main (first) face in green.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        faces: detections (``box``, ``landmarks``), main face first.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    out = np.ascontiguousarray(rgb).copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for i, f in enumerate(faces):
        colour = MAIN_COLOUR if i == 0 else OTHER_COLOUR
        x1, y1, x2, y2 = (round(v) for v in f.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        radius = max(2, round((x2 - x1) / 40))
        for (x, y), c in zip(f.landmarks, LANDMARK_COLOURS):
            cv2.circle(out, (round(float(x)), round(float(y))), radius, c, -1, cv2.LINE_AA)
        cv2.putText(
            out, str(i + 1), (x1, max(y1 - 4 * thick, 10 * thick)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour,
            thick, cv2.LINE_AA,
        )  # fmt: skip
    return out


def _draw_file(rgb: np.ndarray, faces, path: str) -> None:
    write_bytes_atomic(path, encode_image(draw_faces(rgb, faces), path))
