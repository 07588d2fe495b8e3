"""The web console: see, search and steer runs live in a browser (docs/console.md)."""

from ._server import serve_console as serve_console

__all__ = ["serve_console"]
