"""``arcface eval lfw|bin|csv``: verification accuracy the way the papers report it (10-fold), as JSON and a table.

    arcface eval lfw --data lfw-deepfunneled --pairs pairs.txt --model default --json lfw.json --plot roc.png
    arcface eval bin --data lfw.bin --model r50.safetensors --json lfw_bin.json
    arcface eval csv --data pairs.csv [--root IMAGES] --model sface --json out.json

Photos are detected (``--detector``, mtcnn by default), aligned to the model's crop and embedded with flip-test
fusion (``--no-flip`` to turn it off) by the :class:`~arcface.inference.embedder.Embedder` (``--precision``,
``--backend``, default auto: a frozen bf16 graph on CPUs with native bfloat16 when it keeps cosine >= 0.99 to
float32; ONNX models such as SFace run float32 in onnxruntime); ``.bin`` images are already aligned and skip
detection. Crops
and embeddings are cached under ``--cache`` (default ``.cache/arcface``), keyed by the image file and detector
(crops) and the model contract, flip, precision and backend (embeddings), so a second run only reads the cache.
Images where no face is found fall back to a centre crop; their count is in the table and the JSON (see
:mod:`arcface.eval.pipeline`). The JSON holds the whole report, per-pair ``scores``, ``labels`` and ``folds``
included (see :mod:`arcface.eval.verification`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from arcface.cli._args import CliError, add_detector_args, add_model_args, detector_options
from arcface.cli._files import add_file_args, file_policy
from arcface.eval.datasets import read_bin, read_csv_pairs, read_lfw_pairs
from arcface.eval.pipeline import EvalCache
from arcface.eval.plots import plot_roc
from arcface.eval.verification import evaluate_pair_set
from arcface.inference.loader import load_model
from arcface.io.files import write_bytes_atomic
from arcface.io.walk import check_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` and its set kinds (lfw, bin, csv)."""
    p = sub.add_parser(
        "eval",
        help="10-fold verification accuracy, ROC, EER, TAR@FAR on LFW pairs, .bin files or CSV pairs",
        description=__doc__.splitlines()[0],
    )
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    lfw = kinds.add_parser("lfw", help="an LFW pair file (View 1 or View 2) over an image folder")
    lfw.add_argument("--data", required=True, metavar="IMAGE_DIR", help="the image folder (NAME/NAME_0001.jpg)")
    lfw.add_argument("--pairs", required=True, metavar="PAIRS", help="pairs.txt (View 2) or pairsDevTest.txt (View 1)")
    lfw.add_argument("--aligned", action="store_true", help="the images are aligned crops (no detection)")
    binp = kinds.add_parser("bin", help="an insightface .bin of aligned crops (lfw.bin, cfp_fp.bin, ...)")
    binp.add_argument("--data", required=True, metavar="FILE.bin", help="the .bin file")
    csvp = kinds.add_parser("csv", help="a CSV of a,b,same[,fold] rows")
    csvp.add_argument("--data", required=True, metavar="PAIRS.csv", help="the CSV file")
    csvp.add_argument("--root", default=None, help="folder of relative image paths (default: the CSV's folder)")
    csvp.add_argument("--aligned", action="store_true", help="the images are aligned crops (no detection)")
    for q in (lfw, binp, csvp):
        _common(q)
    for q in (lfw, csvp):
        add_file_args(q)


