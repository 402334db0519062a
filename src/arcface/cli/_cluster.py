"""``arcface cluster SRC --json OUT.json``: group the faces of unnamed photos into people.

SRC is a folder (walked recursively), a list file of image paths, one image, or an embeddings ``.npz`` written by
``arcface embed``. Photos are embedded as ``arcface embed`` does (:func:`arcface.batch.embed.embed_images`, the main
face of each photo, on any engine), then grouped by :func:`arcface.cluster.cluster` at the model contract's
clustering threshold (``--threshold`` overrides it).

OUT.json holds ``clusters`` (each ``{"id", "size", "faces": [{"path", "box"}], "representative"}``, largest first),
``unclustered`` (faces alone in their group), ``duplicates`` (files whose embedding equals an earlier file's: they are
clustered once, as that file), ``errors`` (photos that could not be read, had no face, or rows of an ``.npz`` that are
not usable, each with its reason) and the settings. ``box`` is null: the embedding job keeps the main face of each
photo, not its box. Beside it, ``OUT.npz`` (an ``arcface embed`` file plus each face's ``labels``) is what
``--update`` reads: ``arcface cluster NEW --json OUT2.json --update OUT.json`` adds new photos to those clusters
without recomputing them (photos already clustered are skipped). ``--into DIR`` copies (``--link``: symlinks) the
photos into ``DIR/person-0001/``, ... and ``DIR/unclustered/``.

Exit status: 0 when at least one face was clustered, 1 on bad input or when no face could be used (OUT.json is still
written when the input could be read, listing why).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from arcface.batch.embed import embed_images
from arcface.cli._args import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    add_detector_args,
    add_engine_args,
    add_model_args,
    engine_options,
    job_settings,
    print_failures,
)
from arcface.cli._files import add_file_args, as_failures, collect, file_policy, report_skipped
from arcface.cluster import DEFAULT_METHOD, METHODS, cluster, default_threshold, extend
from arcface.inference.contract import ContractError, ModelContract
from arcface.io.files import atomic_path, write_bytes_atomic
from arcface.runtime.untrusted import BadFileError, load_npz


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``cluster`` subcommand."""
    p = sub.add_parser(
        "cluster",
        help="group the faces of unnamed photos (a folder, a list, or an embeddings .npz) into people",
        description="Group faces into people over a k-nearest-neighbour graph. Unreadable photos, photos without a "
        "face, duplicates and unusable .npz rows are listed in OUT.json.",
    )
    p.add_argument("src", metavar="SRC", help="a folder (recursive), a .txt/.lst file of paths, an image, or an "
                   "embeddings .npz from `arcface embed`")  # fmt: skip
    p.add_argument("--json", required=True, metavar="OUT.json", help="the clusters (an OUT.npz is written beside it)")
    p.add_argument("--into", metavar="DIR", help="copy the photos into DIR/person-0001/, ..., DIR/unclustered/")
    p.add_argument("--link", action="store_true", help="with --into: symbolic links instead of copies")
    p.add_argument("--update", metavar="OLD.json", help="add SRC's faces to the clusters of an earlier run")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine threshold (default: the model contract's, or OLD.json's with --update)")  # fmt: skip
    p.add_argument("--k", type=int, default=20, help="neighbours searched per face (default 20)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS.names(),
                   help=f"the graph method (default {DEFAULT_METHOD})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the visiting order (default 0)")
    add_model_args(p)
    p.add_argument("--aligned", action="store_true", help="the images are aligned crops (no detection)")
    p.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    add_detector_args(p)
    add_engine_args(p)
    add_file_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# Inputs


def _read_npz(path: Path) -> tuple[list[str], np.ndarray, ModelContract, list[dict], np.ndarray | None]:
    """(paths, embeddings, contract, bad rows and earlier errors, labels or None) of an ``arcface embed`` file.

    Rows that are not finite or are all zeros become errors; a file that is not such an ``.npz`` is a CliError.
    """
    try:
        z = load_npz(path)  # every member's header checked against its bytes before numpy allocates
    except (OSError, BadFileError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CliError(why if str(path) in why else f"{path}: cannot read the .npz: {why}") from None
    missing = [k for k in ("paths", "embeddings", "contract") if k not in z]
    if missing:
        raise CliError(f"{path}: not an `arcface embed` file (no {', '.join(missing)} array)")
    paths, x, contract_doc = z["paths"], z["embeddings"], z["contract"]
    errors = z.get("errors", np.zeros((0, 3), str))
    labels = z.get("labels")
    if contract_doc.ndim != 0:
        raise CliError(f"{path}: holds {contract_doc.size} contracts (a mix of models): embeddings of different "
                       "models cannot be clustered together; cluster each model's file apart")  # fmt: skip
    try:
        contract = ModelContract.from_json(str(contract_doc))
    except (ContractError, ValueError, TypeError) as e:
        raise CliError(f"{path}: bad contract: {e}") from None
    if x.ndim != 2 or paths.ndim != 1 or x.shape[0] != paths.shape[0]:
        raise CliError(f"{path}: embeddings of shape {x.shape} do not match {paths.shape[0]} paths")
    if x.shape[1] != contract.embedding_size:
        raise CliError(f"{path}: embeddings are {x.shape[1]}-D but the contract says {contract.embedding_size}-D")
    if not np.issubdtype(x.dtype, np.floating):
        raise CliError(f"{path}: embeddings must be floats, got {x.dtype}")
    if labels is not None and labels.shape != (x.shape[0],):
        raise CliError(f"{path}: labels of shape {labels.shape} do not match {x.shape[0]} embeddings")
    bad_errors = [
        {"path": str(r[0]), "reason": str(r[1]), "message": str(r[2])} for r in np.asarray(errors).reshape(-1, 3)
    ] if errors.size else []  # fmt: skip
    x = np.asarray(x, np.float32)
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], x, 0), axis=1)
    ok = finite & (norms > 0)
    for i in np.flatnonzero(~ok):
        why = "not finite (NaN or inf)" if not finite[i] else "all zeros"
        bad_errors.append({"path": str(paths[i]), "reason": "bad_embedding", "message": f"{path}: row {i}: {why}"})
    keep = np.flatnonzero(ok)
    return (
        [str(p) for p in paths[keep]],
        x[keep] / norms[keep, None],
        contract,
        bad_errors,
        (None if labels is None else np.asarray(labels, np.int64)[keep]),
    )


