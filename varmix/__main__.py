"""``python -m varmix``: the command line (varmix.pipeline.cli)."""

import sys

from varmix.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
