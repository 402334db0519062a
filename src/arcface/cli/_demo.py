"""``arcface demo``: the most real jobs the project can do end to end, on real faces when present.

1. Photo to identity: MTCNN + five-point alignment + the bundled MobileFaceNet decide a few LFW View 1
   test pairs (``pairsDevTest.txt``) with the calibrated threshold, and print the table.
2. Evaluation: the LFW View 2 10-fold protocol of the default model (``arcface eval lfw``), with its
   table; crops and embeddings are cached, so runs after the first take well under a minute.
3. With ``--train``: a small IResNet with the ArcFace head on LFW people who have at least 30 photos
   (centre crop of the deep-funneled images), printing the loss as it falls.
Without LFW (not in ``$ARCFACE_DATA``, ``../shared`` or the download folder) it first gets it with
``arcface data get lfw`` (saying what it downloads and how big it is). Where nothing can be downloaded it says so
in one line and verifies the public-domain photos the package ships (``arcface/samples``, see its NOTICE)
instead; ``--train`` then trains on synthetic faces.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import time
from pathlib import Path

from arcface.cli._args import add_threads_arg
from arcface.cli._eval import format_table
from arcface.data import downloads
from arcface.data.locations import find_lfw
from arcface.engine.config import config_from_dict
from arcface.engine.trainer import Trainer
from arcface.eval.datasets import read_lfw_pairs
from arcface.eval.pipeline import EvalCache
from arcface.eval.verification import evaluate_pair_set
from arcface.inference.loader import load_model
from arcface.inference.recognizer import FaceRecognizer
from arcface.io.files import write_bytes_atomic

#: Public-domain face photos shipped with the package (NOTICE beside them); ``NAME_N.jpg`` is photo N of NAME.
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
#: Longest name a table column shows; longer names are cut with "...".
MAX_NAME = 40


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``demo`` subcommand."""
    p = sub.add_parser("demo", help="run the demo job (a short ArcFace training run on LFW faces)")
    p.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    p.add_argument("--out", default=".cache/demo", help="working folder (default .cache/demo)")
    p.add_argument("--min-images", type=int, default=30, help="people with at least this many photos")
    p.add_argument("--pairs", type=int, default=12, help="LFW View 1 test pairs to verify (half same)")
    p.add_argument("--no-eval", action="store_true", help="skip the LFW View 2 evaluation")
    p.add_argument("--train", action="store_true", help="also run the short training demo")
    add_threads_arg(p)
    p.set_defaults(func=run)


def lfw_list_file(lfw: Path, min_images: int, out: Path) -> tuple[Path, int, int]:
    """Write ``path label`` lines for LFW people with >= ``min_images`` photos; returns (file, people, images)."""
    root = lfw / "lfw-deepfunneled"
    people = sorted(d for d in root.iterdir() if d.is_dir())
    lines, n_people = [], 0
    for d in people:
        imgs = sorted(d.glob("*.jpg"))
        if len(imgs) >= min_images:
            lines += [f"{p} {n_people}" for p in imgs]
            n_people += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out, n_people, len(lines)


def sample_pairs(folder: Path = SAMPLES) -> list[tuple[Path, Path, bool]]:
    """Every pair of the shipped photos as (image A, image B, same person), "same" pairs first."""
    photos = sorted(folder.glob("*.jpg"))

    def person(p: Path) -> str:
        return re.sub(r"_\d+$", "", p.stem)

    pairs = [(a, b, person(a) == person(b)) for a, b in itertools.combinations(photos, 2)]
    return sorted(pairs, key=lambda p: not p[2])


