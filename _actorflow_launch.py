"""The ``actorflow`` console script's entry point, outside the ``actorflow`` package.

Importing actorflow (trio, cattrs, the stores...) takes a moment; a Ctrl-C in that moment
would otherwise print a traceback from the middle of an import. This module imports
nothing of actorflow before its ``try``, so Ctrl-C at any time ends the command with one
line and exit code 130 (``actorflow.cli.main`` handles the rest of the time itself).
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from actorflow.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        print("actorflow: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
