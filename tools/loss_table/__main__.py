"""``python -m tools.loss_table`` (``make paper-table``): the ArcFace paper's loss comparison at small scale on LFW.

Aligns LFW, packs the training people to RecordIO, trains one row per loss with ``arcface train`` (same backbone,
schedule, seed and steps), evaluates on LFW View 1, fine-tunes the default model, and writes
bench/results/loss_comparison.{json,md} and PNGs. Cached in --work: a second run reuses finished steps. See
:mod:`tools.loss_table.experiment`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from arcface.data.locations import LFW_HINT, find_lfw
from tools.loss_table.experiment import run_loss_table
from tools.loss_table.setup import BASE_CONFIG, Setup


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.loss_table", description=__doc__.splitlines()[0])
    p.add_argument("--lfw", default=None, help="LFW folder with lfw-deepfunneled/ and the pair files "
                   "(default: $ARCFACE_DATA/lfw or ../shared/data/lfw)")  # fmt: skip
    p.add_argument("--work", default=".cache/arcface/loss_table", help="work folder (aligned crops, packs, runs)")
    p.add_argument("--out", default="bench/results", help="where the JSON, markdown table and PNGs go")
    p.add_argument("--config", default=None, help="base training recipe (default configs/lfw_small_r18.yaml)")
    p.add_argument("--steps", type=int, default=800, help="training steps per row (default 800)")
    p.add_argument("--seeds", type=int, default=2, help="seeds for the top rows (default 2; 1 for one seed)")
    p.add_argument("--seed-rows", type=int, default=2,
                   help="how many of the best rows get the extra seeds (softmax and arcface always do)")
    p.add_argument("--rows", default=None, help="comma-separated subset of rows (e.g. softmax,arcface_0_5)")
    p.add_argument("--finetune-steps", type=int, default=200, help="steps of the default-model fine-tuning")
    p.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning of the default model")
    p.add_argument("--readme", default=None, help="README to update between the loss-table markers")
    p.add_argument("--fresh", action="store_true", help="delete --work first (a run from a clean state)")
    p.add_argument("--workers", type=int, default=None, help="alignment processes (default: the CPU cores)")
    p.add_argument("--jobs", type=int, default=1, help="rows trained side by side, each in its own process")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per process (default 0: the CPU cores divided by --jobs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Check the arguments and run the experiment."""
    lfw = Path(args.lfw) if args.lfw else find_lfw()
    if lfw is None or not (lfw / "pairsDevTest.txt").is_file():
        raise ValueError(f"LFW not found{f' in {lfw}' if lfw else ''} (need pairsDevTrain/DevTest.txt): {LFW_HINT}")
    for name, value in (("--steps", args.steps), ("--seeds", args.seeds), ("--finetune-steps", args.finetune_steps)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    work = Path(args.work)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    setup = Setup(
        lfw=lfw,
        work=work,
        out=Path(args.out),
        steps=args.steps,
        seeds=args.seeds,
        seed_rows=max(0, args.seed_rows),
        rows=tuple(r.strip() for r in args.rows.split(",") if r.strip()) if args.rows else (),
        finetune_steps=args.finetune_steps,
        finetune=not args.no_finetune,
        config=Path(args.config) if args.config else BASE_CONFIG,
        readme=Path(args.readme) if args.readme else None,
        workers=args.workers,
        threads=max(0, args.threads),
        jobs=max(1, args.jobs),
        progress=not args.no_progress,
    )
    run_loss_table(setup)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment; a bad argument or missing data is one line on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(parse_args(argv))
    except (ValueError, FileNotFoundError) as e:
        print(f"loss-table: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
