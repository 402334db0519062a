"""``python -m arcface`` (and ``torchrun -m arcface``) runs the CLI."""

import sys

from arcface.cli import main

if __name__ == "__main__":
    sys.exit(main())
