"""``arcface gallery enroll|search|list|remove|copy``: a persistent face gallery (:mod:`arcface.gallery`).

Every action takes ``--gallery DIR|URI`` (default ``$ARCFACE_GALLERY``, else ``.arcface-gallery``): a folder (SQLite
+ FAISS), or ``postgresql://...``, ``milvus://host:port``, ``milvus-lite:///file.db`` (a password is never printed),
and ``--model`` (default "default"); the first enrolment binds the gallery to that model's contract, and a later
search with another model is refused.

- ``enroll DIR``: one sub-folder per person (the folder name is the identity's name: a new identity, or the
  existing one of that name). The main face of each photo is enrolled; unreadable photos and photos without a
  face are listed and skipped, and a photo already enrolled for that person (same ``person/file`` source) is
  skipped. Exit 0 when something was enrolled or was already there, 1 when nothing could be. The work is
  :func:`arcface.batch.enroll.enroll_folder`; ``--engine ray`` computes the embeddings on a Ray cluster.
- ``search IMG [-k 5]``: the ``k`` most similar identities with their similarity and "match" where it is
  above the model's identification threshold (open-set 1:N, calibrated for a false-positive identification rate;
  not the 1:1 threshold of ``arcface verify``). Exit 0 (also with no match), 3 no face, 1 error.
- ``list``: identities with their face counts.
- ``remove ID``: an identity and its faces (``--face``: one face), from every file of the gallery.
- ``copy SRC DST``: the whole gallery into another place, any backend to any backend (same contract or refused),
  resumable, then verified by counts and by the same searches on both (:mod:`arcface.gallery.copy`). Exit 0 when
  verified, 1 otherwise.

Names are printed with control and bidirectional characters escaped (``\\x1b``, ``\\u202e``), so a name cannot
rewrite the terminal; the gallery refuses such names for new identities. Enrolment stores each photo's path below
DIR (``person/file.jpg``) as the face's source, to skip it on the next run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from arcface.batch.enroll import enroll_folder
from arcface.cli._args import (
    EXIT_ERROR,
    EXIT_NO_FACE,
    EXIT_OK,
    CliError,
    add_detector_args,
    add_engine_args,
    add_model_args,
    engine_options,
    job_settings,
    print_failures,
    recognizer_from_args,
)
from arcface.cli._files import add_file_args, file_policy, report_job, report_skipped
from arcface.gallery import Gallery, mask_uri
from arcface.gallery.copy import copy_gallery
from arcface.gallery.rules import BIDI_CONTROLS
from arcface.index import INDEX_KINDS
from arcface.inference.recognizer import NoFaceError
from arcface.runtime.progress import Progress

DEFAULT_GALLERY = ".arcface-gallery"


def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    default = os.environ.get("ARCFACE_GALLERY") or DEFAULT_GALLERY
    p.add_argument("--gallery", default=default, metavar="DIR|URI",
                   help=f"the gallery: a folder, or a postgresql://, milvus://, milvus-lite:// URI "
                        f"(default {mask_uri(default)})")  # fmt: skip
    if model:
        add_model_args(p)
        p.add_argument(
            "--index", choices=INDEX_KINDS, default="exact",
            help="search index: exact (default) or approximate for large galleries",
        )  # fmt: skip
        add_detector_args(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``gallery`` subcommand and its actions."""
    p = sub.add_parser(
        "gallery",
        help="a persistent face gallery: enroll, search, list, remove",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    e = actions.add_parser("enroll", help="enrol the main face of each photo of DIR/<person>/...")
    e.add_argument("dir", metavar="DIR", help="one sub-folder per person, named after them")
    _common(e)
    add_engine_args(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_file_args(e)
    e.set_defaults(func=run_enroll)

    s = actions.add_parser("search", help="the identities most similar to the main face of IMG")
    s.add_argument("image", metavar="IMG", help="a photo")
    s.add_argument("-k", type=int, default=5, help="identities to list (default 5)")
    s.add_argument(
        "--aggregate", choices=("max", "mean_top"), default="max",
        help="identity score: best face (default) or mean of its --top best faces",
    )  # fmt: skip
    s.add_argument("--top", type=int, default=3, help="faces averaged by --aggregate mean_top (default 3)")
    s.add_argument(
        "--threshold", type=float, default=None, metavar="T",
        help="cosine threshold of a match (default: the model's identification threshold, for 1:N search)",
    )  # fmt: skip
    _common(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_search)

    ls = actions.add_parser("list", help="the identities and their face counts")
    _common(ls, model=False)
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(func=run_list)

    rm = actions.add_parser("remove", help="remove an identity (and its faces), or one face with --face")
    rm.add_argument("id", metavar="ID", type=int, help="identity id (see list)")
    rm.add_argument("--face", action="store_true", help="ID is a face id: remove that face only")
    _common(rm, model=False)
    rm.set_defaults(func=run_remove)

    cp = actions.add_parser("copy", help="copy a gallery to another place (any backend), resumable, verified")
    cp.add_argument("source", metavar="SRC", help="the gallery to copy (a folder or URI)")
    cp.add_argument("destination", metavar="DST", help="where to (empty, or a copy this command began)")
    cp.add_argument("--index", choices=INDEX_KINDS, default="exact",
                    help="the destination's search index (Milvus: fixed when it is created)")  # fmt: skip
    cp.add_argument("--sample", type=int, default=100, help="searches compared on both (default 100)")
    cp.add_argument("--no-progress", action="store_true", help="no progress bar")
    cp.set_defaults(func=run_copy)


def shown(name: str) -> str:
    """A name fit for a terminal: control, bidirectional and other invisible characters as escapes."""
    out = []
    for c in name:
        if c.isprintable() and c not in BIDI_CONTROLS:
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return "".join(out)


def _quiet_faiss() -> None:
    """FAISS logs which SIMD build it loaded at INFO; not news for a CLI user."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_enroll(args: argparse.Namespace) -> int:
    """Enrol the main face of every photo of each person folder (:func:`arcface.batch.enroll.enroll_folder`)."""
    _quiet_faiss()
    options = engine_options(args)
    settings = job_settings(args, "enroll")
    r = enroll_folder(args.dir, args.gallery, settings, options, index=args.index, progress_bar=not args.no_progress,
                      policy=file_policy(args))  # fmt: skip
    for name, why in r.refused:
        print(f"skipped the folder {shown(name)!s}: {why}", file=sys.stderr)
    if r.loose:
        print(f"ignored {len(r.loose)} image(s) directly in {args.dir}: put each person's photos in a sub-folder "
              "named after them", file=sys.stderr)  # fmt: skip
    print(
        f"enrolled {r.enrolled} face(s) of {r.photos} photo(s) into {mask_uri(args.gallery)} "
        f"({len(r.new_identities)} new identities; gallery: {r.identities} identities, {r.faces} faces; "
        f"contract {r.contract_id})"
        + (f"; {r.skipped} already enrolled" if r.skipped else "")
        + (f"; {len(r.failures)} failed" if r.failures else "")
    )
    report_job(r.job)
    report_skipped("gallery enroll", r.failures[: r.skipped_files])
    print_failures(r.failures[r.skipped_files :])
    if r.enrolled == 0 and r.skipped == 0:
        print(f"arcface gallery: error: no photo of {args.dir} could be enrolled", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def run_search(args: argparse.Namespace) -> int:
    """Print the identities most similar to the main face of a photo."""
    _quiet_faiss()
    if args.k < 1 or args.top < 1:
        raise CliError(f"-k and --top must be positive, got {args.k} and {args.top}")
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise CliError(f"--threshold is a cosine in [-1, 1], got {args.threshold}")
    rec = recognizer_from_args(args)
    threshold = args.threshold if args.threshold is not None else rec.identification_threshold
    with Gallery.open(args.gallery, rec.contract, index=args.index, create=False) as gallery:
        try:
            query = rec.embed(args.image)
        except NoFaceError:
            print(f"arcface gallery: no face found in {args.image}", file=sys.stderr)
            return EXIT_NO_FACE
        matches = gallery.search(query, args.k, aggregate=args.aggregate, top=args.top)

    def passes(s: float) -> bool | None:
        return None if threshold is None else bool(s > threshold)

    if args.json:
        doc = {
            "image": args.image,
            "threshold": threshold,
            "threshold_kind": "identification",
            "aggregate": args.aggregate,
            "contract": rec.contract.id,
            "matches": [
                {"identity": m.identity_id, "name": m.name, "similarity": m.similarity, "face": m.face_id,
                 "match": passes(m.similarity)}
                for m in matches
            ],
        }  # fmt: skip
        print(json.dumps(doc))
        return EXIT_OK
    if not matches:
        print(f"the gallery {mask_uri(args.gallery)} is empty")
        return EXIT_OK
    thr = (
        "no identification threshold (pass --threshold)"
        if threshold is None
        else f"match: cosine > {threshold:.4f}, the identification (1:N) threshold"
    )
    print(f"top {len(matches)} of {mask_uri(args.gallery)} ({thr})")
    for rank, m in enumerate(matches, start=1):
        verdict = {True: "match", False: "-", None: "?"}[passes(m.similarity)]
        print(f"{rank:>3}  {m.similarity:.4f}  {verdict:<5}  {m.identity_id:>6}  {shown(m.name)}")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    """Print the identities of the gallery."""
    _quiet_faiss()
    with Gallery.open(args.gallery, create=False) as gallery:
        people = gallery.list_identities()
        contract = gallery.contract
        faces = gallery.count()
    if args.json:
        doc = {
            "gallery": mask_uri(args.gallery),
            "contract": contract.id,
            "architecture": contract.architecture,
            "faces": faces,
            "identities": [{"id": i.id, "name": i.name, "faces": i.faces, "metadata": i.metadata} for i in people],
        }
        print(json.dumps(doc))
        return EXIT_OK
    print(f"{mask_uri(args.gallery)}: {len(people)} identities, {faces} faces (contract {contract.id}, "
          f"{contract.architecture})")  # fmt: skip
    for i in people:
        print(f"{i.id:>6}  {i.faces:>4}  {shown(i.name)}")
    return EXIT_OK


def run_remove(args: argparse.Namespace) -> int:
    """Remove an identity (or one face)."""
    _quiet_faiss()
    with Gallery.open(args.gallery, create=False) as gallery:
        if args.face:
            gallery.remove_face(args.id)
            print(f"removed face {args.id} from {mask_uri(args.gallery)}")
        else:
            name = gallery.get_identity(args.id).name
            n = gallery.remove_identity(args.id)
            print(f"removed identity {args.id} ({shown(name)}) and its {n} face(s) from {mask_uri(args.gallery)}")
    return EXIT_OK


def run_copy(args: argparse.Namespace) -> int:
    """Copy a gallery, then say whether the copy gives the same counts and the same searches."""
    _quiet_faiss()
    if args.sample < 0:
        raise CliError(f"--sample must be >= 0, got {args.sample}")
    src, dst = mask_uri(args.source), mask_uri(args.destination)
    bar: list[Progress] = []

    def step(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total, "copy", unit="identity", enabled=not args.no_progress))
        bar[0].update(done - bar[0].n)

    try:
        r = copy_gallery(args.source, args.destination, index=args.index, sample=args.sample, progress=step)
    finally:
        if bar:
            bar[0].close()
    print(f"copied {r.copied_identities} identities and {r.copied_faces} faces from {src} to {dst}"
          + (f" ({r.resumed_identities} identities were there from an earlier run)" if r.resumed_identities else "")
          + f"; contract {r.contract_id}")  # fmt: skip
    counts = "equal" if r.counts_equal else "DIFFERENT (did the source change during the copy?)"
    print(f"counts: {counts}: {r.identities} identities, {r.faces} faces in the source")
    print(f"searches: {r.identical} of {r.sample} sampled searches identical on both")
    for d in r.differences:
        print(f"  {d}", file=sys.stderr)
    if not r.verified:
        print(f"arcface gallery: error: the copy in {dst} is not verified", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
