"""``arcface data get NAME`` / ``arcface data list``: the public evaluation data (:mod:`arcface.data.downloads`).

- ``get NAME [--dir DIR] [--mirror URL] [--force]``: download NAME (``lfw``: the deep-funneled images and the
  three pair files; ``lfw-original``; ``lfw-pairs``) into ``DIR/lfw`` (default ``$ARCFACE_DATA``, else the
  per-user data folder), check the published checksums before anything is used, and install it atomically.
  An interrupted transfer resumes (also on a re-run); ``--mirror`` / ``ARCFACE_MIRROR`` fetch the same file
  names from another base URL or folder. The data's terms are printed the first time.
- ``list [--dir DIR]``: each known dataset, where it is (or would go) and whether it verifies.

Exit 0 done, 1 an error (one line naming the URL or file).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from arcface.data import downloads
from arcface.data.downloads import default_data_dir
from arcface.data.locations import data_roots


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``data`` subcommand and its actions."""
    p = sub.add_parser(
        "data",
        help="download and check the public evaluation data (LFW)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    g = actions.add_parser("get", help="download, verify and install a dataset (lfw, lfw-original, lfw-pairs)")
    g.add_argument("name", metavar="NAME", help="the dataset (see `arcface data list`)")
    g.add_argument("--dir", default=None, help="the data folder (default $ARCFACE_DATA, else the user data folder)")
    g.add_argument("--mirror", default=None, metavar="URL",
                   help="fetch the same file names from this base URL or folder (default $ARCFACE_MIRROR)")
    g.add_argument("--force", action="store_true", help="download again even what is installed and verifies")
    g.add_argument("--no-progress", action="store_true", help="no progress report")
    g.set_defaults(func=run_get)

    ls = actions.add_parser("list", help="known datasets, where they are and whether they verify")
    ls.add_argument("--dir", default=None, help="the data folder to check (default: where arcface looks)")
    ls.set_defaults(func=run_list)


def run_get(args: argparse.Namespace) -> int:
    """Download, verify and install one dataset."""
    folder = downloads.get(args.name, args.dir, mirror=args.mirror, force=args.force, progress=not args.no_progress)
    print(f"{args.name}: ready in {folder}")
    return 0


def _where(ds_folder: str, explicit: str | None) -> tuple[Path, bool]:
    """The data folder to report on, and whether the dataset folder exists there."""
    if explicit is not None:
        root = Path(explicit)
        return root, (root / ds_folder).is_dir()
    for root in data_roots():
        if (root / ds_folder).is_dir():
            return root, True
    return default_data_dir(), False


def run_list(args: argparse.Namespace) -> int:
    """Print every known dataset, its items, where they are and whether they verify."""
    for ds in downloads.iter_datasets():
        root, found = _where(ds.folder, args.dir)
        folder = root / ds.folder
        print(f"{ds.name}: {ds.description}")
        print(f"  {'in' if found else 'would go to'} {folder}")
        rows = downloads.status(ds.name, root) if found else []
        if not rows:
            print(f"  absent: {downloads.describe(ds.items)}; get it with `arcface data get {ds.name}`")
            continue
        width = max(len(s.item.target) for s in rows)
        for s in rows:
            print(f"  {s.item.target:<{width}}  {s.state:<7}  {s.detail}")
    if os.environ.get("ARCFACE_MIRROR"):
        print(f"mirror: {os.environ['ARCFACE_MIRROR']} (ARCFACE_MIRROR)")
    return 0
