"""The ``arcface`` command line: one entry point, one module per subcommand.

Every subcommand turns a known failure (missing file, bad config, bad image, diverged loss) into
one clear line on stderr and a non-zero exit, never a traceback.

Exit codes, the same for every subcommand:

====  ==========================================================================================
0     success; batch commands also when some items failed (they are listed in the report)
1     bad input or a failure: a bad argument or option (argparse's usage errors included: the
      parser exits 1, not argparse's 2, so a caller needs one test for "the command was wrong"),
      an unreadable or bad file, a bad config, nothing could be processed
3     no face found (``detect``, ``verify``)
130   interrupted (Ctrl-C)
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from arcface.batch.jobs import JobError
from arcface.cli import (
    _align,
    _cluster,
    _convert,
    _data,
    _demo,
    _detect,
    _embed,
    _eval,
    _export,
    _gallery,
    _info,
    _serve,
    _train,
    _verify,
)
from arcface.cli._args import EXIT_ERROR, CliError
from arcface.engine.config import ConfigError
from arcface.engine.trainer import TrainingDiverged
from arcface.gallery.rules import GalleryStorageError
from arcface.inference.recognizer import NoFaceError
from arcface.io.images import ImageError
from arcface.runtime.workers import WorkerDied

__all__ = ["CliError", "build_parser", "main"]

_COMMANDS = (
    _train, _demo, _data, _info, _convert, _export, _detect, _align, _embed, _verify, _eval, _cluster, _gallery,
    _serve,
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse's parser with usage errors exiting 1 like every other bad argument (argparse uses 2); the
    subcommands' parsers are of this class too (``add_subparsers`` builds them with the parent's class)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = _Parser(prog="arcface", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _COMMANDS:
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("arcface: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the known failure kinds: one line, no traceback
        known = (
            CliError, ConfigError, TrainingDiverged, ImageError, NoFaceError, WorkerDied, JobError,
            FileNotFoundError, ValueError, KeyError, OSError, GalleryStorageError,
        )  # fmt: skip
        if isinstance(e, known) and not args.verbose:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"arcface {args.command}: error: {msg}", file=sys.stderr)
            return EXIT_ERROR
        raise