def _fit(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def _verify_table(pairs: list[tuple[Path, Path, bool]], source: str, threads: int | str | None = None) -> int:
    """Verify ``pairs`` and print the table (columns as wide as the longest name, at most MAX_NAME)."""
    rec = FaceRecognizer(threads=threads)
    print(f"photo to identity: mtcnn + 112x112 alignment + {rec.contract.architecture} "
          f"({rec.contract.embedding_size}-D), threshold {rec.threshold:.3f} ({rec.contract.calibrated_on})")
    print(f"data: {source}\n")
    wa = min(MAX_NAME, max([len("image A")] + [len(a.stem) for a, _, _ in pairs]))
    wb = min(MAX_NAME, max([len("image B")] + [len(b.stem) for _, b, _ in pairs]))
    print(f"{'image A':<{wa}}  {'image B':<{wb}}  {'cosine':>7}  {'decision':<9}  truth")
    right = 0
    t0 = time.perf_counter()
    for a, b, truth in pairs:
        v = rec.verify(a, b)
        right += v.same == truth
        print(f"{_fit(a.stem, wa):<{wa}}  {_fit(b.stem, wb):<{wb}}  {v.similarity:>7.3f}  "
              f"{'same' if v.same else 'different':<9}  {'same' if truth else 'different'}")
    print(f"\n{right}/{len(pairs)} right in {time.perf_counter() - t0:.1f} s\n")
    return right


def verification_table(lfw: Path, n_pairs: int, threads: int | str | None = None) -> None:
    """Verify ``n_pairs`` LFW View 1 test pairs (half same, half different) and print the table."""
    pairs = read_lfw_pairs(lfw / "pairsDevTest.txt", lfw / "lfw-deepfunneled").image_pairs()
    same = [p for p in pairs if p[2]][: n_pairs // 2]
    diff = [p for p in pairs if not p[2]][: n_pairs - n_pairs // 2]
    _verify_table(same + diff, f"LFW View 1 test pairs from {lfw / 'pairsDevTest.txt'}", threads)


def samples_table(threads: int | str | None = None) -> None:
    """Verify every pair of the photos the package ships and print the table."""
    pairs = sample_pairs()
    _verify_table(pairs, f"the {len({p for a, b, _ in pairs for p in (a, b)})} public-domain photos shipped in "
                         f"{SAMPLES} (NOTICE there; the two Grace Hopper photos are copies of one photograph)",
                  threads)  # fmt: skip


def get_lfw() -> Path | None:
    """LFW, fetched with ``arcface data get lfw`` when it is absent; None (after one line saying so) when it
    cannot be had: no network, or a download that failed or did not verify."""
    root = downloads.default_data_dir()
    todo = downloads.missing("lfw", root)
    size = sum(it.expected_size() or 0 for it in todo) / 1e6
    offline = downloads.probe("lfw")
    if offline is not None:
        print(f"LFW is not on this machine and cannot be downloaded ({offline}): verifying the photos this "
              f"package ships instead; `arcface data get lfw` fetches LFW (about {size:.0f} MB) on a network.")
        return None
    print(f"LFW is not on this machine: downloading it into {root / 'lfw'} with `arcface data get lfw`: "
          f"{downloads.describe(todo)}, checked against the published checksums.")
    try:
        downloads.get("lfw", root)
    except downloads.DataError as e:
        print(f"LFW could not be downloaded ({e}): verifying the photos this package ships instead.")
        return None
    return find_lfw()


def run(args: argparse.Namespace) -> int:
    """Verify a few LFW pairs, then train for ``--steps`` and print a loss table."""
    work = Path(args.out)
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    lfw = find_lfw() or get_lfw()
    if lfw is None and args.pairs > 0:
        samples_table(args.threads)
    if lfw is not None and args.pairs > 0:
        verification_table(lfw, args.pairs, args.threads)
    if lfw is not None and not args.no_eval:
        print(f"LFW View 2 (10 folds, 6,000 pairs of {lfw / 'pairs.txt'}), default model, flip-test fusion:")
        pairset = read_lfw_pairs(lfw / "pairs.txt", lfw / "lfw-deepfunneled")
        report = evaluate_pair_set(pairset, load_model("default", flip=True, threads=args.threads), cache=EvalCache(),
                                   threads=args.threads)  # fmt: skip
        print(format_table({"model_name": "default", **report}))
        work.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(work / "lfw_view2.json", (json.dumps(report) + "\n").encode())
    if not args.train:
        return 0
    if lfw is not None:
        lst, n_people, n_images = lfw_list_file(lfw, args.min_images, work / "lfw_train.txt")
        data = {
            "kind": "list_file",
            "params": {"list_file": str(lst), "image_size": 64, "center_crop": 144},
            "batch_size": 32,
        }
        source = f"LFW deep-funneled at {lfw}: {n_people} people with >= {args.min_images} photos, {n_images} images"
    else:
        data = {"kind": "synthetic", "params": {"num_samples": 2048, "num_classes": 32, "image_size": 64},
                "batch_size": 32}
        source = "synthetic faces (LFW not found)"
    cfg = config_from_dict({
        "seed": 0,
        "model": {"name": "r18", "num_features": 128, "options": {"width_mult": 0.25, "input_size": 64}},
        "head": {"kind": "arcface", "params": {"s": 64.0, "m": 0.5}},
        "data": data,
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "poly", "warmup_steps": 5, "power": 2.0},
        "train": {"max_steps": args.steps, "log_every": 1, "ckpt_every": args.steps, "tensorboard": False},
    })
    print(f"data: {source}")
    print(f"model: IResNet-18 (width x0.25, 64x64 input, 128-D) + ArcFace head (s=64, m=0.5); {args.steps} steps")
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir, progress=True, threads=args.threads)
    trainer.train()
    seconds = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    print(f"\n{'step':>6} {'loss':>9} {'lr':>9} {'samples/s':>10}")
    for r in rows:
        if r["step"] == 1 or r["step"] % 10 == 0 or r["step"] == rows[-1]["step"]:
            print(f"{r['step']:>6} {r['loss']:>9.4f} {r['lr']:>9.4f} {r['samples_per_sec']:>10.1f}")
    first = sum(r["loss"] for r in rows[:5]) / min(5, len(rows))
    last = sum(r["loss"] for r in rows[-5:]) / min(5, len(rows))
    print(f"\nmean loss of the first 5 steps {first:.3f} -> last 5 steps {last:.3f} "
          f"({trainer.precision}, {seconds:.0f} s); weights: {run_dir / 'backbone.safetensors'}")
    return 0