def _embed(args: argparse.Namespace, out_dir: Path) -> tuple[list[str], np.ndarray, ModelContract, list[dict]]:
    """Embed SRC's photos (the ``arcface embed`` job) and read the result back."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    found = collect(args.src, file_policy(args))  # the safe walker: regular files, links kept inside SRC
    skipped = as_failures(found.skipped)
    report_skipped("cluster", skipped)
    settings = job_settings(args, "embed", aligned=args.aligned, batch_size=args.batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".cluster-") as tmp:
        r = embed_images(found.files, Path(tmp) / "faces.npz", settings, engine_options(args),
                         progress_bar=not args.no_progress, skipped=skipped)  # fmt: skip
        print_failures(r.failures)
        paths, x, contract, errors, _ = _read_npz(Path(tmp) / "faces.npz")
    return paths, x, contract, errors


def _duplicates(paths: list[str], x: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Indices of the first of each set of equal embeddings, and the others as ``{"path", "same_as"}``; a path
    given twice is a duplicate too."""
    _, first, inverse = np.unique(np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))),
                                  return_index=True, return_inverse=True)  # fmt: skip
    inverse = inverse.ravel()
    seen: dict[str, int] = {}
    keep, dups = [], []
    for i, p in enumerate(paths):
        original = first[inverse[i]]
        if original != i or p in seen:
            dups.append({"path": p, "same_as": paths[seen.get(p, original)]})
            continue
        seen[p] = i
        keep.append(i)
    return np.asarray(keep, np.int64), dups


# --------------------------------------------------------------------------------------------------
# Outputs


def _ranked(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered by cluster size (largest first, ties by first face): the first run's cluster ids."""
    _, first, inverse, sizes = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -sizes))
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    return rank[inverse.ravel()]


def _document(paths: list[str], x: np.ndarray, labels: np.ndarray) -> tuple[list[dict], list[dict]]:
    """The ``clusters`` (id = label + 1; largest first) and ``unclustered`` entries."""
    sizes = np.bincount(labels)
    clusters, alone = [], []
    order = np.argsort(labels, kind="stable")
    for group in np.split(order, np.cumsum(sizes)[:-1]):
        if group.size == 0:
            continue
        if group.size == 1:
            alone.append({"path": paths[group[0]], "box": None})
            continue
        mean = x[group].sum(axis=0)
        best = group[int(np.argmax(x[group] @ mean))]  # the face closest to the cluster's mean
        clusters.append({
            "id": int(labels[group[0]]) + 1, "size": int(group.size),
            "faces": [{"path": paths[i], "box": None} for i in group],
            "representative": {"path": paths[best], "box": None},
        })  # fmt: skip
    clusters.sort(key=lambda c: (-c["size"], c["id"]))
    return clusters, alone


