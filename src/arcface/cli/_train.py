"""``arcface train CONFIG --out DIR``: train a backbone (one process, or under torchrun)."""

from __future__ import annotations

import argparse

from arcface.cli._args import CliError, add_threads_arg
from arcface.engine.config import load_config
from arcface.engine.distributed import cleanup, init_distributed
from arcface.engine.trainer import Trainer
from arcface.eval.hook import build_evaluator
from arcface.runtime.untrusted import one_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``train`` subcommand."""
    p = sub.add_parser(
        "train",
        help="train a backbone with a margin head",
        description="Train from a YAML recipe. Under torchrun each rank runs this same command.",
    )
    p.add_argument("config", help="YAML recipe (see configs/)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, log.jsonl, weights)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (schedule unchanged)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint in --out")
    p.add_argument("--init-from", default=None, help="backbone weights to fine-tune from (ours or backbone.pth)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=0.05 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, join torchrun's process group if any, train, clean up."""
    cfg = load_config(args.config, args.overrides)
    evaluate = None
    if cfg.eval.every > 0 and cfg.eval.sets:
        evaluate = build_evaluator(cfg)
    dist = init_distributed(cfg.train.device)
    try:
        trainer = _trainer(cfg, args, dist=dist, evaluate=evaluate)
        trainer.train()
        if dist.is_main:
            print(f"trained {trainer.step} steps; weights: {trainer.out_dir / 'backbone.safetensors'}")
    finally:
        cleanup(dist)
    return 0


def _trainer(cfg, args: argparse.Namespace, *, dist, evaluate) -> Trainer:
    """The trainer; a weights file that does not fit is one line (torch lists every missing key on lines of their
    own)."""
    try:
        return Trainer(
            cfg,
            args.out,
            dist=dist,
            max_steps=args.max_steps,
            resume=args.resume,
            init_from=args.init_from,
            progress=not args.no_progress,
            evaluate=evaluate,
            threads=args.threads,
        )
    except ValueError as e:
        if args.verbose or "\n" not in str(e).strip():  # --verbose shows it all
            raise
        raise CliError(f"{one_line(e)} (--verbose lists them)") from None
