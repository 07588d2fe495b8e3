"""``actorflow demo``: run the order-processing example of the source checkout."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Final

from ._cli_app import CliError

DEMO_MODULE: Final = "examples.order_processing.main"


def _examples_root() -> Path | None:
    """The directory holding ``examples/``: the checkout this package was installed from
    (``pip install -e .``), else the current directory."""
    package = Path(__file__).resolve().parent
    for root in (package.parent, Path.cwd()):
        if (root / "examples" / "order_processing" / "main.py").is_file():
            return root
    return None


def demo(argv: list[str]) -> int:
    """Run the demo with its own command line (``actorflow demo --help``)."""
    root = _examples_root()
    if root is None:
        raise CliError(
            "the demo lives in the source checkout (examples/order_processing/); install "
            "actorflow from a checkout with `pip install -e .`, or run this from the checkout"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(DEMO_MODULE)
    code: int = module.main(argv)
    return code
