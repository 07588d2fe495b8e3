"""``actorflow demo``: the order-processing demo, which ships inside the package."""

from __future__ import annotations


def demo(argv: list[str]) -> int:
    """Run the demo with its own command line (``actorflow demo --help``)."""
    from actorflow.demo.main import main  # the demo's imports cost only when it runs

    return main(argv)