def _common(p: argparse.ArgumentParser) -> None:
    add_model_args(p, flip=True)
    p.add_argument("--json", default=None, metavar="OUT", help="write the report (with per-pair scores) here")
    p.add_argument("--plot", default=None, metavar="ROC.png", help="write the ROC curve as a PNG")
    add_detector_args(p)
    p.add_argument(
        "--workers", type=int, default=None,
        help="detection processes (default: the thread policy's: one per usable CPU, one per 200 images at most)",
    )  # fmt: skip
    p.add_argument("--cache", default=".cache/arcface", metavar="DIR", help="crops/embeddings cache folder")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--batch-size", type=int, default=None,
                   help="crops per forward pass (default: the runner's; 16 for torch on the CPU, else 64)")
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the set, embed it (cached), run the protocol, print the table, write JSON and plot."""
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise CliError(f"--plot {args.plot}: the plot is written as a .png file")
    data = Path(args.data)
    if not data.exists():
        raise CliError(f"{data}: no such file or folder")
    if args.kind == "lfw":
        if not data.is_dir():
            raise CliError(f"--data {data}: expected the LFW image folder")
        pairs_file = Path(args.pairs)
        if not pairs_file.is_file():
            raise CliError(f"--pairs {pairs_file}: no such file")
        suffixes = (".jpg", ".png") if args.aligned else (".jpg",)
        pairset = read_lfw_pairs(pairs_file, data, suffixes=suffixes)
        pairset.aligned = bool(args.aligned)
    elif args.kind == "bin":
        pairset = read_bin(data)
    else:
        pairset = read_csv_pairs(data, args.root, aligned=args.aligned)
    if args.kind != "bin":  # the photos a pair list names are read as the safe walker reads a folder's
        root = data if args.kind == "lfw" else Path(args.root) if args.root else data.parent
        policy = file_policy(args)
        for image in dict.fromkeys(pairset.images):
            why = check_file(image, root=root, policy=policy)
            if why is not None:
                raise CliError(why.message)
    det_name, det_options = detector_options(args)
    # ValueError (one line from the CLI) for a path the model cannot run, e.g. sface with --precision bf16
    embedder = load_model(
        args.model, precision=args.precision, backend=args.backend, flip=args.flip, device=args.device,
        pass_size=args.batch_size, arch=args.arch, threads=args.threads,
    )  # fmt: skip
    cache = EvalCache(None if args.no_cache else args.cache)
    report = evaluate_pair_set(
        pairset, embedder, cache=cache, detector=det_name, detector_options=det_options,
        workers=args.workers, progress=not args.no_progress, threads=args.threads,
    )  # fmt: skip
    report = {"model_name": str(args.model), **report}
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.json, (json.dumps(report) + "\n").encode())
        print(f"report: {args.json}")
    if args.plot:
        plot_roc({f"{args.model} on {pairset.name}": report}, args.plot, title=f"ROC, {pairset.name}")
        print(f"ROC plot: {args.plot}")
    if report["fallbacks"]:
        shown = ", ".join(report["fallback_images"][:5])
        more = f" and {report['fallbacks'] - 5} more" if report["fallbacks"] > 5 else ""
        print(f"arcface eval: no face found in {report['fallbacks']} image(s), centre crop used: {shown}{more}",
              file=sys.stderr)  # fmt: skip
    return 0


def format_table(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for a person."""
    m = report["model"]
    thr = report["thresholds"]
    secs = report["seconds"]
    cache = report["cache"]
    lines = [
        f"set           {report['set']} ({report['source']}): {report['pairs']} pairs "
        f"({report['same']} same, {report['different']} different), {report['folds_n']} folds",
        f"model         {report.get('model_name', m['architecture'])} ({m['architecture']}, {m['embedding_size']}-D, "
        f"contract {m['contract']}), {report.get('precision', 'fp32')}/{report.get('backend', '-')}, "
        f"flip {'on' if report['flip'] else 'off'}, "
        f"detector {report['detector'] or '- (aligned)'}",
        f"accuracy      {100 * report['accuracy']:.2f}% +- {100 * report['accuracy_std']:.2f}  (10-fold mean +- std)",
        f"threshold     cos {min(thr):.4f} .. {max(thr):.4f}  (squared L2 {2 - 2 * max(thr):.4f} .. "
        f"{2 - 2 * min(thr):.4f}) over folds",
        f"AUC           {report['auc']:.5f}",
        f"EER           {100 * report['eer']:.2f}%  (at cos {report['eer_threshold']:.4f})",
    ]
    measured = [t for t in report["tar_at_far"] if t["tar"] is not None]
    for t in sorted(measured, key=lambda t: -t["far"]):
        lines.append(f"TAR@FAR={t['far']:g}".ljust(14) + f"{100 * t['tar']:.2f}%  (at cos {t['threshold']:.4f})")
    unmeasured = [t["far"] for t in report["tar_at_far"] if t["tar"] is None]
    if unmeasured:
        lines.append(f"TAR@FAR<={max(unmeasured):g}".ljust(14)
                     + f"not enough negatives ({report['different']} different pairs; a FAR needs 1/FAR)")  # fmt: skip
    lines += [
        f"no face       {report['fallbacks']} of {report['images']} images (centre crop used)",
        f"time          detect+align {secs['align']:.1f} s, embed {secs['embed']:.1f} s, "
        f"protocol {secs['protocol']:.2f} s  (cache: embeddings {'hit' if cache['embeddings'] else 'miss'}, "
        f"{cache['crops_cached']} crops cached, {cache['detected']} detected)",
    ]
    return "\n".join(lines)
