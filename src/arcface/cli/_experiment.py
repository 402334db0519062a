"""``arcface experiment loss-table``: the ArcFace paper's loss comparison at small scale on LFW (one command).

See :mod:`arcface.experiments.loss_table` for what it does. ``make paper-table`` runs it with the defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arcface.cli._batch import EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``experiment`` subcommand."""
    p = sub.add_parser("experiment", help="reproducible experiments (the paper's loss table on LFW)")
    exp = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    t = exp.add_parser(
        "loss-table",
        help="train every margin loss on LFW (View 1 test people held out) and compare them",
        description="Align LFW with `arcface align`, pack the training people to RecordIO, train one row per loss "
        "with `arcface train` (same backbone, schedule, seed and steps), evaluate on LFW View 1, fine-tune the "
        "default model, and write bench/results/loss_comparison.{json,md} and PNGs. Cached in --work: a second "
        "run reuses finished steps.",
    )
    t.add_argument("--lfw", default=None, help="LFW folder with lfw-deepfunneled/ and the pair files "
                   "(default: $ARCFACE_DATA/lfw or ../shared/data/lfw)")  # fmt: skip
    t.add_argument("--work", default=".cache/arcface/loss_table", help="work folder (aligned crops, packs, runs)")
    t.add_argument("--out", default="bench/results", help="where the JSON, markdown table and PNGs go")
    t.add_argument("--config", default=None, help="base training recipe (default configs/lfw_small_r18.yaml)")
    t.add_argument("--steps", type=int, default=800, help="training steps per row (default 800)")
    t.add_argument("--seeds", type=int, default=2, help="seeds for the top rows (default 2; 1 for one seed)")
    t.add_argument("--seed-rows", type=int, default=2,
                   help="how many of the best rows get the extra seeds (softmax and arcface always do)")
    t.add_argument("--rows", default=None, help="comma-separated subset of rows (e.g. softmax,arcface_0_5)")
    t.add_argument("--finetune-steps", type=int, default=200, help="steps of the default-model fine-tuning")
    t.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning of the default model")
    t.add_argument("--readme", default=None, help="README to update between the loss-table markers")
    t.add_argument("--fresh", action="store_true", help="delete --work first (a run from a clean state)")
    t.add_argument("--workers", type=int, default=None, help="alignment processes (default: the CPU cores)")
    t.add_argument("--jobs", type=int, default=1, help="rows trained side by side, each in its own process")
    t.add_argument("--threads", type=int, default=0,
                   help="torch threads per process (default 0: the CPU cores divided by --jobs)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the arguments and run the experiment."""
    import shutil

    from arcface._shared import LFW_HINT, find_lfw
    from arcface.cli import CliError
    from arcface.experiments.loss_table import BASE_CONFIG, Setup, run_loss_table

    lfw = Path(args.lfw) if args.lfw else find_lfw()
    if lfw is None or not (lfw / "pairsDevTest.txt").is_file():
        raise CliError(f"LFW not found{f' in {lfw}' if lfw else ''} (need pairsDevTrain/DevTest.txt): {LFW_HINT}")
    for name, value in (("--steps", args.steps), ("--seeds", args.seeds), ("--finetune-steps", args.finetune_steps)):
        if value < 1:
            raise CliError(f"{name} must be at least 1, got {value}")
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
    return EXIT_OK