def _write_sidecar(path: Path, paths: list[str], x: np.ndarray, labels: np.ndarray, contract: ModelContract) -> None:
    """OUT.npz: an ``arcface embed`` file (paths, embeddings, contract) plus each face's cluster label."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, paths=np.array(paths, dtype=str), embeddings=np.ascontiguousarray(x, np.float32),
                 contract=np.array(contract.to_json()), labels=np.asarray(labels, np.int64),
                 errors=np.zeros((0, 3), str))  # fmt: skip


def _place(into: Path, clusters: list[dict], alone: list[dict], link: bool) -> int:
    """Copy or link each photo into ``into/person-NNNN/`` (``into/unclustered/``); the number of files placed."""
    placed = 0
    groups = [(f"person-{c['id']:04d}", c["faces"]) for c in clusters] + [("unclustered", alone)]
    for name, faces in groups:
        folder = into / name
        folder.mkdir(parents=True, exist_ok=True)
        for j, face in enumerate(faces):
            src = Path(face["path"])
            target = folder / src.name
            if target.exists() or target.is_symlink():
                target = folder / f"{j:05d}-{src.name}"
            try:
                if link:
                    target.symlink_to(src.resolve())
                else:
                    shutil.copyfile(src, target)
                placed += 1
            except OSError as e:
                print(f"  --into: {src}: {e.strerror or e}", file=sys.stderr)
    return placed


# --------------------------------------------------------------------------------------------------
# The command


def _load_previous(old_json: Path) -> tuple[list[str], np.ndarray, ModelContract, np.ndarray, float, Path]:
    """The earlier run's faces, embeddings, contract, labels, threshold and OUT.npz."""
    try:
        doc = json.loads(old_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CliError(f"--update {old_json}: cannot read it as JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("embeddings"), str) or "threshold" not in doc:
        raise CliError(f"--update {old_json}: not an `arcface cluster` output (no embeddings/threshold fields)")
    sidecar = old_json.parent / doc["embeddings"]
    if not sidecar.is_file():
        raise CliError(f"--update {old_json}: its embeddings file {sidecar} is missing")
    paths, x, contract, _, labels = _read_npz(sidecar)
    if labels is None:
        raise CliError(f"--update {old_json}: {sidecar} has no labels array")
    return paths, x, contract, labels, float(doc["threshold"]), sidecar


def run(args: argparse.Namespace) -> int:
    """Embed (or read) the faces, cluster them, write OUT.json and OUT.npz, optionally place the photos."""
    out = Path(args.json)
    if out.suffix.lower() != ".json":
        raise CliError(f"--json {out}: the output must be a .json file")
    if args.k < 1:
        raise CliError(f"--k must be positive, got {args.k}")
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise CliError(f"--threshold is a cosine in [-1, 1], got {args.threshold}")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its search for CPU builds is not news here
    sidecar = out.with_suffix(".npz")
    old = _load_previous(Path(args.update)) if args.update else None
    if old is not None and old[5].resolve() == sidecar.resolve():
        raise CliError(f"--json {out}: choose another name than --update's (its {sidecar.name} would be replaced)")
    src = Path(args.src)
    if src.suffix.lower() == ".npz" and src.is_file():
        paths, x, contract, errors, _ = _read_npz(src)
    else:
        paths, x, contract, errors = _embed(args, out.parent)
    if old is not None and old[2].id != contract.id:
        raise CliError(f"{args.src}: its faces come from model contract {contract.id} ({contract.architecture}) but "
                       f"{args.update}'s from {old[2].id} ({old[2].architecture}): embeddings of different models "
                       "cannot be clustered together")  # fmt: skip
    keep, duplicates = _duplicates(paths, x)
    skipped = 0
    if old is not None:  # photos already clustered stay as they are; a copy of an earlier photo is a duplicate
        known = set(old[0])
        fresh = np.asarray([i for i in keep if paths[i] not in known], np.int64)
        skipped = keep.size - fresh.size
        m = len(old[0])
        first, more = _duplicates(old[0] + [paths[i] for i in fresh], np.concatenate([old[1], x[fresh]]))
        keep = fresh[first[first >= m] - m]
        duplicates += more
    paths, x = [paths[i] for i in keep], x[keep]
    if args.threshold is not None:
        threshold = args.threshold
    elif old is not None:
        threshold = old[4]
    else:
        try:
            threshold = default_threshold(contract)
        except ValueError as e:
            raise CliError(f"{args.src}: {e} (--threshold)") from None
    start = time.perf_counter()
    if old is not None:
        new_labels = extend(old[1], old[3], x, threshold, k=args.k, seed=args.seed)
        paths, x = old[0] + paths, np.concatenate([old[1], x])
        labels = np.concatenate([old[3], new_labels])
    elif x.shape[0]:
        labels = _ranked(cluster(x, threshold, k=args.k, method=args.method, seed=args.seed).labels)
    else:
        labels = np.zeros(0, np.int64)
    seconds = time.perf_counter() - start
    clusters, alone = _document(paths, x, labels)
    doc = {
        "clusters": clusters, "unclustered": alone, "duplicates": duplicates, "errors": errors,
        "threshold": threshold, "method": args.method if old is None else "extend", "k": args.k, "seed": args.seed,
        "contract": contract.id, "faces": len(paths), "embeddings": sidecar.name,
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_sidecar(sidecar, paths, x, labels, contract)
    write_bytes_atomic(out, (json.dumps(doc, indent=1) + "\n").encode())
    placed = _place(Path(args.into), clusters, alone, args.link) if args.into else 0
    in_clusters = sum(c["size"] for c in clusters)
    print(f"{len(paths)} faces: {len(clusters)} clusters ({in_clusters} faces), {len(alone)} unclustered; "
          f"cosine > {threshold:.4f}, {seconds:.1f} s; {out}" + (f"; {skipped} already clustered" if skipped else "")
          + (f"; {len(duplicates)} duplicates" if duplicates else "") + (f"; {len(errors)} errors" if errors else "")
          + (f"; {placed} photos into {args.into}" if args.into else ""))  # fmt: skip
    if not len(paths):
        print(f"arcface cluster: error: no face of {args.src} could be used (see {out})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


__all__ = ["add_parser", "run"]
