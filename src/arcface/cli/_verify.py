"""``arcface verify A B [--json]``: are the main faces of two photos the same person?

Prints the cosine similarity, the decision ("same" when similarity > threshold, else "different") and the
threshold, each also as the squared L2 distance of the unit embeddings (``2 - 2 cos``). The decision is data:
the exit status is 0 either way; 3 when a photo has no face (the message names which), 1 on a bad file or
option.
"""

from __future__ import annotations

import argparse
import json
import sys

from arcface.cli._args import EXIT_NO_FACE, EXIT_OK, CliError, add_detector_args, add_model_args, recognizer_from_args
from arcface.inference.recognizer import NoFaceError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``verify`` subcommand."""
    p = sub.add_parser(
        "verify",
        help="compare the main faces of two photos: similarity, same/different, threshold",
        description="Compare the main faces of two photos with the model's calibrated threshold. "
        "Exit status: 0 (same or different), 1 error, 3 no face in A or B.",
    )
    p.add_argument("a", metavar="A", help="first photo")
    p.add_argument("b", metavar="B", help="second photo")
    add_model_args(p)
    p.add_argument(
        "--threshold", type=float, default=None, metavar="T",
        help="cosine threshold (default: the model's calibrated one)",
    )  # fmt: skip
    p.add_argument("--aligned", action="store_true", help="A and B are already aligned crops (no detection)")
    add_detector_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Embed the main face of each photo and compare them."""
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise CliError(f"--threshold is a cosine in [-1, 1], got {args.threshold}")
    rec = recognizer_from_args(args, threshold=args.threshold)
    if rec.threshold is None:
        raise CliError(
            f"model {args.model} ({rec.contract.architecture}, contract {rec.contract.id}) has no calibrated "
            "threshold; pass --threshold T"
        )
    embeddings, no_face = [], []
    for path in (args.a, args.b):
        try:
            embeddings.append(rec.embed(path, aligned=args.aligned))
        except NoFaceError:
            no_face.append(path)
    if no_face:
        print(f"arcface verify: no face found in {' and in '.join(no_face)}", file=sys.stderr)
        return EXIT_NO_FACE
    v = rec.verify(embeddings[0], embeddings[1])
    decision = "same" if v.same else "different"
    if args.json:
        doc = {
            "a": args.a,
            "b": args.b,
            "similarity": v.similarity,
            "distance_l2": v.distance_l2,
            "decision": decision,
            "same": v.same,
            "threshold": v.threshold,
            "threshold_l2": v.threshold_l2,
            "model": rec.contract.architecture,
            "contract": rec.contract.id,
            "flip": bool(args.flip),
        }
        print(json.dumps(doc))
    else:
        relation = ">" if v.same else "<="
        print(f"similarity  {v.similarity:.4f}  (squared L2 distance {v.distance_l2:.4f})")
        print(f"threshold   {v.threshold:.4f}  (squared L2 distance {v.threshold_l2:.4f})")
        print(f"decision    {decision}  (cosine {v.similarity:.4f} {relation} {v.threshold:.4f})")
    return EXIT_OK
